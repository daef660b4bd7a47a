"""dropout_ext: dropout kernels for PyTorch that are fast on the CPU and CUDA, give the
same mask on every device for a given seed, and keep at most one bit per element for
backward. See README.md and docs/design.md."""
from ._version import __version__
from . import _backend
from ._backend import backward_storage, build, compiled_backends, set_backward_storage
from . import functional, nn
from ._convert import convert
from . import integrations

__all__ = ["functional", "nn", "convert", "integrations", "compiled_backends", "backward_storage", "set_backward_storage", "build",
           "__version__"]
