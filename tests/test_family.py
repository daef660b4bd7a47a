"""Channel-wise dropout, alpha dropout, drop_path and the fused residual ops: bits across
backends, equality with the unfused composition, torch parity, statistics, gradients."""
import math
import warnings

import pytest
import torch
from testing import (BACKENDS, acc_dtype, assert_same_bits, backend_ctx, expected_dropout, keep_mask, oracle_mask,
                     peek_rng_pair, storage_ctx)

from dropout_ext import functional as F
from dropout_ext import nn

SEED = 12345
ALPHA = 1.7580993408473766  # SELU's scale * alpha: alpha dropout's negative saturation


def alpha_a(p):
    return 1.0 / math.sqrt((ALPHA * ALPHA * p + 1) * (1 - p))


def expected_alpha(x, keep, p):
    """torch's alpha dropout in the accumulation dtype, rounded once at the end:
    kept x * a + alpha * a * p, dropped -alpha * a + alpha * a * p; `keep` is the mask of
    x's shape or of a prefix of it (feature alpha dropout: (N, C))."""
    acc = acc_dtype(x.dtype)
    a = alpha_a(p)
    keep = keep.reshape(tuple(keep.shape) + (1,) * (x.dim() - keep.dim()))
    shift = torch.tensor(ALPHA * a * p, dtype=acc)
    kept = x.to(acc) * torch.tensor(a, dtype=acc) + shift
    dropped = -torch.tensor(ALPHA * a, dtype=acc) + shift
    return torch.where(keep, kept, dropped).to(x.dtype)


def on_each_backend(fn):
    outs = []
    for name in BACKENDS:
        with backend_ctx(name):
            outs.append(fn())
    return outs


def assert_backends_agree(fn):
    outs = on_each_backend(fn)
    for o in outs[1:]:
        assert_same_bits(o, outs[0])
    return outs[0]


# ------------------------------------------------------------------- channel-wise

CHANNEL_CASES = [
    ("dropout1d", (4, 6, 9)), ("dropout1d", (6, 9)),
    ("dropout2d", (3, 5, 4, 7)), ("dropout2d", (3, 5, 11)),
    ("dropout3d", (2, 4, 3, 5, 6)), ("dropout3d", (4, 3, 5, 6)),
]


@pytest.mark.parametrize("name,shape", CHANNEL_CASES, ids=str)
def test_channel_dropout_mask_is_per_channel(dtype, name, shape):
    x = torch.randn(shape, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = assert_backends_agree(lambda: getattr(F, name)(x, 0.5, seed=SEED))
    lead = 1 if (name, len(shape)) in (("dropout1d", 2), ("dropout3d", 4)) else 2
    words = keep_mask(shape[:lead], 0.5, SEED)
    keep = words.reshape(words.shape + (1,) * (len(shape) - lead)).expand(shape)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    expected = (x.to(acc) * torch.where(keep, torch.tensor(2.0, dtype=acc), torch.tensor(0.0, dtype=acc))).to(dtype)
    assert_same_bits(out, expected)


@pytest.mark.parametrize("name,shape", CHANNEL_CASES, ids=str)
def test_channel_dropout_torch_parity(backend, name, shape):
    x = torch.randn(shape)
    with warnings.catch_warnings(record=True) as theirs:
        warnings.simplefilter("always")
        ref = getattr(torch.nn.functional, name)(x, 0.5)
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")
        out = getattr(F, name)(x, 0.5)
    assert [str(w.message) for w in ours] == [str(w.message) for w in theirs]
    assert out.shape == ref.shape
    # torch drops whole channels too: every channel is all-zero or all-scaled in both
    lead = 1 if (name, len(shape)) in (("dropout1d", 2), ("dropout3d", 4)) else 2
    for o in (out, ref):
        flat = (o == 0).reshape(math.prod(shape[:lead]), -1)
        assert torch.all(flat.all(1) | (~flat).all(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the rank warnings were compared above
        assert getattr(F, name)(x, 0.5, training=False) is x


@pytest.mark.parametrize("name,dims", [("dropout1d", [1, 4]), ("dropout2d", [2, 5]), ("dropout3d", [3, 6])])
def test_channel_dropout_other_ranks_like_torch(backend, name, dims):
    for d in dims:
        x = torch.randn((3,) * d)
        theirs = ours = None
        with warnings.catch_warnings(record=True) as wt:
            warnings.simplefilter("always")
            try:
                getattr(torch.nn.functional, name)(x, 0.5)
            except Exception as e:  # noqa: BLE001
                theirs = (type(e), str(e))
        with warnings.catch_warnings(record=True) as wo:
            warnings.simplefilter("always")
            try:
                getattr(F, name)(x, 0.5)
            except Exception as e:  # noqa: BLE001
                ours = (type(e), str(e))
        assert ours == theirs, (name, d)
        assert [str(w.message) for w in wo] == [str(w.message) for w in wt]


def test_channel_dropout_inplace_and_grad(backend):
    x = torch.randn(4, 6, 5)
    expected = F.dropout1d(x, 0.5, seed=3)
    y = x.clone()
    assert F.dropout1d(y, 0.5, inplace=True, seed=3) is y
    assert_same_bits(y, expected)
    xg = torch.randn(4, 6, 5, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: F.dropout2d(t, 0.4, seed=9), (xg,), check_undefined_grad=False)


def test_channel_dropout_saves_only_channel_bits(backend):
    for storage in ("seed", "bits"):
        saved = []
        x = torch.randn(8, 16, 32, 32, requires_grad=True)
        with storage_ctx(storage), torch.autograd.graph.saved_tensors_hooks(
                lambda t: saved.append(t.numel() * t.element_size()) or t, lambda t: t):
            F.dropout2d(x, 0.5)
        assert sum(saved) <= 8 * 16 // 8 + 64, (storage, saved)


def test_modules():
    assert repr(nn.Dropout2d(0.3)) == repr(torch.nn.Dropout2d(0.3))
    assert repr(nn.AlphaDropout()) == repr(torch.nn.AlphaDropout())
    assert isinstance(nn.Dropout3d(), torch.nn.Dropout3d)
    assert repr(nn.DropPath(0.1)) == "DropPath(p=0.1)"
    x = torch.randn(4, 3, 8)
    for m in (nn.Dropout1d(), nn.Dropout2d(), nn.Dropout3d(), nn.AlphaDropout(), nn.FeatureAlphaDropout(), nn.DropPath()):
        m.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert m(x) is x
    with pytest.raises(ValueError, match="between 0 and 1"):
        nn.DropPath(1.5)


# module, input shape, dims of the mask (the reduced shape), alpha?
MODULE_CASES = [
    (nn.Dropout1d, (4, 6, 9), 2, False), (nn.Dropout1d, (6, 9), 1, False),
    (nn.Dropout2d, (3, 5, 4, 7), 2, False),
    (nn.Dropout3d, (2, 4, 3, 5, 6), 2, False), (nn.Dropout3d, (4, 3, 5, 6), 1, False),
    (nn.AlphaDropout, (40, 30), 2, True), (nn.FeatureAlphaDropout, (4, 6, 5, 3), 2, True),
    (nn.DropPath, (16, 3, 5), 1, False),
]


@pytest.mark.parametrize("module,shape,mask_dims,alpha", MODULE_CASES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_modules_training_masks(backend, dtype, module, shape, mask_dims, alpha):
    """In training each module draws (key, base) from the default generator and applies
    the oracle's mask of the reduced shape: whole channels (Dropout1d/2d/3d,
    FeatureAlphaDropout), whole samples (DropPath), single elements (AlphaDropout)."""
    p = 0.4
    m = module(p).train()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    for seed in range(99, 200):  # the first state whose mask has both kept and dropped groups
        torch.manual_seed(seed)
        key, base = peek_rng_pair()
        keep = oracle_mask(shape[:mask_dims], p, key, base)
        if 0 < int(keep.sum()) < keep.numel():
            break
    out = m(x)
    assert_same_bits(out, expected_alpha(x, keep, p) if alpha else expected_dropout(x, keep, p))
    # the same, said as "whole groups": every group is all dropped or all kept
    groups = out.reshape(keep.numel(), -1)
    ref = (expected_alpha(x, torch.zeros_like(keep), p) if alpha else torch.zeros_like(x)).reshape(keep.numel(), -1)
    dropped = (groups == ref).all(1)
    assert torch.equal(dropped, ~keep.reshape(-1))


# ---------------------------------------------------------------------- alpha


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
def test_alpha_dropout_keeps_mean_and_variance(backend, fn):
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
    import numpy as np

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


def test_alpha_dropout_formula_and_backends(dtype):
    """Values exactly the formula in the accumulation dtype, the pattern the oracle's."""
    x = torch.randn(40, 30, dtype=dtype)
    p = 0.2
    out = assert_backends_agree(lambda: F.alpha_dropout(x, p, True, seed=SEED))
    assert_same_bits(out, expected_alpha(x, keep_mask(x.shape, p, SEED), p))
    y = torch.randn(5, 7, 3, 2, dtype=dtype)
    out = assert_backends_agree(lambda: F.feature_alpha_dropout(y, p, True, seed=SEED))
    assert_same_bits(out, expected_alpha(y, keep_mask((5, 7), p, SEED), p))


def test_alpha_dropout_defaults_and_edges(backend):
    x = torch.randn(10, 4)
    assert F.alpha_dropout(x) is x  # training=False by default, as torch
    assert F.feature_alpha_dropout(x, 0.5) is x
    assert F.alpha_dropout(x, 0.0, True) is x
    assert_same_bits(F.alpha_dropout(x, 1.0, True), x * 0.0)
    xg = torch.randn(6, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: F.feature_alpha_dropout(t, 0.3, True, seed=2), (xg,))
    with pytest.raises(RuntimeError, match="Feature dropout requires at least 2 dimensions"):
        F.feature_alpha_dropout(torch.randn(5), 0.5, True)


# -------------------------------------------------------------------- drop_path


def test_drop_path_per_sample(backend, dtype):
    x = torch.randn(16, 3, 5, dtype=dtype)
    out = assert_backends_agree(lambda: F.drop_path(x, 0.25, seed=SEED))
    keep = keep_mask((16,), 0.25, SEED)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    factor = torch.where(keep, torch.tensor(1 / 0.75, dtype=acc), torch.tensor(0.0, dtype=acc))
    assert_same_bits(out, (x.to(acc) * factor[:, None, None]).to(dtype))
    assert F.drop_path(x, 0.25, training=False) is x


def test_drop_path_matches_timm_semantics(backend):
    torch.manual_seed(0)
    n, p = 20000, 0.3
    x = torch.ones(n, 4)
    out = F.drop_path(x, p)
    rows = out[:, 0]
    assert torch.all((out == rows[:, None]))  # whole samples
    # dropped fraction of n Bernoulli(p) samples: sigma = sqrt(p (1 - p) / n) = 0.0032
    assert abs((rows == 0).float().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert torch.equal(rows[rows != 0], torch.full_like(rows[rows != 0], 1 / (1 - p)))  # float32(1 / 0.7)
    with pytest.raises(ValueError, match="0-dim"):
        F.drop_path(torch.tensor(1.0), 0.5)
    xg = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: F.drop_path(t, 0.5, seed=1), (xg,))


# ---------------------------------------------------------------------- fused ops


@pytest.mark.parametrize("shape", [(7, 16), (3, 5, 64), (129, 33), (1, 1), (0, 8)], ids=str)
def test_dropout_add_equals_composition(dtype, shape):
    x, r = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)
    out = assert_backends_agree(lambda: F.dropout_add(x, r, 0.3, seed=SEED))
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    with backend_ctx(BACKENDS[0]):
        dropped = F.dropout(x.to(acc), 0.3, seed=SEED)
    assert_same_bits(out, (r.to(acc) + dropped).to(dtype))
    if dtype in (torch.float32, torch.float64):  # one rounding per step: same as composed
        assert_same_bits(out, r + F.dropout(x, 0.3, seed=SEED))


@pytest.mark.parametrize("shape", [(7, 16), (3, 5, 64), (129, 33), (2, 10), (0, 8)], ids=str)
def test_bias_dropout_add_equals_composition(dtype, shape):
    x, r = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)
    b = torch.randn(shape[-1], dtype=dtype)
    out = assert_backends_agree(lambda: F.bias_dropout_add(x, b, r, 0.3, seed=SEED))
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    with backend_ctx(BACKENDS[0]):
        dropped = F.dropout((x.to(acc) + b.to(acc)), 0.3, seed=SEED)
    assert_same_bits(out, (r.to(acc) + dropped).to(dtype))
    if dtype in (torch.float32, torch.float64):
        assert_same_bits(out, r + F.dropout(x + b, 0.3, seed=SEED))


@pytest.mark.parametrize("storage", ["seed", "bits"])
def test_fused_gradients(backend, storage):
    with storage_ctx(storage):
        x = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
        b = torch.randn(10, dtype=torch.float64, requires_grad=True)
        r = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x, r: F.dropout_add(x, r, 0.4, seed=5), (x, r))
        assert torch.autograd.gradcheck(lambda x, b, r: F.bias_dropout_add(x, b, r, 0.4, seed=5), (x, b, r))
        out = F.bias_dropout_add(x, b, r, 0.4, seed=5)
        g = torch.randn_like(out)
        gx, gb, gr = torch.autograd.grad(out, (x, b, r), g)
        keep = keep_mask(x.shape, 0.4, 5)
        expected = g * torch.where(keep, torch.tensor(1 / 0.6, dtype=torch.float64), 0.0)
        assert torch.equal(gr, g)
        torch.testing.assert_close(gx, expected, rtol=0, atol=0)
        torch.testing.assert_close(gb, expected.sum(0))


def test_fused_eval_and_errors(backend):
    x, r, b = torch.randn(4, 8), torch.randn(4, 8), torch.randn(8)
    assert torch.equal(F.dropout_add(x, r, 0.5, training=False), r + x)
    assert torch.equal(F.bias_dropout_add(x, b, r, 0.5, training=False), r + (x + b))
    snapshot = [t.clone() for t in (x, r, b)]
    with pytest.raises(RuntimeError, match="residual must have the input's shape"):
        F.dropout_add(x, torch.randn(4, 7), 0.5)
    with pytest.raises(TypeError, match="residual must have the input's dtype"):
        F.dropout_add(x, r.double(), 0.5)
    with pytest.raises(RuntimeError, match="bias must be 1-D"):
        F.bias_dropout_add(x, torch.randn(4), r, 0.5)
    with pytest.raises(RuntimeError, match="bias must be 1-D"):
        F.bias_dropout_add(x, torch.randn(2, 8), r, 0.5)
    with pytest.raises(TypeError, match="bias must have the input's dtype"):
        F.bias_dropout_add(x, b.half(), r, 0.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        F.dropout_add(x, r, 1.5)
    with pytest.raises(TypeError, match="int64"):
        F.dropout_add(x.long(), r.long(), 0.5)
    for t, s in zip((x, r, b), snapshot):
        assert torch.equal(t, s)


def test_family_compiles_fullgraph():
    torch._dynamo.reset()

    def f(x, b, r):
        y = F.bias_dropout_add(x, b, r, 0.1, seed=1)
        y = F.dropout_add(y, r, 0.1, seed=2)
        y = F.drop_path(y, 0.2, seed=3)
        return F.dropout2d(y.unsqueeze(-1), 0.2, seed=4)

    x, b, r = torch.randn(4, 6, 8), torch.randn(8), torch.randn(4, 6, 8)
    assert_same_bits(torch.compile(f, fullgraph=True, backend="aot_eager")(x, b, r), f(x, b, r))


@pytest.mark.parametrize("name", ["dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"])
def test_family_signatures_match_torch(name):
    import inspect

    ours = inspect.signature(getattr(F, name)).parameters
    theirs = inspect.signature(getattr(torch.nn.functional, name)).parameters
    assert list(ours)[:len(theirs)] == list(theirs)
    for k in theirs:
        assert ours[k].default == theirs[k].default, (name, k)
    for k in ("seed", "generator"):
        assert ours[k].kind is inspect.Parameter.KEYWORD_ONLY and ours[k].default is None
