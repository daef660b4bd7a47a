"""Timing helpers shared by the CPU and GPU benches (SPEC section 5): contenders timed
in one process, interleaved round by round, median of >= 20 repetitions."""
import statistics
import time


def interleaved(fns, reps, warmup=2, sync=None):
    """{name: median seconds}; each round times every contender once, in a rotated order."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    if sync:
        sync()
    times = {name: [] for name in fns}
    names = list(fns)
    for r in range(reps):
        # rotate the order each round: no contender always runs right after the same one
        # (a large allocation just freed by the previous contender changes the cost of the
        # next one's page faults)
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = fns[name]
            if sync:
                sync()
            t0 = time.perf_counter()
            fn()
            if sync:
                sync()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


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


def table(rows, columns):
    """Fixed-width text table of dict rows."""
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    line = "  ".join(c.ljust(widths[c]) for c in columns)
    out = [line, "  ".join("-" * widths[c] for c in columns)]
    for r in rows:
        out.append("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))
    return "\n".join(out)


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
