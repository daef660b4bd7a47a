#!/usr/bin/env bash
# One entry point for a fresh clone (needs only Python 3 and a C++ compiler):
#   ./dev.sh bench   set up .venv, build, run the CPU benchmark against torch
#   ./dev.sh test    set up .venv, build, run the test suite
#   ./dev.sh setup | build | shell-env
# Environment: PYTHON (default python3), VENV (default .venv), MAX_JOBS (default 2),
# TORCH_CUDA_ARCH_LIST (default 9.0 here: one architecture keeps test builds fast; a
# plain `pip install .` builds the release list), DROPOUT_EXT_CUDA=0/1 (see setup.py).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
export MAX_JOBS=${MAX_JOBS:-2}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}

setup() {
  if [ ! -x "$PY" ]; then
    echo "== creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  local stamp="$VENV/.deps-$(sha1sum requirements-dev.txt | cut -c1-12)"
  if [ ! -f "$stamp" ]; then
    echo "== installing requirements-dev.txt (torch is a few GB the first time)"
    "$PY" -m pip install --upgrade pip >/dev/null
    "$PY" -m pip install -r requirements-dev.txt
    rm -f "$VENV"/.deps-*
    touch "$stamp"
  fi
}

build() {
  setup
  echo "== building dropout_ext (MAX_JOBS=$MAX_JOBS, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
  "$PY" -m pip install --no-build-isolation --no-deps -v -e . 2>&1 \
    | sed -n '/dropout_ext build configuration:/,/MAX_JOBS/p; /rror/p; /Successfully/p'
  "$PY" -c "import dropout_ext; print('== compiled backends:', dropout_ext.compiled_backends())"
}

case "${1:-test}" in
  setup) setup ;;
  build) build ;;
  test) build; shift || true; "$PY" -m pytest "$@" ;;
  bench) build; shift || true; "$PY" bench/bench_cpu.py "$@" ;;
  *) echo "usage: ./dev.sh {test|bench|build|setup} [args for pytest or the bench]" >&2; exit 2 ;;
esac
