"""The one place that chooses the backend.

At import, the compiled extension `dropout_ext._C` is loaded unless
DROPOUT_EXT_FORCE_PYTHON=1; if it cannot be loaded, the pure-Python kernels serve every
op, with one warning (DROPOUT_EXT_JIT=1, or `dropout_ext.build()`, compiles the shipped
sources instead). The API in functional.py reads `OPS` and never branches on the
backend itself.
"""
import contextlib
import os
import warnings
from typing import Optional, Tuple

import torch

from . import _ops, _reference


def _flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


FORCE_PYTHON = _flag("DROPOUT_EXT_FORCE_PYTHON")

# The op library is defined (with its fake kernels) before the extension is imported:
# the extension registers kernels for it.
_ops.define_library("dropout_ext")
_compiled_module = None  # the extension module: its entry points serve the common case
load_error = None

if not FORCE_PYTHON:
    try:
        from . import _C  # registers the compiled kernels of torch.ops.dropout_ext

        _compiled_module = _C
    except (ImportError, OSError) as e:  # not built, or built against another torch
        load_error = e
if _compiled_module is None:
    _ops.register_fallback()


class _Ops:
    """The op overloads of a namespace, looked up once (the public functions call them on
    every call)."""

    def __init__(self, namespace):
        self.namespace = namespace
        for name in _ops.SCHEMAS:
            setattr(self, name, getattr(namespace, name).default)


# What backward keeps: "bits" saves the packed keep bits the forward pass writes (numel / 8
# bytes); "seed" saves only (key, base), 16 bytes, and draws the mask again. Default
# "bits": on the CPU drawing Philox is the costly part of a pass (bench/bench_cpu.py).
BACKWARD_STORAGE = {"bits": _reference.SAVE_BITS, "seed": _reference.SAVE_RNG}
_backward_storage = os.environ.get("DROPOUT_EXT_BACKWARD", "bits").strip().lower() or "bits"
if _backward_storage not in BACKWARD_STORAGE:
    raise ValueError("DROPOUT_EXT_BACKWARD must be 'seed' or 'bits', got %r" % _backward_storage)

# Read on every call: the ops in use (an _Ops, or the Python kernels called directly),
# the compiled module's entry points when the compiled kernels serve the API (else None),
# and what backward keeps.
OPS = _Ops(torch.ops.dropout_ext)
FAST = _compiled_module
SAVE = BACKWARD_STORAGE[_backward_storage]
_python_kernels = None
_testing_ops = None
testing_load_error = "the compiled extension is not loaded"  # why testing_ops() is None


def _warn_fallback():
    warnings.warn(
        "dropout_ext: the compiled extension could not be loaded (%s); using the pure-Python "
        "fallback, which gives the same results but is much slower. Compile the kernels for "
        "this torch with `dropout_ext.build()` (or DROPOUT_EXT_JIT=1 at import), or reinstall "
        "with `pip install --no-build-isolation dropout_ext`" % (load_error,),
        RuntimeWarning,
        stacklevel=3,
    )


def build(verbose: bool = True, build_directory: Optional[str] = None) -> Tuple[str, ...]:
    """Compile the shipped C++ (and, with a CUDA torch and nvcc, CUDA) sources for the
    installed torch with torch.utils.cpp_extension.load (into torch's extension cache, or
    `build_directory`), load them and switch every op to the compiled kernels. Returns
    compiled_backends(). Nothing happens if the compiled kernels are already loaded."""
    global load_error, _compiled_module, FAST
    if _compiled_module is not None:
        return compiled_backends()
    from torch.utils import cpp_extension

    from . import _build

    cuda = (torch.version.cuda is not None and _build.find_cuda_home() is not None
            and os.environ.get("DROPOUT_EXT_CUDA", "").strip() not in ("0", "false", "off", "no"))
    if cuda and not os.environ.get("CUDA_HOME"):
        os.environ["CUDA_HOME"] = _build.find_cuda_home()
        cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]
    cflags = list(_build.CXX_FLAGS)
    cuda_flags = list(_build.NVCC_FLAGS)
    includes = [_build.CSRC]
    if cuda:
        cflags.append("-DDROPOUT_EXT_WITH_CUDA")
        cuda_flags.append("-DDROPOUT_EXT_WITH_CUDA")
        includes += _build.pip_cuda_dirs(torch.__file__)[0]
    if build_directory is not None:
        os.makedirs(build_directory, exist_ok=True)
    if verbose:
        print("dropout_ext.build(): compiling %d sources (%s) for torch %s; this takes a few minutes"
              % (len(_build.sources(cuda)), "CPU + CUDA" if cuda else "CPU", torch.__version__), flush=True)
    module = cpp_extension.load(
        name="dropout_ext_jit_cuda" if cuda else "dropout_ext_jit",
        sources=_build.sources(cuda),
        extra_cflags=cflags,
        extra_cuda_cflags=cuda_flags,
        extra_ldflags=list(_build.LINK_FLAGS),
        extra_include_paths=includes,
        build_directory=build_directory,
        is_python_module=True,
        verbose=verbose,
    )
    _ops.unregister_fallback()  # the compiled kernels replace the Python ones under the same names
    _compiled_module = FAST = module
    load_error = None
    return compiled_backends()


def ops():
    """The ops the API calls: torch.ops.dropout_ext's overloads (compiled or fallback
    kernels), or another backend inside use()."""
    return OPS


def compiled_ops():
    """torch.ops.dropout_ext when the compiled kernels serve it, else None."""
    return torch.ops.dropout_ext if _compiled_module is not None else None


def python_kernels():
    """The pure-Python kernels, called directly (with their autograd), whatever serves the
    op names: how tests compare the backends in one process."""
    global _python_kernels
    if _python_kernels is None:
        _python_kernels = _ops.PythonKernels()
    return _python_kernels


def testing_ops():
    """torch.ops.dropout_ext_testing: the development extension's ops (the CUDA kernels
    run on the host by an emulator, test-only ops), or None when it was not built
    (DROPOUT_EXT_TESTING=1 at build time builds it)."""
    global _testing_ops, testing_load_error
    if _testing_ops is None and _compiled_module is not None:
        import importlib.util

        if importlib.util.find_spec(__package__ + "._testing") is None:
            testing_load_error = "dropout_ext._testing is not built (build with DROPOUT_EXT_TESTING=1)"
            return None
        namespace = _ops.define_library("dropout_ext_testing")
        try:
            from . import _testing  # noqa: F401  registers the testing namespace's kernels
        except (ImportError, OSError) as e:
            testing_load_error = e
            return None
        _testing_ops = namespace
        testing_load_error = None
    return _testing_ops


def testing_has_cuda():
    """Whether the development extension has CUDA kernels: its tunable CUDA launcher, which
    follows the flat kernel's tuning switches (a build with DROPOUT_EXT_TESTING=cuda)."""
    return testing_ops() is not None and torch._C._dispatch_has_kernel_for_dispatch_key(
        "dropout_ext_testing::dropout", "CUDA")


def compiled_backends() -> Tuple[str, ...]:
    """Device types whose compiled kernels are in use; () when the Python fallback runs."""
    if _compiled_module is None or FAST is None:
        return ()
    has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key("dropout_ext::dropout", "CUDA")
    return ("cpu", "cuda") if has_cuda else ("cpu",)


@contextlib.contextmanager
def use(backend):
    """Temporarily run the API on other kernels (tests, bench): "compiled" (the default
    when built), "python" (the Python kernels called directly) or "emulator" (the CUDA
    kernels emulated on the host, from the development extension)."""
    global OPS, FAST
    if backend == "compiled":
        if _compiled_module is None:
            raise RuntimeError("dropout_ext: the compiled extension is not loaded (%s)" % (load_error,))
        new = _Ops(torch.ops.dropout_ext), _compiled_module
    elif backend == "python":
        new = python_kernels(), None
    elif backend == "emulator":
        if testing_ops() is None:
            raise RuntimeError("dropout_ext: the development extension dropout_ext._testing is not built "
                               "(build with DROPOUT_EXT_TESTING=1)")
        new = _Ops(testing_ops()), None
    else:
        raise ValueError("backend must be 'compiled', 'python' or 'emulator', got %r" % (backend,))
    old = OPS, FAST
    OPS, FAST = new
    try:
        yield OPS
    finally:
        OPS, FAST = old


def backward_storage() -> str:
    return _backward_storage


def set_backward_storage(mode: str) -> None:
    """Choose what backward keeps: "bits" (default; numel / 8 bytes) or "seed" (16 bytes)."""
    global _backward_storage, SAVE
    if mode not in BACKWARD_STORAGE:
        raise ValueError("backward storage must be 'seed' or 'bits', got %r" % (mode,))
    _backward_storage = mode
    SAVE = BACKWARD_STORAGE[mode]


def cpu_isa(request=""):
    """The CPU SIMD path in use ("scalar", "avx2", "avx512"); a request switches it."""
    if _compiled_module is None:
        return "python"
    return torch.ops.dropout_ext._cpu_isa(request)


def cpu_isas_supported():
    if _compiled_module is None:
        return []
    return list(torch.ops.dropout_ext._cpu_isas_supported())


if load_error is not None:
    if _flag("DROPOUT_EXT_JIT"):
        build()
    else:
        _warn_fallback()
