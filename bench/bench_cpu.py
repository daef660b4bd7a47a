"""CPU benchmark of dropout_ext against torch (the tables: bench/tables.py).

  python bench/bench_cpu.py            headline tables, about 2 minutes on 2 cores
  python bench/bench_cpu.py --full     the full sweep (full layout sizes, per-ISA rows, the
                                       plot); writes docs/cpu_bench.{txt,json,png}
  python bench/bench_cpu.py --quick    seconds: tiny sizes, 3 rounds (a smoke test, not a measurement)

Every figure is a wall-clock median of interleaved rounds (rotating order, >= 20 rounds
except in --quick) in one process, with torch's default thread count. Forward throughput
counts 2 x numel x element size bytes (one read, one write) for every contender, so GB/s
ratios are time ratios; `x * 2.0` is the memory ceiling under the same allocator (it pays
the same page faults for a fresh output), `mul(out=)` the ceiling without page faults.
--jemalloc runs under jemalloc with freed pages kept (Debian/Ubuntu: libjemalloc2), which
removes those page faults.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tables import main  # noqa: E402

if __name__ == "__main__":
    main("cpu", __doc__)
