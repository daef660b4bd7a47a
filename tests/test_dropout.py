"""Element-wise dropout: its values (inverted, and vanilla with scale_train=False) on every
set of kernels, dtype, shape and p; special values; evaluation mode; drop-in parity with
torch.nn.functional.dropout and torch.nn.Dropout (signature, modules, repr)."""
import inspect
import math

import pytest
import torch
from testing import (BACKEND_KERNELS, DTYPES, SHAPES, assert_same_bits, expected_dropout, keep_mask,
                     oracle_mask, peek_rng_pair)

from dropout_ext import functional as F
from dropout_ext import nn

SEED = 0x9E3779B97F4A7C15  # > 2**63: exercises the signed/unsigned key conversion


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_values_are_the_formula(kernels, dtype):
    """x * m / (1 - p) in the accumulation dtype (float32 for the 16-bit types), rounded
    once, with the oracle's m: every shape (empty, 0-dim, tails of every SIMD width, large
    odd sizes), p in {0, 1/4, 1/2, 1} and a p whose 1 / (1 - p) is not exact in float32."""
    for shape in SHAPES + [((1 << 17) + 3,)]:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(len(shape))).to(dtype)
        xd = x.to(kernels.device)
        for p in (0.0, 0.25, 0.5, 1.0, 0.3):
            out = F.dropout(xd, p, seed=SEED)
            assert out.device.type == kernels.device
            assert_same_bits(out, expected_dropout(x, keep_mask(shape, p, SEED), p))


@pytest.mark.quick
@pytest.mark.parametrize("kernels", BACKEND_KERNELS, indirect=True)
def test_dropout_quick(kernels):
    x = torch.randn(4, 33)
    for scale_train in (True, False):
        out = F.dropout(x.to(kernels.device), 0.3, seed=SEED, scale_train=scale_train)
        assert_same_bits(out, expected_dropout(x, keep_mask(x.shape, 0.3, SEED), 0.3, scale_train))


def test_kept_values_are_scaled(kernels, dtype):
    x = torch.randn(5000, dtype=dtype)
    p = 0.3
    out = F.dropout(x.to(kernels.device), p, seed=5).cpu()
    keep = keep_mask(x.shape, p, 5)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    scale = torch.tensor(1 / (1 - p), dtype=acc)
    assert_same_bits(out[keep], (x[keep].to(acc) * scale).to(dtype))
    assert torch.all(out[~keep] == 0)


# ------------------------------------------------------------- special values


def test_p_zero_keeps_everything(kernels, dtype):
    x = torch.randn(1000, dtype=dtype, device=kernels.device)
    assert_same_bits(F.dropout(x, 0.0, seed=1), x)
    assert_same_bits(F.dropout(x, 0.0), x)


def test_p_one_drops_everything(kernels):
    x = torch.tensor([1.0, -2.0, float("nan"), float("inf"), -float("inf"), 0.0, -0.0], device=kernels.device)
    out = F.dropout(x, 1.0, seed=1)
    assert_same_bits(out, x * 0)
    assert torch.isnan(out[2:5]).all()
    assert_same_bits(F.dropout(x, 1.0), x * 0)
    xg = torch.randn(10, requires_grad=True, device=kernels.device)
    F.dropout(xg, 1.0).sum().backward()
    assert torch.equal(xg.grad.cpu(), torch.zeros(10))


def test_dropped_negative_is_negative_zero_and_nan_stays(kernels):
    x = torch.tensor([-1.5] * 64 + [float("nan")] * 64 + [float("inf")] * 64, device=kernels.device)
    out = F.dropout(x, 0.5, seed=4).cpu()
    keep = keep_mask(x.shape, 0.5, 4)
    neg = out[:64][~keep[:64]]
    assert neg.numel() > 0 and torch.equal(torch.signbit(neg), torch.ones_like(neg, dtype=torch.bool))
    assert torch.isnan(out[64:128]).all()
    inf_part, inf_keep = out[128:], keep[128:]
    assert torch.isnan(inf_part[~inf_keep]).all() and torch.isinf(inf_part[inf_keep]).all()


@pytest.mark.parametrize("shape", [(), (0,), (3, 0)], ids=str)
def test_empty_and_zero_dim(kernels, shape):
    x = torch.randn(shape, requires_grad=True, device=kernels.device)
    out = F.dropout(x, 0.5, seed=1)
    assert out.shape == x.shape and out.dtype == x.dtype
    out.sum().backward()
    assert x.grad.shape == x.shape


# ------------------------------------------------------------ vanilla dropout


def test_scale_train_false(kernels, dtype):
    """Training: x * m, no scaling (subnormal values included). Evaluation: x * (1 - p), as
    torch computes that expression, bit for bit."""
    x = torch.randn(4000, generator=torch.Generator().manual_seed(6)).to(dtype)
    if dtype == torch.float16:  # subnormal results: where a relative tolerance alone fails
        x[:8] = torch.tensor([2.0**-24, -(2.0**-24), 3 * 2.0**-24, 2.0**-20, -(2.0**-15), 6e-5, 0.0, -0.0])
    xd = x.to(kernels.device)
    out = F.dropout(xd, 0.4, seed=6, scale_train=False)
    keep = keep_mask(x.shape, 0.4, 6)
    assert_same_bits(out, x * keep.to(dtype))
    ev = F.dropout(xd, 0.4, training=False, scale_train=False)
    assert_same_bits(ev, x * (1 - 0.4))
    # and within the dtype's rounding of the exact product: the factor 0.6 rounded to the
    # op's dtype and the result rounded once give at most eps relative error (eps = 2u),
    # and a subnormal result at most half the subnormal spacing eps * tiny
    fi = torch.finfo(dtype)
    exact = x.double() * 0.6
    assert torch.all((ev.cpu().double() - exact).abs() <= fi.eps * exact.abs() + fi.eps * fi.tiny / 2)
    assert F.dropout(xd, 0.4, training=False) is xd


# ------------------------------------------------------------- torch parity


def test_signature_matches_torch():
    ours = inspect.signature(F.dropout).parameters
    theirs = inspect.signature(torch.nn.functional.dropout).parameters
    assert list(ours)[:4] == list(theirs)[:4]
    for name in list(theirs)[:4]:
        assert ours[name].default == theirs[name].default
    for name in ("seed", "generator", "scale_train", "global_shape", "global_offset"):
        assert ours[name].kind is inspect.Parameter.KEYWORD_ONLY


def test_eval_returns_input_object(backend):
    x = torch.randn(5)
    assert F.dropout(x, 0.5, training=False) is torch.nn.functional.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.5, False, True) is x
    m = nn.Dropout(0.5).eval()
    assert m(x) is x


def test_module_repr_and_isinstance():
    assert repr(nn.Dropout()) == repr(torch.nn.Dropout()) == "Dropout(p=0.5, inplace=False)"
    assert repr(nn.Dropout(0.2, True)) == repr(torch.nn.Dropout(0.2, True))
    assert repr(nn.Dropout(0.2, scale_train=False)) == "Dropout(p=0.2, inplace=False, scale_train=False)"
    assert isinstance(nn.Dropout(), torch.nn.Dropout)
    assert nn.Dropout(0.3).p == 0.3 and nn.Dropout().inplace is False


def test_module_train_eval(kernels):
    """In training nn.Dropout draws (key, base) from the default generator and applies the
    oracle's mask; in evaluation it returns its input (or x * (1 - p), vanilla)."""
    dev = kernels.device
    m = nn.Dropout(0.5)
    x = torch.ones(10000, device=dev)
    torch.manual_seed(0)
    key, base = peek_rng_pair(device=dev)
    y = m(x)
    keep = oracle_mask(x.shape, 0.5, key, base)
    assert_same_bits(y, torch.where(keep, 2.0, 0.0))
    # and the drop count is plausible: Binomial(n, 1/2), sigma = sqrt(n p (1 - p)) = 50
    assert abs(int((y == 0).sum()) - x.numel() / 2) < 5 * math.sqrt(x.numel() * 0.25)
    m.eval()
    assert m(x) is x
    v = nn.Dropout(0.5, scale_train=False).eval()
    assert torch.equal(v(x), x * 0.5)
    v.train()
    key, base = peek_rng_pair(device=dev)
    assert_same_bits(v(x), oracle_mask(x.shape, 0.5, key, base).float())


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("kernels", [k for k in BACKEND_KERNELS if k == "cuda"] or ["python"], indirect=True)
def test_second_device(kernels):
    """An input on the second GPU: output and gradient there, the seed's mask."""
    x = torch.randn(5000, device="cuda:1")
    out = F.dropout(x, 0.5, seed=SEED)
    assert out.device == x.device
    assert_same_bits(out, expected_dropout(x.cpu(), keep_mask(x.shape, 0.5, SEED), 0.5))
    y = torch.randn(5000, device="cuda:1", requires_grad=True)
    F.dropout(y, 0.5).sum().backward()
    assert y.grad.device == y.device
