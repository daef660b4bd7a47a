"""GPU benchmark of dropout_ext against torch, y.copy_(x), torch.add(r, x, out=y) and
torch.compile (the tables: bench/tables.py; the timer: bench/timing.py, GpuTimer).

  python bench/bench_gpu.py                 every table, about 3 to 4 minutes on an H100
  python bench/bench_gpu.py --quick         fewer sizes and rounds, a smaller model
  python bench/bench_gpu.py --device cpu    dry run of every code path on tiny CPU tensors

Every row reports device time (the GPU activities the calls launch, from torch.profiler,
per call) and wall time (CUDA-event time of one call started on an idle GPU) separately;
the per-call table reports host time per call (a burst of calls ended by a synchronize).
Bandwidth fractions count the bytes each op must move: read the input, write the output,
plus the mask bytes it writes (bits: numel / 8) or reads. Tables are printed at the end
(the headline forward and forward+backward tables last) and written with the raw figures
to --out (gpu.json, gpu_bench.txt).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tables import main  # noqa: E402

if __name__ == "__main__":
    main("gpu", __doc__)
