"""Every memory layout of every operand: for any input, dense or not, the output and the
gradient have torch.empty_like(input)'s strides, and the values are the contract's for the
oracle's mask, which follows the logical index; a residual and a bias in any layout
(strided, expanded, permuted) are read through their strides. On every set of kernels,
for every op of the family, checked against the oracle (never against another run of the
same kernels)."""
import itertools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from testing import (BACKEND_KERNELS, DTYPES, FAMILY, assert_same_bits, expected_input_grad, expected_output,
                     family, op_mask, peek_rng_pair, storage_ctx)

SEED = 0x5EED


def _residual(t):
    """A residual with a layout of its own (transposed when it can be): the output follows
    the input's layout, as torch's residual + dropout(input) would."""
    g = torch.Generator().manual_seed(99)
    r = torch.randn(tuple(t.shape)[::-1], generator=g).to(t.dtype).to(t.device)
    return r.permute(*reversed(range(t.dim()))) if t.dim() else r


def _bias(t):
    """A stepped bias (stride 2)."""
    g = torch.Generator().manual_seed(98)
    return torch.randn(2 * t.shape[-1], generator=g).to(t.dtype).to(t.device)[::2]


def _operands(op, t):
    return (_residual(t) if op.residual else None, _bias(t) if op.bias else None)


def _ops(x):
    """(name, fn(x, **kw)) of every op that takes an input of x's rank, with a transposed
    residual and a stepped bias."""
    return [(op.name, lambda t, op=op, **kw: op(t, *_operands(op, t), **kw)) for op in family(x.dim())]


def _strided_input(shape, perm, slices, dtype=torch.float32, seed=0, device="cpu"):
    """A view of a bigger tensor: dims permuted by `perm`, then sliced by `slices`
    ((start, step) per dim) to `shape`."""
    g = torch.Generator().manual_seed(seed)
    full = [start + step * (n - 1) + 1 if n else start for n, (start, step) in zip(shape, slices)]
    base = torch.randn([full[p] for p in perm], generator=g).to(dtype).to(device)
    inv = [perm.index(i) for i in range(len(perm))]
    view = base.permute(*inv)
    return view[tuple(slice(s, s + st_ * (n - 1) + 1 if n else s, st_) for n, (s, st_) in zip(shape, slices))]


def check_layout(op, x, r=None, b=None, grad=True, generator=False):
    """op on x (and r, b as they are): output strides empty_like's, values the contract's
    for the oracle's mask; the gradient likewise."""
    expected_strides = torch.empty_like(x).stride()
    if generator:
        g = torch.Generator(device=x.device).manual_seed(4)
        key, base = peek_rng_pair(g)
        kw = {"generator": g}
    else:
        key, base, kw = SEED, 0, {"seed": SEED}
    keep = op_mask(op, x.shape, key, base)
    out = op(x, r, b, **kw)
    assert out.shape == x.shape
    assert out.stride() == expected_strides, (op, x.shape, x.stride(), out.stride(), expected_strides)
    assert_same_bits(out, expected_output(op, x, r, b, keep))
    if not grad or x.numel() == 0:
        return
    leaf = x.detach().requires_grad_()
    g = torch.randn(tuple(x.shape), generator=torch.Generator().manual_seed(5)).to(x.dtype).to(x.device)
    (gx,) = torch.autograd.grad(op(leaf, r, b, seed=SEED), leaf, g)
    assert gx.stride() == torch.empty_like(leaf).stride(), (op, leaf.stride(), gx.stride())
    assert_same_bits(gx, expected_input_grad(op, x, g, op_mask(op, x.shape, SEED)))


@st.composite
def strided_inputs(draw):
    nd = draw(st.integers(1, 4))
    shape = draw(st.lists(st.integers(1, 9), min_size=nd, max_size=nd))
    perm = draw(st.permutations(list(range(nd))))
    slices = [(draw(st.integers(0, 2)), draw(st.integers(1, 3))) for _ in range(nd)]
    return shape, perm, slices


@pytest.mark.parametrize("storage", ["bits", "seed"])
@settings(max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(case=strided_inputs())
def test_any_strides_every_op(kernels, storage, case):
    shape, perm, slices = case
    x = _strided_input(shape, perm, slices, device=kernels.device)
    with storage_ctx(storage):
        for op in family(x.dim()):
            check_layout(op, x, *_operands(op, x))


def _layouts(dtype, device):
    """name -> an input in that layout (made on the device, so views stay views)."""
    g = torch.Generator().manual_seed(3)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dtype).to(device)

    return {
        "contiguous": rnd(3, 4, 5, 6),
        "channels_last": rnd(3, 20, 5, 7).to(memory_format=torch.channels_last),
        "channels_last_3d": rnd(2, 17, 3, 4, 5).to(memory_format=torch.channels_last_3d),
        "transposed": rnd(131, 67).t(),
        "transposed_4d": rnd(6, 5, 4, 3).permute(3, 2, 1, 0),
        "stepped": rnd(40, 130)[:, ::2],
        "sliced": rnd(13, 21)[1::2, 1::2],
        "expanded": rnd(1, 67).expand(33, 67),
        "repeated_last": rnd(33, 1).expand(33, 67),  # stride 0 along the last dim
        "offset": rnd(5000)[3:4003].view(40, 100),  # storage offset: not 16-byte aligned
        "unaligned": rnd(10_003)[1:],
    }


LAYOUT_NAMES = list(_layouts(torch.float32, "cpu"))


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_named_layouts(kernels, layout):
    """Dense layouts (channels_last, permutations), views (stepped, sliced, offset,
    unaligned) and overlapping ones (expanded, repeated): every op, dtype, seed= and
    generator=, forward and (where the input can require grad) backward in both storages."""
    for dtype in DTYPES:
        x = _layouts(dtype, kernels.device)[layout]
        for op in family(x.dim()):
            r, b = _operands(op, x)
            check_layout(op, x, r, b, grad=False, generator=True)
            for storage in ("bits", "seed"):
                with storage_ctx(storage):
                    check_layout(op, x, r, b, grad=layout not in ("expanded", "repeated_last"))
        if layout == "channels_last":
            assert FAMILY[0](x, seed=1).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.quick
@pytest.mark.parametrize("kernels", BACKEND_KERNELS, indirect=True)
def test_layouts_quick(kernels):
    for layout in ("channels_last", "transposed", "stepped"):
        x = _layouts(torch.float32, kernels.device)[layout]
        for op in family(x.dim()):
            check_layout(op, x, *_operands(op, x))


def test_pytorch_permute_and_slice_inputs(kernels):
    """PyTorch's own dropout test: every permutation of a (2, 3, 4, 5) tensor, sliced along
    each dim, keeps the input's dimension order in the output (96 inputs)."""
    base = torch.randn(2, 3, 4, 5, device=kernels.device)
    for perm in itertools.permutations(range(4)):
        for d in range(4):
            x = base.permute(perm)
            x = x[tuple(slice(1, None) if i == d else slice(None) for i in range(4))]
            check_layout(FAMILY[0], x)


def test_many_dims_beyond_the_merge_limit(kernels):
    """More than 8 dims that cannot be merged: still the contract's values."""
    x = torch.randn([2] * 10, device=kernels.device).permute(*reversed(range(10)))
    check_layout(FAMILY[0], x)
    check_layout(FAMILY[-1], x, _residual(x), _bias(x))


@pytest.mark.parametrize("storage", ["bits", "seed"])
def test_gradient_of_a_reduction(kernels, storage):
    """.sum() and .mean() hand backward an expanded gradient (every stride 0): the gradient
    is the contract's for that gradient, and bit for bit that of the same gradient made
    dense, for every op (a residual or bias that requires grad gets its own gradient too)."""
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(6, 5, 70, dtype=dtype, device=kernels.device)
        xt = torch.randn(70, 5, 6, dtype=dtype, device=kernels.device).permute(2, 1, 0)  # output transposed
        for base in (x, xt):
            with storage_ctx(storage):
                for op in family(base.dim()):
                    r, b = _operands(op, base)
                    keep = op_mask(op, base.shape, SEED)
                    for reduce in ("sum", "mean"):
                        leaf = base.detach().requires_grad_()
                        out = op(leaf, r, b, seed=SEED)
                        (gx,) = torch.autograd.grad(getattr(out, reduce)(), leaf)
                        o = out.detach().requires_grad_()
                        (dense,) = torch.autograd.grad(getattr(o, reduce)(), o)  # what the reduction hands on
                        (gd,) = torch.autograd.grad(op(leaf, r, b, seed=SEED), leaf, dense.contiguous())
                        assert gx.stride() == torch.empty_like(leaf).stride(), (op, kernels, dtype)
                        assert_same_bits(gx, gd)
                        assert_same_bits(gx, expected_input_grad(op, base, dense, keep))


# --------------------------------------------------------- the fused ops' operands


def _operand_layouts(x):
    """(residual name, residual) and (bias name, bias) in layouts of their own: dense,
    transposed or permuted, stepped, expanded (stride 0), a view at a storage offset."""
    g = torch.Generator().manual_seed(7)
    dev, dtype, shape, n = x.device, x.dtype, tuple(x.shape), x.shape[-1]

    def rnd(*s):
        return torch.randn(*s, generator=g).to(dtype).to(dev)

    residuals = {
        "contiguous": rnd(*shape),
        "transposed": rnd(*shape[::-1]).permute(*reversed(range(len(shape)))),
        "stepped": rnd(*shape[:-1], 2 * n)[..., ::2],
        "expanded": rnd(1, *shape[1:]).expand(shape),
        "offset": rnd(x.numel() + 3)[3:].view(shape),
    }
    if len(shape) == 4:
        residuals["channels_last"] = rnd(*shape).to(memory_format=torch.channels_last)
    biases = {
        "contiguous": rnd(n),
        "stepped": rnd(3 * n)[1::3],
        "expanded": rnd(1).expand(n),
        "offset": rnd(n + 1)[1:],
        "column": rnd(n, 2)[:, 1],
    }
    return residuals, biases


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_operand_layouts(kernels, dtype):
    """dropout_add and bias_dropout_add with the residual and the bias in every layout of
    their own, on contiguous, transposed and channels_last inputs: values and gradients
    (input, residual, bias) are the contract's for the oracle's mask."""
    dev = kernels.device
    inputs = [torch.randn(6, 5, 70, dtype=dtype, device=dev),
              torch.randn(70, 5, 6, dtype=dtype, device=dev).permute(2, 1, 0),
              torch.randn(3, 20, 5, 7, dtype=dtype, device=dev).to(memory_format=torch.channels_last)]
    add, bias_add = FAMILY[-2], FAMILY[-1]
    for x in inputs:
        residuals, biases = _operand_layouts(x)
        keep = op_mask(add, x.shape, SEED)
        cases = [(rn, r, "contiguous", biases["contiguous"]) for rn, r in residuals.items()]
        cases += [("transposed", residuals["transposed"], bn, b) for bn, b in biases.items()]
        for rn, r, bn, b in cases:
            where = (kernels, dtype, tuple(x.stride()), rn, bn)
            assert_same_bits(add(x, r, None, seed=SEED), expected_output(add, x, r, None, keep))
            out = bias_add(x, r, b, seed=SEED)
            assert out.stride() == torch.empty_like(x).stride(), where
            assert_same_bits(out, expected_output(bias_add, x, r, b, keep))
            leaves = [t.detach().requires_grad_() for t in (x, r, b)]
            g = torch.randn(tuple(x.shape), generator=torch.Generator().manual_seed(5)).to(dtype).to(dev)
            gx, gr, gb = torch.autograd.grad(bias_add(leaves[0], leaves[1], leaves[2], seed=SEED), leaves, g)
            want = expected_input_grad(bias_add, x, g, keep)
            assert_same_bits(gx, want)
            assert_same_bits(gr, g)
            torch.testing.assert_close(gb, want.sum((0, 1, 2)[:x.dim() - 1]), rtol=1e-2 if dtype.itemsize == 2 else 1e-5,
                                       atol=1e-2 if dtype.itemsize == 2 else 1e-5)
