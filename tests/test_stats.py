"""Statistics: the masks' quality (tests a broken RNG would fail: lane artefacts,
correlated neighbours, repeated, shifted or related masks, masks too regular) and the
distributions the ops promise (drop rates, alpha dropout's mean and variance, whole
samples dropped at rate p, vanilla and inverted dropout agreeing in expectation). Fixed
seeds keep them deterministic; each bound is about 5 standard errors (or a p-value of
3e-7, the one-sided tail of 5 sigma), with the sigma next to it. The statistics
themselves are checked on bad masks made here on purpose (a test of the tests). The
masks are the oracle's on every set of kernels (test_mask.py), so the statistics run on
the kernels the API uses by default."""
import math

import numpy as np
import pytest
import torch
from scipy import stats
from testing import keep_mask, raw_dropout

from dropout_ext import functional as F

N = 1 << 22
P_5SIGMA = 2.9e-7  # one-sided normal tail beyond 5 sigma


def mask(seed=None, p=0.5, n=N, **kw):
    return (F.dropout(torch.ones(n), p, seed=seed, scale_train=False, **kw) != 0).numpy()


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("modulus", [4, 8, 16, 64])
def test_keep_counts_uniform_over_positions(p, modulus):
    """Chi-square over element positions mod 4 (Philox word), 8 (mask byte), 16 (SIMD
    lanes) and 64 (a SIMD chunk)."""
    m = mask(seed=1000 + modulus, p=p)
    keeps = m.reshape(-1, modulus).sum(0)
    drops = (N // modulus) - keeps
    _, pvalue, _, _ = stats.chi2_contingency(np.stack([keeps, drops]))
    assert pvalue > P_5SIGMA, (keeps, pvalue)


@pytest.mark.parametrize("lag", [1, 2, 3, 4, 8, 16, 64])
def test_no_correlation_between_neighbours(lag):
    m = mask(seed=77).astype(np.float64)
    r = np.corrcoef(m[:-lag], m[lag:])[0, 1]
    assert abs(r) < 5 / math.sqrt(N), r


def _agreement_ok(a, b, p=0.5):
    """Two independent masks agree on a fraction q^2 + (1-q)^2 of elements (sigma of the
    fraction: sqrt(e (1 - e) / n) = 2.4e-4 for n = 2**22)."""
    q = 1 - p
    expected = q * q + (1 - q) * (1 - q)
    sd = math.sqrt(expected * (1 - expected) / a.size)
    return abs((a == b).mean() - expected) < 5 * sd


def test_consecutive_calls_with_seed_none_are_independent():
    torch.manual_seed(0)
    a, b = mask(), mask()
    assert _agreement_ok(a, b)
    r = np.corrcoef(a.astype(float), b.astype(float))[0, 1]
    assert abs(r) < 5 / math.sqrt(N)


@pytest.mark.parametrize("s1,s2", [(0, 1), (1, 2**32 + 1), (2**32, 2**33), (5, 5 ^ (1 << 63)), (2**64 - 1, 2**64 - 2)])
def test_different_seeds_give_independent_masks(s1, s2):
    a, b = mask(seed=s1), mask(seed=s2)
    assert _agreement_ok(a, b), (a == b).mean()


def test_generator_state_checkpoint_and_resume():
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


def test_seed_none_masks_have_the_right_rate():
    torch.manual_seed(1)
    for p in (0.2, 0.7):
        m = mask(p=p, n=1 << 20)
        q = 1 - p
        assert abs(m.mean() - q) < 5 * math.sqrt(q * p / m.size)


# ------------------------------------------------- relatedness across shifts

M = 1 << 20  # mask length for the statistics below
# Per-lag bound on |z|: P(|z| > 7.3) = 2.9e-13 for one lag, so over the 2**20 lags checked
# the chance that an independent pair exceeds it anywhere is 3e-7, the tail of 5 sigma.
XCORR_Z = 7.3


def _spectrum(mask):
    """rfft of the standardised mask, zero-padded to 2 * len (no wrap-around)."""
    x = mask.astype(np.float64)
    x = (x - x.mean()) / x.std()
    return np.fft.rfft(x, 2 * x.size)


def max_xcorr_z(a, b, max_lag=None):
    """Largest |z| of the cross-correlation of masks a and b over lags -max_lag..max_lag
    (default len / 2) and the lag of the largest: c(L) = sum_i a'[i] b'[i + L] of the standardised masks, and
    z(L) = c(L) / sqrt(n - |L|) is about N(0, 1) when a and b are independent. A mask
    that is a shift of the other by L has z(L) = sqrt(n - |L|), about 700 here."""
    fa = a if np.iscomplexobj(a) else _spectrum(a)
    fb = b if np.iscomplexobj(b) else _spectrum(b)
    n = (fa.size - 1)
    max_lag = n // 2 if max_lag is None else max_lag
    c = np.fft.irfft(np.conj(fa) * fb, 2 * n)  # c[L] = sum_i a[i] b[i + L], negative L wrapped
    lags = np.r_[np.arange(0, max_lag + 1), np.arange(-max_lag, 0)]
    z = c[lags] / np.sqrt(n - np.abs(lags))
    i = int(np.argmax(np.abs(z)))
    return float(abs(z[i])), int(lags[i])


def _mask(seed):
    return (F.dropout(torch.ones(M), 0.5, seed=seed, scale_train=False) != 0).numpy()


SEED = 0x5DEECE66D


def test_seeds_one_apart_or_one_bit_apart_are_unrelated_at_every_shift():
    """Masks of s and s + 1, and of s and s XOR 2**k, cross-correlated over every lag up
    to 2**19 (multiples of 4 included: a shift by whole Philox blocks)."""
    base = _spectrum(_mask(SEED))
    for other in [SEED + 1, SEED - 1] + [SEED ^ (1 << k) for k in (0, 1, 2, 3, 8, 16, 31, 32, 33, 48, 63)]:
        z, lag = max_xcorr_z(base, _mask(other))
        assert z < XCORR_Z, (hex(other), z, lag)


def test_bases_one_apart_or_one_bit_apart_are_unrelated_at_every_shift():
    """The same for the base word of the counter (the default path draws it): a base
    added to the block index would give shifted masks."""
    key, b = 0x0123456789ABCDEF, 0x1000
    x = torch.ones(M)

    def mask(base):
        return (raw_dropout(x, key, base, 0.5, scale_train=False) != 0).numpy()

    first = _spectrum(mask(b))
    for other in [b + 1, b ^ 1, b ^ (1 << 31), b ^ (1 << 32), b ^ (1 << 63)]:
        z, lag = max_xcorr_z(first, mask(other))
        assert z < XCORR_Z, (hex(other), z, lag)


def test_successive_default_path_masks_are_unrelated_at_every_shift():
    g = torch.Generator().manual_seed(17)
    a, b = (F.dropout(torch.ones(M), 0.5, generator=g) != 0).numpy(), (F.dropout(torch.ones(M), 0.5, generator=g) != 0).numpy()
    z, lag = max_xcorr_z(a, b)
    assert z < XCORR_Z, (z, lag)


def test_xcorr_flags_a_generator_whose_seeds_shift_one_mask():
    """Test of the test: a bad generator where seed s gives one fixed random mask shifted
    by 4 s. Seeds s + 1 and s XOR 2**k (k <= 16, shifts within the lags checked) must be
    flagged; two independent masks must not."""
    rng = np.random.default_rng(0)
    fixed = rng.random(M + 4 * (2 << 16) + 64) < 0.5

    def bad_mask(s):
        return fixed[4 * s:4 * s + M]

    s = 5 + (1 << 16)
    base = _spectrum(bad_mask(s))
    for other in [s + 1, s - 1] + [s ^ (1 << k) for k in (0, 1, 2, 3, 8, 16)]:
        z, lag = max_xcorr_z(base, bad_mask(other))
        # mask(other)[i] = mask(s)[i + 4 (other - s)]: the peak sits at lag -4 (other - s)
        assert z > 10 * XCORR_Z and lag == -4 * (other - s), (other, z, lag)
    z, _ = max_xcorr_z(rng.random(M) < 0.5, rng.random(M) < 0.5)
    assert z < XCORR_Z


# ------------------------------------------------------------ too regular


def runs_z(mask, q):
    """Wald-Wolfowitz runs test for n Bernoulli(q) elements: the number of runs R = 1 +
    #{i: m[i] != m[i-1]} has mean 1 + 2 (n-1) p q and variance (n-1) 2pq (1 - 2pq) +
    2 (n-2) (pq - 4 p^2 q^2) (neighbouring change indicators share an element)."""
    n, p = mask.size, 1 - q
    runs = 1 + int(np.count_nonzero(mask[1:] != mask[:-1]))
    mean = 1 + 2 * (n - 1) * p * q
    var = (n - 1) * 2 * p * q * (1 - 2 * p * q) + 2 * (n - 2) * (p * q - 4 * p * p * q * q)
    return (runs - mean) / math.sqrt(var)


def run_lengths(mask, value):
    """Lengths of the maximal runs of `value` that do not touch either end."""
    m = np.r_[not value, mask, not value].astype(np.int8)
    edges = np.flatnonzero(np.diff(m))  # starts and ends of runs of value
    starts, ends = edges[::2], edges[1::2]
    lengths = ends - starts
    inner = (starts > 0) & (ends < mask.size)
    return lengths[inner]


def gap_test_pvalue(mask, q):
    """Gap test: the lengths of runs of kept elements are Geometric(1 - q) and those of
    dropped ones Geometric(q), P(L = k) = r^(k-1) (1 - r); chi-square over lengths
    1 .. K-1 and >= K, K the largest with an expected count >= 20."""
    pvalues = []
    for value, r in ((True, q), (False, 1 - q)):
        lengths = run_lengths(mask, value)
        total = lengths.size
        K = 1
        while total * r ** K * (1 - r) >= 20:
            K += 1
        probs = np.array([r ** (k - 1) * (1 - r) for k in range(1, K)] + [r ** (K - 1)])
        counts = np.array([np.count_nonzero(lengths == k) for k in range(1, K)] + [np.count_nonzero(lengths >= K)])
        pvalues.append(stats.chisquare(counts, probs * total).pvalue)
    return min(pvalues)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_masks_are_not_too_regular(p):
    q = (2**32 - math.floor(p * 2**32)) / 2**32
    for mask in ((F.dropout(torch.ones(M), p, seed=2718, scale_train=False) != 0).numpy(),
                 (F.dropout(torch.ones(M), p, generator=torch.Generator().manual_seed(3), scale_train=False)
                  != 0).numpy()):
        assert abs(runs_z(mask, q)) < 5, runs_z(mask, q)
        assert gap_test_pvalue(mask, q) > P_5SIGMA


def test_regularity_statistics_flag_regular_masks():
    """Test of the tests: masks with the right density but too regular are flagged, a
    good one is not."""
    rng = np.random.default_rng(1)
    good = rng.random(M) < 0.5
    assert abs(runs_z(good, 0.5)) < 5 and gap_test_pvalue(good, 0.5) > P_5SIGMA
    alternating = np.arange(M) % 2 == 0
    assert abs(runs_z(alternating, 0.5)) > 5
    # exactly two kept in every block of four, at random places: no long runs
    stratified = np.argsort(rng.random((M // 4, 4)), axis=1).reshape(-1) < 2
    assert gap_test_pvalue(stratified, 0.5) < P_5SIGMA
    # blocks of eight kept or dropped together: too few runs
    clumped = np.repeat(rng.random(M // 8) < 0.5, 8)
    assert abs(runs_z(clumped, 0.5)) > 5 and gap_test_pvalue(clumped, 0.5) < P_5SIGMA
    # a mask that repeats every 64 elements: right density and runs of a random mask, caught
    # by the autocorrelation
    periodic = np.tile(rng.random(64) < 0.5, M // 64)
    assert abs(runs_z(periodic, 0.5)) < 5
    z, lag = max_autocorr_z(periodic)
    assert z > 10 * XCORR_Z and lag % 64 == 0, (z, lag)
    assert max_autocorr_z(good)[0] < XCORR_Z


def max_autocorr_z(mask, max_lag=None):
    """Largest |z| of the mask against itself over the lags 1..max_lag (default len / 2),
    and its lag; z as in max_xcorr_z."""
    f = _spectrum(mask)
    n = mask.size
    max_lag = n // 2 if max_lag is None else max_lag
    c = np.fft.irfft(np.conj(f) * f, 2 * n)
    lags = np.arange(1, max_lag + 1)
    z = np.abs(c[lags]) / np.sqrt(n - lags)
    i = int(np.argmax(z))
    return float(z[i]), int(lags[i])


def test_no_autocorrelation_at_any_shift():
    """A mask against itself at every non-zero lag up to 2**19."""
    z, lag = max_autocorr_z(_mask(SEED ^ 0xABCDEF))
    assert z < XCORR_Z, (z, lag)


# ------------------------------------------------------------- the ops' distributions


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.8, 0.99])
def test_drop_rate_within_binomial_bound(p):
    n = 1 << 20
    out = F.dropout(torch.ones(n), p, seed=2024)
    dropped = int((out == 0).sum())
    q = (2**32 - math.floor(p * 2**32)) / 2**32  # exact keep probability of the threshold
    sd = math.sqrt(n * q * (1 - q))
    assert abs(dropped - n * (1 - q)) < 5 * sd


ALPHA = 1.7580993408473766  # SELU's scale * alpha


def alpha_a(p):
    return 1.0 / math.sqrt((ALPHA * ALPHA * p + 1) * (1 - p))


def alpha_sigmas(p, channels, per_channel):
    """Standard errors of the mean and of the variance of alpha dropout's output over
    `channels` independent groups of `per_channel` elements sharing one mask word, for
    x ~ N(0, 1): out = a * (m * x + alpha * (m - q)), q = 1 - p, which has mean 0 and
    variance 1. Per group, the mean has variance a^2 (q / L + alpha^2 p q); the mean of
    out^2 is a^2 (mean(x^2) + 2 alpha p xbar + alpha^2 p^2) when kept (variance
    a^4 (2 + 4 alpha^2 p^2) / L) and a^2 alpha^2 q^2 when dropped."""
    a, q, L = alpha_a(p), 1 - p, per_channel
    var_mean = a * a * (q / L + ALPHA**2 * p * q)
    kept_sq, dropped_sq = a * a * (1 + ALPHA**2 * p * p), a * a * ALPHA**2 * q * q
    var_sq = q * a**4 * (2 + 4 * ALPHA**2 * p * p) / L + p * q * (kept_sq - dropped_sq) ** 2
    return math.sqrt(var_mean / channels), math.sqrt(var_sq / channels)


@pytest.mark.parametrize("fn", ["alpha_dropout", "feature_alpha_dropout"])
def test_alpha_dropout_keeps_mean_and_variance(fn):
    torch.manual_seed(0)
    x = torch.randn(64, 256, 64)
    for p in (0.1, 0.5):
        if fn == "alpha_dropout":
            sd_mean, sd_var = alpha_sigmas(p, x.numel(), 1)  # 0.00098 and 0.0012-0.0013
        else:
            sd_mean, sd_var = alpha_sigmas(p, 64 * 256, 64)  # 0.0039-0.0061 and 0.0031-0.0033
        out = getattr(F, fn)(x, p, training=True)
        assert abs(out.mean().item()) < 5 * sd_mean
        assert abs(out.var().item() - 1) < 5 * sd_var
        ref = getattr(torch.nn.functional, fn)(x, p, training=True)
        # two sample means, each with standard error sd_mean
        assert abs(ref.mean().item() - out.mean().item()) < 5 * math.sqrt(2) * sd_mean


def test_alpha_sigmas_match_a_simulation():
    """The standard errors above, checked against the spread of 400 simulated runs of
    the same model (numpy, fixed seed): within 20% (the relative error of a standard
    deviation estimated from 400 samples is about 1 / sqrt(800) = 3.5%)."""
    rng = np.random.default_rng(0)
    p, C, L = 0.5, 256, 16
    a, q = alpha_a(p), 1 - p
    means, variances = [], []
    for _ in range(400):
        m = (rng.random((C, 1)) < q).astype(float)
        out = a * (m * rng.standard_normal((C, L)) + ALPHA * (m - q))
        means.append(out.mean())
        variances.append(out.var())
    sd_mean, sd_var = alpha_sigmas(p, C, L)
    assert abs(np.std(means) / sd_mean - 1) < 0.2
    assert abs(np.std(variances) / sd_var - 1) < 0.2


def test_drop_path_drops_samples_at_rate_p():
    """Whole samples, dropped with probability p: the dropped fraction of n samples has
    sigma = sqrt(p (1 - p) / n) = 0.0032."""
    torch.manual_seed(0)
    n, p = 20000, 0.3
    out = F.drop_path(torch.ones(n, 4), p)
    rows = out[:, 0]
    assert torch.all(out == rows[:, None])
    assert abs((rows == 0).float().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_vanilla_and_inverted_formulations_match_numpy_and_each_other():
    """One layer in numpy and in torch with the same masks (both formulas, value for
    value); and the two formulations agree in expectation over many masks with the
    test-time values, x * (1 - p) and x."""
    rng = np.random.default_rng(0)
    W, b, xin = rng.standard_normal((64, 32)), rng.standard_normal(64), rng.standard_normal(32)
    h = np.maximum(W @ xin + b, 0)
    q = 1 - 0.3
    ht = torch.from_numpy(h)
    trials = 4000
    vanilla = np.zeros_like(h)
    inverted = np.zeros_like(h)
    for s in range(trials):
        v = F.dropout(ht, 0.3, seed=s, scale_train=False).numpy()
        i = F.dropout(ht, 0.3, seed=s).numpy()
        if s < 5:  # value for value against the numpy rendering of both formulas
            m = keep_mask(ht.shape, 0.3, s).numpy()
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
