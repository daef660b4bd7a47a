"""Every memory layout in one pass (issue 11): for any input, dense or not, the output and
the gradient have torch.empty_like(input)'s strides, and the values are bit for bit those
of the same op on the contiguous copy (the mask follows the logical index), on every
backend and CPU path, for every op of the family."""
import contextlib
import itertools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from testing import CPU_PATHS, assert_same_bits, backend_ctx, cpu_isa_ctx, storage_ctx

from dropout_ext import functional as F

SEED = 0x5EED


def _ops(x):
    """(name, fn(x, **kw)) of every op that takes an input of x's rank."""
    d = x.dim()
    ops = [
        ("dropout", lambda t, **kw: F.dropout(t, 0.4, **kw)),
        ("vanilla", lambda t, **kw: F.dropout(t, 0.4, scale_train=False, **kw)),
        ("alpha_dropout", lambda t, **kw: F.alpha_dropout(t, 0.3, True, **kw)),
        ("dropout_add", lambda t, **kw: F.dropout_add(t, _residual(t), 0.4, **kw)),
    ]
    if d >= 1:
        ops += [
            ("drop_path", lambda t, **kw: F.drop_path(t, 0.5, **kw)),
            ("bias_dropout_add", lambda t, **kw: F.bias_dropout_add(t, _bias(t), _residual(t), 0.4, **kw)),
        ]
    if d >= 2:
        ops.append(("feature_alpha_dropout", lambda t, **kw: F.feature_alpha_dropout(t, 0.3, True, **kw)))
    if d == 3:
        ops.append(("dropout1d", lambda t, **kw: F.dropout1d(t, 0.5, **kw)))
    if d == 4:
        ops.append(("dropout2d", lambda t, **kw: F.dropout2d(t, 0.5, **kw)))
    if d == 5:
        ops.append(("dropout3d", lambda t, **kw: F.dropout3d(t, 0.5, **kw)))
    return ops


def _residual(t):
    """A residual with a layout of its own (transposed when it can be): the output follows
    the input's layout, as torch's residual + dropout(input) would."""
    g = torch.Generator().manual_seed(99)
    r = torch.randn(tuple(t.shape)[::-1], generator=g, dtype=t.dtype)
    return r.permute(*reversed(range(t.dim()))) if t.dim() else r


def _bias(t):
    """A stepped bias (stride 2)."""
    g = torch.Generator().manual_seed(98)
    return torch.randn(2 * t.shape[-1], generator=g, dtype=t.dtype)[::2]


def _strided_input(shape, perm, slices, dtype=torch.float32, seed=0):
    """A view of a bigger tensor: dims permuted by `perm`, then sliced by `slices`
    ((start, step) per dim) to `shape`."""
    g = torch.Generator().manual_seed(seed)
    full = [start + step * (n - 1) + 1 if n else start for n, (start, step) in zip(shape, slices)]
    base = torch.randn([full[p] for p in perm], generator=g, dtype=dtype)
    inv = [perm.index(i) for i in range(len(perm))]
    view = base.permute(*inv)
    return view[tuple(slice(s, s + st_ * (n - 1) + 1 if n else s, st_) for n, (s, st_) in zip(shape, slices))]


def check_layout(x, name, fn, grad=True):
    """Output and gradient strides are empty_like's; values and gradients equal those of the
    contiguous copy."""
    expected_strides = torch.empty_like(x).stride()
    out = fn(x, seed=SEED)
    assert out.shape == x.shape
    assert out.stride() == expected_strides, (name, x.shape, x.stride(), out.stride(), expected_strides)
    ref = fn(x.contiguous(), seed=SEED)
    assert_same_bits(out, ref)
    if not grad or x.numel() == 0:
        return
    leaf = x.detach().requires_grad_()
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    out = fn(leaf, seed=SEED)
    (gx,) = torch.autograd.grad(out, leaf, g)
    assert gx.stride() == torch.empty_like(leaf).stride(), (name, leaf.stride(), gx.stride())
    cont = x.detach().contiguous().requires_grad_()
    (gref,) = torch.autograd.grad(fn(cont, seed=SEED), cont, g)
    assert_same_bits(gx, gref)


@st.composite
def strided_inputs(draw):
    nd = draw(st.integers(1, 4))
    shape = draw(st.lists(st.integers(1, 9), min_size=nd, max_size=nd))
    perm = draw(st.permutations(list(range(nd))))
    slices = [(draw(st.integers(0, 2)), draw(st.integers(1, 3))) for _ in range(nd)]
    return shape, perm, slices


@pytest.mark.parametrize("storage", ["bits", "seed"])
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(case=strided_inputs())
def test_any_strides_every_op(backend, storage, case):
    shape, perm, slices = case
    x = _strided_input(shape, perm, slices)
    with storage_ctx(storage):
        for name, fn in _ops(x):
            check_layout(x, name, fn)


def test_pytorch_permute_and_slice_inputs(backend):
    """PyTorch's own dropout test: every permutation of a (2, 3, 4, 5) tensor, sliced along
    each dim, keeps the input's dimension order in the output (96 inputs)."""
    base = torch.randn(2, 3, 4, 5)
    for perm in itertools.permutations(range(4)):
        for d in range(4):
            x = base.permute(perm)
            x = x[tuple(slice(1, None) if i == d else slice(None) for i in range(4))]
            check_layout(x, "dropout", lambda t, **kw: F.dropout(t, 0.5, **kw))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("layout", ["channels_last", "channels_last_3d", "transposed", "stepped", "expanded",
                                    "repeated_last", "offset"])
def test_named_layouts_every_isa(layout, dtype):
    shapes = {"channels_last": (3, 20, 5, 7), "channels_last_3d": (2, 17, 3, 4, 5)}
    if layout == "channels_last":
        x = torch.randn(shapes[layout], dtype=dtype).to(memory_format=torch.channels_last)
    elif layout == "channels_last_3d":
        x = torch.randn(shapes[layout], dtype=dtype).to(memory_format=torch.channels_last_3d)
    elif layout == "transposed":
        x = torch.randn(131, 67, dtype=dtype).t()
    elif layout == "stepped":
        x = torch.randn(40, 130, dtype=dtype)[:, ::2]
    elif layout == "expanded":
        x = torch.randn(1, 67, dtype=dtype).expand(33, 67)
    elif layout == "repeated_last":  # stride 0 along the last dim: one element repeated along each row
        x = torch.randn(33, 1, dtype=dtype).expand(33, 67)
    else:
        x = torch.randn(5000, dtype=dtype)[3:4003].view(40, 100)
    runs = [("python", None)] + [("compiled", isa) for isa in CPU_PATHS]
    for backend, isa in runs:
        with backend_ctx(backend), (cpu_isa_ctx(isa) if isa else contextlib.nullcontext()):
            for name, fn in _ops(x):
                check_layout(x, name, fn, grad=layout != "expanded")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("storage", ["bits", "seed"])
def test_gradient_of_a_reduction_every_isa(storage, dtype):
    """.sum() and .mean() hand backward an expanded gradient (every stride 0): the gradient
    is bit for bit that of the same dense gradient, on every backend and CPU path, for every
    op (a residual or bias that requires grad gets its own gradient too)."""
    x = torch.randn(6, 5, 70, dtype=dtype).to(memory_format=torch.contiguous_format)
    xt = torch.randn(70, 5, 6, dtype=dtype).permute(2, 1, 0)  # output and gradient transposed
    runs = [("python", None)] + [("compiled", isa) for isa in CPU_PATHS]
    for base in (x, xt):
        for backend, isa in runs:
            with backend_ctx(backend), storage_ctx(storage), (cpu_isa_ctx(isa) if isa else contextlib.nullcontext()):
                for name, fn in _ops(base):
                    for reduce in ("sum", "mean"):
                        leaf = base.detach().requires_grad_()
                        out = fn(leaf, seed=SEED)
                        (gx,) = torch.autograd.grad(getattr(out, reduce)(), leaf)
                        # the gradient the reduction hands on, made dense
                        o = out.detach().requires_grad_()
                        (dense,) = torch.autograd.grad(getattr(o, reduce)(), o)
                        (gd,) = torch.autograd.grad(fn(leaf, seed=SEED), leaf, dense.contiguous())
                        assert gx.stride() == torch.empty_like(leaf).stride(), (name, backend, isa)
                        assert_same_bits(gx, gd)


def test_inplace_any_layout(backend):
    """In place on a permuted or stepped view writes exactly the values of the
    out-of-place op, into the view."""
    for x in (torch.randn(30, 17).t(), torch.randn(9, 40)[:, 1::3], torch.randn(4, 6, 5, 3).to(
            memory_format=torch.channels_last)):
        expected = F.dropout(x, 0.3, seed=4)
        y = x.clone() if x.is_contiguous() else x
        before = y.data_ptr(), y.stride()
        out = F.dropout(y, 0.3, seed=4, inplace=True)
        assert out is y and (y.data_ptr(), y.stride()) == before
        assert_same_bits(y, expected)


def test_many_dims_beyond_the_merge_limit(backend):
    """More than 8 dims that cannot be merged still give the contiguous copy's values."""
    x = torch.randn([2] * 10).permute(*reversed(range(10)))
    check_layout(x, "dropout", lambda t, **kw: F.dropout(t, 0.5, **kw))
