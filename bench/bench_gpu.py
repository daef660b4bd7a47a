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


DEVICE = "cuda"


def cuda_interleaved(fns, reps, warmup=3):
    if DEVICE != "cuda":  # --device cpu: a dry run of this script's code on the CPU
        from common import interleaved
        return interleaved(fns, reps, warmup)
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
    x = torch.randn(n, dtype=dtype, device=DEVICE)
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
    # every byte read and written: torch keeps a one-byte mask (written forward, read
    # backward); ours reads and writes numel/8 bytes of bits in "bits" mode, none in "seed".
    bytes_fwd = {"copy_": 2 * n * es, "torch": 2 * n * es + n, "ours": 2 * n * es}
    bytes_fb = {"torch": 4 * n * es + 2 * n, "ours seed": 4 * n * es, "ours bits": 4 * n * es + 2 * (n // 8)}
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
        "f+b GB/s torch": round(bytes_fb["torch"] / fwd_bwd["torch"] / 1e9),
        "f+b GB/s seed": round(bytes_fb["ours seed"] / fwd_bwd["ours seed"] / 1e9),
        "f+b GB/s bits": round(bytes_fb["ours bits"] / fwd_bwd["ours bits"] / 1e9),
        "f+b speedup seed": round(fwd_bwd["torch"] / fwd_bwd["ours seed"], 2),
        "f+b speedup bits": round(fwd_bwd["torch"] / fwd_bwd["ours bits"], 2),
    }


def bench_family(n, reps):
    """Family ops on the GPU, float32: fused ops against torch's eager and torch.compile'd
    compositions, channel-wise and drop_path against torch's and timm's forms."""
    x = torch.randn(n, device=DEVICE)
    xv, r, b = x.view(-1, 1024), torch.randn(n, device=DEVICE).view(-1, 1024), torch.randn(1024, device=DEVICE)
    x4 = x.view(64, -1, 16, 16)
    da = torch.compile(lambda x_, r_: r_ + torch.nn.functional.dropout(x_, P), dynamic=False)
    bda = torch.compile(lambda x_, b_, r_: r_ + torch.nn.functional.dropout(x_ + b_, P), dynamic=False)
    cases = {
        "dropout_add": {"ours": lambda: F.dropout_add(xv, r, P),
                        "torch eager": lambda: r + torch.nn.functional.dropout(xv, P),
                        "torch.compile": lambda: da(xv, r)},
        "bias_dropout_add": {"ours": lambda: F.bias_dropout_add(xv, b, r, P),
                             "torch eager": lambda: r + torch.nn.functional.dropout(xv + b, P),
                             "torch.compile": lambda: bda(xv, b, r)},
        "dropout2d": {"ours": lambda: F.dropout2d(x4, P), "torch eager": lambda: torch.nn.functional.dropout2d(x4, P)},
        "drop_path": {"ours": lambda: F.drop_path(x4, P),
                      "torch eager": lambda: x4 * x4.new_empty(64, 1, 1, 1).bernoulli_(1 - P).div_(1 - P)},
    }
    rows = []
    for name, fns in cases.items():
        t = cuda_interleaved(fns, reps)
        row = {"op": name, "numel": "2^%d" % (n.bit_length() - 1), "us ours": round(t["ours"] * 1e6, 1),
               "us torch eager": round(t["torch eager"] * 1e6, 1),
               "vs eager": "%.2fx" % (t["torch eager"] / t["ours"])}
        if "torch.compile" in t:
            row["us torch.compile"] = round(t["torch.compile"] * 1e6, 1)
            row["vs compile"] = "%.2fx" % (t["torch.compile"] / t["ours"])
        rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="24,28")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--reps", type=int, default=25)
    ap.add_argument("--no-family", action="store_true", help="skip the family ops")
    ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--device", default="cuda", help="cpu: dry run of the script without a GPU")
    args = ap.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    rows = [bench(1 << int(s), d, args.reps) for d in args.dtypes.split(",") for s in args.sizes.split(",")]
    family_n = 1 << (26 if DEVICE == "cuda" else 16)
    family = [] if args.no_family else bench_family(family_n, args.reps)
    info = {"device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (dry run)", "torch": torch.__version__,
            "backends": dropout_ext.compiled_backends()}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu.json"), "w") as f:
        json.dump({"info": info, "rows": rows, "family": family}, f, indent=1)
    print("\nGPU bench: %(device)s, torch %(torch)s" % info)
    if family:
        print(table(family, ["op", "numel", "us ours", "us torch eager", "us torch.compile", "vs eager", "vs compile"]))
        print()
    print(table(rows, ["dtype", "numel", "fwd us copy_", "fwd us torch", "fwd us ours", "GB/s copy_", "GB/s torch",
                       "GB/s ours", "ours/copy_ BW"]))
    print()
    print(table(rows, ["dtype", "numel", "f+b us torch", "f+b us seed", "f+b us bits", "f+b GB/s torch",
                       "f+b GB/s seed", "f+b GB/s bits", "f+b speedup seed", "f+b speedup bits"]))
    return rows


if __name__ == "__main__":
    main()
