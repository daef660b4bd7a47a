"""Statistical quality of the masks: tests a broken RNG (lane artefacts, correlated
neighbours, repeated or related masks) would fail. Fixed seeds keep them deterministic;
thresholds are many standard errors wide."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from dropout_ext import functional as F

N = 1 << 22


def mask(seed=None, p=0.5, n=N, **kw):
    return (F.dropout(torch.ones(n), p, seed=seed, scale_train=False, **kw) != 0).numpy()


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("modulus", [4, 8, 16, 64])
def test_keep_counts_uniform_over_positions(backend, p, modulus):
    """Chi-square over element positions mod 4 (Philox word), 8 (mask byte), 16 (SIMD
    lanes) and 64 (a SIMD chunk)."""
    m = mask(seed=1000 + modulus, p=p)
    keeps = m.reshape(-1, modulus).sum(0)
    drops = (N // modulus) - keeps
    _, pvalue, _, _ = stats.chi2_contingency(np.stack([keeps, drops]))
    assert pvalue > 1e-4, (keeps, pvalue)


@pytest.mark.parametrize("lag", [1, 2, 3, 4, 8, 16, 64])
def test_no_correlation_between_neighbours(backend, lag):
    m = mask(seed=77).astype(np.float64)
    r = np.corrcoef(m[:-lag], m[lag:])[0, 1]
    assert abs(r) < 5 / math.sqrt(N), r


def _agreement_ok(a, b, p=0.5):
    """Two independent masks agree on a fraction q^2 + (1-q)^2 of elements."""
    q = 1 - p
    expected = q * q + (1 - q) * (1 - q)
    sd = math.sqrt(expected * (1 - expected) / a.size)
    return abs((a == b).mean() - expected) < 6 * sd


def test_consecutive_calls_with_seed_none_are_independent(backend):
    torch.manual_seed(0)
    a, b = mask(), mask()
    assert _agreement_ok(a, b)
    r = np.corrcoef(a.astype(float), b.astype(float))[0, 1]
    assert abs(r) < 5 / math.sqrt(N)


@pytest.mark.parametrize("s1,s2", [(0, 1), (1, 2**32 + 1), (2**32, 2**33), (5, 5 ^ (1 << 63)), (2**64 - 1, 2**64 - 2)])
def test_different_seeds_give_independent_masks(backend, s1, s2):
    a, b = mask(seed=s1), mask(seed=s2)
    assert _agreement_ok(a, b), (a == b).mean()


def test_generator_state_checkpoint_and_resume(backend):
    """torch.get_rng_state / set_rng_state (a checkpoint and resume) reproduces masks."""
    x = torch.ones(10000)
    torch.manual_seed(3)
    F.dropout(x, 0.5)
    state = torch.get_rng_state()
    after = [F.dropout(x, 0.5) for _ in range(3)]
    torch.set_rng_state(state)
    resumed = [F.dropout(x, 0.5) for _ in range(3)]
    for a, b in zip(after, resumed):
        assert torch.equal(a, b)
    assert not torch.equal(after[0], after[1])
    g = torch.Generator().manual_seed(9)
    gs = g.get_state()
    a = F.dropout(x, 0.5, generator=g)
    g.set_state(gs)
    assert torch.equal(a, F.dropout(x, 0.5, generator=g))


def test_seed_none_masks_have_the_right_rate(backend):
    torch.manual_seed(1)
    for p in (0.2, 0.7):
        m = mask(p=p, n=1 << 20)
        q = 1 - p
        assert abs(m.mean() - q) < 5 * math.sqrt(q * p / m.size)
