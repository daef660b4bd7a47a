"""CPU benchmark of dropout_ext against torch (SPEC section 5).

  python bench/bench_cpu.py            headline tables, about 2 minutes on 2 cores
  python bench/bench_cpu.py --full     the full sweep with the issues' exact shapes, per-ISA
                                       rows, the plot; writes docs/cpu_bench.{txt,json,png}
  python bench/bench_cpu.py --quick    seconds: tiny sizes, 3 reps (a smoke test, not a measurement)

Every figure is a median of interleaved rounds (rotating order, >= 20 rounds except in
--quick) in one process, with torch's default thread count. Forward throughput counts
2 x numel x element size bytes (one read, one write) for every contender, so GB/s ratios
are time ratios; `x * 2.0` is the memory ceiling under the same allocator (it pays the
same page faults for a fresh output), `mul(out=)` the ceiling without page faults. With
jemalloc installed (Debian/Ubuntu: libjemalloc2) the forward table is measured again in a
child process with jemalloc preloaded (--no-jemalloc to skip).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (JEMALLOC_CONF, MIN_REPS, Report, allocator_in_use, cpu_model, faults_per_call,  # noqa: E402
                    find_jemalloc, fresh_compile, fwd_bwd, interleaved, interleaved_samples, layout_contenders,
                    loadavg, log2name, paired_ratio, progress, quiet_torch_logs, ratio, reset_compiled, saved_bytes, shape_name, shard_contenders, storage_contenders, with_storage)

import dropout_ext  # noqa: E402
from dropout_ext import _backend  # noqa: E402
from dropout_ext import functional as F  # noqa: E402

TF = torch.nn.functional
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
P = 0.5  # --p
SECTIONS = ("forward", "backward", "family", "per_call", "layout", "shard", "isa", "curve")

# What each mode measures. Sizes are log2 element counts unless said.
MODES = {
    "quick": dict(sizes=[12, 14], reps=3, family=14, per_call=[8, 12, 16], layout="tiny", shard=(64, 128),
                  compile=False, sections=("forward", "backward", "family", "per_call", "layout", "shard")),
    "default": dict(sizes=[20, 24], reps=21, family=22, per_call=[8, 12, 16], layout="small", shard=(2048, 2048),
                    compile=True, sections=("forward", "backward", "family", "per_call", "layout", "shard")),
    "full": dict(sizes=[20, 24, 26], reps=21, family=24, per_call=[8, 12, 16], layout="full", shard=(8192, 2048),
                 compile=True, sections=SECTIONS),
}

# Issue 11's layouts, (contiguous 4-D, channels_last 4-D, transposed square, stepped slice
# x[:, ::2] of (2R, R)), at three scales; every input of one scale has the same numel.
LAYOUT_SHAPES = {
    "full": ((64, 256, 32, 32), 4096, (8192, 4096)),
    "small": ((16, 64, 32, 32), 1024, (2048, 1024)),
    "tiny": ((4, 16, 16, 16), 128, (256, 128)),
}


def gbs(n, dtype, seconds):
    return round(2 * n * torch.empty((), dtype=dtype).element_size() / seconds / 1e9, 2)


def ms(seconds):
    return None if seconds is None else round(seconds * 1e3, 3 if seconds < 1e-2 else 2)


def us(seconds):
    return None if seconds is None else round(seconds * 1e6, 1)


# ----------------------------------------------------------------------------- forward

def forward_contenders(x, with_compile, with_torch=True):
    y = torch.empty_like(x)
    fns = {
        "x * 2.0": lambda: x * 2.0,
        # the same multiply into a tensor made once: no page faults, pure bandwidth
        "mul(out=)": lambda: torch.mul(x, 2.0, out=y),
        "torch": lambda: TF.dropout(x, P),
        "ours": lambda: F.dropout(x, P),
    }
    if not with_torch:
        del fns["torch"]
    if with_compile:
        reset_compiled()
        compiled = fresh_compile(lambda t: TF.dropout(t, P))
        fns["torch.compile"] = lambda: compiled(x)
    return fns


def bench_forward(sizes, dtypes, reps, with_compile, with_torch=True):
    rows = []
    for d in dtypes:
        for n in sizes:
            progress("forward %s %s" % (d, log2name(n)))
            dtype = DTYPES[d]
            x = torch.randn(n, dtype=dtype)
            fns = forward_contenders(x, with_compile, with_torch)
            t = interleaved(fns, reps)
            row = {"dtype": d, "numel": log2name(n), "n": n, "threads": torch.get_num_threads(),
                   "GB/s x*2": gbs(n, dtype, t["x * 2.0"]), "GB/s mul(out=)": gbs(n, dtype, t["mul(out=)"]),
                   "GB/s ours": gbs(n, dtype, t["ours"]), "ms ours": ms(t["ours"]),
                   "ours/x*2": ratio(t["x * 2.0"], t["ours"]), "ours/mul(out=)": ratio(t["mul(out=)"], t["ours"]),
                   "faults/call x*2": faults_per_call(fns["x * 2.0"]),
                   "faults/call ours": faults_per_call(fns["ours"]),
                   "seconds": t}
            if "torch" in t:
                row["GB/s torch"] = gbs(n, dtype, t["torch"])
                row["ours/torch"] = ratio(t["torch"], t["ours"])
            if "torch.compile" in t:
                row["GB/s compile"] = gbs(n, dtype, t["torch.compile"])
                row["ours/compile"] = ratio(t["torch.compile"], t["ours"])
            rows.append(row)
            del fns, x
    return rows


FORWARD_COLUMNS = ["dtype", "numel", "GB/s x*2", "GB/s mul(out=)", "GB/s torch", "GB/s compile", "GB/s ours",
                   "ours/x*2", "ours/mul(out=)", "ours/torch", "ours/compile", "faults/call x*2", "faults/call ours"]
FORWARD_NOTES = ["GB/s = 2 x numel x element size / median time; ours/X = X's time / ours (higher is better).",
                 "Goals (SPEC 5): float32 ours/x*2 >= 0.8 at 2^24 and 2^26, >= 0.5 at 2^20; bfloat16 >= 0.6 at 2^24;"
                 " ours/torch >= 10.",
                 "faults/call: minor page faults per call (a fresh output from the allocator; mul(out=) has none)."]


# ----------------------------------------------------------------------------- forward + backward

def bench_backward(sizes, dtypes, reps):
    rows = []
    for d in dtypes:
        for n in sizes:
            progress("forward+backward %s %s" % (d, log2name(n)))
            dtype = DTYPES[d]
            x = torch.randn(n, dtype=dtype)
            g = torch.randn(n, dtype=dtype)
            t = interleaved(storage_contenders(lambda a: F.dropout(a, P), lambda a: TF.dropout(a, P), x, g), reps)
            xr = x.detach().requires_grad_()
            rows.append({
                "dtype": d, "numel": log2name(n), "n": n,
                "ms torch": ms(t["torch"]), "ms seed": ms(t["ours seed"]), "ms bits": ms(t["ours bits"]),
                "speedup seed": ratio(t["torch"], t["ours seed"]),
                "speedup bits": ratio(t["torch"], t["ours bits"]),
                "saved B torch": saved_bytes(lambda: TF.dropout(xr, P)),
                "saved B seed": with_storage("seed", lambda: saved_bytes(lambda: F.dropout(xr, P)))(),
                "saved B bits": with_storage("bits", lambda: saved_bytes(lambda: F.dropout(xr, P)))(),
                "limit numel/8+64": n // 8 + 64,
                "seconds": t,
            })
            del x, g, xr
    return rows


BACKWARD_COLUMNS = ["dtype", "numel", "ms torch", "ms seed", "ms bits", "speedup seed", "speedup bits",
                    "saved B torch", "saved B seed", "saved B bits", "limit numel/8+64"]
BACKWARD_NOTES = ["Forward + backward(grad) of dropout on a leaf; seed/bits = dropout_ext.set_backward_storage.",
                  "Goals: speedup >= 10 at 2^24 (float32); bytes saved for backward <= numel/8 + 64."]


# ----------------------------------------------------------------------------- the family

def bench_family(n, reps, with_compile):
    """Each family op against its torch equivalent, float32: fused ops against torch's eager
    and torch.compile'd composition, channel-wise ops and drop_path against torch's (and
    timm's) forms and x * 2.0, alpha dropout against torch."""
    x = torch.randn(n)
    xv = x.view(-1, 1024)
    r = torch.randn(n).view(-1, 1024)
    b = torch.randn(1024)
    x4 = x.view(64, -1, 16, 16)
    x3 = x.view(64, -1, 256)
    x5 = x.view(64, -1, 4, 8, 8)
    cases = {
        "dropout_add": (xv, {"ours": lambda: F.dropout_add(xv, r, P),
                             "torch eager": lambda: r + TF.dropout(xv, P)},
                        lambda a: F.dropout_add(a, r, P), lambda a: r + TF.dropout(a, P)),
        "bias_dropout_add": (xv, {"ours": lambda: F.bias_dropout_add(xv, b, r, P),
                                  "torch eager": lambda: r + TF.dropout(xv + b, P)},
                             lambda a: F.bias_dropout_add(a, b, r, P), lambda a: r + TF.dropout(a + b, P)),
        "dropout1d (64,C,256)": (x3, {"ours": lambda: F.dropout1d(x3, P), "torch eager": lambda: TF.dropout1d(x3, P),
                                      "x * 2.0": lambda: x3 * 2.0},
                                 lambda a: F.dropout1d(a, P), lambda a: TF.dropout1d(a, P)),
        "dropout2d (64,C,16,16)": (x4, {"ours": lambda: F.dropout2d(x4, P), "torch eager": lambda: TF.dropout2d(x4, P),
                                        "x * 2.0": lambda: x4 * 2.0},
                                   lambda a: F.dropout2d(a, P), lambda a: TF.dropout2d(a, P)),
        "dropout3d (64,C,4,8,8)": (x5, {"ours": lambda: F.dropout3d(x5, P), "torch eager": lambda: TF.dropout3d(x5, P),
                                        "x * 2.0": lambda: x5 * 2.0},
                                   lambda a: F.dropout3d(a, P), lambda a: TF.dropout3d(a, P)),
        # torch eager here is timm's drop_path: x * bernoulli(keep, (N, 1, 1, 1)) / keep
        "drop_path (64,...)": (x4, {"ours": lambda: F.drop_path(x4, P), "torch eager": lambda: timm_drop_path(x4),
                                    "x * 2.0": lambda: x4 * 2.0},
                               lambda a: F.drop_path(a, P), timm_drop_path),
        "alpha_dropout": (x, {"ours": lambda: F.alpha_dropout(x, P, True),
                              "torch eager": lambda: TF.alpha_dropout(x, P, True)},
                          lambda a: F.alpha_dropout(a, P, True), lambda a: TF.alpha_dropout(a, P, True)),
        "feature_alpha_dropout": (x4, {"ours": lambda: F.feature_alpha_dropout(x4, P, True),
                                       "torch eager": lambda: TF.feature_alpha_dropout(x4, P, True)},
                                  lambda a: F.feature_alpha_dropout(a, P, True),
                                  lambda a: TF.feature_alpha_dropout(a, P, True)),
    }
    if with_compile:
        reset_compiled()
        da = fresh_compile(lambda x_, r_: r_ + TF.dropout(x_, P))
        bda = fresh_compile(lambda x_, b_, r_: r_ + TF.dropout(x_ + b_, P))
        cases["dropout_add"][1]["torch.compile"] = lambda: da(xv, r)
        cases["bias_dropout_add"][1]["torch.compile"] = lambda: bda(xv, b, r)
    rows = []
    for name, (inp, fns, ours_fn, torch_fn) in cases.items():
        progress("family %s %s" % (name, log2name(n)))
        t = interleaved(fns, reps)
        leaf = inp.detach().requires_grad_()
        row = {"op": name, "numel": log2name(n), "ms ours": ms(t["ours"]), "ms torch eager": ms(t["torch eager"]),
               "ours vs eager": ratio(t["torch eager"], t["ours"]),
               "saved B ours": saved_bytes(lambda: ours_fn(leaf)), "saved B torch": saved_bytes(lambda: torch_fn(leaf)),
               "seconds": t}
        if "torch.compile" in t:
            row["ms torch.compile"] = ms(t["torch.compile"])
            row["ours vs compile"] = ratio(t["torch.compile"], t["ours"])
        if "x * 2.0" in t:
            row["ms x*2"] = ms(t["x * 2.0"])
            row["ours/x*2"] = ratio(t["x * 2.0"], t["ours"])
        rows.append(row)
    return rows


def timm_drop_path(x):
    keep = 1 - P
    return x * x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep).div_(keep)


FAMILY_COLUMNS = ["op", "numel", "ms ours", "ms torch eager", "ms torch.compile", "ms x*2", "ours vs eager",
                  "ours vs compile", "ours/x*2", "saved B ours", "saved B torch"]
FAMILY_NOTES = ["ours vs X = X's time / ours. torch eager of dropout_add = r + dropout(x); of bias_dropout_add ="
                " r + dropout(x + b); of drop_path = timm's x * bernoulli((N,1,1,1)) / keep.",
                "Goal (issue 12): alpha_dropout >= 10x torch. saved B: bytes kept for backward with the input a leaf"
                " (default storage: bits)."]


# ----------------------------------------------------------------------------- per call

def bench_per_call(log_sizes, reps):
    """Host time per call on small tensors (issue 10): forward, and forward + .sum().backward()."""
    rows = []
    for k in log_sizes:
        n = 1 << k
        progress("per call %s" % log2name(n))
        x = torch.randn(n)
        samples = interleaved_samples({
            "fwd ours": lambda: F.dropout(x, P),
            "fwd torch": lambda: TF.dropout(x, P),
            "f+b ours": fwd_bwd(lambda a: F.dropout(a, P), x),
            "f+b torch": fwd_bwd(lambda a: TF.dropout(a, P), x),
        }, reps, warmup=5, inner="auto")
        t = {k: statistics.median(v) for k, v in samples.items()}
        for what, label in (("fwd", "forward"), ("f+b", "forward + .sum().backward()")):
            rows.append({"numel": log2name(n), "n": n, "pass": label, "us ours": us(t[what + " ours"]),
                         "us torch": us(t[what + " torch"]), "ours/torch": ratio(t[what + " ours"], t[what + " torch"]),
                         "paired": round(paired_ratio(samples, what + " ours", what + " torch"), 2),
                         "seconds": {"ours": t[what + " ours"], "torch": t[what + " torch"]}})
    return rows


PER_CALL_COLUMNS = ["numel", "pass", "us ours", "us torch", "ours/torch", "paired"]
PER_CALL_NOTES = ["Host time per call (float32, mean of a burst of calls per sample, median of samples);"
                  " ours/torch = ours' time / torch's (lower is better); paired = the median over rounds of ours /"
                  " torch's in the same round. Goal (issue 10): <= 1.0."]


# ----------------------------------------------------------------------------- layouts

def layout_inputs(scale):
    """{name: tensor} of issue 11's layouts at one scale (all with the same numel)."""
    shape4, square, sliced = LAYOUT_SHAPES[scale]
    return {
        "contiguous": torch.randn(shape4),
        "channels_last": torch.randn(shape4).contiguous(memory_format=torch.channels_last),
        "transposed": torch.randn(square, square).t(),
        "stepped slice": torch.randn(sliced)[:, ::2],
    }


def as4d(t):
    """A 4-D (N, C, H, W) view of a 2-D layout for the channel-wise op (a view: same layout)."""
    if t.dim() == 4:
        return t
    rows, cols = t.shape
    return t.unflatten(0, (8, rows // 8)).unflatten(2, (8, cols // 8))


def layout_ops():
    """(name, prepare(x) -> args, ours(*args), torch(*args)); prepare builds the op's own
    inputs (4-D view, bias, residual in the input's layout) outside the timed call."""
    def plain(x):
        return (x,)

    def for2d(x):
        return (as4d(x),)

    def fused(x):
        return x, torch.randn(x.shape[-1]), torch.randn_like(x)

    return [
        ("dropout", plain, lambda x: F.dropout(x, P), lambda x: TF.dropout(x, P)),
        ("dropout2d", for2d, lambda x: F.dropout2d(x, P), lambda x: TF.dropout2d(x, P)),
        ("bias_dropout_add", fused, lambda x, b, r: F.bias_dropout_add(x, b, r, P),
         lambda x, b, r: r + TF.dropout(x + b, P)),
    ]


def bench_layout(scale, reps):
    inputs = layout_inputs(scale)
    rows = []
    for op, prepare, ours, theirs in layout_ops():
        progress("layouts %s (%s)" % (op, scale))
        fwd, fb, meta = layout_contenders(inputs, prepare, ours, theirs)
        tf = interleaved(fwd, reps)
        tb = interleaved(fb, reps)
        for lay in inputs:
            c = "ours " if lay == "contiguous" else "contig "
            x = meta[lay]
            rows.append({
                "op": op, "layout": lay, "shape": shape_name(x), "strides": ",".join(map(str, x.stride())),
                "fwd ms ours": ms(tf["ours " + lay]), "fwd ms torch": ms(tf["torch " + lay]),
                "fwd vs torch": ratio(tf["torch " + lay], tf["ours " + lay]),
                "fwd vs contig": ratio(tf[c + lay], tf["ours " + lay]),
                "f+b ms ours": ms(tb["ours " + lay]), "f+b ms torch": ms(tb["torch " + lay]),
                "f+b vs torch": ratio(tb["torch " + lay], tb["ours " + lay]),
                "f+b vs contig": ratio(tb[c + lay], tb["ours " + lay]),
                "seconds": {"forward": {k: v for k, v in tf.items() if k.endswith(lay)},
                            "forward_backward": {k: v for k, v in tb.items() if k.endswith(lay)}},
            })
    return rows


LAYOUT_COLUMNS = ["op", "layout", "shape", "strides", "fwd ms ours", "fwd ms torch", "fwd vs torch", "fwd vs contig",
                  "f+b ms ours", "f+b ms torch", "f+b vs torch", "f+b vs contig"]
LAYOUT_NOTES = ["vs torch = torch's time / ours; vs contig = ours on the input's contiguous copy / ours on this"
                " layout (1.0 = as fast as contiguous). float32; bias_dropout_add's residual has the input's layout;"
                " only the input requires grad.",
                "dropout2d sees 2-D layouts as 4-D views (8, R/8, 8, C/8). Goals (issue 11): channels_last and"
                " transposed vs contig >= 0.8 and vs torch >= 10; stepped slice vs contig >= 0.5."]


# ----------------------------------------------------------------------------- shards

def bench_shard(rows_cols, reps):
    """Global-index path (issue 14) against the plain path on the same local tensor: a
    column shard (global (R, 2C), offset (0, C)) and a row shard (global (2R, C), offset (R, 0))."""
    x, contenders, shards = shard_contenders(F, P, rows_cols)
    rows = []
    for op, (fwd, fb) in contenders.items():
        progress("shards %s" % op)
        tf = interleaved(fwd, reps)
        tb = interleaved(fb, reps)
        for s in ("column shard", "row shard"):
            rows.append({"op": op, "shard": s, "local shape": shape_name(x),
                         "global shape": "x".join(map(str, shards[s]["global_shape"])),
                         "offset": ",".join(map(str, shards[s]["global_offset"])),
                         "fwd ms plain": ms(tf["plain"]), "fwd ms global": ms(tf[s]),
                         "fwd overhead %": round((tf[s] / tf["plain"] - 1) * 100, 1),
                         "f+b ms plain": ms(tb["plain"]), "f+b ms global": ms(tb[s]),
                         "f+b overhead %": round((tb[s] / tb["plain"] - 1) * 100, 1),
                         "seconds": {"forward": tf, "forward_backward": tb}})
    return rows


SHARD_COLUMNS = ["op", "shard", "local shape", "global shape", "offset", "fwd ms plain", "fwd ms global",
                 "fwd overhead %", "f+b ms plain", "f+b ms global", "f+b overhead %"]
SHARD_NOTES = ["global = the same local tensor with global_shape= and global_offset= (its slice of the full"
               " tensor's mask); float32, seed=None. Goal (issue 14): overhead <= 10%."]


# ----------------------------------------------------------------------------- ISA, curve, plot

def bench_isas(sizes, dtypes, reps):
    """Forward of each CPU path in one interleaved run, at 1 thread and the default count."""
    isas = _backend.cpu_isas_supported()
    default_threads = torch.get_num_threads()
    rows = []
    old = _backend.cpu_isa()
    try:
        for threads in sorted({1, default_threads}):
            torch.set_num_threads(threads)
            for d in dtypes:
                for n in sizes:
                    progress("ISA %s %s, %d thread(s)" % (d, log2name(n), threads))
                    dtype = DTYPES[d]
                    x = torch.randn(n, dtype=dtype)

                    def on(isa):
                        def run():
                            _backend.cpu_isa(isa)
                            return F.dropout(x, P)
                        return run

                    fns = {"x * 2.0": lambda: x * 2.0}
                    fns.update({isa: on(isa) for isa in isas})
                    t = interleaved(fns, reps)
                    row = {"dtype": d, "numel": log2name(n), "threads": threads, "x*2 GB/s": gbs(n, dtype, t["x * 2.0"]),
                           "seconds": t}
                    for isa in isas:
                        row[isa + " GB/s"] = gbs(n, dtype, t[isa])
                        row[isa + "/x*2"] = ratio(t["x * 2.0"], t[isa])
                    rows.append(row)
    finally:
        _backend.cpu_isa(old)
        torch.set_num_threads(default_threads)
    return rows


def isa_columns():
    cols = ["dtype", "numel", "threads", "x*2 GB/s"]
    for isa in _backend.cpu_isas_supported():
        cols += [isa + " GB/s", isa + "/x*2"]
    return cols


def bench_curve(sizes, reps, with_compile):
    """float32 forward GB/s against size, for the plot."""
    curve = []
    for n in sizes:
        progress("curve %s" % log2name(n))
        x = torch.randn(n)
        t = interleaved(forward_contenders(x, with_compile), reps)
        curve.append({"n": n, **{k: gbs(n, torch.float32, v) for k, v in t.items()}})
    return curve


def plot(curve, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    names = [k for k in curve[0] if k != "n"]
    for name in names:
        ax.plot([c["n"] for c in curve], [c[name] for c in curve], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("elements (float32)")
    ax.set_ylabel("GB/s (2 x numel x 4 bytes / time)")
    ax.set_title("CPU forward dropout, p=%g, %d threads, %s" % (P, torch.get_num_threads(), allocator_in_use()))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- jemalloc

def jemalloc_run(args, sizes, dtypes, with_torch):
    """The forward table again in a child process with jemalloc preloaded and freed pages
    kept (MALLOC_CONF), or a line saying why not. Returns (rows or None, note)."""
    if allocator_in_use() != "glibc malloc":
        return None, "jemalloc run skipped: this process already runs under %s (the tables above)" % allocator_in_use()
    path = find_jemalloc()
    if path is None:
        return None, ("jemalloc run skipped: libjemalloc.so.2 not found (Debian/Ubuntu: apt-get install"
                      " libjemalloc2; or set JEMALLOC_PATH=/path/to/libjemalloc.so.2)")
    with tempfile.TemporaryDirectory() as tmp:
        emit = os.path.join(tmp, "forward.json")
        env = dict(os.environ, LD_PRELOAD=(path + " " + os.environ.get("LD_PRELOAD", "")).strip(),
                   MALLOC_CONF=JEMALLOC_CONF)
        cmd = [sys.executable, os.path.abspath(__file__), "--only", "forward", "--no-jemalloc", "--no-compile",
               "--sizes", ",".join(str(n.bit_length() - 1) for n in sizes), "--dtypes", ",".join(dtypes),
               "--reps", str(args.reps), "--p", str(P), "--emit", emit] + ([] if with_torch else ["--no-torch"])
        progress("forward again with jemalloc preloaded (child process)")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.exists(emit):
            return None, "jemalloc run failed (exit %d): %s" % (proc.returncode, proc.stderr.strip()[-800:])
        with open(emit) as f:
            child = json.load(f)
    note = "LD_PRELOAD=%s MALLOC_CONF=%s (allocator seen by the child: %s)" % (
        path, JEMALLOC_CONF, child["info"]["allocator"])
    return child["forward"], note


# ----------------------------------------------------------------------------- main

def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="tiny sizes, 3 reps: a smoke test in seconds")
    mode.add_argument("--full", action="store_true", help="the full sweep (issue shapes, ISA rows, plot)")
    ap.add_argument("--only", help="comma list of sections: " + ",".join(SECTIONS))
    ap.add_argument("--sizes", help="log2 sizes of the forward and forward+backward tables, e.g. 20,24")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--reps", type=int, help="interleaved rounds per median (default 21; 3 with --quick)")
    ap.add_argument("--p", type=float, default=0.5, help="dropout probability (default 0.5)")
    ap.add_argument("--family-size", type=int, help="log2 numel of the family table (default 22; 24 with --full)")
    ap.add_argument("--layout-scale", choices=sorted(LAYOUT_SHAPES),
                    help="layout table shapes: full = issue 11's (64,256,32,32), (4096,4096), (8192,4096)[:, ::2]"
                         " (default with --full); small = 2^20 elements (default); tiny = 2^14")
    ap.add_argument("--shard-shape", help="local shape RxC of the shard table (default 2048x2048; 8192x2048 with --full)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile contenders")
    ap.add_argument("--no-plot", action="store_true")
    jm = ap.add_mutually_exclusive_group()
    jm.add_argument("--jemalloc", dest="jemalloc", action="store_true", default=None,
                    help="also run the forward table with jemalloc preloaded (default: when installed)")
    jm.add_argument("--no-jemalloc", dest="jemalloc", action="store_false")
    ap.add_argument("--out", help="output folder (default: docs/ with --full, else bench/results/)")
    ap.add_argument("--name", help="output file stem (default: cpu_bench with --full, else cpu)")
    ap.add_argument("--emit", help=argparse.SUPPRESS)  # child runs: write the rows as JSON here, print nothing
    ap.add_argument("--no-torch", action="store_true", help=argparse.SUPPRESS)  # child runs: no torch eager contender
    return ap.parse_args(argv)


def main(argv=None):
    global P
    args = parse(argv)
    P = args.p
    mode = "quick" if args.quick else "full" if args.full else "default"
    cfg = dict(MODES[mode])
    if args.family_size:
        cfg["family"] = max(14, args.family_size)  # the family's views need a multiple of 2^14
    if args.layout_scale:
        cfg["layout"] = args.layout_scale
    if args.shard_shape:
        cfg["shard"] = tuple(int(v) for v in args.shard_shape.lower().split("x"))
    sizes = [1 << int(s) for s in args.sizes.split(",")] if args.sizes else [1 << k for k in cfg["sizes"]]
    dtypes = args.dtypes.split(",")
    for d in dtypes:
        if d not in DTYPES:
            sys.exit("unknown dtype %r (choose from %s)" % (d, ", ".join(DTYPES)))
    args.reps = args.reps or cfg["reps"]
    sections = args.only.split(",") if args.only else list(cfg["sections"])
    for s in sections:
        if s not in SECTIONS:
            sys.exit("unknown section %r (choose from %s)" % (s, ", ".join(SECTIONS)))
    with_compile = cfg["compile"] and not args.no_compile
    if args.jemalloc is None:
        args.jemalloc = "forward" in sections and not args.emit
    out_dir = args.out or (os.path.join(ROOT, "docs") if mode == "full" else os.path.join(HERE, "results"))
    stem = args.name or ("cpu_bench" if mode == "full" else "cpu")
    quiet_torch_logs()

    t_start = time.time()
    info = {"mode": mode, "cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "dropout_ext": getattr(dropout_ext, "__version__", "?"), "cpu_isa": _backend.cpu_isa(),
            "backends": list(dropout_ext.compiled_backends()), "allocator": allocator_in_use(),
            "backward_storage_default": dropout_ext.backward_storage(), "p": P, "reps": args.reps,
            "loadavg_start": loadavg()}
    result = {"info": info}
    if args.emit:  # a child run (jemalloc): measure, write, print nothing
        result["forward"] = bench_forward(sizes, dtypes, args.reps, with_compile, not args.no_torch)
        with open(args.emit, "w") as f:
            json.dump(result, f)
        return result

    section_seconds = info["section_seconds"] = {}

    def timed(name, fn):
        t0 = time.time()
        out = fn()
        section_seconds[name] = round(time.time() - t0, 1)
        return out

    rep = Report()
    rep.add("dropout_ext CPU bench (%s mode): %s, %d threads, torch %s, dropout_ext %s, ISA %s, allocator %s, p=%g,"
            " median of %d interleaved rounds" % (mode, info["cpu"], info["threads"], info["torch"], info["dropout_ext"],
                                                  info["cpu_isa"], info["allocator"], P, args.reps))
    if args.reps < MIN_REPS:
        rep.add("(only %d rounds: a smoke test, not a measurement; SPEC section 5 asks for >= %d)"
                % (args.reps, MIN_REPS))
    if "forward" in sections:
        result["forward"] = timed("forward", lambda: bench_forward(sizes, dtypes, args.reps, with_compile))
        rep.section("Forward, p=%g, %s (%d threads)" % (P, info["allocator"], info["threads"]), result["forward"],
                    FORWARD_COLUMNS, FORWARD_NOTES)
    if "backward" in sections:
        result["backward"] = timed("backward", lambda: bench_backward(sizes, dtypes, args.reps))
        rep.section("Forward + backward, and bytes saved for backward", result["backward"], BACKWARD_COLUMNS,
                    BACKWARD_NOTES)
    if "family" in sections:
        n = 1 << cfg["family"]
        result["family"] = timed("family", lambda: bench_family(n, args.reps, with_compile))
        rep.section("Dropout family, float32, %s elements, p=%g" % (log2name(n), P), result["family"], FAMILY_COLUMNS,
                    FAMILY_NOTES)
    if "per_call" in sections:
        result["per_call"] = timed("per_call", lambda: bench_per_call(cfg["per_call"], args.reps))
        rep.section("Per call (host time), float32, p=%g" % P, result["per_call"], PER_CALL_COLUMNS, PER_CALL_NOTES)
    if "layout" in sections:
        result["layout"] = timed("layout", lambda: bench_layout(cfg["layout"], args.reps))
        rep.section("Layouts, float32, p=%g (%s sizes)" % (P, "issue 11's" if cfg["layout"] == "full" else
                                                          "reduced: --full runs issue 11's"),
                    result["layout"], LAYOUT_COLUMNS, LAYOUT_NOTES)
    if "shard" in sections:
        result["shard"] = timed("shard", lambda: bench_shard(cfg["shard"], args.reps))
        rep.section("Shards: global-index path against the plain path, float32, p=%g" % P, result["shard"],
                    SHARD_COLUMNS, SHARD_NOTES)
    if "isa" in sections:
        result["isa"] = timed("isa", lambda: bench_isas(sizes, dtypes, args.reps))
        rep.section("Forward by CPU path and thread count", result["isa"], isa_columns())
    png = None
    if "curve" in sections:
        curve_sizes = [1 << k for k in range(14, 27, 2)] if mode == "full" else sizes
        result["curve"] = timed("curve", lambda: bench_curve(curve_sizes, args.reps, with_compile))
        if not args.no_plot:
            os.makedirs(out_dir, exist_ok=True)
            png = plot(result["curve"], os.path.join(out_dir, stem + ".png"))
    if args.jemalloc:
        # the page-fault story is about large outputs; torch's eager dropout (bound by its RNG,
        # not by page faults) is left out of the default run's second table to save time
        big = [n for n in sizes if n >= 1 << 22] or sizes
        with_torch = mode != "default"
        rows, note = timed("jemalloc", lambda: jemalloc_run(args, big, dtypes, with_torch))
        result["jemalloc"] = {"note": note, "forward": rows}
        if rows is None:
            rep.add("\n" + note)
        else:
            rep.section("Forward with jemalloc preloaded (separate process, no torch.compile%s)"
                        % ("" if with_torch else ", no torch eager: see the table above"), rows,
                        FORWARD_COLUMNS, [note] + FORWARD_NOTES[:1])
    elif "forward" in sections and mode != "quick":
        rep.add("\n(jemalloc run skipped: --no-jemalloc)")

    info["loadavg_end"] = loadavg()
    info["seconds"] = round(time.time() - t_start, 1)
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, stem + ".json"), "txt": os.path.join(out_dir, stem + ".txt")}
    rep.add("\nbench took %.0f s (%s; load average %s at start, %s at end)" % (
        info["seconds"], ", ".join("%s %.0f s" % kv for kv in section_seconds.items()), info["loadavg_start"],
        info["loadavg_end"]))
    with open(paths["json"], "w") as f:
        json.dump(result, f, indent=1)
    with open(paths["txt"], "w") as f:
        f.write(rep.text())
    print("figures: %s, tables: %s%s" % (paths["json"], paths["txt"], ", plot: " + png if png else ""))
    return result


if __name__ == "__main__":
    main()
