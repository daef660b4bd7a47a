"""GPU benchmark of the fused dropout + residual add + LayerNorm op (dropout_add_norm, the CUDA
kernels of csrc/cuda/norm_kernel.cuh) against y.copy_(x), torch's eager composition
(dropout, add, layer_norm) and torch.compile of that composition. The timer: bench/timing.py,
GpuTimer (device time from torch.profiler, median of interleaved rounds).

  python bench/bench_norm_gpu.py                  bfloat16 and float32, rows x hidden below
  python bench/bench_norm_gpu.py --quick          fewer shapes and rounds
  python bench/bench_norm_gpu.py --device cpu     dry run of every code path on tiny CPU tensors

Columns, per shape and dtype:
  fwd/copy   the forward's bandwidth (the bytes it must move: x, residual, h, out and the
             keep bits) over copy_'s (goal: >= 0.85)
  eager/fwd, compile/fwd           forward device time of the contenders over the fused op's
  eager/f+b, compile/f+b           forward + backward (goals: >= 2.0 and >= 1.1)
ptxas registers and spills of the kernels: build with NVCC_APPEND_FLAGS="-Xptxas -v" and run
bench/ptxas_summary.py on the build log --match norm.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import GpuTimer, MIN_REPS, table  # noqa: E402

import dropout_ext  # noqa: E402,F401  (loads the ops)

SHAPES = [(8192, 768), (8192, 1024), (8192, 4096), (4096, 8192), (2048, 16384), (256, 65536)]
QUICK = [(8192, 1024), (4096, 8192)]
P, EPS = 0.1, 1e-5


def contenders(rows, hidden, dtype, device):
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(rows, hidden, dtype=dtype, device=device, generator=g)
    r = torch.randn(rows, hidden, dtype=dtype, device=device, generator=g)
    w = torch.randn(hidden, dtype=dtype, device=device, generator=g)
    b = torch.randn(hidden, dtype=dtype, device=device, generator=g)
    dy = torch.randn(rows, hidden, dtype=dtype, device=device, generator=g)
    rng = torch.tensor([1234, 0], dtype=torch.int64, device=device)
    copy_src, copy_dst = torch.empty_like(x), torch.empty_like(x)
    ops = torch.ops.dropout_ext

    def fused():
        return ops.dropout_add_norm(x, r, w, b, None, rng, None, P, EPS, False, False, 1)

    def eager(x, r, w, b):
        h = r + F.dropout(x, P, training=True)
        return F.layer_norm(h, (hidden,), w, b, EPS), h

    compiled = torch.compile(eager, dynamic=False)
    leaves = [t.detach().requires_grad_() for t in (x, r, w, b)]

    def fused_fb():
        out, h, *_ = ops.dropout_add_norm(*leaves[:2], *leaves[2:], None, rng, None, P, EPS, False, False, 1)
        torch.autograd.grad(out, leaves, dy)

    def eager_fb(fn):
        def run():
            out, h = fn(*leaves)
            torch.autograd.grad(out, leaves, dy)
        return run

    fwd = {"copy": lambda: copy_dst.copy_(copy_src), "fused": fused, "eager": lambda: eager(x, r, w, b),
           "compile": lambda: compiled(x, r, w, b)}
    fb = {"fused": fused_fb, "eager": eager_fb(eager), "compile": eager_fb(compiled)}
    size = x.element_size()
    fwd_bytes = rows * hidden * (4 * size) + rows * hidden // 8  # x, residual, h, out; keep bits
    return fwd, fb, fwd_bytes, 2 * rows * hidden * size


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    cuda = args.device == "cuda"
    timer = GpuTimer(cuda, 10 if cuda else 1)
    shapes = QUICK if args.quick else SHAPES
    if not cuda:
        shapes = [(64, 768), (8, 4097)]
    reps = MIN_REPS if cuda and not args.quick else 3
    rows_out = []
    for dtype in (torch.bfloat16, torch.float32):
        for rows, hidden in shapes:
            fwd, fb, fwd_bytes, copy_bytes = contenders(rows, hidden, dtype, args.device)
            f = timer.measure(fwd, reps)
            b = timer.measure(fb, reps)
            t = {k: v["t"] for k, v in f.items()}
            tb = {k: v["t"] for k, v in b.items()}
            rows_out.append({
                "dtype": str(dtype).split(".")[-1], "rows x hidden": "%d x %d" % (rows, hidden),
                "fused fwd us": "%.1f" % (t["fused"] * 1e6),
                "fwd/copy": "%.3f" % ((fwd_bytes / t["fused"]) / (copy_bytes / t["copy"])),
                "eager/fwd": "%.2f" % (t["eager"] / t["fused"]), "compile/fwd": "%.2f" % (t["compile"] / t["fused"]),
                "fused f+b us": "%.1f" % (tb["fused"] * 1e6),
                "eager/f+b": "%.2f" % (tb["eager"] / tb["fused"]), "compile/f+b": "%.2f" % (tb["compile"] / tb["fused"]),
                "fused kernels": ", ".join(k.split("(")[0][-40:] for k in f["fused"]["kernels"]),
            })
            print(rows_out[-1], flush=True)
    print(table(rows_out))
    if not cuda:
        print("(dry run on the CPU: the figures mean nothing)")


if __name__ == "__main__":
    main()
