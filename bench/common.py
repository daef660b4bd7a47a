"""Timing helpers shared by the CPU and GPU benches (SPEC section 5): contenders timed
in one process, interleaved round by round in a rotating order, median of >= 20
repetitions."""
import gc
import glob
import logging
import os
import statistics
import sys
import time

MIN_REPS = 20  # SPEC section 5: medians of at least 20 interleaved repetitions
# Python's cyclic garbage collector runs when the program has allocated enough objects,
# wherever that happens; a collection landing inside a timed sample charges the whole
# process's object graph to the contender that happened to run (as timeit, the samples
# run with it off, and it collects between them). BENCH_KEEP_GC=1 keeps it on.
KEEP_GC = os.environ.get("BENCH_KEEP_GC") == "1"


def _calibrate(fn, target, cap=10000):
    """How many back-to-back calls of fn make one timed sample of about `target` seconds."""
    t0 = time.perf_counter()
    fn()
    one = time.perf_counter() - t0
    return max(1, min(cap, int(target / max(one, 1e-7))))


def interleaved_samples(fns, reps, warmup=2, sync=None, inner=1, timer=None):
    """{name: [seconds per call, one per round]}. Each round times every contender once, in
    an order rotated by one place per round, so that no contender always runs right after
    the same one (a large allocation just freed by the previous contender changes the cost
    of the next one's page faults).

    inner: calls per timed sample (an int, a {name: int} dict, or "auto" to calibrate each
    contender to about 2 ms per sample): small calls are timed as the mean of a burst, so
    the figure is host time per call. sync: called before and after each sample (e.g.
    torch.cuda.synchronize). timer: optional (name, fn, inner) -> seconds per call, to
    time a sample another way (CUDA events). The samples run with the cyclic garbage
    collector off (see KEEP_GC); young objects are collected between them."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    if sync:
        sync()
    if inner == "auto":
        inner = {name: _calibrate(fn, 2e-3) for name, fn in fns.items()}
        if sync:
            sync()
    counts = inner if isinstance(inner, dict) else {name: inner for name in fns}
    times = {name: [] for name in fns}
    names = list(fns)
    gc_off = gc.isenabled() and not KEEP_GC
    if gc_off:
        gc.disable()
    try:
        for r in range(reps):
            for name in names[r % len(names):] + names[:r % len(names)]:
                fn, k = fns[name], counts[name]
                if gc_off:
                    gc.collect(0)  # between samples: the young objects of the last one
                if timer is not None:
                    times[name].append(timer(name, fn, k))
                    continue
                if sync:
                    sync()
                t0 = time.perf_counter()
                for _ in range(k):
                    fn()
                if sync:
                    sync()
                times[name].append((time.perf_counter() - t0) / k)
    finally:
        if gc_off:
            gc.enable()
    return times


def paired_ratio(samples, a, b):
    """Median over rounds of a's sample / b's sample in the same round: a paired ratio,
    which a slow phase of the machine that spans a round moves less than it moves the
    ratio of the two medians."""
    return statistics.median(x / y for x, y in zip(samples[a], samples[b]))


def interleaved(fns, reps, warmup=2, sync=None, inner=1, timer=None):
    """{name: median seconds per call} of interleaved_samples (same arguments)."""
    samples = interleaved_samples(fns, reps, warmup, sync, inner, timer)
    return {name: statistics.median(v) for name, v in samples.items()}


def saved_bytes(fn):
    """Bytes autograd saves for backward while fn() runs (distinct storages counted once)."""
    import torch

    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.numel(), t.dtype)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


class SavedBytesCounter:
    """Counts the bytes autograd saves inside `with counter.scope():` blocks, over many
    scopes (e.g. every dropout call of a model's forward), each storage once."""

    def __init__(self):
        self.seen = {}

    def _pack(self, t):
        self.seen[(t.untyped_storage().data_ptr(), t.numel(), t.dtype)] = t.numel() * t.element_size()
        return t

    def scope(self):
        import torch

        return torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    @property
    def total(self):
        return sum(self.seen.values())


def table(rows, columns):
    """Fixed-width text table of dict rows; columns that no row has are left out."""
    columns = [c for c in columns if any(c in r for r in rows)]
    if not rows or not columns:
        return "(no rows)"
    widths = {c: max(len(c), *(len(_cell(r.get(c, ""))) for r in rows)) for c in columns}
    line = "  ".join(c.ljust(widths[c]) for c in columns).rstrip()
    out = [line, "  ".join("-" * widths[c] for c in columns)]
    for r in rows:
        out.append("  ".join(_cell(r.get(c, "")).ljust(widths[c]) for c in columns).rstrip())
    return "\n".join(out)


def _cell(v):
    if v is None:
        return "-"
    return str(v)


def ratio(a, b, digits=None):
    """a / b rounded (by default to 2 decimals below 10, 1 above), or None when either is
    missing or b is zero."""
    if a is None or b is None or b == 0:
        return None
    v = a / b
    return round(v, digits if digits is not None else (1 if abs(v) >= 10 else 2))


def log2name(n):
    """'2^k' for a power of two, else the number."""
    return "2^%d" % (n.bit_length() - 1) if n > 0 and n & (n - 1) == 0 else str(n)


def shape_name(t):
    return "x".join(str(s) for s in t.shape)


def with_storage(mode, fn):
    """fn run with dropout_ext's backward storage set to `mode` ("seed" or "bits")."""
    import dropout_ext

    def run():
        old = dropout_ext.backward_storage()
        dropout_ext.set_backward_storage(mode)
        try:
            return fn()
        finally:
            dropout_ext.set_backward_storage(old)
    return run


def fwd_bwd(fn, x, grad=None):
    """A forward+backward contender: fn(leaf) then backward, with `grad` (a tensor shaped
    as the output) or `.sum().backward()` when grad is None. The leaf is made once and its
    .grad dropped before each call, so every call does the same work and nothing from one
    call is kept alive into the next."""
    leaf = x.detach().requires_grad_()

    def run():
        leaf.grad = None
        out = fn(leaf)
        if grad is None:
            out.sum().backward()
        else:
            out.backward(grad)
    return run


def storage_contenders(ours, theirs, x, grad):
    """Forward + backward of torch's op and of ours in each backward storage (CPU and GPU
    bench): {"torch", "ours seed", "ours bits"}."""
    return {"torch": fwd_bwd(theirs, x, grad),
            "ours seed": with_storage("seed", fwd_bwd(ours, x, grad)),
            "ours bits": with_storage("bits", fwd_bwd(ours, x, grad))}


def shard_contenders(F, p, rows_cols, device="cpu"):
    """The shard table's contenders (CPU and GPU bench): dropout and bias_dropout_add on one
    (R, C) float32 tensor, plain, as a column shard (global (R, 2C), offset (0, C)) and as a
    row shard (global (2R, C), offset (R, 0)). Returns (x, {op: (fwd, fb)}, shards), where
    fwd and fb map "plain", "column shard" and "row shard" to contenders."""
    import torch

    R, C = rows_cols
    x = torch.randn(R, C, device=device)
    g = torch.randn_like(x)
    b = torch.randn(C, device=device)
    res = torch.randn_like(x)
    shards = {"plain": {}, "column shard": dict(global_shape=(R, 2 * C), global_offset=(0, C)),
              "row shard": dict(global_shape=(2 * R, C), global_offset=(R, 0))}
    ops = {"dropout": lambda a, kw: F.dropout(a, p, **kw),
           "bias_dropout_add": lambda a, kw: F.bias_dropout_add(a, b, res, p, **kw)}
    contenders = {}
    for op, fn in ops.items():
        fwd = {s: (lambda kw=kw, fn=fn: fn(x, kw)) for s, kw in shards.items()}
        fb = {s: fwd_bwd(lambda a, kw=kw, fn=fn: fn(a, kw), x, g) for s, kw in shards.items()}
        contenders[op] = (fwd, fb)
    return x, contenders, shards


# ----------------------------------------------------------------------------- torch.compile

def layout_contenders(inputs, prepare, ours, theirs, fwd=None):
    """The contenders of a layout table (CPU and GPU bench): ours and torch's forward and
    forward + backward on each input, and ours on each input's contiguous copy (the "vs
    contig" reference). `prepare(x)` gives the op's arguments with x first; the gradient
    has the output's layout. Returns (fwd, fb, inputs-as-prepared)."""
    import torch

    fwd, fb, meta = dict(fwd or {}), {}, {}
    for lay, x in inputs.items():
        args = prepare(x)
        cargs = (args[0].contiguous(),) + args[1:]
        meta[lay] = args[0]
        g = torch.randn_like(ours(*args))
        fwd["ours " + lay] = (lambda a=args: ours(*a))
        fwd["torch " + lay] = (lambda a=args: theirs(*a))
        fb["ours " + lay] = fwd_bwd(lambda v, a=args: ours(v, *a[1:]), args[0], g)
        fb["torch " + lay] = fwd_bwd(lambda v, a=args: theirs(v, *a[1:]), args[0], g)
        if lay != "contiguous":
            fwd["contig " + lay] = (lambda a=cargs: ours(*a))
            fb["contig " + lay] = fwd_bwd(lambda v, a=cargs: ours(v, *a[1:]), cargs[0], g.contiguous())
    return fwd, fb, meta


def quiet_torch_logs():
    """torch.utils.cpp_extension logs 'No CUDA runtime is found' when inductor compiles
    on a machine with a CUDA toolkit and no GPU: an environment notice, not about the op."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def fresh_compile(fn, **kwargs):
    """torch.compile(fn, dynamic=False) for one shape, after torch._dynamo.reset(): each
    compiled contender is compiled for exactly the shape it is timed on, and the code
    object's cache never fills up (no recompile_limit warnings, however many shapes a run
    covers). Call it for every compiled contender of one timing set right before timing
    that set (a later reset drops earlier compiled code)."""
    import torch

    cfg = torch._dynamo.config
    for knob in ("recompile_limit", "cache_size_limit"):  # name differs across torch versions
        if hasattr(cfg, knob):
            setattr(cfg, knob, max(getattr(cfg, knob), 64))
    kwargs.setdefault("dynamic", False)
    return torch.compile(fn, **kwargs)


def reset_compiled():
    import torch

    torch._dynamo.reset()


# ----------------------------------------------------------------------------- the machine

def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def loadavg():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def minor_faults():
    """Minor page faults of this process so far (all threads)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def faults_per_call(fn, calls=3):
    fn()
    before = minor_faults()
    for _ in range(calls):
        fn()
    return round((minor_faults() - before) / calls)


JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"


def find_jemalloc():
    """Path of libjemalloc.so.2 ($JEMALLOC_PATH, or the usual system places), or None."""
    env = os.environ.get("JEMALLOC_PATH")
    if env:
        return env if os.path.exists(env) else None
    for pattern in ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
                    "/usr/lib64/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2",
                    "/usr/lib/*/libjemalloc.so.2", sys.prefix + "/lib/libjemalloc.so.2"):
        for path in sorted(glob.glob(pattern)):
            if os.path.exists(path):
                return path
    return None


def allocator_in_use():
    """'jemalloc', 'tcmalloc' or 'glibc malloc', from the libraries mapped into this process."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return "unknown"
    for name in ("jemalloc", "tcmalloc"):
        if "lib" + name in maps:
            return name
    return "glibc malloc"


class Report:
    """Collects the text of a run (tables and notes) to print and to write to a file."""

    def __init__(self):
        self.parts = []

    def add(self, text, echo=True):
        self.parts.append(text)
        if echo:
            print(text, flush=True)

    def section(self, title, rows, columns, notes=(), echo=True):
        text = "\n" + title + "\n" + table(rows, columns)
        for n in notes:
            text += "\n  " + n
        self.add(text, echo)

    def text(self):
        return "\n".join(self.parts) + "\n"


def progress(msg):
    """A progress line on stderr (stdout carries only the tables)."""
    print("  .. " + msg, file=sys.stderr, flush=True)
