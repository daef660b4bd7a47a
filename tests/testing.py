"""Shared parameters and helpers: every test module draws its backend, device, dtype and
layout products from here."""
import contextlib

import pytest
import torch

import dropout_ext
from dropout_ext import _backend

HAS_COMPILED = _backend.compiled_ops() is not None
HAS_CUDA_KERNELS = HAS_COMPILED and torch._C._dispatch_has_kernel_for_dispatch_key("dropout_ext::dropout", "CUDA")
HAS_GPU = torch.cuda.is_available()

requires_compiled = pytest.mark.skipif(not HAS_COMPILED, reason="compiled extension not built")
requires_gpu = pytest.mark.skipif(not (HAS_GPU and HAS_CUDA_KERNELS), reason="needs a CUDA GPU and a CUDA build")

BACKENDS = ["compiled", "python"] if HAS_COMPILED else ["python"]
DEVICES = ["cpu"] + (["cuda"] if HAS_GPU and HAS_CUDA_KERNELS else [])
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
CPU_ISAS = _backend.cpu_isas_supported()

# Shapes: empty, 0-dim, numel not a multiple of 4, 8 or 64, and large odd sizes.
SHAPES = [(0,), (2, 0, 3), (), (1,), (3,), (7,), (13, 5), (64,), (65,), (4, 33, 3), (1000, 37), (100003,)]


def _contiguous(shape, dtype, device):
    return torch.randn(shape, dtype=dtype, device=device)


def _transposed(shape, dtype, device):
    return torch.randn(shape[::-1], dtype=dtype, device=device).permute(*reversed(range(len(shape))))


def _sliced(shape, dtype, device):
    big = torch.randn([2 * s + 1 for s in shape], dtype=dtype, device=device)
    return big[tuple(slice(1, None, 2) for _ in shape)]


def _expanded(shape, dtype, device):
    return torch.randn((1,) + tuple(shape[1:]), dtype=dtype, device=device).expand(shape)


def _channels_last(shape, dtype, device):
    return torch.randn(shape, dtype=dtype, device=device).to(memory_format=torch.channels_last)


# layout name -> maker(shape, dtype, device); `make` adapts shapes a layout cannot take.
LAYOUTS = {
    "contiguous": _contiguous,
    "transposed": _transposed,
    "sliced": _sliced,
    "expanded": _expanded,
    "channels_last": _channels_last,
}


def make(layout, shape, dtype=torch.float32, device="cpu"):
    if layout == "channels_last" and len(shape) != 4:
        shape = (2, 3, 5, 7)
    if layout in ("transposed", "sliced", "expanded") and len(shape) < 2:
        shape = (3,) + tuple(shape) if len(shape) else (3, 5)
    return LAYOUTS[layout](shape, dtype, device)


def int_view(t):
    """The tensor's bits as integers (contiguous copy)."""
    t = t.detach().contiguous()
    return t.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()])


def assert_same_bits(a, b):
    """Bit-for-bit equality; NaNs must match in position (their payload may differ)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    na, nb = torch.isnan(a), torch.isnan(b)
    assert torch.equal(na.cpu(), nb.cpu()), "NaN positions differ"
    ia, ib = int_view(a)[~na.contiguous()].cpu(), int_view(b)[~nb.contiguous()].cpu()
    if not torch.equal(ia, ib):
        bad = (ia != ib).nonzero()[:5].flatten().tolist()
        raise AssertionError("tensors differ in %d of %d elements, first at %s" % (int((ia != ib).sum()), ia.numel(), bad))


def keep_mask(shape, p, seed, device="cpu"):
    """The SPEC mask of `shape` at `seed`, from the Python reference (bool)."""
    from dropout_ext import _reference

    n = int(torch.Size(shape).numel())
    rng = torch.tensor([seed - 2**64 if seed >= 2**63 else seed, 0])
    return _reference.keep_mask(rng, p, (n,), 1, torch.device(device)).reshape(shape)


@contextlib.contextmanager
def _switched(get, set_, value):
    """Run the body with a process-wide setting switched to `value`, then restore it."""
    old = get()
    set_(value)
    try:
        yield
    finally:
        set_(old)


def storage_ctx(mode):
    """Backward keeps `mode` ("seed" or "bits") inside the block."""
    return _switched(dropout_ext.backward_storage, dropout_ext.set_backward_storage, mode)


def cpu_isa_ctx(isa):
    """The CPU kernels run on `isa` inside the block."""
    return _switched(_backend.cpu_isa, _backend.cpu_isa, isa)


def backend_ctx(name):
    return _backend.use(name)


__all__ = [n for n in dir() if not n.startswith("_")] + ["dropout_ext"]
