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

_ops.define_python_namespace()
_ops.register_fakes("dropout_ext_py")
_python_ops = torch.ops.dropout_ext_py
_ops.register_python_autograd(_python_ops)
_compiled_ops = None
_compiled_module = None  # the extension module: its entry points serve the common case
load_error = None


def _register_compiled(module):
    """Fake kernels of the compiled namespace (its autograd is C++)."""
    global _compiled_ops, _compiled_module
    _ops.register_fakes("dropout_ext")
    _compiled_ops = torch.ops.dropout_ext
    _compiled_module = module


if not FORCE_PYTHON:
    try:
        _ops.define_library("dropout_ext")
        from . import _C  # registers the kernels of torch.ops.dropout_ext

        _register_compiled(_C)
    except (ImportError, OSError) as e:  # not built, or built against another torch
        load_error = e


class _Ops:
    """The op overloads of the backend in use, looked up once (the public functions call
    them on every call)."""

    def __init__(self, namespace):
        self.namespace = namespace
        self.dropout = namespace.dropout.default
        self.dropout_ = namespace.dropout_.default
        self.dropout_add = namespace.dropout_add.default
        self.bias_dropout_add = namespace.bias_dropout_add.default
        self.dropout_backward = namespace.dropout_backward.default


# What backward keeps: "bits" saves the packed keep bits the forward pass writes (numel / 8
# bytes); "seed" saves only (key, base), 16 bytes, and draws the mask again. Default
# "bits": on the CPU drawing Philox is the costly part of a pass (bench/bench_cpu.py).
BACKWARD_STORAGE = {"bits": _reference.SAVE_BITS, "seed": _reference.SAVE_RNG}
_backward_storage = os.environ.get("DROPOUT_EXT_BACKWARD", "bits").strip().lower() or "bits"
if _backward_storage not in BACKWARD_STORAGE:
    raise ValueError("DROPOUT_EXT_BACKWARD must be 'seed' or 'bits', got %r" % _backward_storage)

# Read by functional.py on every call: the ops in use, the compiled module's entry points
# when the compiled backend is in use (else None), and what backward keeps.
OPS = None
FAST = None
SAVE = BACKWARD_STORAGE[_backward_storage]


def _activate(namespace):
    global OPS, FAST
    OPS = _Ops(namespace)
    FAST = _compiled_module if namespace is _compiled_ops else None


_activate(_compiled_ops if _compiled_ops is not None else _python_ops)


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
    global load_error
    if _compiled_ops is not None:
        _activate(_compiled_ops)
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
    _ops.define_library("dropout_ext")
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
    _register_compiled(module)
    _activate(_compiled_ops)
    load_error = None
    return compiled_backends()


def ops():
    """The op namespace in use: torch.ops.dropout_ext or torch.ops.dropout_ext_py."""
    return OPS.namespace


def compiled_ops():
    return _compiled_ops


def python_ops():
    return _python_ops


_testing_ops = None
testing_load_error = None


def testing_ops():
    """torch.ops.dropout_ext_testing: the compiled ops again, their CPU kernels the CUDA
    kernels run on the host by an emulator (a development build's `_testing` module,
    DROPOUT_EXT_TESTING=1 at build time), imported at the first call; None when it is not
    built (testing_load_error says why)."""
    global _testing_ops, testing_load_error
    if _testing_ops is None and testing_load_error is None:
        if _compiled_ops is None:
            testing_load_error = "the compiled extension is not loaded (%s)" % (load_error,)
            return None
        try:
            _ops.define_library("dropout_ext_testing")
            from . import _testing  # registers the kernels of torch.ops.dropout_ext_testing

            _ops.register_fakes("dropout_ext_testing")
            _testing_ops = torch.ops.dropout_ext_testing
        except (ImportError, OSError) as e:
            testing_load_error = e
    return _testing_ops


def compiled_backends() -> Tuple[str, ...]:
    """Device types whose compiled kernels are in use; () when the Python fallback runs."""
    if _compiled_ops is None or OPS.namespace is not _compiled_ops:
        return ()
    has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key("dropout_ext::dropout", "CUDA")
    return ("cpu", "cuda") if has_cuda else ("cpu",)


@contextlib.contextmanager
def use(backend):
    """Temporarily run the API on "compiled" or "python" kernels, or on "emulator": the
    testing module's ops, whose CPU kernels are the CUDA kernels run on the host (tests,
    bench; without the compiled fast entry points)."""
    if backend == "compiled":
        if _compiled_ops is None:
            raise RuntimeError("dropout_ext: the compiled extension is not loaded (%s)" % (load_error,))
        new = _compiled_ops
    elif backend == "python":
        new = _python_ops
    elif backend == "emulator":
        new = testing_ops()
        if new is None:
            raise RuntimeError("dropout_ext: the testing module is not built (DROPOUT_EXT_TESTING=1 at build "
                               "time) or not loadable (%s)" % (testing_load_error,))
    else:
        raise ValueError("backend must be 'compiled', 'python' or 'emulator', got %r" % (backend,))
    global OPS, FAST
    old = OPS, FAST
    _activate(new)
    try:
        yield new
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
    if _compiled_ops is None:
        return "python"
    return torch.ops.dropout_ext._cpu_isa(request)


def cpu_isas_supported():
    if _compiled_ops is None:
        return []
    return list(torch.ops.dropout_ext._cpu_isas_supported())


if load_error is not None:
    if _flag("DROPOUT_EXT_JIT"):
        build()
    else:
        _warn_fallback()
