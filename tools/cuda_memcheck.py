"""Every op once (tools/every_op.py) on the GPU, every dtype and both backward storages,
at odd sizes, offsets, strides and shards, for compute-sanitizer's memcheck
(bench/gpu_check.sh runs it so):

  compute-sanitizer --tool memcheck --error-exitcode 1 python tools/cuda_memcheck.py

--device cpu runs the same calls on the CPU (a dry run of this script)."""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dropout_ext  # noqa: E402
from every_op import chunked, every_op  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--sizes", default="0,1,65,4099", help="comma list of n (default %(default)s)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and "cuda" not in dropout_ext.compiled_backends():
        sys.exit("cuda_memcheck: no CUDA kernels here (compiled: %s)" % (dropout_ext.compiled_backends(),))
    t0, cases, old = time.perf_counter(), 0, dropout_ext.backward_storage()
    try:
        for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            for n in (int(v) for v in args.sizes.split(",")):
                for storage in ("seed", "bits"):
                    dropout_ext.set_backward_storage(storage)
                    every_op(n, dtype, device=args.device)
                    cases += 1
        chunked(args.device)
    finally:
        dropout_ext.set_backward_storage(old)
    if args.device == "cuda":
        torch.cuda.synchronize()
    print("cuda_memcheck: every op in %d cases (dtype x size x storage) and the chunked case on %s, %.1f s"
          % (cases, args.device, time.perf_counter() - t0))


if __name__ == "__main__":
    main()
