"""The core op: bit equality across backends, CPU paths, layouts and thread counts; mask
statistics; special values; gradients; vanilla dropout."""
import math

import numpy as np
import pytest
import torch
from testing import (CPU_ISAS, DTYPES, LAYOUTS, SHAPES, assert_same_bits, backend_ctx, cpu_isa_ctx,
                     expected_dropout, keep_mask, make, oracle_mask, raw_dropout, raw_dropout_bits,
                     requires_compiled, storage_ctx)

from dropout_ext import functional as F

SEED = 0x9E3779B97F4A7C15  # > 2**63: exercises the signed/unsigned key conversion


def reference(x, p, seed, scale_train=True):
    with backend_ctx("python"):
        return F.dropout(x, p, seed=seed, scale_train=scale_train)


# ----------------------------------------------------------------- bit equality


@requires_compiled
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, 1.0])
def test_compiled_equals_python_every_isa(cpu_isa, dtype, shape, p):
    x = torch.randn(shape, dtype=dtype)
    with backend_ctx("compiled"):
        out = F.dropout(x, p, seed=SEED)
    assert_same_bits(out, reference(x, p, SEED))


@requires_compiled
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("shape", [(6, 10), (3, 4, 5, 6), (17, 9)], ids=str)
def test_compiled_equals_python_layouts(cpu_isa, dtype, layout, shape):
    x = make(layout, shape, dtype)
    with backend_ctx("compiled"):
        out = F.dropout(x, 0.4, seed=SEED)
    ref = reference(x, 0.4, SEED)
    assert_same_bits(out, ref)
    assert out.stride() == ref.stride()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_mask_follows_logical_index(backend, layout):
    """The mask at seed=s of any layout equals that of the same values made contiguous."""
    x = make(layout, (4, 6, 5, 3))
    out = F.dropout(x, 0.5, seed=7)
    assert_same_bits(out.contiguous(), F.dropout(x.contiguous(), 0.5, seed=7))
    assert torch.equal(out != 0, keep_mask(x.shape, 0.5, 7) & (x != 0))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
def test_output_keeps_memory_format(backend, layout):
    x = make(layout, (2, 3, 4, 5))
    out = F.dropout(x, 0.5, seed=1)
    assert out.stride() == torch.empty_like(x).stride()
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)


@requires_compiled
def test_thread_count_does_not_change_mask():
    x = torch.randn(1 << 19)
    old = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with backend_ctx("compiled"):
                outs.append(F.dropout(x, 0.5, seed=3))
    finally:
        torch.set_num_threads(old)
    assert_same_bits(outs[0], outs[1])


@requires_compiled
def test_every_cpu_isa_gives_the_same_bits_and_mask():
    assert "scalar" in CPU_ISAS
    x = torch.randn(4099, 7)
    results = {}
    for isa in CPU_ISAS:
        with cpu_isa_ctx(isa), backend_ctx("compiled"):
            results[isa] = raw_dropout(x, 5, 9, 0.3), raw_dropout_bits(x, 5, 9, 0.3)
    for isa, (out, bits) in results.items():
        assert_same_bits(out, results["scalar"][0])
        assert torch.equal(bits, results["scalar"][1]), isa
    assert_same_bits(results["scalar"][0], expected_dropout(x, oracle_mask(x.shape, 0.3, 5, 9), 0.3))


def test_same_seed_same_mask_different_seed_different_mask(backend):
    x = torch.randn(10000)
    assert_same_bits(F.dropout(x, 0.5, seed=11), F.dropout(x, 0.5, seed=11))
    assert not torch.equal(F.dropout(x, 0.5, seed=11), F.dropout(x, 0.5, seed=12))


def test_seed_mask_independent_of_dtype(backend):
    x = torch.randn(3001).abs() + 1
    masks = [(F.dropout(x.to(d), 0.5, seed=99) != 0) for d in DTYPES]
    for m in masks[1:]:
        assert torch.equal(m, masks[0])


# ---------------------------------------------------------------- statistics


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.8, 0.99])
def test_drop_rate_within_binomial_bound(backend, p):
    n = 1 << 20
    out = F.dropout(torch.ones(n), p, seed=2024)
    dropped = int((out == 0).sum())
    q = (2**32 - math.floor(p * 2**32)) / 2**32  # exact keep probability of the threshold
    sd = math.sqrt(n * q * (1 - q))
    assert abs(dropped - n * (1 - q)) < 5 * sd


def test_kept_values_are_scaled(backend, dtype):
    x = torch.randn(5000, dtype=dtype)
    p = 0.3
    out = F.dropout(x, p, seed=5)
    keep = keep_mask(x.shape, p, 5)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    scale = torch.tensor(1 / (1 - p), dtype=acc)
    assert_same_bits(out[keep], (x[keep].to(acc) * scale).to(dtype))


# ------------------------------------------------------------- special values


def test_p_zero_keeps_everything(backend, dtype):
    x = torch.randn(1000, dtype=dtype)
    assert_same_bits(F.dropout(x, 0.0, seed=1), x)


def test_p_one_drops_everything(backend):
    x = torch.tensor([1.0, -2.0, float("nan"), float("inf"), -float("inf"), 0.0, -0.0])
    out = F.dropout(x, 1.0, seed=1)
    assert_same_bits(out, x * 0)
    assert torch.isnan(out[2:5]).all()
    xg = torch.randn(10, requires_grad=True)
    F.dropout(xg, 1.0).sum().backward()
    assert torch.equal(xg.grad, torch.zeros(10))


def test_dropped_negative_is_negative_zero_and_nan_stays(backend):
    x = torch.tensor([-1.5] * 64 + [float("nan")] * 64 + [float("inf")] * 64)
    out = F.dropout(x, 0.5, seed=4)
    keep = keep_mask(x.shape, 0.5, 4)
    neg = out[:64][~keep[:64]]
    assert neg.numel() > 0 and torch.equal(torch.signbit(neg), torch.ones_like(neg, dtype=torch.bool))
    assert torch.isnan(out[64:128]).all()
    inf_part, inf_keep = out[128:], keep[128:]
    assert torch.isnan(inf_part[~inf_keep]).all() and torch.isinf(inf_part[inf_keep]).all()


@pytest.mark.parametrize("shape", [(), (0,), (3, 0)], ids=str)
def test_empty_and_zero_dim(backend, shape):
    x = torch.randn(shape, requires_grad=True)
    out = F.dropout(x, 0.5, seed=1)
    assert out.shape == x.shape and out.dtype == x.dtype
    out.sum().backward()
    assert x.grad.shape == x.shape


# ----------------------------------------------------------------- gradients


@pytest.mark.parametrize("storage", ["seed", "bits"])
def test_gradcheck_float64(backend, storage):
    with storage_ctx(storage):
        x = torch.randn(7, 9, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: F.dropout(t, 0.3, seed=8), (x,))
        assert torch.autograd.gradgradcheck(lambda t: F.dropout(t, 0.3, seed=8), (x,))


@pytest.mark.parametrize("storage", ["seed", "bits"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
def test_backward_is_grad_times_mask_times_scale(backend, dtype, storage, layout):
    with storage_ctx(storage):
        x = make(layout, (2, 3, 4, 5), dtype).requires_grad_()
        p = 0.35
        out = F.dropout(x, p, seed=21)
        g = torch.randn_like(out)
        out.backward(g)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        keep = keep_mask(x.shape, p, 21)
        expected = (g.to(acc) * torch.where(keep, torch.tensor(1 / (1 - p), dtype=acc), torch.tensor(0.0, dtype=acc))).to(dtype)
        assert_same_bits(x.grad, expected)
        assert x.grad.stride() == x.stride()


def test_backward_storage_bytes():
    """What autograd saves: at most numel / 8 + 64 bytes in either mode."""
    n = 1 << 16
    for storage, limit in (("seed", 64), ("bits", n // 8 + 64)):
        saved = []

        def pack(t):
            saved.append(t.numel() * t.element_size())
            return t

        x = torch.randn(n, requires_grad=True)
        with storage_ctx(storage), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            F.dropout(x, 0.5, seed=1)
        assert 0 < sum(saved) <= limit, (storage, saved)


# ------------------------------------------------------------ vanilla dropout


def test_scale_train_false(backend, dtype):
    x = torch.randn(4000, generator=torch.Generator().manual_seed(6)).to(dtype)
    if dtype == torch.float16:  # subnormal results: where a relative tolerance alone fails
        x[:8] = torch.tensor([2.0**-24, -(2.0**-24), 3 * 2.0**-24, 2.0**-20, -(2.0**-15), 6e-5, 0.0, -0.0])
    out = F.dropout(x, 0.4, seed=6, scale_train=False)
    keep = keep_mask(x.shape, 0.4, 6)
    assert_same_bits(out, x * keep.to(dtype))
    ev = F.dropout(x, 0.4, training=False, scale_train=False)
    # SPEC: input * (1 - p), as torch computes that expression: bit for bit
    assert_same_bits(ev, x * (1 - 0.4))
    # and within the dtype's rounding of the exact product: the factor 0.6 rounded to the
    # op's dtype and the result rounded once give at most eps relative error (eps = 2u),
    # and a subnormal result at most half the subnormal spacing eps * tiny
    fi = torch.finfo(dtype)
    exact = x.double() * 0.6
    assert torch.all((ev.double() - exact).abs() <= fi.eps * exact.abs() + fi.eps * fi.tiny / 2)
    assert F.dropout(x, 0.4, training=False) is x


@pytest.mark.parametrize("storage", ["seed", "bits"])
def test_vanilla_backward_is_grad_times_mask(backend, dtype, storage):
    """scale_train=False: the gradient is grad * m, with no 1 / (1 - p)."""
    with storage_ctx(storage):
        x = torch.randn(3, 67, dtype=dtype, requires_grad=True)
        out = F.dropout(x, 0.3, seed=31, scale_train=False)
        g = torch.randn_like(out)
        out.backward(g)
    assert_same_bits(x.grad, expected_dropout(g, keep_mask(x.shape, 0.3, 31), 0.3, scale_train=False))


def test_vanilla_and_inverted_formulations_match_numpy_and_each_other(backend):
    """SPEC section 2, one layer in numpy and in torch with the same masks; and the two
    formulations agree in expectation over many masks."""
    rng = np.random.default_rng(0)
    W, b, xin = rng.standard_normal((64, 32)), rng.standard_normal(64), rng.standard_normal(32)
    h = np.maximum(W @ xin + b, 0)
    q = 1 - 0.3
    ht = torch.from_numpy(h)
    trials = 4000
    vanilla = np.zeros_like(h)
    inverted = np.zeros_like(h)
    for s in range(trials):
        m = keep_mask(ht.shape, 0.3, s).numpy()
        v = F.dropout(ht, 0.3, seed=s, scale_train=False).numpy()
        i = F.dropout(ht, 0.3, seed=s).numpy()
        if s < 5:  # bit-level agreement with the numpy rendering of both formulas
            np.testing.assert_array_equal(v, h * m)
            np.testing.assert_allclose(i, h * m / q, rtol=1e-15)
        vanilla += v
        inverted += i
    vanilla /= trials
    inverted /= trials
    test_vanilla = F.dropout(ht, 0.3, training=False, scale_train=False).numpy()
    test_inverted = F.dropout(ht, 0.3, training=False).numpy()
    np.testing.assert_allclose(test_vanilla, h * q)
    np.testing.assert_array_equal(test_inverted, h)
    # mean over masks -> test-time value; standard error of the mean is h*sqrt(q(1-q)/trials)
    tol = 5 * np.sqrt(q * (1 - q) / trials) * h + 1e-12
    assert np.all(np.abs(vanilla - test_vanilla) <= tol)
    assert np.all(np.abs(inverted - test_inverted) <= tol / q)
