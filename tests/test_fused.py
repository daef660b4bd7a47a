"""The fused residual ops, dropout_add (r + dropout(x)) and bias_dropout_add
(r + dropout(x + b)): one pass that rounds as the unfused composition in the accumulation
dtype would, on every set of kernels; p at its edges; evaluation mode. (Their operands'
layouts: test_layouts.py; gradients: test_autograd.py; bad operands: test_routes.py.)"""
import pytest
import torch
from testing import FAMILY_BY_NAME, acc_dtype, assert_same_bits, expected_output, keep_mask

from dropout_ext import functional as F

SEED = 12345
SHAPES = [(7, 16), (3, 5, 64), (129, 33), (2, 10), (1, 1), (0, 8), (4099,)]


def _tensors(shape, dtype, device, n=3):
    g = torch.Generator().manual_seed(len(shape) + shape[-1])
    return [torch.randn(s, generator=g).to(dtype).to(device) for s in (shape, shape, shape[-1:])][:n]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_dropout_add_equals_composition(kernels, dtype):
    """r + x * m / (1 - p) with one rounding per step in the accumulation dtype, so for
    float32 and float64 exactly r + dropout(x)."""
    op = FAMILY_BY_NAME["dropout_add"].with_p(0.3)
    for shape in SHAPES:
        x, r = _tensors(shape, dtype, kernels.device, 2)
        out = F.dropout_add(x, r, 0.3, seed=SEED)
        assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
        assert_same_bits(out, expected_output(op, x, r, None, keep_mask(shape, 0.3, SEED)))
        acc = acc_dtype(dtype)
        assert_same_bits(out, (r.to(acc) + F.dropout(x.to(acc), 0.3, seed=SEED)).to(dtype))
        if dtype in (torch.float32, torch.float64):  # one rounding per step: the composition itself
            assert_same_bits(out, r + F.dropout(x, 0.3, seed=SEED))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_bias_dropout_add_equals_composition(kernels, dtype):
    """r + (x + b) * m / (1 - p), b broadcast over the last dim."""
    op = FAMILY_BY_NAME["bias_dropout_add"].with_p(0.3)
    for shape in SHAPES:
        x, r, b = _tensors(shape, dtype, kernels.device)
        out = F.bias_dropout_add(x, b, r, 0.3, seed=SEED)
        assert_same_bits(out, expected_output(op, x, r, b, keep_mask(shape, 0.3, SEED)))
        acc = acc_dtype(dtype)
        assert_same_bits(out, (r.to(acc) + F.dropout(x.to(acc) + b.to(acc), 0.3, seed=SEED)).to(dtype))
        if dtype in (torch.float32, torch.float64):
            assert_same_bits(out, r + F.dropout(x + b, 0.3, seed=SEED))


def test_fused_p_edges(kernels):
    """p = 0: r + x (and r + (x + b)); p = 1: r + x * 0, so a NaN or infinite x gives NaN."""
    x, r, b = _tensors((5, 8), torch.float32, kernels.device)
    x[0, 0], x[0, 1] = float("nan"), float("inf")
    for p in (0.0, 1.0):
        for name, got in (("dropout_add", F.dropout_add(x, r, p, seed=1)),
                          ("bias_dropout_add", F.bias_dropout_add(x, b, r, p, seed=1))):
            op = FAMILY_BY_NAME[name].with_p(p)
            keep = torch.full((5, 8), p == 0.0)
            assert_same_bits(got, expected_output(op, x, r, b if "bias" in name else None, keep))
    assert_same_bits(F.dropout_add(x, r, 0.0), r + x)
    assert torch.isnan(F.dropout_add(x, r, 1.0)[0, :2]).all()


def test_fused_eval(backend):
    """training=False: r + x and r + (x + b), as torch computes them."""
    x, r, b = torch.randn(4, 8), torch.randn(4, 8), torch.randn(8)
    assert torch.equal(F.dropout_add(x, r, 0.5, training=False), r + x)
    assert torch.equal(F.bias_dropout_add(x, b, r, 0.5, training=False), r + (x + b))
    assert torch.equal(F.dropout_add(x, r, 0.5, False, seed=3), r + x)
