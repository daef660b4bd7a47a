"""GPU benchmark: dropout_ext against torch and y.copy_(x), for float32 and bfloat16.

GB/s counts every byte each contender reads and writes: dropout_ext forward reads x and
writes out (plus numel/8 mask bytes when storing bits); torch's forward also writes its
one-byte-per-element mask; copy_ reads and writes once. Times are CUDA-event medians of
interleaved rounds. Writes bench/results/gpu.json (or --out) and prints a table last.
"""
import argparse
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import table, with_storage  # noqa: E402

import dropout_ext  # noqa: E402
from dropout_ext import functional as F  # noqa: E402

P = 0.5
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def cuda_interleaved(fns, reps, warmup=3):
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    times = {k: [] for k in fns}
    for _ in range(reps):
        events = {}
        for name, fn in fns.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            events[name] = (start, end)
        torch.cuda.synchronize()
        for name, (s, e) in events.items():
            times[name].append(s.elapsed_time(e) / 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def bench(n, dtype_name, reps):
    dtype = DTYPES[dtype_name]
    es = torch.empty((), dtype=dtype).element_size()
    x = torch.randn(n, dtype=dtype, device="cuda")
    y = torch.empty_like(x)
    g = torch.randn_like(x)
    xr = x.detach().requires_grad_()

    def fb(fn):
        def run():
            xr.grad = None
            fn(xr).backward(g)
        return run

    fwd = cuda_interleaved({
        "copy_": lambda: y.copy_(x),
        "torch": lambda: torch.nn.functional.dropout(x, P),
        "ours": lambda: F.dropout(x, P),
    }, reps)
    fwd_bwd = cuda_interleaved({
        "torch": fb(lambda t: torch.nn.functional.dropout(t, P)),
        "ours seed": with_storage("seed", fb(lambda t: F.dropout(t, P))),
        "ours bits": with_storage("bits", fb(lambda t: F.dropout(t, P))),
    }, reps)
    bytes_fwd = {"copy_": 2 * n * es, "torch": 2 * n * es + n, "ours": 2 * n * es}
    return {
        "dtype": dtype_name, "numel": "2^%d" % (n.bit_length() - 1),
        "fwd us copy_": round(fwd["copy_"] * 1e6, 1),
        "fwd us torch": round(fwd["torch"] * 1e6, 1),
        "fwd us ours": round(fwd["ours"] * 1e6, 1),
        "GB/s copy_": round(bytes_fwd["copy_"] / fwd["copy_"] / 1e9),
        "GB/s torch": round(bytes_fwd["torch"] / fwd["torch"] / 1e9),
        "GB/s ours": round(bytes_fwd["ours"] / fwd["ours"] / 1e9),
        "ours/copy_ BW": round(bytes_fwd["ours"] / fwd["ours"] / (bytes_fwd["copy_"] / fwd["copy_"]), 3),
        "f+b us torch": round(fwd_bwd["torch"] * 1e6, 1),
        "f+b us seed": round(fwd_bwd["ours seed"] * 1e6, 1),
        "f+b us bits": round(fwd_bwd["ours bits"] * 1e6, 1),
        "f+b speedup seed": round(fwd_bwd["torch"] / fwd_bwd["ours seed"], 2),
        "f+b speedup bits": round(fwd_bwd["torch"] / fwd_bwd["ours bits"], 2),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="24,28")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--reps", type=int, default=25)
    ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args(argv)
    rows = [bench(1 << int(s), d, args.reps) for d in args.dtypes.split(",") for s in args.sizes.split(",")]
    info = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "backends": dropout_ext.compiled_backends()}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu.json"), "w") as f:
        json.dump({"info": info, "rows": rows}, f, indent=1)
    print("\nGPU bench: %(device)s, torch %(torch)s" % info)
    print(table(rows, ["dtype", "numel", "GB/s copy_", "GB/s torch", "GB/s ours", "ours/copy_ BW",
                       "f+b us torch", "f+b us seed", "f+b us bits", "f+b speedup seed", "f+b speedup bits"]))
    return rows


if __name__ == "__main__":
    main()
