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
PYTHONPATH="$OUT/lib" "$PY" - <<'PYEOF'
import contextlib, time
import torch, dropout_ext
from dropout_ext import _backend, functional as F
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
                x = torch.randn(n, dtype=dtype, requires_grad=True)
                F.dropout(x, 0.3, seed=n).sum().backward()
                y = torch.randn(n, 3, dtype=dtype)
                F.dropout(y.t(), 0.5, inplace=True, seed=1)
                F.dropout1d(y.view(n, 3, 1), 0.5)
                if n:
                    b = torch.randn(3, dtype=dtype, requires_grad=True)
                    r = torch.randn(n, 3, dtype=dtype, requires_grad=True)
                    F.bias_dropout_add(y.requires_grad_(), b, r, 0.2).sum().backward()
                    F.dropout_add(y.detach(), r.detach(), 0.2)
                    F.dropout_add(y.detach(), r.detach().t().contiguous().t(), 0.2, seed=3)  # a residual in its own layout
                    F.bias_dropout_add(y.detach(), torch.randn(6, dtype=dtype)[::2], r.detach(), 0.2)  # a stepped bias
                    F.drop_path(y.detach(), 0.5)
                    z = torch.randn(2, n, 5, 3, dtype=dtype, requires_grad=True)
                    if not emu or dtype == torch.float64:  # the emulated tile kernel: seconds a launch
                        F.dropout(z.permute(3, 1, 0, 2), 0.4).sum().backward()  # tile mode
                    F.dropout(z[:, ::2], 0.4, global_shape=(4, n, 5, 3), global_offset=(1, 0, 0, 0))
                    F.dropout(z.detach()[:, :, 1:], 0.4, global_shape=(2, n, 9, 5), global_offset=(0, 0, 2, 2))
                    F.alpha_dropout(z, 0.3, True).sum().backward()
                    F.feature_alpha_dropout(z.detach().to(memory_format=torch.channels_last), 0.3, True)
                    F.dropout2d(z.detach().to(memory_format=torch.channels_last), 0.3)
                F.dropout(torch.randn(n, dtype=dtype), 1.0)
                # the fused norms: rows of n (odd, past the vector width), every operand, backward
                for hidden, rows in ((n, 3), (max(n, 1), 1)) if n else ():
                    xs = [torch.randn(rows, hidden, dtype=dtype, requires_grad=True) for _ in range(2)]
                    w, b, ib = (torch.randn(hidden, dtype=dtype, requires_grad=True) for _ in range(3))
                    out, hs = F.dropout_add_layer_norm(xs[0], xs[1], w, b, 0.3, input_bias=ib, prenorm=True)
                    (out.sum() + hs.sum()).backward()
                    F.dropout_add_rms_norm(xs[0], xs[1].detach().t().contiguous().t(), w, 0.3,
                                           residual_in_fp32=True).sum().backward()
                    F.dropout_add_layer_norm(xs[0][:, None].expand(rows, 2, hidden), None, None, None, 0.3,
                                             global_shape=(rows + 2, 2, hidden), global_offset=(1, 0, 0))
        if not emu:
            # the launcher's split between threads: a few chunks of 2**15 elements
            torch.set_num_threads(3)
            x = torch.randn(97, 1031, requires_grad=True)
            F.dropout(x, 0.3).sum().backward()
            F.bias_dropout_add(x, torch.randn(1031), torch.randn(97, 1031), 0.3).sum().backward()
            F.dropout(x.detach().t(), 0.3, global_shape=(1031, 200), global_offset=(0, 3))
            F.dropout_add_layer_norm(x, torch.randn(97, 1031), torch.randn(1031), None, 0.3).sum().backward()
            torch.set_num_threads(1)
    print("   %-8s %.1f s" % (isa, time.perf_counter() - t0), flush=True)
print("asan check passed:", [name for name, _ in paths])
PYEOF
