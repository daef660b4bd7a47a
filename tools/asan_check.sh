#!/usr/bin/env bash
# Build the CPU extension with AddressSanitizer into $ASAN_BUILD_DIR (default
# /tmp/dropout_ext_asan) and run every op on every CPU path under it. torch itself is
# not instrumented, so libasan is preloaded and leak detection (which would report
# Python's and torch's own allocations) is off; out-of-bounds reads and writes,
# use-after-free and double frees in our code are caught.
#   bash tools/asan_check.sh [--build-only]
# PYTHON: the interpreter with torch (a command on PATH, or a path, absolute or relative
# to the current directory); default the checkout's .venv/bin/python if there is one,
# else python3. The build is kept in $ASAN_BUILD_DIR and reused while the sources, the
# build settings, the compiler and torch are the same (ASAN_REBUILD=1 forces a build).
set -euo pipefail
CALLER_DIR=$(pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
case "$PY" in
  /*) ;;
  */*) PY="$(cd "$CALLER_DIR" && cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;;  # the venv's own path, not its target
  *) FOUND=$(command -v "$PY") || { echo "asan_check: no interpreter '$PY' on PATH" >&2; exit 2; }; PY=$FOUND ;;
esac
[ -x "$PY" ] || { echo "asan_check: $PY is not an executable interpreter" >&2; exit 2; }

OUT=${ASAN_BUILD_DIR:-/tmp/dropout_ext_asan}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
exec 9>"$OUT/.lock"
flock 9  # one build and run at a time in this folder

STAMP=$( { cat setup.py dropout_ext/_build.py; find dropout_ext/csrc -type f | LC_ALL=C sort | xargs cat;
           echo "${DROPOUT_EXT_TESTING:-1}"; g++ --version; "$PY" -c 'import sys, torch; print(sys.version, torch.__version__, torch.__file__)'; } \
         | sha1sum | cut -c1-16)
if [ "${ASAN_REBUILD:-0}" != 1 ] && [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$STAMP" ] \
   && ls "$OUT"/lib/dropout_ext/_C*.so >/dev/null 2>&1; then
  echo "== reusing the AddressSanitizer build in $OUT (sources, compiler and torch unchanged)"
else
  echo "== building with -fsanitize=address into $OUT"
  rm -rf "$OUT/lib" "$OUT/tmp" "$OUT/stamp"
  DROPOUT_EXT_SANITIZE=address DROPOUT_EXT_CUDA=0 DROPOUT_EXT_TESTING=${DROPOUT_EXT_TESTING:-1} MAX_JOBS=${MAX_JOBS:-2} \
    "$PY" setup.py build_ext --build-lib "$OUT/lib" --build-temp "$OUT/tmp" > "$OUT/build.log" 2>&1 \
    || { tail -30 "$OUT/build.log"; exit 1; }
  echo "$STAMP" > "$OUT/stamp"
fi
[ "${1:-}" = "--build-only" ] && exit 0
cp dropout_ext/*.py "$OUT/lib/dropout_ext/"
LIBASAN=$(g++ -print-file-name=libasan.so)
echo "== running under $LIBASAN with $PY"
cd "$OUT"
LD_PRELOAD="$LIBASAN" ASAN_OPTIONS=detect_leaks=0:detect_odr_violation=0:abort_on_error=1 \
PYTHONPATH="$OUT/lib:$ROOT/tools" "$PY" - <<'PYEOF'
import contextlib, time
import torch, dropout_ext
from dropout_ext import _backend
from every_op import chunked, every_op  # tools/every_op.py
assert dropout_ext.compiled_backends() == ("cpu",), dropout_ext.compiled_backends()
assert dropout_ext.__file__.startswith(__import__("os").getcwd()), dropout_ext.__file__

# cuda-emu (last): the CUDA kernels on the host, the testing module's ops
assert _backend.testing_ops() is not None, _backend.testing_load_error
paths = [(isa, lambda isa=isa: (_backend.cpu_isa(isa), contextlib.nullcontext())[1]) for isa in _backend.cpu_isas_supported()]
paths.append(("cuda-emu", lambda: _backend.use("emulator")))
for isa, enter in paths:
    emu = isa == "cuda-emu"
    t0 = time.perf_counter()
    # cuda-emu: one OS thread per CUDA thread (a slow launch under ASan): three cases, the
    # 16-bit kernels with several blocks, float64 and float32 with partial units
    cases = ([(torch.float16, 1000), (torch.float64, 65), (torch.float32, 7)] if emu else
             [(d, n) for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
              for n in (0, 1, 7, 63, 64, 65, 129, 1000, 4099)])
    with enter():
        for dtype, n in cases:
            for storage in ("bits",) if emu else ("seed", "bits"):
                dropout_ext.set_backward_storage(storage)
                # the emulated tile kernel: seconds a launch under ASan, float64 only
                every_op(n, dtype, tile=not emu or dtype == torch.float64)
        if not emu:
            torch.set_num_threads(3)  # the launcher's split between threads: a few chunks of 2**15 elements
            chunked()
            torch.set_num_threads(1)
    print("   %-8s %.1f s" % (isa, time.perf_counter() - t0), flush=True)
print("asan check passed:", [name for name, _ in paths])
PYEOF
