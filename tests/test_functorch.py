"""torch.func transforms (issue 10, SPEC section 7): grad, vjp, jacrev and vmap work on
every op, give the values and gradients of the normal route (same mask, same rounding),
and vmap's randomness modes behave as torch's dropout does under them."""
import pytest
import torch
from testing import DEVICES, assert_same_bits

from dropout_ext import functional as F

torch_func = pytest.importorskip("torch.func")

OPS = {
    "dropout": lambda x, **kw: F.dropout(x, 0.4, **kw),
    "vanilla": lambda x, **kw: F.dropout(x, 0.4, scale_train=False, **kw),
    "dropout1d": lambda x, **kw: F.dropout1d(x, 0.5, **kw),
    "dropout2d": lambda x, **kw: F.dropout2d(x.unsqueeze(-1), 0.5, **kw).squeeze(-1),
    "alpha_dropout": lambda x, **kw: F.alpha_dropout(x, 0.3, True, **kw),
    "feature_alpha_dropout": lambda x, **kw: F.feature_alpha_dropout(x, 0.3, True, **kw),
    "drop_path": lambda x, **kw: F.drop_path(x, 0.5, **kw),
    "dropout_add": lambda x, **kw: F.dropout_add(x, torch.ones_like(x), 0.4, **kw),
    "bias_dropout_add": lambda x, **kw: F.bias_dropout_add(
        x, torch.arange(x.shape[-1], dtype=x.dtype, device=x.device), torch.ones_like(x), 0.4, **kw),
}


def _input(device, dtype=torch.float32):
    return torch.randn(4, 6, 10, dtype=dtype, device=device, generator=None)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(OPS))
def test_grad_matches_the_normal_route(backend, device, name):
    op = OPS[name]
    torch.manual_seed(0)
    x = _input(device)
    w = torch.randn_like(x)
    for kw, reseed in (({"seed": 99}, False), ({}, True)):
        if reseed:
            torch.manual_seed(11)
        g_func = torch_func.grad(lambda t: (op(t, **kw) * w).sum())(x)
        if reseed:
            torch.manual_seed(11)
        xr = x.clone().requires_grad_()
        out = op(xr, **kw)
        (g_ref,) = torch.autograd.grad((out * w).sum(), xr)
        assert_same_bits(g_func, g_ref)
        if reseed:
            torch.manual_seed(11)
        out_func, vjp_fn = torch_func.vjp(lambda t: op(t, **kw), x)
        assert_same_bits(out_func, out.detach())
        assert_same_bits(vjp_fn(w)[0], g_ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_grad_route_same_bits_every_dtype(backend, dtype):
    x = _input("cpu", dtype)
    for name, op in OPS.items():
        g_func = torch_func.grad(lambda t: op(t, seed=5).float().sum())(x)
        xr = x.clone().requires_grad_()
        (g_ref,) = torch.autograd.grad(op(xr, seed=5).float().sum(), xr)
        assert_same_bits(g_func, g_ref)


def test_jacrev_is_the_diagonal_of_keep_times_scale(backend):
    x = torch.randn(3, 5)
    jac = torch_func.jacrev(lambda t: F.dropout(t, 0.5, seed=8))(x)
    keep = F.dropout(torch.ones(3, 5), 0.5, seed=8)
    assert torch.equal(jac.reshape(15, 15), torch.diag(keep.reshape(15)))


def test_vmap_randomness_modes_match_torch(backend):
    x = torch.ones(8, 256)
    # "error": torch's error
    with pytest.raises(RuntimeError, match="randomness") as ours:
        torch.func.vmap(lambda t: F.dropout(t, 0.5))(x)
    with pytest.raises(RuntimeError, match="randomness") as theirs:
        torch.func.vmap(lambda t: torch.nn.functional.dropout(t, 0.5))(x)
    assert str(ours.value) == str(theirs.value)
    # "same": one mask for every sample
    out = torch.func.vmap(lambda t: F.dropout(t, 0.5), randomness="same")(x)
    assert all(torch.equal(out[i], out[0]) for i in range(8))
    # "different": every sample its own mask, each a proper dropout mask
    out = torch.func.vmap(lambda t: F.dropout(t, 0.5), randomness="different")(x)
    assert len({tuple(r.tolist()) for r in out}) == 8
    assert set(out.unique().tolist()) <= {0.0, 2.0}


def test_vmap_different_equals_one_call_on_the_batch(backend):
    """With randomness="different", the batch gets the mask one call on the whole batched
    tensor gets from the same generator state: samples differ, and each is a proper
    dropout of its own."""
    x = torch.randn(5, 7, 9)
    same_as_batch = {  # per-sample op -> the op on the batch that draws the same mask
        "dropout": OPS["dropout"],
        "alpha_dropout": OPS["alpha_dropout"],
        "dropout1d": lambda t: F.dropout1d(t, 0.5),      # (C, L) per sample -> (N, C, L)
        "drop_path": lambda t: F.dropout1d(t, 0.5),      # one word per (sample, row)
    }
    for name, batch_op in same_as_batch.items():
        torch.manual_seed(3)
        got = torch.func.vmap(OPS[name], randomness="different")(x)
        torch.manual_seed(3)
        assert_same_bits(got, batch_op(x))
        ones = torch.func.vmap(OPS[name], randomness="different")(torch.ones(5, 7, 9))
        assert not torch.equal(ones[1], ones[0])


@pytest.mark.filterwarnings("ignore:dropout2d")
def test_vmap_with_seed_is_each_samples_own_call(backend):
    x = torch.randn(6, 40)
    for name, op in OPS.items():
        got = torch.func.vmap(lambda t: op(t.view(4, 10), seed=21).view(40))(x)
        for i in range(6):
            assert_same_bits(got[i], op(x[i].view(4, 10), seed=21).view(40))


def test_per_sample_gradients(backend):
    """vmap(grad(loss), randomness="different"): per-sample gradients, each with its own
    mask, as differential-privacy training uses."""
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    xs = torch.randn(10, 32)

    def loss(weight, x):
        return F.dropout(weight @ x, 0.5).pow(2).sum()

    grads = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0), randomness="different")(w, xs)
    assert grads.shape == (10, 16, 32)
    # each sample's gradient is 2 * (keep * scale)**2 * (w @ x) outer x: a row of the
    # gradient is zero exactly where that sample's mask dropped the row's unit
    zero_rows = [(g.abs().sum(1) == 0) for g in grads]
    assert len({tuple(z.tolist()) for z in zero_rows}) > 1
    for z in zero_rows:
        assert 0 < int(z.sum()) < 16


def test_transforms_inside_compiled_api_names_are_plain_functions(backend):
    """The route is picked per call: the same function gives the normal route outside."""
    x = torch.randn(5, 5)
    a = torch_func.grad(lambda t: F.dropout(t, 0.5, seed=1).sum())(x)
    b = F.dropout(torch.ones(5, 5), 0.5, seed=1)
    assert_same_bits(a, b)
