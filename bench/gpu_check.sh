#!/usr/bin/env bash
# One prepared check for a GPU machine that has torch, nvcc and pytest but no network,
# sized for about 15 minutes of GPU time: build for this GPU, run the CUDA tests, run the
# GPU bench, and print a short table last. Usage: bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUTDIR=${OUT:-bench/results}
mkdir -p "$OUTDIR"
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export DROPOUT_EXT_CUDA=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

echo "== build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS)"
t0=$(date +%s)
if ! $PY setup.py build_ext --inplace > "$OUTDIR/build.log" 2>&1; then
  tail -40 "$OUTDIR/build.log"; echo "BUILD FAILED"; exit 1
fi
sed -n '/dropout_ext build configuration:/,/MAX_JOBS/p' "$OUTDIR/build.log"
echo "   built in $(( $(date +%s) - t0 )) s"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
$PY -c "import dropout_ext, torch; print('== backends', dropout_ext.compiled_backends(), torch.cuda.get_device_name())"

echo "== CUDA tests"
t0=$(date +%s)
timeout 420 $PY -m pytest -q -x -p no:cacheprovider tests/test_cuda.py tests/test_philox.py 2>&1 | tail -15 | tee "$OUTDIR/tests.log"
test_rc=${PIPESTATUS[0]}
echo "   tests took $(( $(date +%s) - t0 )) s, exit $test_rc"

echo "== GPU bench"
timeout 240 $PY bench/bench_gpu.py --out "$OUTDIR" 2>&1 | tee "$OUTDIR/bench.log"
exit $test_rc
