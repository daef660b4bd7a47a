#!/usr/bin/env bash
# Build the CPU extension with AddressSanitizer into $ASAN_BUILD_DIR (default
# /tmp/dropout_ext_asan) and run every op on every CPU path under it. torch itself is
# not instrumented, so libasan is preloaded and leak detection (which would report
# Python's and torch's own allocations) is off; out-of-bounds reads and writes,
# use-after-free and double frees in our code are caught.
#   bash tools/asan_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${ASAN_BUILD_DIR:-/tmp/dropout_ext_asan}
mkdir -p "$OUT"
echo "== building with -fsanitize=address into $OUT"
DROPOUT_EXT_SANITIZE=address DROPOUT_EXT_CUDA=0 DROPOUT_EXT_TESTING=1 MAX_JOBS=${MAX_JOBS:-2} \
  "$PY" setup.py build_ext --build-lib "$OUT/lib" --build-temp "$OUT/tmp" > "$OUT/build.log" 2>&1 \
  || { tail -30 "$OUT/build.log"; exit 1; }
cp -r dropout_ext/*.py "$OUT/lib/dropout_ext/"
LIBASAN=$(g++ -print-file-name=libasan.so)
echo "== running under $LIBASAN"
cd "$OUT"
LD_PRELOAD="$LIBASAN" ASAN_OPTIONS=detect_leaks=0:detect_odr_violation=0:abort_on_error=1 \
PYTHONPATH="$OUT/lib" "$OLDPWD/$PY" - <<'PYEOF'
import torch, dropout_ext
from dropout_ext import _backend, functional as F
assert dropout_ext.compiled_backends() == ("cpu",), dropout_ext.compiled_backends()
# cuda-emu (last): the CUDA kernels on the host, the testing module's ops (one OS thread per
# CUDA thread under ASan: fewer cases)
assert _backend.testing_ops() is not None, _backend.testing_load_error
for isa in _backend.cpu_isas_supported() + ["cuda-emu"]:
    emu = isa == "cuda-emu"
    if emu:
        _backend.use("emulator").__enter__()  # for the rest of the run
    else:
        _backend.cpu_isa(isa)
    for dtype in (torch.float16, torch.float64) if emu else (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        for n in (0, 7, 65, 1000) if emu else (0, 1, 7, 63, 64, 65, 129, 1000, 4099):
            for storage in ("bits",) if emu else ("seed", "bits"):
                dropout_ext.set_backward_storage(storage)
                x = torch.randn(n, dtype=dtype, requires_grad=True)
                F.dropout(x, 0.3, seed=n).sum().backward()
                y = torch.randn(n, 3, dtype=dtype)
                F.dropout(y.t(), 0.5, inplace=True, seed=1)
                F.dropout2d(y.view(n, 3, 1), 0.5)
                if n:
                    b = torch.randn(3, dtype=dtype, requires_grad=True)
                    r = torch.randn(n, 3, dtype=dtype, requires_grad=True)
                    F.bias_dropout_add(y.requires_grad_(), b, r, 0.2).sum().backward()
                    F.dropout_add(y.detach(), r.detach(), 0.2)
                    F.drop_path(y.detach(), 0.5)
                    z = torch.randn(2, n, 5, 3, dtype=dtype, requires_grad=True)
                    F.dropout(z.permute(3, 1, 0, 2), 0.4).sum().backward()          # tile mode
                    F.dropout(z[:, ::2], 0.4, global_shape=(4, n, 5, 3), global_offset=(1, 0, 0, 0))
                    F.dropout(z.detach()[:, :, 1:], 0.4, global_shape=(2, n, 9, 5), global_offset=(0, 0, 2, 2))
                    F.alpha_dropout(z, 0.3, True).sum().backward()
                    F.feature_alpha_dropout(z.detach().to(memory_format=torch.channels_last), 0.3, True)
                    F.dropout2d(z.detach().to(memory_format=torch.channels_last), 0.3)
            F.dropout(torch.randn(n, dtype=dtype), 1.0)
print("asan check passed:", _backend.cpu_isas_supported() + ["cuda-emu"])
PYEOF
