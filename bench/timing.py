"""How the bench times its contenders, and the text it writes.

Contenders are timed in one process, interleaved round by round in a rotating order, and
reported as medians. A timer's measure(fns, reps) gives {name: {"t": seconds per call, ...}}:
- CpuTimer: "t" is the wall-clock time of a call.
- GpuTimer: "t" is device time (the GPU activities a call launches, from torch.profiler),
  with "wall" (one call started on an idle GPU, from CUDA events), "n" (activities per
  call) and "kernels" (their names) beside it. Without CUDA it runs every code path with
  CPU operators standing in for kernels: a dry run, whose figures mean nothing.
"""
import gc
import glob
import logging
import os
import statistics
import sys
import time

import torch

MIN_REPS = 20  # a measurement is a median of at least this many interleaved rounds
# A cyclic garbage collection landing inside a timed sample would charge the whole process's
# object graph to whichever contender ran; as timeit does, samples run with the collector
# off and the young objects are collected between them. BENCH_KEEP_GC=1 keeps it on.
KEEP_GC = os.environ.get("BENCH_KEEP_GC") == "1"


def interleaved_samples(fns, reps, warmup=2, sync=None, inner=1, timer=None):
    """{name: [seconds per call, one per round]}. Each round times every contender once, in
    an order rotated by one place per round, so that no contender always runs right after
    the same one (a large allocation just freed by the previous one changes the cost of the
    next one's page faults). inner: calls per sample (an int, a {name: int} dict, or "auto":
    about 2 ms per sample, so that small calls are timed as the mean of a burst). sync:
    called before and after each sample. timer(name, fn, inner): times a sample another way."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    if sync:
        sync()
    if inner == "auto":
        def calls(fn):
            t0 = time.perf_counter()
            fn()
            return max(1, min(10000, int(2e-3 / max(time.perf_counter() - t0, 1e-7))))
        inner = {name: calls(fn) for name, fn in fns.items()}
    counts = inner if isinstance(inner, dict) else dict.fromkeys(fns, inner)
    times, names = {name: [] for name in fns}, list(fns)
    gc_off = gc.isenabled() and not KEEP_GC
    if gc_off:
        gc.disable()
    try:
        for r in range(reps):
            for name in names[r % len(names):] + names[:r % len(names)]:
                fn, k = fns[name], counts[name]
                if gc_off:
                    gc.collect(0)
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


def interleaved(fns, reps, warmup=2, sync=None, inner=1, timer=None):
    """{name: median seconds per call} of interleaved_samples (same arguments)."""
    return {k: statistics.median(v) for k, v in interleaved_samples(fns, reps, warmup, sync, inner, timer).items()}


def paired_ratio(samples, a, b):
    """Median over rounds of a's sample / b's in the same round: a slow phase of the machine
    that spans a round moves it less than it moves the ratio of the two medians."""
    return statistics.median(x / y for x, y in zip(samples[a], samples[b]))


class CpuTimer:
    """Wall-clock medians of interleaved rounds."""
    gpu, profile_calls, profile_mode = False, None, None

    def sync(self):
        pass

    def measure(self, fns, reps):
        return {k: {"t": v} for k, v in interleaved(fns, reps).items()}

    def host_samples(self, fns, reps):
        """Host time per call of small calls: bursts of about 2 ms per sample."""
        return interleaved_samples(fns, reps, warmup=5, inner="auto")


_SKIP_NAMES = ("Sync", "Wait Event", "Overhead", "Instrumentation")
_SKIP_TYPES = ("gpu_user_annotation", "cuda_sync", "overhead", "user_annotation", "python_function")


def _is_marker(name):
    return "spin_kernel" in name or name == "bench::marker"


class GpuTimer:
    """Device time: the contenders' calls run under torch.profiler and the durations of the
    GPU activities they launch (kernels, and the memcpy/memset an op issues itself) are
    summed per call. The contenders of one set share a profiler session, separated by
    marker kernels (torch.cuda._sleep); where the markers are not found as expected, each
    contender gets a session of its own. Wall time: CUDA-event time of one call started on
    an idle GPU (synchronize before each call), median of interleaved rounds."""
    gpu = True

    def __init__(self, cuda, profile_calls):
        self.cuda, self.profile_calls = cuda, profile_calls
        self.profile_mode = "one profiler session per table, contenders separated by marker kernels"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    @staticmethod
    def _event_timer(name, fn, k):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(k):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / k

    def measure(self, fns, reps):
        wall = interleaved(fns, reps, warmup=3, sync=self.sync, timer=self._event_timer if self.cuda else None)
        dev = self.device_times(fns)
        return {k: dict(dev[k], wall=wall[k]) for k in fns}

    def host_samples(self, fns, reps):
        """Host time per call of small calls: bursts of about 2 ms ended by a synchronize;
        host times scatter more than device times: twice the rounds, at least 41."""
        return interleaved_samples(fns, max(2 * reps, 41), warmup=5, sync=self.sync, inner="auto")

    def _profile(self, fns, activities):
        """[(start_us, end_us, name)] of the device work of fns' calls, markers between them.
        CUDA: the GPU activities, without synchronization records and annotation ranges (an
        interval that contains the next one). Dry run: the top-level CPU ops."""
        from torch.autograd import DeviceType
        from torch.profiler import profile

        def marker():
            if self.cuda:
                torch.cuda._sleep(1000)  # a tiny kernel named ...spin_kernel...
            else:
                with torch.profiler.record_function("bench::marker"):
                    pass

        self.sync()
        with profile(activities=activities) as prof:
            for fn in fns.values():
                self.sync()
                marker()
                self.sync()
                for _ in range(self.profile_calls):
                    fn()
                self.sync()
            marker()
            self.sync()
        evs = []
        for e in prof.events():
            if self.cuda:
                kind = str(getattr(e, "activity_type", "") or "").lower()
                keep = e.device_type == DeviceType.CUDA and kind not in _SKIP_TYPES and not any(
                    s in e.name for s in _SKIP_NAMES)
            else:
                keep = e.name == "bench::marker" or (e.device_type == DeviceType.CPU and e.cpu_parent is None
                                                     and not getattr(e, "is_python_function", False))
            if keep:
                evs.append((e.time_range.start, e.time_range.end, e.name))
        evs.sort(key=lambda v: (v[0], -v[1]))
        return [v for i, v in enumerate(evs) if not (self.cuda and i + 1 < len(evs) and not _is_marker(v[2])
                                                     and evs[i + 1] != v and v[0] <= evs[i + 1][0]
                                                     and evs[i + 1][1] <= v[1])]

    @staticmethod
    def _split(evs, count):
        """Events between consecutive markers, `count` groups, or None when the markers are off."""
        marks = [i for i, v in enumerate(evs) if _is_marker(v[2])]
        return [evs[a + 1:b] for a, b in zip(marks, marks[1:])] if len(marks) == count + 1 else None

    def device_times(self, fns):
        """{name: {"t": device seconds per call, "n": activities per call, "kernels": {name: per call}}}."""
        from torch.profiler import ProfilerActivity as PA

        for fn in fns.values():  # warm: compiled code, caches, allocator
            fn()
        self.sync()
        acts = [PA.CUDA] if self.cuda else [PA.CPU]
        groups = self._split(self._profile(fns, acts), len(fns))
        if groups is None and self.cuda:  # some torch versions need CPU activity to see GPU events
            groups = self._split(self._profile(fns, [PA.CPU, PA.CUDA]), len(fns))
        if groups is None:  # one session per contender; unrecognised markers (tiny) are then counted
            self.profile_mode = "one profiler session per contender (markers not found)"
            groups = []
            for name, fn in fns.items():
                evs = self._profile({name: fn}, acts)
                groups.append((self._split(evs, 1) or [[v for v in evs if not _is_marker(v[2])]])[0])
        out, calls = {}, self.profile_calls
        for name, group in zip(fns, groups):
            names = {}
            for _, _, n in group:
                names[n] = names.get(n, 0) + 1
            out[name] = {"t": sum(e - s for s, e, _ in group) / 1e6 / calls, "n": round(len(group) / calls, 2),
                         "kernels": {k[:160]: round(v / calls, 2)
                                     for k, v in sorted(names.items(), key=lambda kv: -kv[1])}}
        return out


# ----------------------------------------------------------------------------- figures and text

def ratio(a, b, digits=None):
    """a / b rounded (to 2 decimals below 10, 1 above, unless digits), None if a or b is missing or b is 0."""
    if a is None or b is None or b == 0:
        return None
    return round(a / b, digits if digits is not None else (1 if abs(a / b) >= 10 else 2))


def ms(seconds):
    return None if seconds is None else round(seconds * 1e3, 3 if seconds < 1e-2 else 2)


def us(seconds):
    return None if seconds is None else round(seconds * 1e6, 1)


def log2name(n):
    """'2^k' for a power of two, else the number."""
    return "2^%d" % (n.bit_length() - 1) if n > 0 and n & (n - 1) == 0 else str(n)


def shape_name(t):
    return "x".join(map(str, t.shape))


HIDDEN = {"n", "seconds", "kernels", "losses", "step seconds"}  # JSON only, unless a table names them


def table(rows, columns=None):
    """Fixed-width text table of dict rows; columns no row has are left out. columns: a list,
    a test of a key, or None: the keys of the rows, in their order, but HIDDEN. With a test,
    rows that have none of the chosen keys beyond those every row has are left out."""
    if not isinstance(columns, list):
        keys = dict.fromkeys(k for r in rows for k in r)
        columns = [k for k in keys if (columns(k) if columns else True) and k not in HIDDEN]
        common = set(keys).intersection(*rows) if rows else set()
        if set(columns) - common:
            rows = [r for r in rows if any(c in r for c in columns if c not in common)]
    columns = [c for c in columns if any(c in r for r in rows)]
    if not rows or not columns:
        return "(no rows)"
    cells = [["-" if r.get(c, "") is None else str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    lines = [columns, ["-" * w for w in widths]] + cells
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines)


class Report:
    """The text of a run (tables and notes): printed as it comes, and kept for a file."""

    def __init__(self):
        self.parts = []

    def add(self, text):
        self.parts.append(text)
        print(text, flush=True)

    def section(self, title, rows, columns, notes=()):
        self.add("\n" + title + "\n" + table(rows, columns) + "".join("\n  " + n for n in notes))

    def text(self):
        return "\n".join(self.parts) + "\n"


def progress(msg):
    """A progress line on stderr (stdout carries only the tables)."""
    print("  .. " + msg, file=sys.stderr, flush=True)


def quiet_torch_logs():
    """torch.utils.cpp_extension logs 'No CUDA runtime is found' when inductor compiles on a
    machine with a CUDA toolkit and no GPU: an environment notice, not about the op."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


# ----------------------------------------------------------------------------- the machine

def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or "unknown"


def loadavg():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def faults_per_call(fn, calls=3):
    """Minor page faults of this process (all threads) per call of fn."""
    import resource

    fn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        fn()
    return round((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls)


JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"


def find_jemalloc():
    """Path of libjemalloc.so.2 ($JEMALLOC_PATH, or the usual system places), or None."""
    env = os.environ.get("JEMALLOC_PATH")
    if env:
        return env if os.path.exists(env) else None
    for pattern in ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
                    "/usr/lib64/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2",
                    "/usr/lib/*/libjemalloc.so.2", sys.prefix + "/lib/libjemalloc.so.2"):
        found = [p for p in sorted(glob.glob(pattern)) if os.path.exists(p)]
        if found:
            return found[0]
    return None


def allocator_in_use():
    """'jemalloc', 'tcmalloc' or 'glibc malloc', from the libraries mapped into this process."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return "unknown"
    return next((name for name in ("jemalloc", "tcmalloc") if "lib" + name in maps), "glibc malloc")
