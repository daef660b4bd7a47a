#!/usr/bin/env bash
# One prepared check for a GPU machine that has torch, nvcc, pytest and hypothesis but no
# network, in at most about 7 minutes: build in place for this GPU with all cores, print
# the build configuration and the kernels' register/spill counts, run the CUDA kernel
# tests and, beside them in another process, the CUDA torch.compile tests (a fresh
# machine's first compiles take minutes), every op once under compute-sanitizer's memcheck
# (tools/cuda_memcheck.py), run the GPU bench (host times first, in a process
# that has not yet run the profiler; the fused norms included) and the real-model steps
# (bench/models.py), and print the tables last.
#
#   bash bench/gpu_check.sh            logs, figures and tables go to $OUT (default bench/results)
#
# Environment: OUT, PYTHON (default python3), GPU_CHECK_SECONDS (whole run, default 420),
# PTXAS_VERBOSE=0 (skip -Xptxas -v), BENCH_ARGS (extra arguments for bench/bench_gpu.py,
# e.g. "--quick" or "--only per_call,backward"), GPU_CHECK_TESTS=0 (skip the tests, for a
# rerun that only measures). Each stage runs under `timeout`, sized to leave room for the
# next ones.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
TOTAL=${GPU_CHECK_SECONDS:-420}
left() { echo $(( TOTAL - ($(date +%s) - T0) )); }
clamp() { local v=$1; [ "$v" -gt "$3" ] && v=$3; [ "$v" -lt "$2" ] && v=$2; echo "$v"; }

PY=${PYTHON:-python3}
OUTDIR=${OUT:-bench/results}
mkdir -p "$OUTDIR"
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export DROPOUT_EXT_CUDA=1
export DROPOUT_EXT_TESTING=cuda  # the testing module with its tunable CUDA launcher: the bench's unroll sweep
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}
export PYTHONUNBUFFERED=1
if [ "${PTXAS_VERBOSE:-1}" != "0" ]; then
  export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:-} -Xptxas -v"  # read by nvcc itself
fi

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader || true
$PY -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda, "|", torch.cuda.get_device_name())'
nvcc --version | tail -2 | head -1 || true
echo "   nproc $(nproc), MAX_JOBS=$MAX_JOBS, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"

echo "== build (log: $OUTDIR/build.log)"
t0=$(date +%s)
# at least 180 s whatever GPU_CHECK_SECONDS says: a build on a fresh machine takes 35 s to
# 90 s, and without a build nothing else can run
T=$(clamp $(( $(left) - 150 )) 180 240)
timeout -k 10 "$T" $PY setup.py build_ext --inplace > "$OUTDIR/build.log" 2>&1
build_rc=$?
sed -n '/dropout_ext build configuration:/,/MAX_JOBS/p' "$OUTDIR/build.log"
if [ $build_rc -ne 0 ]; then
  grep -n "error" "$OUTDIR/build.log" | head -20; tail -30 "$OUTDIR/build.log"
  echo "BUILD FAILED (exit $build_rc$([ $build_rc -eq 124 ] && echo ": timed out after ${T}s"))"; exit 1
fi
echo "   built in $(( $(date +%s) - t0 )) s"
if [ "${PTXAS_VERBOSE:-1}" != "0" ]; then
  # one file (the device tool brings back at most 8): the 10 largest, then every kernel
  { $PY tools/ptxas_summary.py "$OUTDIR/build.log"; echo; echo "every kernel:"
    $PY tools/ptxas_summary.py --all "$OUTDIR/build.log"; } > "$OUTDIR/ptxas.txt" 2>&1
  head -12 "$OUTDIR/ptxas.txt"; echo "   (every kernel: $OUTDIR/ptxas.txt)"
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
$PY -c "import dropout_ext, torch; print('== backends', dropout_ext.compiled_backends(), torch.cuda.get_device_name())" || exit 1

test_rc=0
compile_rc=0
COMPILE_TESTS="torch_compile or compile_fullgraph"
if [ "${GPU_CHECK_TESTS:-1}" != "0" ]; then
echo "== CUDA tests (logs: $OUTDIR/tests.log, $OUTDIR/tests_compile.log)"
t0=$(date +%s)
# torch.compile's first compiles on a fresh machine take minutes: those tests
# (torch_compile, compile_fullgraph) run in a process of their own beside the kernel tests
# (the machine has cores to spare), under their own timeout, so that they can hide neither
# the kernel tests nor the figures; the bench starts when both are done.
TC=$(clamp $(( $(left) - 170 )) 60 180)
rm -f /tmp/gpu_check_compile_rc
( timeout -k 10 "$TC" $PY -m pytest -q -rfE -p no:cacheprovider -m cuda -k "$COMPILE_TESTS" tests \
    > "$OUTDIR/tests_compile.log" 2>&1; echo $? > /tmp/gpu_check_compile_rc ) &
COMPILE_PID=$!
T=$(clamp $(( $(left) - 130 )) 60 150)
# -m cuda: every test that runs on the GPU (the kernels "cuda" and "python-cuda", the
# device "cuda", the CUDA-only tests), whatever file its feature lives in
timeout -k 10 "$T" $PY -m pytest -q -rfE --maxfail=25 -p no:cacheprovider --durations=5 -m cuda \
  -k "not ($COMPILE_TESTS)" tests > "$OUTDIR/tests.log" 2>&1
test_rc=$?
grep -E "^(FAILED|ERROR)" "$OUTDIR/tests.log" | head -25
grep -E "^[0-9.]+s (call|setup)" "$OUTDIR/tests.log" | head -5
tail -1 "$OUTDIR/tests.log"
echo "   kernel tests took $(( $(date +%s) - t0 )) s, exit $test_rc$([ $test_rc -eq 124 ] && echo " (timed out after ${T}s)")"
wait "$COMPILE_PID"
compile_rc=$(cat /tmp/gpu_check_compile_rc 2>/dev/null || echo 1)
grep -E "^(FAILED|ERROR)" "$OUTDIR/tests_compile.log" | head -10
tail -1 "$OUTDIR/tests_compile.log"
echo "   torch.compile tests: exit $compile_rc$([ "$compile_rc" -eq 124 ] && echo " (timed out after ${TC}s)"), both done after $(( $(date +%s) - t0 )) s"
fi

memcheck_rc=0
SANITIZER=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
if [ -x "$SANITIZER" ]; then
  echo "== compute-sanitizer memcheck over every op (tools/cuda_memcheck.py; log: $OUTDIR/memcheck.log)"
  T=$(clamp $(( $(left) - 240 )) 30 90)
  timeout -k 5 "$T" "$SANITIZER" --tool memcheck --error-exitcode 1 $PY tools/cuda_memcheck.py \
    > "$OUTDIR/memcheck.log" 2>&1
  memcheck_rc=$?
  grep -E "ERROR SUMMARY|^cuda_memcheck" "$OUTDIR/memcheck.log" | tail -3
  [ $memcheck_rc -ne 0 ] && { echo "   memcheck exit $memcheck_rc$([ $memcheck_rc -eq 124 ] && echo " (timed out after ${T}s)"):"
                              grep -m 10 "=========" "$OUTDIR/memcheck.log"; }
else
  echo "== compute-sanitizer not found: memcheck skipped"
fi

echo "== GPU bench (progress: $OUTDIR/bench.err; tables: $OUTDIR/gpu_bench.txt; figures: $OUTDIR/gpu.json)"
t0=$(date +%s)
T=$(clamp $(( $(left) - 100 )) 60 400)
BUDGET=$(( T - 40 ))
# shellcheck disable=SC2086
timeout -k 15 "$T" $PY bench/bench_gpu.py --out "$OUTDIR" --budget "$BUDGET" ${BENCH_ARGS:-} 2> "$OUTDIR/bench.err" \
  > /tmp/gpu_bench.log
bench_rc=$?
echo "   bench took $(( $(date +%s) - t0 )) s, exit $bench_rc"
if [ $bench_rc -ne 0 ]; then
  echo "== bench exit $bench_rc; last lines of $OUTDIR/bench.err:"; grep -v "USDT\|^  \.\." "$OUTDIR/bench.err" | tail -15
fi

models_rc=0
if [ "$(left)" -gt 90 ]; then
  # Hugging Face BERT and GPT-2 where transformers is installed, else GPT-2 in plain torch
  echo "== real models (bench/models.py --device cuda; log: $OUTDIR/models.log)"
  timeout -k 10 $(( $(left) - 30 )) $PY bench/models.py --device cuda --steps 10 --out "$OUTDIR" \
    > "$OUTDIR/models.log" 2>&1
  models_rc=$?
  [ $models_rc -ne 0 ] && { echo "   models.py exit $models_rc:"; tail -5 "$OUTDIR/models.log"; }
else
  echo "== real models: skipped (no time left)"
fi

cat /tmp/gpu_bench.log  # the tables (also in $OUTDIR/gpu_bench.txt)
sed -n '/^Training step/,$p' "$OUTDIR/models.log" 2>/dev/null
echo "== gpu_check took $(( $(date +%s) - T0 )) s: build ok, kernel tests exit $test_rc, torch.compile tests exit $compile_rc, memcheck exit $memcheck_rc, bench exit $bench_rc, models exit $models_rc"
[ $test_rc -eq 0 ] && [ $compile_rc -eq 0 ] && [ $memcheck_rc -eq 0 ] && [ $bench_rc -eq 0 ]
