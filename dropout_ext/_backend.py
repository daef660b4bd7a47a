"""The one place that chooses the backend.

At import, the compiled extension `dropout_ext._C` is loaded unless
DROPOUT_EXT_FORCE_PYTHON=1; if it cannot be loaded, the pure-Python kernels serve every
op, with one warning. The API in functional.py calls `ops()` and never branches on the
backend itself.
"""
import contextlib
import os
import warnings

import torch

from . import _ops

FORCE_PYTHON = os.environ.get("DROPOUT_EXT_FORCE_PYTHON", "").strip().lower() not in ("", "0", "false", "no")

_ops.define_python_namespace()
_python_ops = _ops.register("dropout_ext_py")
_compiled_ops = None
load_error = None

if not FORCE_PYTHON:
    try:
        from . import _C  # noqa: F401  (registers torch.ops.dropout_ext)

        _compiled_ops = _ops.register("dropout_ext")
    except (ImportError, OSError) as e:  # not built, or built against another torch
        load_error = e
        warnings.warn(
            "dropout_ext: the compiled extension could not be loaded (%s); using the "
            "pure-Python fallback, which gives the same results but is much slower. "
            "Build it with `pip install --no-build-isolation .`" % (e,),
            RuntimeWarning,
            stacklevel=2,
        )

_active = _compiled_ops if _compiled_ops is not None else _python_ops

# How backward gets the mask: "bits" saves the packed keep bits the forward pass writes
# (numel / 8 bytes); "seed" saves only (key, base), 16 bytes, and draws the mask again.
# Default "bits": on the CPU drawing Philox is the costly part of the pass, and reading
# bits made forward + backward 1.06x to 2.5x faster in bench/bench_cpu.py (2**20 .. 2**26).
BACKWARD_STORAGE = ("seed", "bits")
_backward_storage = os.environ.get("DROPOUT_EXT_BACKWARD", "bits").strip().lower() or "bits"
if _backward_storage not in BACKWARD_STORAGE:
    raise ValueError("DROPOUT_EXT_BACKWARD must be 'seed' or 'bits', got %r" % _backward_storage)


def ops():
    """The op namespace in use: torch.ops.dropout_ext or torch.ops.dropout_ext_py."""
    return _active


def compiled_ops():
    return _compiled_ops


def python_ops():
    return _python_ops


def compiled_backends():
    """Device types whose compiled kernels are in use; () when the Python fallback runs."""
    if _active is not _compiled_ops or _compiled_ops is None:
        return ()
    has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key("dropout_ext::dropout", "CUDA")
    return ("cpu", "cuda") if has_cuda else ("cpu",)


@contextlib.contextmanager
def use(backend):
    """Temporarily run the API on "compiled" or "python" kernels (tests, bench)."""
    global _active
    if backend == "compiled":
        if _compiled_ops is None:
            raise RuntimeError("dropout_ext: the compiled extension is not loaded (%s)" % (load_error,))
        new = _compiled_ops
    elif backend == "python":
        new = _python_ops
    else:
        raise ValueError("backend must be 'compiled' or 'python', got %r" % (backend,))
    old, _active = _active, new
    try:
        yield new
    finally:
        _active = old


def backward_storage():
    return _backward_storage


def set_backward_storage(mode):
    """Choose what backward keeps: "bits" (default; numel / 8 bytes) or "seed" (16 bytes)."""
    global _backward_storage
    if mode not in BACKWARD_STORAGE:
        raise ValueError("backward storage must be 'seed' or 'bits', got %r" % (mode,))
    _backward_storage = mode


def cpu_isa(request=""):
    """The CPU SIMD path in use ("scalar", "avx2", "avx512"); a request switches it."""
    if _compiled_ops is None:
        return "python"
    return torch.ops.dropout_ext._cpu_isa(request)


def cpu_isas_supported():
    if _compiled_ops is None:
        return []
    return list(torch.ops.dropout_ext._cpu_isas_supported())


def empty_cache():
    """Return the idle large CPU output blocks kept for reuse to the system; returns the
    number of bytes freed (see README, "Where the time goes")."""
    if _compiled_ops is None:
        return 0
    return int(torch.ops.dropout_ext._empty_cpu_cache())
