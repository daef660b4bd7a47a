"""The bench: one registry of tables (TABLES) for the CPU bench (bench_cpu.py) and the GPU
bench (bench_gpu.py), and the main() both run. Each table makes its inputs and contenders
once, before timing, and has the run's timer measure them (timing.py: CpuTimer, wall-clock
medians; GpuTimer, device time with wall time and kernels beside it). Its rows are then laid
out for that timer: the CPU tables compare the contenders per size, the GPU tables list
each contender's device time, wall time and kernels. "vs X" = X's time / ours."""
import argparse
import itertools
import json
import os
import signal
import statistics
import sys
import time
import traceback

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from timing import (HIDDEN, JEMALLOC_CONF, MIN_REPS, CpuTimer, GpuTimer, Report, allocator_in_use,  # noqa: E402
                    cpu_model, faults_per_call, find_jemalloc, loadavg, log2name, ms, paired_ratio, progress,
                    quiet_torch_logs, ratio, shape_name, us)

import dropout_ext  # noqa: E402
from dropout_ext import _backend  # noqa: E402
from dropout_ext import functional as F  # noqa: E402

TF = torch.nn.functional
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
# The layout table's inputs (contiguous 4-D, channels_last 4-D, transposed square, stepped
# slice x[:, ::2] of (2R, R)) at three scales; all inputs of one scale have the same numel.
LAYOUT_SHAPES = {"full": ((64, 256, 32, 32), 4096, (8192, 4096)), "small": ((16, 64, 32, 32), 1024, (2048, 1024)),
                 "tiny": ((4, 16, 16, 16), 128, (256, 128))}
# The order each bench measures its tables in. The GPU bench takes the host times (steps, per call)
# first: after a torch.profiler session, host times in the same process read 35 to 45 us
# higher per forward + backward (the CUDA activity tracing it sets up seems to stay attached).
ORDER = {"cpu": ("forward", "backward", "family", "per_call", "layout", "shard", "norm", "steps", "isa", "curve"),
         "gpu": ("steps", "per_call", "forward", "backward", "unroll", "family", "norm", "layout", "shard")}
# Per bench and mode: log2 sizes of the forward and forward+backward tables, rounds per
# median, log2 numel of the family table, layout scale, local shard shape, torch.compile.
MODES = {("cpu", "quick"): ((12, 14), 3, 14, "tiny", (64, 128), False),
         ("cpu", "default"): ((20, 24), 21, 22, "small", (2048, 2048), True),
         ("cpu", "full"): ((20, 24, 26), 21, 24, "full", (8192, 2048), True),
         ("gpu", "dry"): ((12, 14), 7, 14, "tiny", (64, 128), True),  # --device cpu
         ("gpu", "quick"): ((24,), 11, 24, "full", (8192, 4096), True),
         ("gpu", "default"): ((24, 28), 21, 26, "full", (8192, 4096), True)}


# ----------------------------------------------------------------------------- contenders

def es(dtype):
    return torch.empty((), dtype=dtype).element_size()


def with_storage(mode, fn):
    """fn run with dropout_ext's backward storage set to `mode` ("seed" or "bits")."""
    def go():
        old = dropout_ext.backward_storage()
        dropout_ext.set_backward_storage(mode)
        try:
            return fn()
        finally:
            dropout_ext.set_backward_storage(old)
    return go


def fwd_bwd(fn, x, grad=None):
    """Forward + backward: fn(leaf), then backward(grad), or .sum().backward() without grad.
    The leaf is made once and its .grad dropped before each call: every call does the same work."""
    leaf = x.detach().requires_grad_()

    def go():
        leaf.grad = None
        out = fn(leaf)
        out.sum().backward() if grad is None else out.backward(grad)
    return go


class SavedBytes:
    """Bytes autograd saves for backward inside `with counter.scope():` blocks, each storage once."""

    def __init__(self):
        self.seen = {}

    def _pack(self, t):
        self.seen[(t.untyped_storage().data_ptr(), t.numel(), t.dtype)] = t.numel() * t.element_size()
        return t

    def scope(self):
        return torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    @property
    def total(self):
        return sum(self.seen.values())

    @staticmethod
    def of(fn):
        """Bytes saved while fn() runs."""
        counter = SavedBytes()
        with counter.scope():
            out = fn()
        del out
        return counter.total


def compiled(run, *fns):
    """torch.compile(fn, dynamic=False) of each fn (Nones without torch.compile), after
    torch._dynamo.reset(), so that each is compiled for exactly the shape it is timed on and
    the code cache never fills up: compile a timing set's contenders together, right before."""
    if not run.with_compile:
        return (None,) * len(fns)
    torch._dynamo.reset()
    cfg = torch._dynamo.config
    for knob in ("recompile_limit", "cache_size_limit"):  # the name differs across torch versions
        if hasattr(cfg, knob):
            setattr(cfg, knob, max(getattr(cfg, knob), 64))
    return tuple(torch.compile(fn, dynamic=False, backend=run.compile_backend) for fn in fns)


def secs(m):
    return {k: v["t"] for k, v in m.items()}


def raw(run, m, suffix=""):
    """What a row keeps of its measurements in the JSON: kernels (GPU) or seconds (CPU) per call."""
    return {k: v["kernels" if run.gpu else "t"] for k, v in m.items() if k.endswith(suffix)}


def over_sizes(run, label, one):
    """(rows, None) of one(run, dtype, numel) for each dtype and size; one's tensors are
    freed when it returns, before the next size is made."""
    rows = []
    for d in run.dtypes:
        for n in run.sizes:
            progress("%s %s %s" % (label, d, log2name(n)))
            rows += one(run, d, n)
    return rows, None


def per_contender(d, n, m, moved, more):
    """GPU rows of the forward and forward + backward tables, one per contender."""
    return [{"dtype": d, "numel": log2name(n), "contender": k, "bytes/elem": round(moved[k] / n, 3),
             "dev us": us(r["t"]), "wall us": us(r["wall"]), "kernels/call": r["n"],
             "GB/s (dev)": round(moved[k] / r["t"] / 1e9) if r["t"] else None, **more(k, r), "kernels": r["kernels"]}
            for k, r in m.items()]


# ----------------------------------------------------------------------------- forward, backward

def forward_contenders(run, x):
    p, y = run.p, torch.empty_like(x)
    comp, = compiled(run, lambda t: TF.dropout(t, p))
    if run.gpu:  # the bandwidth reference: copy_
        xr = x.detach().requires_grad_()
        fns = {"copy_": lambda: y.copy_(x), "torch": lambda: TF.dropout(x, p), "torch.compile": lambda: comp(x),
               "ours": lambda: F.dropout(x, p),
               # the training forward: the input requires grad, so the keep bits are written too
               "ours +bits": with_storage("bits", lambda: F.dropout(xr, p))}
    else:  # x * 2.0 pays the page faults of a fresh output, as ours; mul(out=) pays none
        fns = {"x * 2.0": lambda: x * 2.0, "mul(out=)": lambda: torch.mul(x, 2.0, out=y),
               "torch": lambda: TF.dropout(x, p), "ours": lambda: F.dropout(x, p), "torch.compile": lambda: comp(x)}
    return {k: f for k, f in fns.items() if k != "torch.compile" or comp}


def forward_rows(run, d, n):
    dt = DTYPES[d]
    x = torch.randn(n, dtype=dt, device=run.device)
    fns = forward_contenders(run, x)
    m = run.timer.measure(fns, run.reps)
    t, b = secs(m), 2 * n * es(dt)
    if run.gpu:  # the bytes each must move: torch's eager kernel also writes a one-byte mask
        moved = {"copy_": b, "torch": b + n, "torch.compile": b, "ours": b, "ours +bits": b + n // 8}
        return per_contender(d, n, m, moved, lambda k, r: {
            "ours/copy_ BW": ratio(moved[k] / r["t"], b / t["copy_"], 3) if r["t"] else None,
            "vs torch (dev)": ratio(t.get("torch"), r["t"])})
    row = {"dtype": d, "numel": log2name(n), "n": n, "threads": torch.get_num_threads(),
           "GB/s x*2": round(b / t["x * 2.0"] / 1e9, 2), "GB/s mul(out=)": round(b / t["mul(out=)"] / 1e9, 2),
           "GB/s ours": round(b / t["ours"] / 1e9, 2), "ms ours": ms(t["ours"]),
           "ours/x*2": ratio(t["x * 2.0"], t["ours"]), "ours/mul(out=)": ratio(t["mul(out=)"], t["ours"]),
           "faults/call x*2": faults_per_call(fns["x * 2.0"]), "faults/call ours": faults_per_call(fns["ours"]),
           "seconds": t}
    for k, col in (("torch", "torch"), ("torch.compile", "compile")):
        if k in t:
            row.update({"GB/s " + col: round(b / t[k] / 1e9, 2), "ours/" + col: ratio(t[k], t["ours"])})
    return [row]


def backward_rows(run, d, n):
    p, dt = run.p, DTYPES[d]
    x = torch.randn(n, dtype=dt, device=run.device)
    g, xr = torch.randn_like(x), x.detach().requires_grad_()

    def ours(a):
        return F.dropout(a, p)

    def theirs(a):
        return TF.dropout(a, p)

    m = run.timer.measure({"torch": fwd_bwd(theirs, x, g), "ours seed": with_storage("seed", fwd_bwd(ours, x, g)),
                           "ours bits": with_storage("bits", fwd_bwd(ours, x, g))}, run.reps)
    t = secs(m)
    saved = {"torch": SavedBytes.of(lambda: theirs(xr)),
             **{"ours " + s: SavedBytes.of(with_storage(s, lambda: ours(xr))) for s in ("seed", "bits")}}
    if run.gpu:
        b = 4 * n * es(dt)
        return per_contender(d, n, m, {"torch": b + 2 * n, "ours seed": b, "ours bits": b + 2 * (n // 8)},
                             lambda k, r: {"speedup dev": ratio(t["torch"], r["t"]),
                                           "speedup wall": ratio(m["torch"]["wall"], r["wall"]), "saved B": saved[k]})
    return [{"dtype": d, "numel": log2name(n), "n": n, "ms torch": ms(t["torch"]), "ms seed": ms(t["ours seed"]),
             "ms bits": ms(t["ours bits"]), "speedup seed": ratio(t["torch"], t["ours seed"]),
             "speedup bits": ratio(t["torch"], t["ours bits"]), "saved B torch": saved["torch"],
             "saved B seed": saved["ours seed"], "saved B bits": saved["ours bits"], "limit numel/8+64": n // 8 + 64,
             "seconds": t}]


# ----------------------------------------------------------------------------- the family

def family(run):
    """Each family op against torch's form of it (timm's for drop_path), float32, and the fused
    ops against torch.compile of torch's form. References: x * 2.0 (CPU, channel-wise ops and
    drop_path); copy_ (GPU, 2 streams) or torch.add(r, x, out=y) (GPU, 3 streams: fused ops)."""
    n, p, dev = 1 << run.family_size, run.p, run.device
    x, y = torch.randn(n, device=dev), torch.empty(n, device=dev)
    xv, yv, b = x.view(-1, 1024), y.view(-1, 1024), torch.randn(1024, device=dev)
    r = torch.randn(n, device=dev).view(-1, 1024)
    x3, x4, x5 = x.view(64, -1, 256), x.view(64, -1, 16, 16), x.view(64, -1, 4, 8, 8)
    da, bda = compiled(run, lambda x_, r_: r_ + TF.dropout(x_, p), lambda x_, b_, r_: r_ + TF.dropout(x_ + b_, p))

    def drop_path(a):
        return a * a.new_empty((a.shape[0],) + (1,) * (a.dim() - 1)).bernoulli_(1 - p).div_(1 - p)

    # op: (CPU label, input, ours, torch's, compiled torch's or None, reference kind)
    cases = {
        "dropout_add": ("dropout_add", xv, lambda a: F.dropout_add(a, r, p), lambda a: r + TF.dropout(a, p),
                        da and (lambda: da(xv, r)), "add"),
        "bias_dropout_add": ("bias_dropout_add", xv, lambda a: F.bias_dropout_add(a, b, r, p),
                             lambda a: r + TF.dropout(a + b, p), bda and (lambda: bda(xv, b, r)), "add"),
        "dropout1d": ("dropout1d (64,C,256)", x3, lambda a: F.dropout1d(a, p), lambda a: TF.dropout1d(a, p), None,
                      "x2"),
        "dropout2d": ("dropout2d (64,C,16,16)", x4, lambda a: F.dropout2d(a, p), lambda a: TF.dropout2d(a, p), None,
                      "x2"),
        "dropout3d": ("dropout3d (64,C,4,8,8)", x5, lambda a: F.dropout3d(a, p), lambda a: TF.dropout3d(a, p), None,
                      "x2"),
        "drop_path": ("drop_path (64,...)", x4, lambda a: F.drop_path(a, p), drop_path, None, "x2"),
        "alpha_dropout": ("alpha_dropout", x, lambda a: F.alpha_dropout(a, p, True),
                          lambda a: TF.alpha_dropout(a, p, True), None, ""),
        "feature_alpha_dropout": ("feature_alpha_dropout", x4, lambda a: F.feature_alpha_dropout(a, p, True),
                                  lambda a: TF.feature_alpha_dropout(a, p, True), None, ""),
    }
    order = list(cases)[2:6] + list(cases)[:2] + list(cases)[6:] if run.gpu else list(cases)  # GPU: by reference
    tn, rows = "torch" if run.gpu else "torch eager", []
    for op in order:
        label, inp, ours, theirs, comp, ref = cases[op]
        progress("family %s %s" % (op, log2name(n)))
        fns = {"ours": lambda f=ours, a=inp: f(a), tn: lambda f=theirs, a=inp: f(a), "torch.compile": comp}
        if run.gpu:
            ref = "add(out=)" if ref == "add" else "copy_"
            fns[ref] = (lambda: torch.add(r, xv, out=yv)) if ref == "add(out=)" else (lambda: y.copy_(x))
        elif ref == "x2":
            ref, fns["x * 2.0"] = "x * 2.0", lambda a=inp: a * 2.0
        m = run.timer.measure({k: f for k, f in fns.items() if f}, run.reps)
        t, o, c = secs(m), m["ours"]["t"], m.get("torch.compile", {}).get("t")
        if run.gpu:  # each op moves as many streams as its reference: the time ratio is the bandwidth ratio
            rows.append({"op": op, "shape": shape_name(inp), "dev us ours": us(o),
                         "wall us ours": us(m["ours"]["wall"]), "kernels ours": m["ours"]["n"],
                         "dev us torch": us(t[tn]), "wall us torch": us(m[tn]["wall"]), "dev us compile": us(c),
                         "reference": ref, "dev us ref": us(t[ref]), "vs torch": ratio(t[tn], o),
                         "vs compile": ratio(c, o), "BW vs ref": ratio(t[ref], o, 3), "kernels": raw(run, m),
                         "seconds": {k: [v["t"], v["wall"]] for k, v in m.items()}})
            continue
        leaf = inp.detach().requires_grad_()
        row = {"op": label, "numel": log2name(n), "ms ours": ms(o), "ms torch eager": ms(t[tn]),
               "ours vs eager": ratio(t[tn], o), "saved B ours": SavedBytes.of(lambda: ours(leaf)),
               "saved B torch": SavedBytes.of(lambda: theirs(leaf)), "seconds": t}
        if c is not None:
            row.update({"ms torch.compile": ms(c), "ours vs compile": ratio(c, o)})
        if ref in t:
            row.update({"ms x*2": ms(t[ref]), "ours/x*2": ratio(t[ref], o)})
        rows.append(row)
    return rows, None


# ----------------------------------------------------------------------------- per call

def per_call(run):
    """Host time per call on small float32 tensors: forward (GPU: also with seed=), and forward
    + .sum().backward(); the host times of every size come before any device time (see ORDER)."""
    p, cases = run.p, []
    for k in (8, 12, 16):
        n = 1 << k
        progress("per call %s (host time)" % log2name(n))
        x = torch.randn(n, device=run.device)
        fns = {"fwd ours": lambda x=x: F.dropout(x, p), "fwd torch": lambda x=x: TF.dropout(x, p)}
        if run.gpu:
            fns["seed ours"] = lambda x=x: F.dropout(x, p, seed=1234)
        fns.update({"f+b ours": fwd_bwd(lambda a: F.dropout(a, p), x),
                    "f+b torch": fwd_bwd(lambda a: TF.dropout(a, p), x)})
        cases.append((n, fns, run.timer.host_samples(fns, run.reps)))
    rows, h = [], "host " if run.gpu else ""
    for n, fns, samples in cases:
        if run.gpu:
            progress("per call %s (device time)" % log2name(n))
            dev = run.timer.device_times(fns)
        t = {k: statistics.median(v) for k, v in samples.items()}
        for ours, label, theirs in (("fwd ours", "forward", "fwd torch"), ("seed ours", "forward, seed=", "fwd torch"),
                                    ("f+b ours", "forward + .sum().backward()", "f+b torch")):
            if ours not in fns:
                continue
            row = {"numel": n, "pass": label} if run.gpu else {"numel": log2name(n), "n": n, "pass": label}
            row.update({h + "us ours": us(t[ours]), h + "us torch": us(t[theirs]),
                        ("ours/torch " + h).strip(): ratio(t[ours], t[theirs]),
                        "paired": round(paired_ratio(samples, ours, theirs), 2)})
            if run.gpu:
                row.update({"dev us ours": us(dev[ours]["t"]), "dev us torch": us(dev[theirs]["t"]),
                            "kernels ours": dev[ours]["n"], "kernels torch": dev[theirs]["n"],
                            "kernels": {"ours": dev[ours]["kernels"], "torch": dev[theirs]["kernels"]}})
            else:
                row["seconds"] = {"ours": t[ours], "torch": t[theirs]}
            rows.append(row)
    return rows, None


def steps(run):
    """One small call (4096 float32 elements) split into its steps, each timed alone as the
    per-call table times a call: forward with and without a leaf that requires grad,
    backward alone on a graph kept with retain_graph (from .sum(), whose gradient is an
    expanded, stride-0 tensor, and from a dense gradient), the whole call both ways; then,
    with the compiled backend, the pieces of a call: allocations, our op at each stage of its
    path, torch's native_dropout, and the backward ops on a dense and an expanded gradient."""
    p, x = run.p, torch.randn(4096, device=run.device)
    fns, ones = {}, torch.ones_like(x)
    for who, fn in (("ours", lambda a: F.dropout(a, p)), ("torch", lambda a: TF.dropout(a, p))):
        leaf = x.detach().requires_grad_()
        kept = fn(leaf)
        kept_sum = kept.sum()

        def backward(out, *grad, leaf=leaf):
            def go():
                leaf.grad = None
                out.backward(*grad, retain_graph=True)
            return go
        fns.update({(who, "forward, no grad"): lambda fn=fn: fn(x),
                    (who, "forward, input requires grad"): lambda fn=fn, leaf=leaf: fn(leaf),
                    (who, "backward alone, from .sum()"): backward(kept_sum),
                    (who, "backward alone, dense grad"): backward(kept, ones),
                    (who, "forward + .sum().backward()"): fwd_bwd(fn, x),
                    (who, "forward + .backward(dense)"): fwd_bwd(fn, x, ones)})
    progress("steps of a call (host time)")
    t = {k: statistics.median(v) for k, v in run.timer.host_samples(fns, run.reps).items()}
    rows = [{"step": s, "us ours": us(t["ours", s]), "us torch": us(t["torch", s]),
             "ours/torch": ratio(t["ours", s], t["torch", s])} for who, s in fns if who == "ours"]
    fast = _backend.FAST
    if fast is None:
        return rows, "pieces of a call: need the compiled backend"
    xg, g, ge = x.detach().requires_grad_(), torch.randn_like(x), torch.ones((), device=x.device).expand_as(x)
    bits, mask = torch.ops.dropout_ext.dropout(x, None, None, p, 0, x.dim(), 1)[1], torch.native_dropout(x, p, True)[1]
    ours_bwd, torch_bwd = torch.ops.dropout_ext.dropout_backward.default, torch.ops.aten.native_dropout_backward.default
    pieces = {"torch.empty_like(x)": lambda: torch.empty_like(x),
              "torch.empty(numel // 8, uint8)": lambda: torch.empty(x.numel() // 8, dtype=torch.uint8, device=x.device),
              "torch.mul(x, 2.0)": lambda: torch.mul(x, 2.0),
              "ours _C.dropout, save nothing": lambda: fast.dropout(x, p, 0, 0),
              "ours _C.dropout, save bits, no grad": lambda: fast.dropout(x, p, 0, 1),
              "ours _C.dropout, input requires grad": lambda: fast.dropout(xg, p, 0, 1),
              "ours F.dropout, no grad": lambda: F.dropout(x, p),
              "ours F.dropout, input requires grad": lambda: F.dropout(xg, p),
              "torch native_dropout, no grad": lambda: torch.native_dropout(x, p, True),
              "torch native_dropout, requires grad": lambda: torch.native_dropout(xg, p, True),
              "torch F.dropout, requires grad": lambda: TF.dropout(xg, p),
              "ours backward op, dense grad": lambda: ours_bwd(g, bits, p, 0, x.dim()),
              "ours backward op, expanded grad": lambda: ours_bwd(ge, bits, p, 0, x.dim()),
              "torch backward op, dense grad": lambda: torch_bwd(g, mask, 1 / (1 - p)),
              "torch backward op, expanded grad": lambda: torch_bwd(ge, mask, 1 / (1 - p))}
    progress("pieces of a call (host time)")
    t = run.timer.host_samples(pieces, run.reps)
    return rows + [{"piece": k, "us": us(statistics.median(v))} for k, v in t.items()], None


# ----------------------------------------------------------------------------- layouts, shards

def layout(run):
    """dropout, dropout2d (2-D layouts as 4-D views (8, R/8, 8, C/8)) and bias_dropout_add (its
    residual in the input's layout) on each layout, forward and forward + backward(grad with
    the output's layout; only the input requires grad); ours also on the input's contiguous
    copy (vs contig); GPU: beside a contiguous copy_ of the same numel."""
    shape4, square, sliced = LAYOUT_SHAPES[run.layout_scale]
    p, dev = run.p, run.device
    inputs = {"contiguous": torch.randn(shape4, device=dev),
              "channels_last": torch.randn(shape4, device=dev).contiguous(memory_format=torch.channels_last),
              "transposed": torch.randn(square, square, device=dev).t(),
              "stepped slice": torch.randn(sliced, device=dev)[:, ::2]}

    def as4d(t):
        return t if t.dim() == 4 else t.unflatten(0, (8, t.shape[0] // 8)).unflatten(2, (8, t.shape[1] // 8))

    ops = [("dropout", 2, lambda x: (x,), lambda x: F.dropout(x, p), lambda x: TF.dropout(x, p)),
           ("dropout2d", 2, lambda x: (as4d(x),), lambda x: F.dropout2d(x, p), lambda x: TF.dropout2d(x, p)),
           ("bias_dropout_add", 3, lambda x: (x, torch.randn(x.shape[-1], device=dev), torch.randn_like(x)),
            lambda x, b, r: F.bias_dropout_add(x, b, r, p), lambda x, b, r: r + TF.dropout(x + b, p))]
    if run.gpu:
        src = torch.randn(inputs["contiguous"].numel(), device=dev)
        dst = torch.empty_like(src)
    rows = []
    for op, streams, prepare, ours, theirs in ops:
        progress("layouts %s (%s)" % (op, run.layout_scale))
        fwd, fb, meta = ({"copy_": lambda: dst.copy_(src)} if run.gpu else {}), {}, {}
        for lay, x in inputs.items():
            args = prepare(x)
            cargs, meta[lay], g = (args[0].contiguous(),) + args[1:], args[0], torch.randn_like(ours(*args))
            for name, fn, a in (("ours ", ours, args), ("torch ", theirs, args), ("contig ", ours, cargs)):
                if name != "contig " or lay != "contiguous":
                    fwd[name + lay] = lambda fn=fn, a=a: fn(*a)
                    fb[name + lay] = fwd_bwd(lambda v, fn=fn, a=a: fn(v, *a[1:]), a[0],
                                             g.contiguous() if a is cargs else g)
        mf, mb = run.timer.measure(fwd, run.reps), run.timer.measure(fb, run.reps)
        for lay, x in meta.items():
            c = "ours " if lay == "contiguous" else "contig "
            row = {"op": op, "layout": lay, "shape": shape_name(x), "strides": ",".join(map(str, x.stride()))}
            for tag, m in (("fwd", mf), ("f+b", mb)):
                o, th = m["ours " + lay], m["torch " + lay]
                row.update({"%s %s ours" % (tag, run.unit): run.fmt(o["t"]),
                            "%s %s torch" % (tag, run.unit): run.fmt(th["t"]),
                            tag + " vs torch": ratio(th["t"], o["t"]),
                            tag + " vs contig": ratio(m[c + lay]["t"], o["t"])})
                if run.gpu:
                    if tag == "fwd":
                        row["fwd BW vs copy_"] = ratio(streams * m["copy_"]["t"], 2 * o["t"], 3)
                    row.update({tag + " wall us ours": us(o["wall"]), tag + " wall us torch": us(th["wall"])})
            row[run.raw_key] = {"forward": raw(run, mf, lay), "forward_backward": raw(run, mb, lay)}
            rows.append(row)
    return rows, None


def shard(run):
    """The global-index path against the plain path on the same local (R, C) float32 tensor:
    a column shard (global (R, 2C), offset (0, C)) and a row shard (global (2R, C), offset (R, 0))."""
    (R, C), p, dev = run.shard, run.p, run.device
    x = torch.randn(R, C, device=dev)
    g, b, res = torch.randn_like(x), torch.randn(C, device=dev), torch.randn_like(x)
    shards = {"plain": {}, "column shard": dict(global_shape=(R, 2 * C), global_offset=(0, C)),
              "row shard": dict(global_shape=(2 * R, C), global_offset=(R, 0))}
    ops = {"dropout": lambda a, kw: F.dropout(a, p, **kw),
           "bias_dropout_add": lambda a, kw: F.bias_dropout_add(a, b, res, p, **kw)}
    rows = []
    for op, fn in ops.items():
        progress("shards %s" % op)
        mf = run.timer.measure({s: (lambda kw=kw: fn(x, kw)) for s, kw in shards.items()}, run.reps)
        mb = run.timer.measure({s: fwd_bwd(lambda a, kw=kw: fn(a, kw), x, g) for s, kw in shards.items()}, run.reps)
        for s in ("column shard", "row shard"):
            row = {"op": op, "shard": s, "local shape": shape_name(x),
                   "global shape": "x".join(map(str, shards[s]["global_shape"]))}
            if not run.gpu:
                row["offset"] = ",".join(map(str, shards[s]["global_offset"]))
            for tag, m in (("fwd", mf), ("f+b", mb)):
                row.update({"%s %s plain" % (tag, run.unit): run.fmt(m["plain"]["t"]),
                            "%s %s global" % (tag, run.unit): run.fmt(m[s]["t"]),
                            tag + " overhead %": round((m[s]["t"] / m["plain"]["t"] - 1) * 100, 1)})
            if run.gpu:
                row.update({"fwd wall us plain": us(mf["plain"]["wall"]), "fwd wall us global": us(mf[s]["wall"])})
            row[run.raw_key] = {"forward": raw(run, mf), "forward_backward": raw(run, mb)}
            rows.append(row)
    return rows, None


# ----------------------------------------------------------------------------- fused norm

# (rows, hidden) of the fused norm table per mode
NORM_SHAPES = {"quick": ((256, 768), (64, 4096)), "dry": ((256, 768), (64, 4096)),
               "default": ((8192, 768), (4096, 4096), (1024, 16384)),
               "full": ((8192, 768), (4096, 4096), (1024, 16384))}


def norm(run):
    """dropout_add_layer_norm (and, with --full or on the GPU, dropout_add_rms_norm) against
    torch eager's norm(r + dropout(x)), torch.compile of it, our dropout_add followed by torch's
    norm, and torch's norm(r + x) with no dropout at all; forward, and forward + backward(grad)
    with x, r, weight and bias leaves. GPU: also copy_ of x, for the bandwidth of the 4 streams
    (x, r read; out, h written) the fused forward must move."""
    p, dev, rows = run.p, run.device, []
    norms = ("layer", "rms") if run.gpu or run.mode == "full" else ("layer",)
    for kind, d, (n_rows, hidden) in itertools.product(norms, run.dtypes, NORM_SHAPES[run.mode]):
        dt = DTYPES[d]
        progress("norm %s %s %dx%d" % (kind, d, n_rows, hidden))
        x, r = (torch.randn(n_rows, hidden, dtype=dt, device=dev) for _ in range(2))
        w, b = torch.ones(hidden, dtype=dt, device=dev), torch.zeros(hidden, dtype=dt, device=dev)
        g, y = torch.randn_like(x), torch.empty_like(x)
        if kind == "layer":
            def tnorm(h, w, b):
                return TF.layer_norm(h, (hidden,), w, b)

            def fused(x, r, w, b):
                return F.dropout_add_layer_norm(x, r, w, b, p)
        else:
            def tnorm(h, w, b):
                return TF.rms_norm(h, (hidden,), w)

            def fused(x, r, w, b):
                return F.dropout_add_rms_norm(x, r, w, p)
        comps = {"torch eager": lambda x, r, w, b: tnorm(r + TF.dropout(x, p), w, b),
                 "ours unfused": lambda x, r, w, b: tnorm(F.dropout_add(x, r, p), w, b),
                 "no dropout": lambda x, r, w, b: tnorm(r + x, w, b), "ours fused": fused}
        comp, = compiled(run, comps["torch eager"])
        if comp:
            comps["torch.compile"] = comp
        leaves = [t.detach().requires_grad_() for t in (x, r, w, b)]

        def step(fn):
            def go():
                for t in leaves:
                    t.grad = None
                fn(*leaves).backward(g)
            return go

        fwd = {k: (lambda f=f: f(x, r, w, b)) for k, f in comps.items()}
        if run.gpu:
            fwd["copy_"] = lambda: y.copy_(x)
        for label, fns in (("forward", fwd), ("forward + backward", {k: step(f) for k, f in comps.items()})):
            m = run.timer.measure(fns, run.reps)
            t, o = secs(m), m["ours fused"]["t"]
            row = {"norm": kind, "dtype": d, "rows x hidden": "%dx%d" % (n_rows, hidden), "pass": label}
            row.update({run.unit + " " + k: run.fmt(v) for k, v in t.items()})
            row.update({"vs " + k: ratio(v, o) for k, v in t.items() if k not in ("ours fused", "copy_")})
            if "copy_" in t:  # 4 streams against copy_'s 2
                row["BW vs copy_"] = ratio(2 * t["copy_"], o, 3)
            if label == "forward + backward":
                with_leaves = [t.detach().requires_grad_() for t in (x, r, w, b)]
                row.update({"saved B " + k: SavedBytes.of(lambda f=f: f(*with_leaves))
                            for k, f in comps.items() if k != "torch.compile"})
            row[run.raw_key] = raw(run, m)
            rows.append(row)
    return rows, None


# ----------------------------------------------------------------------------- CPU only: ISA, curve

def isa(run):
    """Forward of each CPU path (ISA) in one interleaved run, at 1 thread and the default count."""
    isas, default_threads, old = _backend.cpu_isas_supported(), torch.get_num_threads(), _backend.cpu_isa()

    def one(run, d, n):
        x, gbs = torch.randn(n, dtype=DTYPES[d]), 2 * n * es(DTYPES[d]) / 1e9

        def on(name):
            def go():
                _backend.cpu_isa(name)
                return F.dropout(x, run.p)
            return go

        t = secs(run.timer.measure({"x * 2.0": lambda: x * 2.0, **{i: on(i) for i in isas}}, run.reps))
        row = {"dtype": d, "numel": log2name(n), "threads": torch.get_num_threads(),
               "x*2 GB/s": round(gbs / t["x * 2.0"], 2), "seconds": t}
        for i in isas:
            row.update({i + " GB/s": round(gbs / t[i], 2), i + "/x*2": ratio(t["x * 2.0"], t[i])})
        return [row]

    rows = []
    try:
        for threads in sorted({1, default_threads}):
            torch.set_num_threads(threads)
            rows += over_sizes(run, "ISA, %d thread(s)," % threads, one)[0]
    finally:
        _backend.cpu_isa(old)
        torch.set_num_threads(default_threads)
    return rows, None


def curve(run):
    """float32 forward GB/s against size (2^14 to 2^26 with --full), for the plot."""
    rows = []
    for n in [1 << k for k in range(14, 27, 2)] if run.mode == "full" else run.sizes:
        progress("curve %s" % log2name(n))
        t = secs(run.timer.measure(forward_contenders(run, torch.randn(n)), run.reps))
        rows.append({"n": n, **{k: round(2 * n * 4 / v / 1e9, 2) for k, v in t.items()}})
    return rows, None


def plot(run, rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name in [k for k in rows[0] if k != "n"]:
        ax.plot([c["n"] for c in rows], [c[name] for c in rows], marker="o", label=name)
    ax.set(xscale="log", yscale="log", xlabel="elements (float32)", ylabel="GB/s (2 x numel x 4 bytes / time)",
           title="CPU forward dropout, p=%g, %d threads, %s" % (run.p, torch.get_num_threads(), allocator_in_use()))
    ax.set_xscale("log", base=2)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- GPU only: the unroll sweep

def tunable_ops(cuda):
    """torch.ops.dropout_ext_testing where its kernels follow set_cuda_tuning(unroll,
    persistent), else None: on a GPU, a build with DROPOUT_EXT_TESTING=cuda (its tunable CUDA
    launcher, as bench/gpu_check.sh builds); in the dry run, the emulator. unroll = 8-element
    units per thread per iteration of the flat forward kernel (1, 2 or 4); persistent = the
    16-bit kernels run only the blocks the GPU holds at once. The product's configuration is
    fixed at compile time."""
    ops = _backend.testing_ops()
    return None if ops is None or (cuda and not _backend.testing_has_cuda()) else ops


def unroll(run):
    """The flat forward kernel at each unroll (and, 16-bit types, each grid), plain and writing
    the keep bits, against copy_ (device time): the testing namespace's tunable kernels."""
    ops = tunable_ops(run.cuda)
    if ops is None:
        why = "unroll sweep skipped: no tunable kernels (a build with DROPOUT_EXT_TESTING=cuda, or =1 for a dry run)"
        progress(why)
        return [], why
    original = ops.cuda_tuning()

    def one(run, d, n):
        dt = DTYPES[d]
        x = torch.randn(n, dtype=dt, device=run.device)
        y, xr, b = torch.empty_like(x), x.detach().requires_grad_(), 2 * n * es(dt)
        # the resident-blocks grid applies to the 16-bit kernels only
        variants = [(u, g) for u in (1, 2, 4) for g in ((False, True) if es(dt) == 2 else (original[1],))]

        def tuned(u, g, a):
            def go():
                ops.set_cuda_tuning(u, g)
                return F.dropout(a, run.p)
            return go

        fns = {"copy_": lambda: y.copy_(x)}
        for u, g in variants:
            fns["unroll %d grid %d" % (u, g)] = tuned(u, g, x)
            fns["unroll %d grid %d +bits" % (u, g)] = with_storage("bits", tuned(u, g, xr))
        with _backend.use("emulator"):  # the testing namespace: its CUDA kernels are the tunable ones
            m = run.timer.measure(fns, run.reps)
        rows = []
        for u, g in variants:
            a, ab, bw_copy = m["unroll %d grid %d" % (u, g)], m["unroll %d grid %d +bits" % (u, g)], b / m["copy_"]["t"]
            rows.append({"dtype": d, "numel": log2name(n), "unroll": u,
                         "grid": "resident" if g and es(dt) == 2 else "cover",
                         "dev us": us(a["t"]), "wall us": us(a["wall"]), "BW vs copy_": ratio(b / a["t"], bw_copy, 3),
                         "dev us +bits": us(ab["t"]), "wall us +bits": us(ab["wall"]),
                         "BW vs copy_ +bits": ratio((b + n // 8) / ab["t"], bw_copy, 3),
                         "dev us copy_": us(m["copy_"]["t"]), "default": (u, g) == tuple(original)})
        return rows

    try:
        rows = over_sizes(run, "unroll", one)[0]
    finally:
        ops.set_cuda_tuning(*original)
    return rows, ("unroll = 8-element units per thread per iteration of the flat forward kernel (product: %d);"
                  " grid (16-bit types, whose kernel loads one iteration ahead): 'resident' = only the blocks the"
                  " GPU holds at once, each looping over the tensor, 'cover' = one block per 256 x unroll units"
                  % original[0])


# ----------------------------------------------------------------------------- the registry

GBS_NOTE = "GB/s = 2 x numel x element size / median time; ours/X = X's time / ours (higher is better)."
LAYOUT_NOTE = ("dropout2d sees 2-D layouts as 4-D views (8, R/8, 8, C/8); bias_dropout_add's residual has the input's"
               " layout; only the input requires grad.")
SHARD_NOTE = ("global = the same local tensor with global_shape= and global_offset= (its slice of the full tensor's"
              " mask); float32, seed=None")
CPU_FORWARD_COLUMNS = ["dtype", "numel", "GB/s x*2", "GB/s mul(out=)", "GB/s torch", "GB/s compile", "GB/s ours",
                       "ours/x*2", "ours/mul(out=)", "ours/torch", "ours/compile", "faults/call x*2",
                       "faults/call ours"]
# name: (runner, {bench: [(title, columns, notes)]}); columns: a list, a test of a row's key,
# or None for the rows' own keys (timing.table). Titles are formatted with the run's p,
# allocator, threads, family (numel) and layout (scale). The GPU bench prints its tables in
# the reverse of this order, so that the headline tables come last.
TABLES = {
    "forward": (lambda run: over_sizes(run, "forward", forward_rows), {
        "cpu": [("Forward, p={p:g}, {allocator} ({threads} threads)", CPU_FORWARD_COLUMNS,
                 [GBS_NOTE, "Goals: float32 ours/x*2 >= 0.8 at 2^24 and 2^26, >= 0.5 at 2^20; bfloat16 >= 0.6 at 2^24;"
                  " ours/torch >= 10.", "faults/call: minor page faults per call (a fresh output from the allocator;"
                  " mul(out=) has none)."])],
        "gpu": [("(a) Forward, p={p:g}", None,
                 ["ours/copy_ BW: this contender's bandwidth (bytes it must move / device time) over copy_'s;"
                  " vs torch (dev) = torch's device time / this one's.",
                  "Goal: ours and ours +bits >= 0.95 of copy_ bandwidth, float32 and bfloat16, 2^24 and 2^28."])]}),
    "backward": (lambda run: over_sizes(run, "forward+backward", backward_rows), {
        "cpu": [("Forward + backward, and bytes saved for backward", None,
                 ["Forward + backward(grad) of dropout on a leaf; seed/bits = dropout_ext.set_backward_storage.",
                  "Goals: speedup >= 10 at 2^24 (float32); bytes saved for backward <= numel/8 + 64."])],
        "gpu": [("(b) Forward + backward, p={p:g}", None,
                 ["Forward + backward(grad) on a leaf (grad made beforehand; .grad dropped between calls);"
                  " speedup = torch's time / this one's.", "Goals: device time >= 1.15x torch at 2^24 and 2^28; wall"
                  " >= 1.0x at 2^24, >= 1.1x at 2^28; saved B <= numel/8 + 64."])]}),
    "per_call": (per_call, {
        "cpu": [("Per call (host time), float32, p={p:g}", None,
                 ["Host time per call (float32, mean of a burst of calls per sample, median of samples);"
                  " ours/torch = ours' time / torch's (lower is better); paired = the median over rounds of ours /"
                  " torch's in the same round. Goal: <= 1.0."])],
        "gpu": [("(d) Per call on small tensors, p={p:g}", None,
                 ["float32; host time per call = a burst of calls ended by one synchronize, per call (lower is"
                  " better), median of twice the table's rounds (at least 41); ours/torch host = ours / torch's;"
                  " paired = the median over rounds of ours / torch's in the same round.",
                  "Goal: <= 1.0 (at 4096 elements)."])]}),
    "steps": (steps, {b: [("Steps of a small call (host time), float32, 4096 elements, p={p:g}",
                           lambda k: k in ("step", "us ours", "us torch", "ours/torch"),
                           ["Each step timed alone, as the per-call table times a call; backward alone runs on a"
                            " graph kept with retain_graph."]),
                          ("Pieces of a call (host time), float32, 4096 elements", lambda k: k in ("piece", "us"),
                           ["Each piece timed alone; the backward ops called through torch.ops."])]
                      for b in ("cpu", "gpu")}),
    "family": (family, {
        "cpu": [("Dropout family, float32, {family} elements, p={p:g}",
                 ["op", "numel", "ms ours", "ms torch eager", "ms torch.compile", "ms x*2", "ours vs eager",
                  "ours vs compile", "ours/x*2", "saved B ours", "saved B torch"],
                 ["ours vs X = X's time / ours. torch eager of dropout_add = r + dropout(x); of bias_dropout_add ="
                  " r + dropout(x + b); of drop_path = timm's x * bernoulli((N,1,1,1)) / keep.",
                  "Goal: alpha_dropout >= 10x torch. saved B: bytes kept for backward with the input a leaf"
                  " (default storage: bits)."])],
        "gpu": [("(c) Dropout family, float32, p={p:g}", None,
                 ["Device times; vs X = X's device time / ours; BW vs ref: our bandwidth over the reference's (copy_:"
                  " 2 streams; torch.add(r, x, out=y): 3 streams). torch for drop_path is timm's form.",
                  "Goals: channel-wise and drop_path BW vs copy_ >= 0.95; dropout_add and bias_dropout_add BW vs"
                  " add(out=) >= 0.95 and vs compile >= 1.1; alpha_dropout vs torch >= 1.5."])]}),
    "layout": (layout, {
        "cpu": [("Layouts, float32, p={p:g} ({layout})", None,
                 ["vs torch = torch's time / ours; vs contig = ours on the input's contiguous copy / ours on this"
                  " layout (1.0 = as fast as contiguous).", LAYOUT_NOTE + " Goals: channels_last and transposed vs"
                  " contig >= 0.8 and vs torch >= 10; stepped slice vs contig >= 0.5."])],
        "gpu": [("(e) Layouts, forward, p={p:g}", lambda k: not k.startswith("f+b") and k not in HIDDEN,
                 ["float32, device times unless 'wall'; vs torch = torch's time / ours; vs contig = ours on the"
                  " input's contiguous copy / ours on this layout; BW vs copy_: our bandwidth over a contiguous"
                  " copy_ of the same numel (bias_dropout_add counted as 3 streams).", LAYOUT_NOTE + " Goals:"
                  " channels_last and transposed vs contig >= 0.9 and faster than torch; >= 0.95 of copy_"
                  " (0.9 permuted)."]),
                ("(e) Layouts, forward + backward(grad), p={p:g}",
                 lambda k: k in ("op", "layout", "shape") or k.startswith("f+b"), [])]}),
    "unroll": (unroll, {"gpu": [("(f) Forward by work size per thread (device time), p={p:g}", None, [])]}),
    "shard": (shard, {
        "cpu": [("Shards: global-index path against the plain path, float32, p={p:g}", None,
                 [SHARD_NOTE + ". Goal: overhead <= 10%."])],
        "gpu": [("(g) Shards: the global-index path against the plain one, p={p:g}", None,
                 [SHARD_NOTE + ", device time unless 'wall'. Goal: overhead <= 10%."])]}),
    "norm": (norm, {
        "cpu": [("Fused dropout + add + norm, p={p:g}", lambda k: not k.startswith("saved"),
                 ["ms per call; vs X = X's time / ours fused. torch eager = norm(r + dropout(x)); ours unfused ="
                  " norm(dropout_add(x, r)); no dropout = norm(r + x). Forward + backward(grad) with x, r, weight"
                  " and bias leaves.", "Goals (forward + backward, float32 and bfloat16): vs torch eager >= 3,"
                  " vs torch.compile >= 2, vs ours unfused >= 1.3, vs no dropout >= 1.0."]),
                ("Fused norm: bytes saved for backward", lambda k: k in ("norm", "dtype", "rows x hidden")
                 or k.startswith("saved"), ["Goal: ours fused <= numel/8 + 8 per row + 64 beside h."])],
        "gpu": [("(h) Fused dropout + add + norm, p={p:g}", lambda k: not k.startswith("saved"),
                 ["Device times; vs X = X's device time / ours fused; BW vs copy_: our bandwidth over copy_'s"
                  " (4 streams against 2).", "Goals (bfloat16): forward BW vs copy_ >= 0.85; forward + backward"
                  " vs torch eager >= 2, vs torch.compile >= 1.1."])]}),
    "isa": (isa, {"cpu": [("Forward by CPU path and thread count", None, [])]}),
    "curve": (curve, {}),  # the plot's figures, no table
}


# ----------------------------------------------------------------------------- main

def configure(bench, doc, argv):
    """The run: the parsed arguments and what they imply (mode, sizes, tables, timer)."""
    gpu = bench == "gpu"
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer sizes and rounds" + (
        ", a smaller model" if gpu else ": tiny sizes, 3 rounds, a smoke test in seconds"))
    mode.add_argument("--full", action="store_true", help="every table (the default)" if gpu else
                      "the full sweep (full sizes, ISA rows, plot), written to docs/")
    if gpu:
        ap.add_argument("--device", default="cuda", help="cpu: a dry run of every code path on tiny tensors")
    ap.add_argument("--only", help="comma list of tables: " + ",".join(ORDER[bench]))
    ap.add_argument("--skip", default="", help="comma list of tables to skip")
    ap.add_argument("--no-family", action="store_true", help="skip the family table (same as --skip family)")
    ap.add_argument("--sizes", help="log2 sizes of the forward, forward+backward%s tables (e.g. %s)" % (
        (" and unroll", "24,28") if gpu else ("", "20,24")))
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--reps", type=int, help="interleaved rounds per median (default 21)")
    ap.add_argument("--p", type=float, default=0.1 if gpu else 0.5, help="dropout probability (default %(default)s)")
    ap.add_argument("--family-size", type=int, help="log2 numel of the family table (at least 14)")
    ap.add_argument("--layout-scale", choices=sorted(LAYOUT_SHAPES), help="layout table shapes: full = (64,256,32,32),"
                    " 4096^2 transposed, (8192,4096)[:, ::2]; small = 2^20 elements; tiny = 2^14")
    ap.add_argument("--shard-shape", help="local shape RxC of the shard table, e.g. 2048x2048")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile contenders")
    ap.add_argument("--budget", type=float, default=240 if gpu else None,
                    help="seconds: tables not started by then are skipped" + (" (default 240)" if gpu else ""))
    ap.add_argument("--out", default=os.environ.get("OUT") if gpu else None,
                    help="output folder (default: %s)" % ("$OUT or bench/results" if gpu else
                                                          "docs/ with --full, else bench/results"))
    if not gpu:
        ap.add_argument("--no-plot", action="store_true")
        ap.add_argument("--jemalloc", action="store_true", help="run under jemalloc, freed pages kept: the bench"
                        " restarts with LD_PRELOAD=libjemalloc.so.2 MALLOC_CONF=" + JEMALLOC_CONF)
        ap.add_argument("--name", help="output file stem (default: cpu_bench with --full, else cpu)")
    ap.set_defaults(device="cpu")
    run = ap.parse_args(argv)
    run.gpu, run.cuda = gpu, run.device.startswith("cuda")
    if run.cuda and not torch.cuda.is_available():
        sys.exit("bench_gpu.py: no CUDA device (use --device cpu for a dry run)")
    run.mode = ("quick" if run.quick else "default" if run.cuda else "dry") if gpu else \
        "quick" if run.quick else "full" if run.full else "default"
    sizes, reps, family_size, layout_scale, run.shard, compile_ = MODES[bench, run.mode]
    run.family_size = max(14, run.family_size) if run.family_size else family_size  # views need a multiple of 2^14
    run.layout_scale = run.layout_scale or layout_scale
    if run.shard_shape:
        run.shard = tuple(int(v) for v in run.shard_shape.lower().split("x"))
    run.sizes = [1 << int(s) for s in (run.sizes.split(",") if run.sizes else sizes)]
    run.dtypes = run.dtypes.split(",")
    for d in run.dtypes:
        if d not in DTYPES:
            sys.exit("unknown dtype %r (choose from %s)" % (d, ", ".join(DTYPES)))
    run.reps = run.reps or reps
    wanted = run.only.split(",") if run.only else ORDER[bench] if gpu or run.mode == "full" else ORDER["cpu"][:6]
    for s in wanted:
        if s not in ORDER[bench]:
            sys.exit("unknown table %r (choose from %s)" % (s, ", ".join(ORDER[bench])))
    skip = set(run.skip.split(",")) | ({"family"} if run.no_family else set())
    run.sections = [s for s in ORDER[bench] if s in wanted and s not in skip]
    run.with_compile = compile_ and not run.no_compile
    run.compile_backend = "eager" if gpu and not run.cuda else "inductor"  # the dry run compiles in seconds
    run.timer = GpuTimer(run.cuda, 10 if run.cuda else 2) if gpu else CpuTimer()
    run.unit, run.fmt, run.raw_key = ("dev us", us, "kernels") if gpu else ("ms", ms, "seconds")
    return run


class Stopped(Exception):
    pass


def on_term(signum, frame):  # `timeout` ran out: keep what is measured so far
    raise Stopped()


def main(bench, doc, argv=None):
    """Runs the CPU bench (bench="cpu": tables printed as they are measured) or the GPU bench
    (bench="gpu": a time budget, a failing table reported in place of its rows, the JSON
    written after each table, tables printed at the end)."""
    t_start = time.time()
    run = configure(bench, doc, argv)
    gpu, p = run.gpu, run.p
    if not gpu and run.jemalloc and allocator_in_use() != "jemalloc":
        path = find_jemalloc()
        if os.environ.get("BENCH_JEMALLOC_PRELOADED"):  # restarted already, and jemalloc is still not in use
            sys.exit("--jemalloc: LD_PRELOAD=%s did not take effect" % path)
        if path is None:
            sys.exit("--jemalloc: libjemalloc.so.2 not found (Debian/Ubuntu: apt-get install libjemalloc2; or set"
                     " JEMALLOC_PATH=/path/to/libjemalloc.so.2)")
        env = dict(os.environ, LD_PRELOAD=(path + " " + os.environ.get("LD_PRELOAD", "")).strip(),
                   MALLOC_CONF=JEMALLOC_CONF, BENCH_JEMALLOC_PRELOADED="1")
        argv = sys.argv[1:] if argv is None else argv
        os.execve(sys.executable, [sys.executable, os.path.join(HERE, "bench_cpu.py"), *argv], env)
    quiet_torch_logs()
    info = {"mode": run.mode, "torch": torch.__version__, "dropout_ext": getattr(dropout_ext, "__version__", "?"),
            "backends": list(dropout_ext.compiled_backends()), "p": p, "reps": run.reps,
            "backward_storage_default": dropout_ext.backward_storage()}
    if gpu:
        info.update(device=torch.cuda.get_device_name() if run.cuda else "cpu (dry run: timings mean nothing)",
                    cuda=torch.version.cuda, profile_calls=run.timer.profile_calls, compile_backend=run.compile_backend)
        out_dir, stem, txt_name = run.out or os.path.join(HERE, "results"), "gpu", "gpu_bench.txt"
    else:
        info.update(cpu=cpu_model(), threads=torch.get_num_threads(), cpu_isa=_backend.cpu_isa(),
                    allocator=allocator_in_use(), malloc_conf=os.environ.get("MALLOC_CONF"),
                    loadavg_start=loadavg())
        out_dir = run.out or os.path.join(os.path.dirname(HERE) if run.mode == "full" else HERE,
                                          "docs" if run.mode == "full" else "results")
        stem = run.name or ("cpu_bench" if run.mode == "full" else "cpu")
        txt_name = stem + ".txt"
    result = {"info": info}
    os.makedirs(out_dir, exist_ok=True)
    json_path, txt_path = os.path.join(out_dir, stem + ".json"), os.path.join(out_dir, txt_name)
    fmt = dict(p=p, allocator=info.get("allocator"), threads=info.get("threads"),
               family=log2name(1 << run.family_size), layout=run.layout_scale + " sizes" + (
                   "" if run.layout_scale == "full" else ", --full runs the full ones"))
    section_seconds, rep, done = info.setdefault("section_seconds", {}), Report(), {}

    def save():
        info["seconds"] = round(time.time() - t_start, 1)
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1, default=str)

    def show(name):
        rows, note = done[name]
        for title, cols, notes in TABLES[name][1].get(bench, []):
            rep.section(title.format(**fmt), rows, cols, ([note] if note else []) + notes)

    if gpu:
        signal.signal(signal.SIGTERM, on_term)
    else:
        rep.add("dropout_ext CPU bench (%s mode): %s, %d threads, torch %s, dropout_ext %s, ISA %s, allocator %s,"
                " p=%g, median of %d interleaved rounds" % (run.mode, info["cpu"], info["threads"], info["torch"],
                                                            info["dropout_ext"], info["cpu_isa"], info["allocator"], p,
                                                            run.reps))
        if run.reps < MIN_REPS:
            rep.add("(only %d rounds: a smoke test, not a measurement, which takes >= %d)" % (run.reps, MIN_REPS))
    stopped = False
    for name in run.sections:
        if stopped:
            break
        elapsed, t0 = time.time() - t_start, time.time()
        if run.budget is not None and elapsed > run.budget:
            done[name] = ([], "skipped: the time budget (--budget %.0f s) was spent after %.0f s"
                          % (run.budget, elapsed))
            progress("%s skipped (time budget)" % name)
            continue
        try:
            done[name] = TABLES[name][0](run)
        except Stopped:
            stopped, done[name] = True, ([], "stopped by SIGTERM (the caller's time limit) while measuring")
            progress("%s stopped by SIGTERM" % name)
        except Exception as e:  # noqa: BLE001 - on the GPU, one failing table must not lose the others
            if not gpu:
                raise
            traceback.print_exc()
            done[name] = ([], "FAILED: %r (traceback on stderr)" % e)
        section_seconds[name] = round(time.time() - t0, 1)
        if gpu:
            if run.cuda:
                torch.cuda.empty_cache()
            result[name] = {"rows": done[name][0], "note": done[name][1], "seconds": section_seconds[name]}
            save()
        else:
            result[name] = done[name][0]
            show(name)

    if gpu:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        info["profile_mode"] = run.timer.profile_mode
        rep.add("\nGPU bench: %(device)s, torch %(torch)s (CUDA %(cuda)s), dropout_ext %(dropout_ext)s, p=%(p)g,"
                " median of %(reps)d interleaved rounds, device time over %(profile_calls)d profiled calls" % info)
        for name in reversed(TABLES):
            if name in done:
                show(name)
        info["seconds"] = round(time.time() - t_start, 1)
        rep.add("\nGPU bench took %.0f s; figures: %s" % (info["seconds"], json_path))
    else:
        png = None
        if "curve" in done and not run.no_plot:
            png = plot(run, done["curve"][0], os.path.join(out_dir, stem + ".png"))
        info["loadavg_end"] = loadavg()
        rep.add("\nbench took %.0f s (%s; load average %s at start, %s at end)" % (
            time.time() - t_start, ", ".join("%s %.0f s" % kv for kv in section_seconds.items()),
            info["loadavg_start"], info["loadavg_end"]))
    save()
    with open(txt_path, "w") as f:
        f.write(rep.text())
    if not gpu:
        print("figures: %s, tables: %s%s" % (json_path, txt_path, ", plot: " + png if png else ""))
    return result
