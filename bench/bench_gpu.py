"""GPU benchmark of dropout_ext against torch, y.copy_(x), torch.add(r, x, out=y) and
torch.compile (SPEC section 5, issues 10, 11, 12, 14).

  python bench/bench_gpu.py                 every table, about 3 to 4 minutes on an H100
  python bench/bench_gpu.py --quick         fewer sizes and rounds, a smaller model
  python bench/bench_gpu.py --device cpu    dry run of every code path on tiny CPU tensors

Every row reports device time and wall time separately:
- device time: the contender's calls run under torch.profiler (ProfilerActivity.CUDA), and
  the durations of the GPU activities they launch (kernels, and the memcpy/memset an op
  issues itself, e.g. copy_'s device-to-device memcpy) are summed and divided by the
  number of calls. Inputs and gradients are made before profiling, so only the op's own
  work is counted. The contenders of one table share one profiler session, separated by
  marker kernels (torch.cuda._sleep).
- wall time: CUDA-event time of one call started on an idle GPU (synchronize before each
  call), median of interleaved rounds in rotating order; for small tensors (the per-call
  table) the host time per call: a burst of calls, synchronized at its end, divided by
  the number of calls.
Bandwidth fractions count the bytes each op must move: read the input, write the output,
plus the mask bytes it writes (bits: numel / 8) or reads. Tables are printed at the end
(the headline forward and forward+backward tables last) and written with the raw figures
to --out (gpu.json, gpu_bench.txt).
"""
import argparse
import json
import os
import signal
import statistics
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (Report, SavedBytesCounter, fresh_compile, fwd_bwd, interleaved, interleaved_samples,  # noqa: E402
                    layout_contenders, log2name, paired_ratio, progress, quiet_torch_logs, ratio, reset_compiled,
                    saved_bytes, shape_name, shard_contenders, storage_contenders, with_storage)

import dropout_ext  # noqa: E402
from dropout_ext import functional as F  # noqa: E402

TF = torch.nn.functional
P = 0.1  # --p; issue 12's figures are at p=0.1
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE = "cuda"
CUDA = True
COMPILE_BACKEND = "inductor"  # the dry run compiles with the "eager" backend (seconds, not minutes)
PROFILE_CALLS = 10
PROFILE_MODE = "one profiler session per table, contenders separated by marker kernels"


def sync():
    if CUDA:
        torch.cuda.synchronize()


def es(dtype):
    return torch.empty((), dtype=dtype).element_size()


def us(seconds):
    return None if seconds is None else round(seconds * 1e6, 1)


# ----------------------------------------------------------------------------- timing

def _event_timer(name, fn, k):
    """Seconds per call of k calls started on an idle GPU, from CUDA events."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(k):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / k


def wall_times(fns, reps, warmup=3):
    """{name: median wall seconds per call}, one call per sample, GPU idle at its start."""
    return interleaved(fns, reps, warmup=warmup, sync=sync, timer=_event_timer if CUDA else None)


def host_times(fns, reps, warmup=5):
    """{name: median host seconds per call}: bursts of calls (about 2 ms each) ended by a
    synchronize, for tensors small enough that the host, not the GPU, sets the pace."""
    return interleaved(fns, reps, warmup=warmup, sync=sync, inner="auto")


_SKIP_NAMES = ("Sync", "Wait Event", "Overhead", "Instrumentation")
_SKIP_TYPES = ("gpu_user_annotation", "cuda_sync", "overhead", "user_annotation", "python_function")


def _device_events(prof):
    """[(start_us, end_us, name)] of the device work in a profile, sorted by start.
    CUDA: the GPU activities (kernels, memcpy, memset), without synchronization records
    and without GPU-side annotation ranges (which span the kernels they annotate). CPU dry
    run: the top-level CPU ops, standing in for kernels."""
    from torch.autograd import DeviceType

    evs = []
    for e in prof.events():
        kind = str(getattr(e, "activity_type", "") or "").lower()
        if CUDA:
            if e.device_type != DeviceType.CUDA or any(s in e.name for s in _SKIP_NAMES) or kind in _SKIP_TYPES:
                continue
        else:
            if e.device_type != DeviceType.CPU or e.cpu_parent is not None or getattr(e, "is_python_function", False):
                if e.name != "bench::marker":
                    continue
        evs.append((e.time_range.start, e.time_range.end, e.name))
    evs.sort(key=lambda v: (v[0], -v[1]))
    # an interval that contains the next one is an annotation range, not work
    kept = []
    for i, v in enumerate(evs):
        if i + 1 < len(evs) and not _is_marker(v[2]) and evs[i + 1][0] >= v[0] and evs[i + 1][1] <= v[1] \
                and evs[i + 1] != v and CUDA:
            continue
        kept.append(v)
    return kept


def _is_marker(name):
    return "spin_kernel" in name or name == "bench::marker"


def _marker():
    if CUDA:
        torch.cuda._sleep(1000)  # a tiny kernel named ...spin_kernel...
    else:
        with torch.profiler.record_function("bench::marker"):
            pass


def _profile(fns, calls, activities):
    from torch.profiler import profile

    sync()
    with profile(activities=activities) as prof:
        for fn in fns.values():
            sync()
            _marker()
            sync()
            for _ in range(calls):
                fn()
            sync()
        _marker()
        sync()
    return _device_events(prof)


def device_times(fns, calls=None):
    """{name: {"s": device seconds per call, "n": GPU activities per call, "kernels": names}}.
    All contenders in one profiler session, separated by marker kernels; if the markers
    are not found as expected, each contender gets a session of its own."""
    from torch.profiler import ProfilerActivity

    global PROFILE_MODE
    calls = calls or PROFILE_CALLS
    for fn in fns.values():  # warm: compiled code, caches, allocator
        fn()
    sync()
    acts = [ProfilerActivity.CUDA] if CUDA else [ProfilerActivity.CPU]
    evs = _profile(fns, calls, acts)
    groups = _split(evs, len(fns))
    if groups is None and CUDA:  # retry with CPU activity too (older torch may need it to see GPU events)
        evs = _profile(fns, calls, [ProfilerActivity.CPU, ProfilerActivity.CUDA])
        groups = _split(evs, len(fns))
    if groups is None:  # one session per contender; unrecognised markers (tiny) are then counted
        PROFILE_MODE = "one profiler session per contender (markers not found)"
        groups = []
        for name, fn in fns.items():
            evs = _profile({name: fn}, calls, acts)
            one = _split(evs, 1)
            groups.append(one[0] if one else [v for v in evs if not _is_marker(v[2])])
    out = {}
    for name, group in zip(fns, groups):
        names = {}
        for _, _, n in group:
            names[n] = names.get(n, 0) + 1
        out[name] = {"s": sum(e - s for s, e, _ in group) / 1e6 / calls, "n": round(len(group) / calls, 2),
                     "kernels": {k[:160]: round(v / calls, 2) for k, v in sorted(names.items(), key=lambda kv: -kv[1])}}
    return out


def _split(evs, count):
    """Events between consecutive markers, `count` groups, or None when the markers are off."""
    marks = [i for i, v in enumerate(evs) if _is_marker(v[2])]
    if len(marks) != count + 1:
        return None
    return [evs[a + 1:b] for a, b in zip(marks, marks[1:])]


def measure(fns, reps, host=False):
    """{name: {"dev": s, "wall": s, "n": activities per call, "kernels": {...}}}."""
    wall = host_times(fns, reps) if host else wall_times(fns, reps)
    dev = device_times(fns)
    return {k: {"dev": dev[k]["s"], "wall": wall[k], "n": dev[k]["n"], "kernels": dev[k]["kernels"]} for k in fns}


def compiled(fn):
    return fresh_compile(fn, backend=COMPILE_BACKEND)


# ----------------------------------------------------------------------------- (a) forward

def bench_forward(sizes, dtypes, reps):
    rows = []
    for d in dtypes:
        for n in sizes:
            progress("forward %s %s" % (d, log2name(n)))
            dt = DTYPES[d]
            x = torch.randn(n, dtype=dt, device=DEVICE)
            y = torch.empty_like(x)
            xr = x.detach().requires_grad_()
            reset_compiled()
            comp = compiled(lambda t: TF.dropout(t, P))
            fns = {"copy_": lambda: y.copy_(x), "torch": lambda: TF.dropout(x, P), "torch.compile": lambda: comp(x),
                   "ours": lambda: F.dropout(x, P),
                   # the training forward: input requires grad, so the keep bits are written too
                   "ours +bits": with_storage("bits", lambda: F.dropout(xr, P))}
            m = measure(fns, reps)
            # bytes each must move: torch's eager kernel also writes a one-byte mask
            moved = {"copy_": 2 * n * es(dt), "torch": 2 * n * es(dt) + n, "torch.compile": 2 * n * es(dt),
                     "ours": 2 * n * es(dt), "ours +bits": 2 * n * es(dt) + n // 8}
            bw_copy = moved["copy_"] / m["copy_"]["dev"]
            for name in fns:
                r = m[name]
                rows.append({"dtype": d, "numel": log2name(n), "contender": name,
                             "bytes/elem": round(moved[name] / n, 3),
                             "dev us": us(r["dev"]), "wall us": us(r["wall"]), "kernels/call": r["n"],
                             "GB/s (dev)": round(moved[name] / r["dev"] / 1e9) if r["dev"] else None,
                             "ours/copy_ BW": ratio(moved[name] / r["dev"], bw_copy, 3) if r["dev"] else None,
                             "vs torch (dev)": ratio(m["torch"]["dev"], r["dev"]),
                             "kernels": r["kernels"]})
            del x, y, xr, fns, comp
    return rows


FORWARD_COLUMNS = ["dtype", "numel", "contender", "bytes/elem", "dev us", "wall us", "kernels/call", "GB/s (dev)",
                   "ours/copy_ BW", "vs torch (dev)"]
FORWARD_NOTES = ["ours/copy_ BW: this contender's bandwidth (bytes it must move / device time) over copy_'s;"
                 " vs torch (dev) = torch's device time / this one's.",
                 "Goal (issue 12): ours and ours +bits >= 0.95 of copy_ bandwidth, float32 and bfloat16, 2^24 and 2^28."]


# ----------------------------------------------------------------------------- (b) forward + backward

def bench_backward(sizes, dtypes, reps):
    rows = []
    for d in dtypes:
        for n in sizes:
            progress("forward+backward %s %s" % (d, log2name(n)))
            dt = DTYPES[d]
            x = torch.randn(n, dtype=dt, device=DEVICE)
            g = torch.randn_like(x)
            fns = storage_contenders(lambda a: F.dropout(a, P), lambda a: TF.dropout(a, P), x, g)
            m = measure(fns, reps)
            xr = x.detach().requires_grad_()
            saved = {"torch": saved_bytes(lambda: TF.dropout(xr, P)),
                     "ours seed": with_storage("seed", lambda: saved_bytes(lambda: F.dropout(xr, P)))(),
                     "ours bits": with_storage("bits", lambda: saved_bytes(lambda: F.dropout(xr, P)))()}
            moved = {"torch": 4 * n * es(dt) + 2 * n, "ours seed": 4 * n * es(dt),
                     "ours bits": 4 * n * es(dt) + 2 * (n // 8)}
            for name in fns:
                r = m[name]
                rows.append({"dtype": d, "numel": log2name(n), "contender": name,
                             "bytes/elem": round(moved[name] / n, 3), "dev us": us(r["dev"]), "wall us": us(r["wall"]),
                             "kernels/call": r["n"], "GB/s (dev)": round(moved[name] / r["dev"] / 1e9) if r["dev"] else None,
                             "speedup dev": ratio(m["torch"]["dev"], r["dev"]),
                             "speedup wall": ratio(m["torch"]["wall"], r["wall"]),
                             "saved B": saved[name], "kernels": r["kernels"]})
            del x, g, xr, fns
    return rows


BACKWARD_COLUMNS = ["dtype", "numel", "contender", "bytes/elem", "dev us", "wall us", "kernels/call", "GB/s (dev)",
                    "speedup dev", "speedup wall", "saved B"]
BACKWARD_NOTES = ["Forward + backward(grad) on a leaf (grad made beforehand; .grad dropped between calls);"
                  " speedup = torch's time / this one's.",
                  "Goals (issue 10, 12): device time >= 1.15x torch at 2^24 and 2^28; wall >= 1.0x at 2^24, >= 1.1x at"
                  " 2^28; saved B <= numel/8 + 64."]


# ----------------------------------------------------------------------------- (c) family

def bench_family(n, reps):
    x = torch.randn(n, device=DEVICE)
    y = torch.empty_like(x)
    xv = x.view(-1, 1024)
    r = torch.randn(n, device=DEVICE).view(-1, 1024)
    b = torch.randn(1024, device=DEVICE)
    yv = y.view(-1, 1024)
    keep = 1 - P
    x3, x4, x5 = x.view(64, -1, 256), x.view(64, -1, 16, 16), x.view(64, -1, 4, 8, 8)
    reset_compiled()
    da = compiled(lambda x_, r_: r_ + TF.dropout(x_, P))
    bda = compiled(lambda x_, b_, r_: r_ + TF.dropout(x_ + b_, P))
    copy_ref = ("copy_", lambda: y.copy_(x), 2)
    add_ref = ("add(out=)", lambda: torch.add(r, xv, out=yv), 3)
    # op: (contenders, reference (name, fn, streams), streams the op moves, shape)
    cases = {
        "dropout1d": ({"ours": lambda: F.dropout1d(x3, P), "torch": lambda: TF.dropout1d(x3, P)}, copy_ref, 2, x3),
        "dropout2d": ({"ours": lambda: F.dropout2d(x4, P), "torch": lambda: TF.dropout2d(x4, P)}, copy_ref, 2, x4),
        "dropout3d": ({"ours": lambda: F.dropout3d(x5, P), "torch": lambda: TF.dropout3d(x5, P)}, copy_ref, 2, x5),
        "drop_path": ({"ours": lambda: F.drop_path(x4, P),
                       # timm's drop_path
                       "torch": lambda: x4 * x4.new_empty(64, 1, 1, 1).bernoulli_(keep).div_(keep)}, copy_ref, 2, x4),
        "dropout_add": ({"ours": lambda: F.dropout_add(xv, r, P), "torch": lambda: r + TF.dropout(xv, P),
                         "torch.compile": lambda: da(xv, r)}, add_ref, 3, xv),
        "bias_dropout_add": ({"ours": lambda: F.bias_dropout_add(xv, b, r, P), "torch": lambda: r + TF.dropout(xv + b, P),
                              "torch.compile": lambda: bda(xv, b, r)}, add_ref, 3, xv),
        "alpha_dropout": ({"ours": lambda: F.alpha_dropout(x, P, True), "torch": lambda: TF.alpha_dropout(x, P, True)},
                          copy_ref, 2, x),
        "feature_alpha_dropout": ({"ours": lambda: F.feature_alpha_dropout(x4, P, True),
                                   "torch": lambda: TF.feature_alpha_dropout(x4, P, True)}, copy_ref, 2, x4),
    }
    rows = []
    for op, (fns, (ref_name, ref_fn, ref_streams), streams, shaped) in cases.items():
        progress("family %s %s" % (op, log2name(n)))
        fns = dict(fns)
        fns[ref_name] = ref_fn
        m = measure(fns, reps)
        o = m["ours"]
        row = {"op": op, "shape": shape_name(shaped), "dev us ours": us(o["dev"]), "wall us ours": us(o["wall"]),
               "kernels ours": o["n"], "dev us torch": us(m["torch"]["dev"]), "wall us torch": us(m["torch"]["wall"]),
               "dev us compile": us(m["torch.compile"]["dev"]) if "torch.compile" in m else None,
               "reference": ref_name, "dev us ref": us(m[ref_name]["dev"]),
               "vs torch": ratio(m["torch"]["dev"], o["dev"]),
               "vs compile": ratio(m["torch.compile"]["dev"], o["dev"]) if "torch.compile" in m else None,
               # bandwidth fraction of the reference, counting the streams each moves
               "BW vs ref": ratio(streams * m[ref_name]["dev"], ref_streams * o["dev"], 3),
               "kernels": {k: v["kernels"] for k, v in m.items()}, "seconds": {k: [v["dev"], v["wall"]] for k, v in m.items()}}
        rows.append(row)
    return rows


FAMILY_COLUMNS = ["op", "shape", "dev us ours", "wall us ours", "kernels ours", "dev us torch", "wall us torch",
                  "dev us compile",
                  "reference", "dev us ref", "vs torch", "vs compile", "BW vs ref"]
FAMILY_NOTES = ["Device times; vs X = X's device time / ours; BW vs ref: our bandwidth over the reference's (copy_:"
                " 2 streams; torch.add(r, x, out=y): 3 streams). torch for drop_path is timm's form.",
                "Goals (issue 12): channel-wise and drop_path BW vs copy_ >= 0.95; dropout_add and bias_dropout_add BW vs"
                " add(out=) >= 0.95 and vs compile >= 1.1; alpha_dropout vs torch >= 1.5."]


# ----------------------------------------------------------------------------- (d) per call

def bench_per_call(log_sizes, reps):
    # Host times first, for every size, then device times, and this table first in the
    # bench: host times taken after torch.profiler sessions in the same process came out
    # 35 to 45 us per forward + backward above those of bench/host_profile.py, which times
    # before it profiles (H100, fifth session). Suspected cause, not verified: the CUDA
    # activity tracing a session sets up stays attached and taxes every CUDA API call.
    cases = []
    for k in log_sizes:
        n = 1 << k
        progress("per call %s (host time)" % log2name(n))
        x = torch.randn(n, device=DEVICE)
        fns = {"fwd ours": lambda x=x: F.dropout(x, P), "fwd torch": lambda x=x: TF.dropout(x, P),
               "seed ours": lambda x=x: F.dropout(x, P, seed=1234),
               "f+b ours": fwd_bwd(lambda a: F.dropout(a, P), x), "f+b torch": fwd_bwd(lambda a: TF.dropout(a, P), x)}
        # host times of small calls scatter more than device times: twice the rounds (at
        # least 41; each round is a few ms), and the paired ratio beside the ratio of medians
        cases.append((n, fns, interleaved_samples(fns, max(2 * reps, 41), warmup=5, sync=sync, inner="auto")))
    rows = []
    for n, fns, samples in cases:
        progress("per call %s (device time)" % log2name(n))
        dev = device_times(fns)
        m = {k: {"wall": statistics.median(samples[k]), "dev": dev[k]["s"], "n": dev[k]["n"],
                 "kernels": dev[k]["kernels"]} for k in fns}
        for what, label, theirs in (("fwd", "forward", "fwd torch"), ("seed", "forward, seed=", "fwd torch"),
                                    ("f+b", "forward + .sum().backward()", "f+b torch")):
            o, t = m[what + " ours"], m[theirs]
            rows.append({"numel": n, "pass": label, "host us ours": us(o["wall"]), "host us torch": us(t["wall"]),
                         "ours/torch host": ratio(o["wall"], t["wall"]),
                         "paired": round(paired_ratio(samples, what + " ours", theirs), 2),
                         "dev us ours": us(o["dev"]),
                         "dev us torch": us(t["dev"]), "kernels ours": o["n"], "kernels torch": t["n"],
                         "kernels": {"ours": o["kernels"], "torch": t["kernels"]}})
    return rows


PER_CALL_COLUMNS = ["numel", "pass", "host us ours", "host us torch", "ours/torch host", "paired", "dev us ours",
                    "dev us torch",
                    "kernels ours", "kernels torch"]
PER_CALL_NOTES = ["float32; host time per call = a burst of calls ended by one synchronize, per call (lower is"
                  " better), median of twice the table's rounds (at least 41); ours/torch host = ours / torch's;"
                  " paired = the median over rounds of ours / torch's in the same round.",
                  "Goal (issue 10): <= 1.0 (measured at 4096 elements in the issue)."]


# ----------------------------------------------------------------------------- (e) layouts

def layout_inputs(dry):
    shape4, square, sliced = ((4, 16, 16, 16), 128, (256, 128)) if dry else ((64, 256, 32, 32), 4096, (8192, 4096))
    return {
        "contiguous": torch.randn(shape4, device=DEVICE),
        "channels_last": torch.randn(shape4, device=DEVICE).contiguous(memory_format=torch.channels_last),
        "transposed": torch.randn(square, square, device=DEVICE).t(),
        "stepped slice": torch.randn(sliced, device=DEVICE)[:, ::2],
    }


def as4d(t):
    if t.dim() == 4:
        return t
    rows, cols = t.shape
    return t.unflatten(0, (8, rows // 8)).unflatten(2, (8, cols // 8))


def bench_layout(reps, dry):
    inputs = layout_inputs(dry)
    ops = [
        ("dropout", 2, lambda x: (x,), lambda x: F.dropout(x, P), lambda x: TF.dropout(x, P)),
        ("dropout2d", 2, lambda x: (as4d(x),), lambda x: F.dropout2d(x, P), lambda x: TF.dropout2d(x, P)),
        ("bias_dropout_add", 3, lambda x: (x, torch.randn(x.shape[-1], device=DEVICE), torch.randn_like(x)),
         lambda x, b, r: F.bias_dropout_add(x, b, r, P), lambda x, b, r: r + TF.dropout(x + b, P)),
    ]
    numel = inputs["contiguous"].numel()
    src = torch.randn(numel, device=DEVICE)
    dst = torch.empty_like(src)
    rows = []
    for op, streams, prepare, ours, theirs in ops:
        progress("layouts %s" % op)
        fwd, fb, meta = layout_contenders(inputs, prepare, ours, theirs, fwd={"copy_": lambda: dst.copy_(src)})
        mf = measure(fwd, reps)
        mb = measure(fb, reps)
        for lay in inputs:
            c = "ours " if lay == "contiguous" else "contig "
            x = meta[lay]
            rows.append({
                "op": op, "layout": lay, "shape": shape_name(x), "strides": ",".join(map(str, x.stride())),
                "fwd dev us ours": us(mf["ours " + lay]["dev"]), "fwd dev us torch": us(mf["torch " + lay]["dev"]),
                "fwd vs torch": ratio(mf["torch " + lay]["dev"], mf["ours " + lay]["dev"]),
                "fwd vs contig": ratio(mf[c + lay]["dev"], mf["ours " + lay]["dev"]),
                "fwd BW vs copy_": ratio(streams * mf["copy_"]["dev"], 2 * mf["ours " + lay]["dev"], 3),
                "fwd wall us ours": us(mf["ours " + lay]["wall"]), "fwd wall us torch": us(mf["torch " + lay]["wall"]),
                "f+b dev us ours": us(mb["ours " + lay]["dev"]), "f+b dev us torch": us(mb["torch " + lay]["dev"]),
                "f+b vs torch": ratio(mb["torch " + lay]["dev"], mb["ours " + lay]["dev"]),
                "f+b vs contig": ratio(mb[c + lay]["dev"], mb["ours " + lay]["dev"]),
                "f+b wall us ours": us(mb["ours " + lay]["wall"]), "f+b wall us torch": us(mb["torch " + lay]["wall"]),
                "kernels": {"forward": {k: v["kernels"] for k, v in mf.items() if k.endswith(lay)},
                            "forward_backward": {k: v["kernels"] for k, v in mb.items() if k.endswith(lay)}},
            })
    return rows


LAYOUT_COLUMNS = ["op", "layout", "shape", "strides", "fwd dev us ours", "fwd dev us torch", "fwd vs torch",
                  "fwd vs contig", "fwd BW vs copy_", "fwd wall us ours", "fwd wall us torch"]
LAYOUT_FB_COLUMNS = ["op", "layout", "shape", "f+b dev us ours", "f+b dev us torch", "f+b vs torch", "f+b vs contig",
                     "f+b wall us ours", "f+b wall us torch"]
LAYOUT_NOTES = ["float32, device times unless 'wall'; vs torch = torch's time / ours; vs contig = ours on the"
                " input's contiguous copy / ours on this layout; BW vs copy_: our bandwidth over a contiguous"
                " copy_ of the same numel (bias_dropout_add counted as 3 streams).",
                "dropout2d sees 2-D layouts as 4-D views (8, R/8, 8, C/8); bias_dropout_add's residual has the input's"
                " layout; only the input requires grad. Goals (issue 11): channels_last and transposed vs contig"
                " >= 0.9 and faster than torch; SPEC: >= 0.95 of copy_ (0.9 permuted)."]


# ----------------------------------------------------------------------------- (h) shards

def bench_shard(reps, dry):
    """Global-index path (issue 14) against the plain path on the same local tensor: a
    column shard (global (R, 2C), offset (0, C)) and a row shard (global (2R, C), offset (R, 0))."""
    x, contenders, shards = shard_contenders(F, P, (64, 128) if dry else (8192, 4096), DEVICE)
    rows = []
    for op, (fwd, fb) in contenders.items():
        progress("shards %s" % op)
        mf = measure(fwd, reps)
        mb = measure(fb, reps)
        for s in ("column shard", "row shard"):
            rows.append({"op": op, "shard": s, "local shape": shape_name(x),
                         "global shape": "x".join(map(str, shards[s]["global_shape"])),
                         "fwd dev us plain": us(mf["plain"]["dev"]), "fwd dev us global": us(mf[s]["dev"]),
                         "fwd overhead %": round((mf[s]["dev"] / mf["plain"]["dev"] - 1) * 100, 1),
                         "f+b dev us plain": us(mb["plain"]["dev"]), "f+b dev us global": us(mb[s]["dev"]),
                         "f+b overhead %": round((mb[s]["dev"] / mb["plain"]["dev"] - 1) * 100, 1),
                         "fwd wall us plain": us(mf["plain"]["wall"]), "fwd wall us global": us(mf[s]["wall"]),
                         "kernels": {"forward": {k: v["kernels"] for k, v in mf.items()},
                                     "forward_backward": {k: v["kernels"] for k, v in mb.items()}}})
    return rows


SHARD_COLUMNS = ["op", "shard", "local shape", "global shape", "fwd dev us plain", "fwd dev us global",
                 "fwd overhead %", "f+b dev us plain", "f+b dev us global", "f+b overhead %", "fwd wall us plain",
                 "fwd wall us global"]
SHARD_NOTES = ["global = the same local tensor with global_shape= and global_offset= (its slice of the full"
               " tensor's mask); float32, seed=None, device time unless 'wall'. Goal (issue 14): overhead <= 10%."]


# ----------------------------------------------------------------------------- (f) unroll sweep

def bench_unroll(sizes, dtypes, reps):
    ops = torch.ops.dropout_ext if hasattr(torch.ops, "dropout_ext") else None
    op = getattr(ops, "_cuda_unroll", None)
    pers = getattr(ops, "_cuda_persistent", None)
    if op is None or pers is None:
        return [], "unroll sweep skipped: torch.ops.dropout_ext._cuda_unroll/_cuda_persistent are not in this build"
    try:
        original, original_pers = op(0), pers(-1)
    except Exception as e:  # noqa: BLE001 - report and go on
        return [], "unroll sweep skipped: _cuda_unroll(0) raised %s" % e
    rows = []
    try:
        for d in dtypes:
            dt = DTYPES[d]
            # the persistent grid applies to the 16-bit kernels only (kernels.cuh, PIPE)
            grids = (0, 1) if es(dt) == 2 else (original_pers,)
            variants = [(u, g) for u in (1, 2, 4) for g in grids]
            for n in sizes:
                progress("unroll %s %s" % (d, log2name(n)))
                x = torch.randn(n, dtype=dt, device=DEVICE)
                y = torch.empty_like(x)
                xr = x.detach().requires_grad_()

                def plain(u, g):
                    def run():
                        op(u)
                        pers(g)
                        return F.dropout(x, P)
                    return run

                def bits(u, g):
                    def run():
                        op(u)
                        pers(g)
                        return F.dropout(xr, P)
                    return with_storage("bits", run)

                fns = {"copy_": lambda: y.copy_(x)}
                for u, g in variants:
                    fns["unroll %d grid %d" % (u, g)] = plain(u, g)
                    fns["unroll %d grid %d +bits" % (u, g)] = bits(u, g)
                m = measure(fns, reps)
                bw_copy = 2 * n * es(dt) / m["copy_"]["dev"]
                for u, g in variants:
                    a, b = m["unroll %d grid %d" % (u, g)], m["unroll %d grid %d +bits" % (u, g)]
                    rows.append({"dtype": d, "numel": log2name(n), "unroll": u,
                                 "grid": ("resident" if g else "cover") if es(dt) == 2 else "cover",
                                 "dev us": us(a["dev"]),
                                 "wall us": us(a["wall"]), "BW vs copy_": ratio(2 * n * es(dt) / a["dev"], bw_copy, 3),
                                 "dev us +bits": us(b["dev"]), "wall us +bits": us(b["wall"]),
                                 "BW vs copy_ +bits": ratio((2 * n * es(dt) + n // 8) / b["dev"], bw_copy, 3),
                                 "dev us copy_": us(m["copy_"]["dev"]),
                                 "default": u == original and g == original_pers})
                del x, y, xr, fns
    finally:
        op(original)
        pers(original_pers)
    return rows, ("unroll = 8-element units per thread per iteration of the flat forward kernel (build default %d);"
                  " grid (16-bit types, whose kernel loads one iteration ahead): 'resident' = only the blocks the"
                  " GPU holds at once, each looping over the tensor (default), 'cover' = one block per"
                  " 256 x unroll units" % original)


UNROLL_COLUMNS = ["dtype", "numel", "unroll", "grid", "dev us", "wall us", "BW vs copy_", "dev us +bits",
                  "wall us +bits", "BW vs copy_ +bits", "dev us copy_", "default"]


# ----------------------------------------------------------------------------- (g) GPT-2

def bench_gpt2(args, dry):
    import copy

    import gpt2 as G

    if dry:
        cfg, batch, seq, steps = G.Config(n_layer=2, n_embd=64, n_head=4, vocab_size=512, n_positions=32), 2, 32, 2
    else:
        cfg = G.Config(n_positions=max(1024, args.gpt2_seq))
        batch, seq, steps = args.gpt2_batch, args.gpt2_seq, args.gpt2_steps
    torch.manual_seed(0)
    base, model_name = G.make_model(cfg, prefer_hf=not dry)
    base = base.to(DEVICE)
    models = {"torch": base, "dropout_ext": copy.deepcopy(base)}
    replaced = G.replace_dropouts(models["dropout_ext"], lambda p: dropout_ext.nn.Dropout(p))
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    idx = torch.randint(0, cfg.vocab_size, (batch, seq), device=DEVICE)
    orig_tf = TF.dropout

    def patched(variant):
        TF.dropout = F.dropout if variant == "dropout_ext" else orig_tf

    def step(variant):
        model, opt = models[variant], opts[variant]
        patched(variant)
        try:
            with torch.autocast(DEVICE, dtype=torch.bfloat16):
                loss = model(idx, idx)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        finally:
            TF.dropout = orig_tf
        return loss.detach()

    times = {k: [] for k in models}
    peaks = {k: 0 for k in models}
    losses = {k: [] for k in models}
    try:
        for v in models:  # warm-up (also allocates the optimizer state)
            step(v)
            step(v)
        sync()
        for r in range(steps):
            for v in (list(models) if r % 2 == 0 else list(models)[::-1]):  # interleaved, alternating order
                sync()
                if CUDA:
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                loss = step(v)
                sync()
                times[v].append(time.perf_counter() - t0)
                if CUDA:
                    peaks[v] = max(peaks[v], torch.cuda.max_memory_allocated())
                losses[v].append(round(float(loss), 4))
        # bytes saved for backward: one more forward with the dropout calls' saved tensors counted apart
        saved = {}
        for v, model in models.items():
            drop, everything = SavedBytesCounter(), SavedBytesCounter()
            inner_tf, inner_ext = (F.dropout if v == "dropout_ext" else orig_tf), F.dropout

            def counting(fn):
                def run(*a, **kw):
                    with drop.scope():
                        return fn(*a, **kw)
                return run

            TF.dropout, dropout_ext.functional.dropout = counting(inner_tf), counting(inner_ext)
            try:
                with everything.scope(), torch.autocast(DEVICE, dtype=torch.bfloat16):
                    loss = model(idx, idx)
            finally:
                TF.dropout, dropout_ext.functional.dropout = orig_tf, inner_ext
            del loss
            saved[v] = (drop.total, drop.total + everything.total)
    finally:
        TF.dropout = orig_tf
    rows = []
    for v in models:
        rows.append({"variant": v, "batch x seq": "%dx%d" % (batch, seq), "layers": cfg.n_layer, "width": cfg.n_embd,
                     "step ms": round(statistics.median(times[v]) * 1e3, 1),
                     "vs torch": ratio(statistics.median(times["torch"]), statistics.median(times[v])),
                     "peak GiB": round(peaks[v] / 2**30, 2) if CUDA else None,
                     "dropout saved MiB": round(saved[v][0] / 2**20, 2),
                     "all saved MiB": round(saved[v][1] / 2**20, 2),
                     "losses": losses[v], "step seconds": times[v]})
    note = ("%s: %d nn.Dropout modules replaced by dropout_ext.nn.Dropout and torch.nn.functional.dropout patched"
            " (the attention-probability dropout); bf16 autocast, AdamW, %d interleaved steps each after 2 warm-up"
            " steps; peak = torch.cuda.max_memory_allocated over a step." % (model_name, replaced, steps))
    del models, opts
    if CUDA:
        torch.cuda.empty_cache()
    return rows, note


GPT2_COLUMNS = ["variant", "batch x seq", "layers", "width", "step ms", "vs torch", "peak GiB", "dropout saved MiB",
                "all saved MiB"]


# ----------------------------------------------------------------------------- main

def main(argv=None):
    global P, DEVICE, CUDA, COMPILE_BACKEND, PROFILE_CALLS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of every code path on tiny tensors")
    ap.add_argument("--quick", action="store_true", help="fewer sizes and rounds, a smaller model")
    ap.add_argument("--sizes", help="log2 sizes of the forward, forward+backward and unroll tables (default 24,28)")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--reps", type=int, help="interleaved rounds per median (default 21)")
    ap.add_argument("--p", type=float, default=0.1, help="dropout probability (default 0.1, as issue 12)")
    ap.add_argument("--only", help="comma list of tables: forward,backward,unroll,per_call,family,layout,shard,gpt2")
    ap.add_argument("--skip", default="", help="comma list of tables to skip")
    ap.add_argument("--no-family", action="store_true", help="skip the family table (same as --skip family)")
    ap.add_argument("--gpt2-batch", type=int, help="GPT-2 batch (default 8; 4 with --quick)")
    ap.add_argument("--gpt2-seq", type=int, default=1024)
    ap.add_argument("--gpt2-steps", type=int, help="timed steps per variant (default 6; 4 with --quick)")
    ap.add_argument("--budget", type=float, default=240, help="seconds: tables not started by then are skipped")
    ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                          "results"))
    args = ap.parse_args(argv)
    t_start = time.time()
    P = args.p
    DEVICE = args.device
    CUDA = DEVICE.startswith("cuda")
    dry = not CUDA
    if CUDA and not torch.cuda.is_available():
        sys.exit("bench_gpu.py: no CUDA device (use --device cpu for a dry run)")
    quiet_torch_logs()
    if dry:
        COMPILE_BACKEND = "eager"
        PROFILE_CALLS = 2
    reps = args.reps or (7 if dry else 11 if args.quick else 21)
    sizes = [1 << int(s) for s in args.sizes.split(",")] if args.sizes else \
        [1 << k for k in ((12, 14) if dry else (24,) if args.quick else (24, 28))]
    dtypes = args.dtypes.split(",")
    args.gpt2_steps = args.gpt2_steps or (4 if args.quick else 6)
    args.gpt2_batch = args.gpt2_batch or (4 if args.quick else 8)
    # most important first, except per_call: its host times come before any profiler session
    order = ["per_call", "forward", "backward", "unroll", "family", "layout", "shard", "gpt2"]
    wanted = args.only.split(",") if args.only else order
    skip = set(filter(None, args.skip.split(","))) | ({"family"} if args.no_family else set())
    info = {"device": torch.cuda.get_device_name() if CUDA else "cpu (dry run: timings mean nothing)",
            "torch": torch.__version__, "cuda": torch.version.cuda, "dropout_ext": getattr(dropout_ext, "__version__", "?"),
            "backends": list(dropout_ext.compiled_backends()), "p": P, "reps": reps,
            "profile_calls": PROFILE_CALLS, "compile_backend": COMPILE_BACKEND,
            "backward_storage_default": dropout_ext.backward_storage()}
    os.makedirs(args.out, exist_ok=True)
    result = {"info": info}
    tables = {}
    json_path = os.path.join(args.out, "gpu.json")

    def save():
        info["seconds"] = round(time.time() - t_start, 1)
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1, default=str)

    runners = {
        "forward": lambda: (bench_forward(sizes, dtypes, reps), None),
        "backward": lambda: (bench_backward(sizes, dtypes, reps), None),
        "unroll": lambda: bench_unroll(sizes, dtypes, reps),
        "per_call": lambda: (bench_per_call([8, 12, 16], reps), None),
        "family": lambda: (bench_family(1 << (14 if dry else 24 if args.quick else 26), reps), None),
        "layout": lambda: (bench_layout(reps, dry), None),
        "shard": lambda: (bench_shard(reps, dry), None),
        "gpt2": lambda: bench_gpt2(args, dry),
    }
    class Stopped(Exception):
        pass

    def on_term(signum, frame):  # `timeout` ran out: print what is measured so far
        raise Stopped()

    signal.signal(signal.SIGTERM, on_term)
    for name in order:
        if name not in wanted or name in skip:
            continue
        if tables.get("_stopped"):
            break
        elapsed = time.time() - t_start
        if elapsed > args.budget:
            tables[name] = ([], "skipped: the time budget (--budget %.0f s) was spent after %.0f s" % (args.budget, elapsed))
            print("  .. %s skipped (time budget)" % name, file=sys.stderr, flush=True)
            continue
        t0 = time.time()
        try:
            rows, note = runners[name]()
        except Stopped:
            tables["_stopped"] = True
            rows, note = [], "stopped by SIGTERM (the caller's time limit) while measuring"
            print("  .. %s stopped by SIGTERM" % name, file=sys.stderr, flush=True)
        except Exception as e:  # noqa: BLE001 - one failing table must not lose the others
            traceback.print_exc()
            rows, note = [], "FAILED: %r (traceback on stderr)" % e
            oom = CUDA and isinstance(e, torch.cuda.OutOfMemoryError)
            del e
            if oom and name == "gpt2" and args.gpt2_batch > 1:  # once more, half the batch
                torch.cuda.empty_cache()
                args.gpt2_batch //= 2
                try:
                    rows, note = runners[name]()
                    note = (note or "") + " (batch halved after running out of memory)"
                except Exception as e2:  # noqa: BLE001
                    rows, note = [], "FAILED: %r" % e2
        if CUDA:
            torch.cuda.empty_cache()
        tables[name] = (rows, note)
        result[name] = {"rows": rows, "note": note, "seconds": round(time.time() - t0, 1)}
        save()

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    tables.pop("_stopped", None)
    info["profile_mode"] = PROFILE_MODE
    rep = Report()
    rep.add("\nGPU bench: %(device)s, torch %(torch)s (CUDA %(cuda)s), dropout_ext %(dropout_ext)s, p=%(p)g,"
            " median of %(reps)d interleaved rounds, device time over %(profile_calls)d profiled calls" % info)
    layout = [
        ("gpt2", "(g) GPT-2 training step, torch's dropout against dropout_ext", GPT2_COLUMNS, []),
        ("shard", "(h) Shards (issue 14): the global-index path against the plain one", SHARD_COLUMNS, SHARD_NOTES),
        ("unroll", "(f) Forward by work size per thread (device time)", UNROLL_COLUMNS, []),
        ("layout", "(e) Layouts (issue 11), forward", LAYOUT_COLUMNS, LAYOUT_NOTES),
        ("layout", "(e) Layouts (issue 11), forward + backward(grad)", LAYOUT_FB_COLUMNS, []),
        ("family", "(c) Dropout family, float32", FAMILY_COLUMNS, FAMILY_NOTES),
        ("per_call", "(d) Per call on small tensors (issue 10)", PER_CALL_COLUMNS, PER_CALL_NOTES),
        ("backward", "(b) Forward + backward", BACKWARD_COLUMNS, BACKWARD_NOTES),
        ("forward", "(a) Forward", FORWARD_COLUMNS, FORWARD_NOTES),
    ]
    for name, title, cols, notes in layout:
        if name not in tables:
            continue
        rows, note = tables[name]
        rep.section(title + ", p=%g" % P, rows, cols, ([note] if note else []) + list(notes))
    info["seconds"] = round(time.time() - t_start, 1)
    rep.add("\nGPU bench took %.0f s; figures: %s" % (info["seconds"], json_path))
    save()
    with open(os.path.join(args.out, "gpu_bench.txt"), "w") as f:
        f.write(rep.text())
    return result


if __name__ == "__main__":
    main()
