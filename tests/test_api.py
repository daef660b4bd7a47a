"""Drop-in parity with torch.nn.functional.dropout / torch.nn.Dropout, checked against
torch itself, and every bad input of SPEC section 4 (clear error, inputs untouched)."""
import math

import oracle
import pytest
import torch
from testing import assert_same_bits, keep_mask, oracle_mask, peek_rng_pair

import dropout_ext
from dropout_ext import _reference, _route
from dropout_ext import functional as F
from dropout_ext import nn


def torch_error(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - we compare whatever torch raises
        return type(e), str(e)
    return None


@pytest.mark.parametrize("p", [-0.1, 1.5, -1, 2])
def test_bad_p_matches_torch(backend, p):
    x = torch.randn(4)
    expected = torch_error(lambda: torch.nn.functional.dropout(x, p))
    with pytest.raises(expected[0]) as err:
        F.dropout(x, p)
    assert str(err.value) == expected[1]
    with pytest.raises(expected[0]):
        nn.Dropout(p)


@pytest.mark.parametrize("p", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_p_rejected(backend, p):
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
        F.dropout(torch.randn(4), p)


@pytest.mark.parametrize("p", ["0.5", None, [0.5], 0.5j])
def test_p_not_a_number(backend, p):
    with pytest.raises(TypeError, match="dropout probability must be a real number"):
        F.dropout(torch.randn(4), p)


def test_p_as_tensor_computes_like_float(backend):
    x = torch.randn(100)
    assert_same_bits(F.dropout(x, torch.tensor(0.25), seed=3), F.dropout(x, 0.25, seed=3))
    with pytest.raises(TypeError):
        F.dropout(x, torch.tensor([0.1, 0.2]))


def test_signature_matches_torch():
    import inspect

    ours = inspect.signature(F.dropout).parameters
    theirs = inspect.signature(torch.nn.functional.dropout).parameters
    assert list(ours)[:4] == list(theirs)[:4]
    for name in list(theirs)[:4]:
        assert ours[name].default == theirs[name].default
    for name in ("seed", "generator", "scale_train"):
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


def test_module_train_eval(backend):
    torch.manual_seed(0)
    m = nn.Dropout(0.5)
    n = 10000
    x = torch.ones(n)
    key, base = peek_rng_pair()  # the module draws from the default generator
    y = m(x)
    keep = oracle_mask(x.shape, 0.5, key, base)
    assert_same_bits(y, torch.where(keep, 2.0, 0.0))
    # and the drop count is plausible: Binomial(n, 1/2), sigma = sqrt(n p (1 - p)) = 50
    assert abs(int((y == 0).sum()) - n / 2) < 5 * math.sqrt(n * 0.25)
    m.eval()
    assert m(x) is x
    v = nn.Dropout(0.5, scale_train=False).eval()
    assert torch.equal(v(x), x * 0.5)
    v.train()
    key, base = peek_rng_pair()
    assert_same_bits(v(x), oracle_mask(x.shape, 0.5, key, base).float())


def test_inplace_writes_input_and_returns_it(backend):
    x = torch.randn(1000)
    expected = F.dropout(x, 0.5, seed=2)
    y = F.dropout(x, 0.5, inplace=True, seed=2)
    assert y is x
    assert_same_bits(x, expected)


def test_inplace_noncontiguous(backend):
    base = torch.randn(8, 10)
    x = base.t()
    expected = F.dropout(x, 0.5, seed=2)
    y = F.dropout(x, 0.5, inplace=True, seed=2)
    assert y is x
    assert_same_bits(x, expected)


def test_inplace_autograd_like_torch(backend):
    leaf = torch.randn(6, requires_grad=True)
    expected = torch_error(lambda: torch.nn.functional.dropout(leaf, 0.5, inplace=True))
    before = leaf.detach().clone()
    with pytest.raises(expected[0], match="leaf Variable that requires grad"):
        F.dropout(leaf, 0.5, inplace=True)
    assert torch.equal(leaf.detach(), before)
    # a non-leaf works, and the gradient is the mask's
    w = torch.randn(6, requires_grad=True)
    h = w * 1.0
    out = F.dropout(h, 0.5, inplace=True, seed=4)
    assert out is h
    out.sum().backward()
    keep = keep_mask((6,), 0.5, 4)
    assert torch.equal(w.grad, torch.where(keep, 2.0, 0.0))


def test_inplace_on_overlapping_tensor_raises_like_torch(backend):
    x = torch.randn(1, 3).expand(4, 3)
    before = x.clone()
    expected = torch_error(lambda: torch.nn.functional.dropout(x, 0.5, inplace=True))
    with pytest.raises(expected[0]) as err:
        F.dropout(x, 0.5, inplace=True)
    assert str(err.value) == expected[1]
    assert torch.equal(x, before)


def test_expanded_input_out_of_place(backend):
    x = torch.randn(1, 5).expand(3, 5)
    out = F.dropout(x, 0.5, seed=1)
    assert out.shape == (3, 5)
    assert_same_bits(out, F.dropout(x.contiguous(), 0.5, seed=1))


@pytest.mark.parametrize("dt", [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64])
def test_non_float_dtype_rejected(backend, dt):
    x = torch.ones(8, dtype=dt)
    before = x.clone()
    with pytest.raises((TypeError, RuntimeError), match=str(dt).split(".")[-1]):
        F.dropout(x, 0.5)
    with pytest.raises((TypeError, RuntimeError), match=str(dt).split(".")[-1]):
        F.dropout(x, 0.5, inplace=True)
    assert torch.equal(x, before)


@pytest.mark.parametrize("seed,exc", [(-1, ValueError), (2**64, ValueError), (1.5, TypeError), (True, TypeError),
                                      ("3", TypeError), (torch.tensor(3), TypeError)])
def test_bad_seed(backend, seed, exc):
    x = torch.randn(8)
    before = x.clone()
    with pytest.raises(exc, match="seed"):
        F.dropout(x, 0.5, inplace=True, seed=seed)
    assert torch.equal(x, before)


def test_seed_extremes(backend):
    x = torch.randn(100)
    for s in (0, 2**32 - 1, 2**32, 2**63, 2**64 - 1):
        out = F.dropout(x, 0.5, seed=s)
        assert torch.equal(out != 0, keep_mask(x.shape, 0.5, s) & (x != 0))


def test_generator_reproduces_and_differs(backend):
    x = torch.randn(1000)
    g1 = torch.Generator().manual_seed(5)
    g2 = torch.Generator().manual_seed(5)
    a = F.dropout(x, 0.5, generator=g1)
    assert_same_bits(a, F.dropout(x, 0.5, generator=g2))
    assert not torch.equal(a, F.dropout(x, 0.5, generator=g1))


def test_manual_seed_reproduces_and_calls_differ(backend):
    x = torch.randn(1000)
    torch.manual_seed(1)
    a, b = F.dropout(x, 0.5), F.dropout(x, 0.5)
    torch.manual_seed(1)
    assert_same_bits(a, F.dropout(x, 0.5))
    assert not torch.equal(a, b)


def test_generator_wrong_device_and_type(backend):
    x = torch.randn(8)
    with pytest.raises(TypeError, match="generator"):
        F.dropout(x, 0.5, generator=3)
    with pytest.raises(ValueError, match="seed= or generator="):
        F.dropout(x, 0.5, seed=1, generator=torch.Generator())
    # A CPU generator for a CUDA input is tested in test_cuda.py; here the device rule.
    assert not _reference._same_device(torch.device("cuda", 0), torch.device("cpu"))
    assert not _reference._same_device(torch.device("cpu"), torch.device("meta"))
    assert _reference._same_device(torch.device("cpu"), torch.device("cpu"))


def test_input_not_a_tensor(backend):
    with pytest.raises(TypeError, match="torch.Tensor"):
        F.dropout([1.0, 2.0], 0.5)


def test_compiled_backends_reports_active_backend():
    from dropout_ext import _backend

    if _backend.compiled_ops() is not None:
        with _backend.use("compiled"):
            assert dropout_ext.compiled_backends()[0] == "cpu"
    with _backend.use("python"):
        assert dropout_ext.compiled_backends() == ()


def test_p_rounding_threshold_boundaries(backend):
    """p = k / 2**32 gives the threshold k exactly: an element whose word is k is kept at
    that p and dropped at p = (k + 1) / 2**32 (words from the oracle at seed 77; the
    exhaustive boundary cases are in test_mask.py)."""
    x = torch.ones(1 << 12)
    words = oracle.words(77, 0, x.numel())
    for i in (0, 1, 6, 4095):
        k = int(words[i])
        for p, kept in ((k / 2**32, True), ((k + 1) / 2**32, False)):
            out = F.dropout(x, p, seed=77, scale_train=False)
            assert bool(out[i] == 1) == kept, (i, hex(k), p)
            assert torch.equal(out != 0, keep_mask(x.shape, p, 77))
    for k in (1, 2**31, 2**32 - 1):
        assert math.floor(k / 2**32 * 2**32) == k


@pytest.mark.parametrize("seed,exc", [(-1, ValueError), (2**64, ValueError), (1.5, TypeError), (True, TypeError),
                                      ("3", TypeError), (torch.tensor(3), TypeError)])
def test_bad_seed_out_of_place(backend, seed, exc):
    """The out-of-place call takes the fast path that keeps one (key, base) tensor per seed:
    a rejected seed raises there too, every time (it is not remembered)."""
    x = torch.randn(8)
    for _ in range(2):
        with pytest.raises(exc, match="seed"):
            F.dropout(x, 0.5, seed=seed)


def test_seed_fast_path_checks_the_input_first(backend):
    """A bad input with a seed raises the input's error, whether the seed was seen before
    (kept tensor) or not, as with seed=None."""
    bad = torch.arange(8)
    F.dropout(torch.randn(4), 0.5, seed=424242)  # now kept
    msgs = []
    for kw in ({}, dict(seed=424242), dict(seed=424243), dict(seed=-1)):
        with pytest.raises(TypeError) as e:
            F.dropout(bad, 0.5, **kw)
        msgs.append(str(e.value))
    assert len(set(msgs)) == 1, msgs


@pytest.mark.parametrize("storage", ["bits", "seed"])
def test_seed_first_used_in_inference_mode_serves_training(backend, storage):
    """The kept (key, base) tensor of a seed first used under inference_mode is an ordinary
    tensor: a later training call with that seed runs forward and backward."""
    from testing import storage_ctx

    s = 2**63 + 12345 if storage == "bits" else 2**40 + 7
    x = torch.randn(64)
    with torch.inference_mode():
        a = F.dropout(x, 0.5, seed=s)
    leaf = x.clone().requires_grad_()
    with storage_ctx(storage):
        out = F.dropout(leaf, 0.5, seed=s)
        out.sum().backward()
    assert_same_bits(out.detach(), a)
    assert torch.equal(leaf.grad != 0, a != 0)


def test_seed_tensors_kept_are_bounded():
    x = torch.randn(8)
    for s in range(10_000, 10_000 + _route._SEED_RNG_MAX + 10):
        F.dropout(x, 0.5, seed=s)
    assert 0 < len(_route._SEED_RNG) <= _route._SEED_RNG_MAX
    assert_same_bits(F.dropout(x, 0.5, seed=10_003), F.dropout(x, 0.5, seed=10_003))
