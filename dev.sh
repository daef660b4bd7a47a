#!/usr/bin/env bash
# One entry point for a fresh clone (needs only Python 3 and a C++ compiler):
#   ./dev.sh bench   set up .venv, build, run the CPU benchmark against torch (headline
#                    tables in about 2 minutes; `./dev.sh bench --full` for the full sweep
#                    with the plot and the real-model steps of bench/models.py, `--quick`
#                    for a smoke test, `--help` for the rest)
#   ./dev.sh test    set up .venv, build, run the test suite
#   ./dev.sh wheel-check   a wheel into a fresh venv with the same torch, smoke-tested there
#   ./dev.sh mutants       the mutation check of the test suite (tools/mutants.py)
#   ./dev.sh setup | build | shell-env
# Environment: PYTHON (default python3), VENV (default .venv), MAX_JOBS (default 2),
# TORCH_CUDA_ARCH_LIST (default 9.0 here: one architecture keeps test builds fast; a
# plain `pip install .` builds the release list), DROPOUT_EXT_CUDA=0/1 (see setup.py),
# DROPOUT_EXT_TESTING (default 1 here: the build adds the testing module that the tests
# need, dropout_ext._testing; `cuda` adds its tunable CUDA launcher; 0 for none; see
# setup.py). The wheel of wheel-check is built without it, as `pip install .` is.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
export MAX_JOBS=${MAX_JOBS:-2}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export DROPOUT_EXT_TESTING=${DROPOUT_EXT_TESTING:-1}

# The full pip output goes to these files; the terminal gets one line per step (and the
# log's last lines if a step fails).
SETUP_LOG="$VENV/setup.log"
BUILD_LOG="$VENV/build.log"

fail_with_log() {
  echo "== $1 failed; last lines of $2:" >&2
  tail -30 "$2" >&2
  exit 1
}

setup() {
  if [ ! -x "$PY" ]; then
    echo "== creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  local stamp="$VENV/.deps-$(sha1sum requirements-dev.txt | cut -c1-12)"
  if [ ! -f "$stamp" ]; then
    echo "== installing requirements-dev.txt (torch is a few GB the first time; log: $SETUP_LOG)"
    local t0=$SECONDS
    { "$PY" -m pip install --upgrade pip && "$PY" -m pip install -r requirements-dev.txt; } >"$SETUP_LOG" 2>&1 \
      || fail_with_log "installing requirements-dev.txt" "$SETUP_LOG"
    echo "   installed in $((SECONDS - t0)) s: $("$PY" -c 'import torch; print("torch", torch.__version__)')"
    rm -f "$VENV"/.deps-*
    touch "$stamp"
  fi
}

build() {
  setup
  # Skip the editable install when the sources, the build settings and torch are those of
  # the last build (the stamp below); otherwise ninja recompiles what changed (setup.py
  # keeps the objects in build/temp.*, which the wheel check reuses too).
  local stamp
  stamp="$VENV/.build-$( { cat setup.py dropout_ext/_build.py requirements-dev.txt; find dropout_ext/csrc -type f | sort | xargs cat;
                          echo "$TORCH_CUDA_ARCH_LIST ${DROPOUT_EXT_CUDA:-auto} ${DROPOUT_EXT_SANITIZE:-} testing=$DROPOUT_EXT_TESTING"; } | sha1sum | cut -c1-12)"
  local testing_built=1
  case "$DROPOUT_EXT_TESTING" in
    0|false|off|no) ;;
    *) ls dropout_ext/_testing*.so >/dev/null 2>&1 || testing_built=0 ;;
  esac
  if [ -f "$stamp" ] && ls dropout_ext/_C*.so >/dev/null 2>&1 && [ $testing_built = 1 ]; then
    "$PY" -c "import dropout_ext; print('== dropout_ext is built (sources unchanged); compiled backends:', dropout_ext.compiled_backends(), '; testing module:', dropout_ext._backend.testing_ops() is not None)"
    return
  fi
  echo "== building dropout_ext (MAX_JOBS=$MAX_JOBS, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST; log: $BUILD_LOG)"
  local t0=$SECONDS
  "$PY" -m pip install --no-build-isolation --no-deps -v -e . >"$BUILD_LOG" 2>&1 \
    || fail_with_log "building dropout_ext" "$BUILD_LOG"
  sed -n '/dropout_ext build configuration:/,/MAX_JOBS/{p;/MAX_JOBS/q}' "$BUILD_LOG"  # printed once (pip runs setup.py twice)
  "$PY" -c "import dropout_ext; print('== built in $((SECONDS - t0)) s; compiled backends:', dropout_ext.compiled_backends(), '; testing module:', dropout_ext._backend.testing_ops() is not None)"
  rm -f "$VENV"/.build-*
  touch "$stamp"
}

# Builds a wheel (without the testing module, as `pip install .` does), installs it with
# the same torch into a fresh virtual environment and runs a smoke test there from outside
# the source tree (what a user of the wheel gets; it checks that no development code is in).
wheel_check() {
  setup
  local work
  work=$(mktemp -d)
  echo "== building a wheel (log: $VENV/wheel.log)"
  # setuptools builds extensions in build/lib* before copying them in place, and a wheel
  # takes everything there: a development build's testing module must not ride along.
  rm -f build/lib*/dropout_ext/_testing*
  DROPOUT_EXT_TESTING=0 "$PY" -m pip wheel --no-build-isolation --no-deps -w "$work/dist" . >"$VENV/wheel.log" 2>&1 \
    || fail_with_log "building the wheel" "$VENV/wheel.log"
  local wheel torch_version
  wheel=$(ls "$work"/dist/dropout_ext-*.whl)
  torch_version=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
  echo "== installing $(basename "$wheel"), torch $torch_version and numpy into a fresh venv ($work/venv)"
  "$PYTHON" -m venv "$work/venv"
  "$work/venv/bin/python" -m pip install "torch==$torch_version" numpy "$wheel" >"$VENV/wheel-install.log" 2>&1 \
    || fail_with_log "installing the wheel" "$VENV/wheel-install.log"
  (cd "$work" && "$work/venv/bin/python" "$OLDPWD/tools/wheel_smoke.py")
  rm -rf "$work"
}

case "${1:-test}" in
  setup) setup ;;
  build) build ;;
  test) build; shift || true; "$PY" -m pytest "$@" ;;
  bench) build; shift || true; "$PY" bench/bench_cpu.py "$@"
    # --full: also the real-model training steps (Hugging Face BERT-base and GPT-2 small)
    case " $* " in *" --full "*) "$PY" bench/models.py --out docs ;; esac ;;
  wheel-check) wheel_check ;;
  mutants) build; shift || true; "$PY" tools/mutants.py "$@" ;;
  *) echo "usage: ./dev.sh {test|bench|build|setup|wheel-check|mutants} [args for pytest, the bench or mutants.py]" >&2; exit 2 ;;
esac
