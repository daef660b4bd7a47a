"""The rest of the family: channel-wise dropout (dropout1d/2d/3d, feature alpha dropout),
alpha dropout and drop_path: their masks (one word per channel, per sample or per
element) and values against the oracle on every set of kernels, their modules, and parity
with torch's functions (signatures, warnings, errors, evaluation mode)."""
import inspect
import math
import warnings

import pytest
import torch
from testing import (BACKEND_KERNELS, FAMILY, FAMILY_BY_NAME, assert_same_bits, expected_output, keep_mask,
                     op_mask, oracle_mask, peek_rng_pair)

from dropout_ext import functional as F
from dropout_ext import nn

SEED = 12345

CHANNEL_CASES = [
    ("dropout1d", (4, 6, 9)), ("dropout1d", (6, 9)),
    ("dropout2d", (3, 5, 4, 7)), ("dropout2d", (3, 5, 11)),
    ("dropout3d", (2, 4, 3, 5, 6)), ("dropout3d", (4, 3, 5, 6)),
]


def _lead(name, shape):
    return 1 if (name, len(shape)) in (("dropout1d", 2), ("dropout3d", 4)) else 2


@pytest.mark.quick
@pytest.mark.parametrize("kernels", BACKEND_KERNELS, indirect=True)
def test_every_op_seed_quick(kernels):
    """The quick tier's check of every op with seed= against the oracle."""
    x = torch.randn(3, 4, 5, 6)
    for op in FAMILY:
        if not op.takes(x.dim()):
            continue
        r, b = op.operands(x)
        dev = kernels.device
        out = op(x.to(dev), None if r is None else r.to(dev), None if b is None else b.to(dev), seed=SEED)
        assert_same_bits(out, expected_output(op, x, r, b, op_mask(op, x.shape, SEED)))


# ------------------------------------------------------------------- channel-wise


def test_channel_dropout_mask_is_per_channel(kernels, dtype):
    """One word per (N, C) (per C unbatched): whole channels kept (scaled) or zeroed, with
    the oracle's mask of the reduced shape."""
    for name, shape in CHANNEL_CASES:
        x = torch.randn(shape, dtype=dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # dropout2d on 3-D input warns, as torch's
            out = getattr(F, name)(x.to(kernels.device), 0.5, seed=SEED)
        lead = _lead(name, shape)
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
    lead = _lead(name, shape)
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


# ---------------------------------------------------------------------- modules


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


# module, input shape, the op whose arithmetic it applies
MODULE_CASES = [
    (nn.Dropout1d, (4, 6, 9), "dropout1d"), (nn.Dropout1d, (6, 9), "dropout1d"),
    (nn.Dropout2d, (3, 5, 4, 7), "dropout2d"),
    (nn.Dropout3d, (2, 4, 3, 5, 6), "dropout3d"), (nn.Dropout3d, (4, 3, 5, 6), "dropout3d"),
    (nn.AlphaDropout, (40, 30), "alpha_dropout"), (nn.FeatureAlphaDropout, (4, 6, 5, 3), "feature_alpha_dropout"),
    (nn.DropPath, (16, 3, 5), "drop_path"),
]


def test_modules_training_masks(kernels, dtype):
    """In training each module draws (key, base) from the default generator and applies
    the oracle's mask of the reduced shape: whole channels (Dropout1d/2d/3d,
    FeatureAlphaDropout), whole samples (DropPath), single elements (AlphaDropout)."""
    dev = kernels.device
    p = 0.4
    for module, shape, name in MODULE_CASES:
        op = FAMILY_BY_NAME[name].with_p(p)
        m = module(p).train()
        x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
        for seed in range(99, 200):  # the first state whose mask has both kept and dropped groups
            torch.manual_seed(seed)
            key, base = peek_rng_pair(device=dev)
            keep = op_mask(op, shape, key, base)
            if 0 < int(keep.sum()) < keep.numel():
                break
        out = m(x.to(dev)).cpu()
        assert_same_bits(out, expected_output(op, x, None, None, keep))
        # the same, said as "whole groups": every group is all dropped or all kept
        groups = out.reshape(keep.numel(), -1)
        ref = expected_output(op, x, None, None, torch.zeros_like(keep)).reshape(keep.numel(), -1)
        dropped = (groups == ref).all(1)
        assert torch.equal(dropped, ~keep.reshape(-1)), module


# ---------------------------------------------------------------------- alpha


def test_alpha_dropout_formula_and_backends(kernels, dtype):
    """Values exactly the formula in the accumulation dtype, the pattern the oracle's:
    x * a + alpha * a * p where kept, -alpha * a + alpha * a * p where dropped."""
    dev = kernels.device
    alpha, feature = FAMILY_BY_NAME["alpha_dropout"].with_p(0.2), FAMILY_BY_NAME["feature_alpha_dropout"].with_p(0.2)
    x = torch.randn(40, 30, dtype=dtype)
    out = F.alpha_dropout(x.to(dev), 0.2, True, seed=SEED)
    assert_same_bits(out, expected_output(alpha, x, None, None, keep_mask(x.shape, 0.2, SEED)))
    y = torch.randn(5, 7, 3, 2, dtype=dtype)
    out = F.feature_alpha_dropout(y.to(dev), 0.2, True, seed=SEED)
    assert_same_bits(out, expected_output(feature, y, None, None, keep_mask((5, 7), 0.2, SEED)))


def test_alpha_dropout_defaults_and_edges(backend):
    x = torch.randn(10, 4)
    assert F.alpha_dropout(x) is x  # training=False by default, as torch
    assert F.feature_alpha_dropout(x, 0.5) is x
    assert F.alpha_dropout(x, 0.0, True) is x
    assert F.alpha_dropout(torch.randn(0, 3), 0.5, True).shape == (0, 3)
    assert_same_bits(F.alpha_dropout(x, 1.0, True), x * 0.0)
    assert_same_bits(torch.nn.functional.alpha_dropout(x, 1.0, True), x * 0.0)
    with pytest.raises(RuntimeError, match="Feature dropout requires at least 2 dimensions"):
        F.feature_alpha_dropout(torch.randn(5), 0.5, True)


# -------------------------------------------------------------------- drop_path


def test_drop_path_per_sample(kernels, dtype):
    """Each sample (index of dim 0) kept and scaled by 1 / (1 - p), or zeroed."""
    x = torch.randn(16, 3, 5, dtype=dtype)
    out = F.drop_path(x.to(kernels.device), 0.25, seed=SEED)
    keep = keep_mask((16,), 0.25, SEED)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    factor = torch.where(keep, torch.tensor(1 / 0.75, dtype=acc), torch.tensor(0.0, dtype=acc))
    assert_same_bits(out, (x.to(acc) * factor[:, None, None]).to(dtype))
    assert F.drop_path(x, 0.25, training=False) is x
    assert F.drop_path(x, 0.0) is x


def test_drop_path_whole_samples(backend):
    """timm's drop_path: whole samples, kept ones scaled to exactly float32(1 / (1 - p));
    a 0-dim input has no sample dim."""
    x = torch.ones(200, 4)
    out = F.drop_path(x, 0.3, seed=7)
    rows = out[:, 0]
    assert torch.all(out == rows[:, None])
    assert torch.equal(rows[rows != 0], torch.full_like(rows[rows != 0], 1 / (1 - 0.3)))
    assert torch.equal(rows != 0, oracle_mask((200,), 0.3, 7, 0))
    with pytest.raises(ValueError, match="0-dim"):
        F.drop_path(torch.tensor(1.0), 0.5)


@pytest.mark.parametrize("name", ["dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"])
def test_family_signatures_match_torch(name):
    ours = inspect.signature(getattr(F, name)).parameters
    theirs = inspect.signature(getattr(torch.nn.functional, name)).parameters
    assert list(ours)[:len(theirs)] == list(theirs)
    for k in theirs:
        assert ours[k].default == theirs[k].default, (name, k)
    for k in ("seed", "generator", "global_shape", "global_offset"):
        assert ours[k].kind is inspect.Parameter.KEYWORD_ONLY and ours[k].default is None
