"""In place (inplace=True): every op that has it writes the contract's values into its
input, in any layout, and returns the input itself (same storage and strides, version
bumped); autograd and torch's errors as for torch's in-place ops (a leaf or a view of a
leaf that requires grad, elements that share memory, an inference tensor outside
inference mode), with the input left as it was; evaluation mode."""
import pytest
import torch
from testing import (BACKEND_KERNELS, FAMILY, assert_same_bits, expected_output, family, op_mask, peek_rng_pair,
                     torch_error)

from dropout_ext import functional as F

INPLACE_OPS = [op for op in FAMILY if op.inplace]



def _views(device):
    """(name, make()) of inputs to write into: fresh tensors and views of one."""
    return [
        ("contiguous", lambda: torch.randn(4, 6, 5, 3, device=device)),
        ("transposed", lambda: torch.randn(3, 5, 6, 4, device=device).permute(3, 2, 1, 0)),
        ("stepped", lambda: torch.randn(4, 6, 5, 9, device=device)[..., 1::3]),
        ("channels_last", lambda: torch.randn(4, 6, 5, 3, device=device).to(memory_format=torch.channels_last)),
    ]


@pytest.mark.parametrize("rng", ["seed", "generator"])
def test_every_op_in_place(kernels, rng):
    """The values of the out-of-place call, the oracle's, written into the input (a view
    writes through to its base), with seed= and generator=."""
    for op in family(4, [o.name for o in INPLACE_OPS]):
        for name, make in _views(kernels.device):
            torch.manual_seed(0)
            y = make()
            x = y.clone()
            if rng == "seed":
                key, base, kw = 77, 0, {"seed": 77}
            else:
                g = torch.Generator(device=kernels.device).manual_seed(5)
                key, base = peek_rng_pair(g)
                kw = {"generator": g}
            before = y.data_ptr(), y.stride(), y._version
            out = op(y, inplace=True, **kw)
            assert out is y and (y.data_ptr(), y.stride()) == before[:2], (op, name)
            assert y._version > before[2], (op, name)
            assert_same_bits(y, expected_output(op, x, None, None, op_mask(op, x.shape, key, base)))


@pytest.mark.quick
@pytest.mark.parametrize("kernels", BACKEND_KERNELS, indirect=True)
def test_in_place_quick(kernels):
    for op in family(4, [o.name for o in INPLACE_OPS]):
        y = torch.randn(4, 6, 5, 3, device=kernels.device)
        x = y.clone()
        assert op(y, inplace=True, seed=3) is y
        assert_same_bits(y, expected_output(op, x, None, None, op_mask(op, x.shape, 3)))


def test_p_edges_in_place(backend):
    """p = 0 leaves the input as it was; p = 1 zeroes it (alpha dropout: x * 0)."""
    for op in family(4, [o.name for o in INPLACE_OPS]):
        for p in (0.0, 1.0):
            y = torch.randn(4, 6, 5, 3)
            x = y.clone()
            assert op.with_p(p)(y, inplace=True, seed=1) is y
            assert_same_bits(y, x if p == 0.0 else x * 0.0)


def test_inplace_autograd_like_torch(backend):
    """A leaf that requires grad: torch's error, nothing written. A non-leaf: written, and
    the gradient is the mask's."""
    leaf = torch.randn(6, requires_grad=True)
    expected = torch_error(lambda: torch.nn.functional.dropout(leaf, 0.5, inplace=True))
    before = leaf.detach().clone()
    with pytest.raises(expected[0], match="leaf Variable that requires grad"):
        F.dropout(leaf, 0.5, inplace=True)
    assert torch.equal(leaf.detach(), before)
    for op in family(3, [o.name for o in INPLACE_OPS]):
        w = torch.randn(2, 3, 4, requires_grad=True)
        h = w * 1.0
        out = op(h, inplace=True, seed=4)
        assert out is h
        out.sum().backward()
        keep = op_mask(op, w.shape, 4)
        ones = torch.ones(2, 3, 4)
        factor = expected_output(op, ones, None, None, keep) - expected_output(op, torch.zeros(2, 3, 4), None, None, keep)
        torch.testing.assert_close(w.grad, factor, rtol=1e-6, atol=0)


def test_inplace_on_view_of_leaf_that_requires_grad(backend):
    leaf = torch.randn(4, 4, requires_grad=True)
    view = leaf[0]
    before = leaf.detach().clone()
    with pytest.raises(RuntimeError, match="view of a leaf Variable"):
        F.dropout(view, 0.5, inplace=True)
    assert torch.equal(leaf.detach(), before)


def test_inplace_on_overlapping_tensor_raises_like_torch(backend):
    """Elements that share memory (an expanded view, overlapping strides): torch's error,
    nothing written; out of place is fine; an empty tensor with such strides is fine."""
    x = torch.randn(1, 3).expand(4, 3)
    before = x.clone()
    expected = torch_error(lambda: torch.nn.functional.dropout(x, 0.5, inplace=True))
    with pytest.raises(expected[0]) as err:
        F.dropout(x, 0.5, inplace=True)
    assert str(err.value) == expected[1]
    assert torch.equal(x, before)
    base = torch.randn(8)
    x = base.as_strided((4, 4), (1, 1))  # rows overlap in memory
    before = base.clone()
    for fn in (lambda: F.dropout(x, 0.5, inplace=True), lambda: F.alpha_dropout(x, 0.5, True, inplace=True),
               lambda: F.dropout1d(x, 0.5, inplace=True)):
        with pytest.raises(RuntimeError, match="more than one element"):
            fn()
    assert torch.equal(base, before)
    assert_same_bits(F.dropout(x, 0.5, seed=1), F.dropout(x.contiguous(), 0.5, seed=1))
    empty = torch.randn(1, 0).expand(2, 0)  # strides that look overlapping, but no elements
    assert F.dropout(empty, 0.5, inplace=True) is empty


def test_inplace_on_inference_tensor_outside_inference_mode(backend):
    with torch.inference_mode():
        x = torch.randn(10)
    before = x.clone()
    with pytest.raises(RuntimeError, match="[Ii]nference"):
        F.dropout(x, 0.5, inplace=True)
    assert torch.equal(x, before)
    with torch.inference_mode():  # inside inference mode it works
        y = F.dropout(x, 0.5, inplace=True, seed=3)
    assert y is x
    assert_same_bits(x, expected_output(FAMILY[0].with_p(0.5), before, None, None, op_mask(FAMILY[0], x.shape, 3)))


def test_inplace_bumps_version_like_torch(backend):
    """A tensor saved for another op's backward and then changed by an in-place dropout
    makes that backward raise, as with torch's own in-place ops."""
    for fn in [lambda t, op=op: op(t, inplace=True) for op in family(4, [o.name for o in INPLACE_OPS])] + [
            lambda t: torch.nn.functional.dropout(t, 0.5, inplace=True)]:
        w = torch.randn(4, 3, 5, 5, requires_grad=True)
        x = torch.randn(4, 3, 5, 5)
        y = (w * x).sum()
        v = x._version
        fn(x)
        assert x._version > v
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.backward()


def test_eval_in_place(backend):
    """training=False: the input itself; with scale_train=False, input * (1 - p) written
    into it (as torch computes that product), whatever seed= or generator= is given."""
    for kw in ({}, {"seed": 5}, {"generator": torch.Generator().manual_seed(1)}):
        x = torch.randn(50)
        want = x * (1 - 0.3)
        assert F.dropout(x, 0.3, False, True, scale_train=False, **kw) is x
        assert_same_bits(x, want)
        y = torch.randn(50)
        before = y.clone()
        assert F.dropout(y, 0.3, False, True, **kw) is y
        assert_same_bits(y, before)
        for op in INPLACE_OPS[2:]:
            z = torch.randn(*(2, 3, 4, 5)[:4 if op.takes(4) else 3])
            before = z.clone()
            assert getattr(F, op.name)(z, 0.3, False, True, **kw) is z
            assert_same_bits(z, before)
