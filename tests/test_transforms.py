"""The ops under torch's transforms and capture mechanisms: torch.func (grad, vjp, jacrev,
vmap and its randomness modes, per-sample gradients), torch.compile(fullgraph=True)
(aot_eager and inductor, every op, seed= and the generator), activation checkpointing
(the recomputed mask is the forward's) and CUDA graphs (every replay draws a fresh mask,
torch.manual_seed before a replay reproduces it, seed= replays the same mask)."""
import pytest
import torch
from testing import (BACKEND_KERNELS, DEVICES, DTYPES, FAMILY, assert_same_bits, expected_input_grad,
                     expected_output, family, keep_mask, op_mask, requires_compiled, requires_gpu, storage_ctx)

from dropout_ext import functional as F
from dropout_ext import nn

torch_func = pytest.importorskip("torch.func")


def fit(op, x):
    """x with a rank the op takes (a trailing dim added or two merged)."""
    while not op.takes(x.dim()):
        x = x.unsqueeze(-1) if any(op.takes(d) for d in range(x.dim() + 1, 6)) else x.flatten(-2)
    return x


# ----------------------------------------------------------------------- torch.func


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_grad_matches_the_normal_route(kernels, dtype):
    """grad and vjp of every op, with seed= and with seed=None (the same manual_seed):
    the output and the gradient of the normal route, bit for bit, and with seed= the
    contract's for the oracle's mask."""
    dev = kernels.device
    base_x = torch.randn(4, 6, 10, generator=torch.Generator().manual_seed(0)).to(dtype).to(dev)
    for op in FAMILY:
        x = fit(op, base_x)
        r, b = op.operands(x)
        w = torch.randn(tuple(x.shape), generator=torch.Generator().manual_seed(1)).to(dtype).to(dev)
        for kw in ({"seed": 99}, {}):
            torch.manual_seed(11)
            g_func = torch_func.grad(lambda t: (op(t, r, b, **kw).to(torch.float64) * w).sum())(x)
            torch.manual_seed(11)
            xr = x.clone().requires_grad_()
            out = op(xr, r, b, **kw)
            (g_ref,) = torch.autograd.grad((out.to(torch.float64) * w).sum(), xr)
            assert_same_bits(g_func, g_ref)
            torch.manual_seed(11)
            out_func, vjp_fn = torch_func.vjp(lambda t: op(t, r, b, **kw), x)
            assert_same_bits(out_func, out.detach())
            if kw:
                keep = op_mask(op, x.shape, 99)
                assert_same_bits(out_func, expected_output(op, x, r, b, keep))
                assert_same_bits(vjp_fn(w)[0], expected_input_grad(op, x, w, keep))


@pytest.mark.quick
@pytest.mark.parametrize("kernels", BACKEND_KERNELS, indirect=True)
def test_func_grad_quick(kernels):
    x = torch.randn(4, 6, 10, device=kernels.device)
    for op in family(3):
        r, b = op.operands(x)
        g = torch_func.grad(lambda t: op(t, r, b, seed=5).sum())(x)
        assert_same_bits(g, expected_input_grad(op, x, torch.ones_like(x), op_mask(op, x.shape, 5)))


def test_jacrev_is_the_diagonal_of_keep_times_scale(backend):
    x = torch.randn(3, 5)
    jac = torch_func.jacrev(lambda t: F.dropout(t, 0.5, seed=8))(x)
    keep = F.dropout(torch.ones(3, 5), 0.5, seed=8)
    assert torch.equal(jac.reshape(15, 15), torch.diag(keep.reshape(15)))


def test_func_grad_is_the_mask(backend):
    """The route is picked per call: the same function gives the normal route outside."""
    x = torch.randn(5, 5)
    a = torch_func.grad(lambda t: F.dropout(t, 0.5, seed=1).sum())(x)
    assert_same_bits(a, F.dropout(torch.ones(5, 5), 0.5, seed=1))


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
    ops = {op.name: op for op in FAMILY}
    same_as_batch = {  # per-sample op -> the op on the batch that draws the same mask
        "dropout": lambda t: ops["dropout"](t),
        "alpha_dropout": lambda t: ops["alpha_dropout"](t),
        "dropout1d": lambda t: F.dropout1d(t, 0.5),      # (C, L) per sample -> (N, C, L)
        "drop_path": lambda t: F.dropout1d(t, 0.5),      # one word per (sample, row)
    }
    for name, batch_op in same_as_batch.items():
        op = ops[name]
        torch.manual_seed(3)
        got = torch.func.vmap(lambda t: op(t), randomness="different")(x)
        torch.manual_seed(3)
        assert_same_bits(got, batch_op(x))
        ones = torch.func.vmap(lambda t: op(t), randomness="different")(torch.ones(5, 7, 9))
        assert not torch.equal(ones[1], ones[0])


@pytest.mark.filterwarnings("ignore:dropout2d")
def test_vmap_with_seed_is_each_samples_own_call(backend):
    x = torch.randn(6, 40)
    for op in family(2):
        r, b = op.operands(torch.empty(4, 10))
        got = torch.func.vmap(lambda t: op(t.view(4, 10), r, b, seed=21).view(40))(x)
        for i in range(6):
            assert_same_bits(got[i], op(x[i].view(4, 10), r, b, seed=21).view(40))


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


# -------------------------------------------------------------------- torch.compile


class Block(torch.nn.Module):
    def __init__(self, seed=None):
        super().__init__()
        self.lin = torch.nn.Linear(16, 16)
        self.drop = nn.Dropout(0.25)
        self.seed = seed

    def forward(self, x):
        h = self.drop(torch.relu(self.lin(x)))
        return F.dropout(h, 0.5, seed=self.seed) if self.seed is not None else h


def _every_op(x, b, r):
    y = F.bias_dropout_add(x, b, r, 0.1, seed=1)
    y = F.dropout_add(y, r, 0.1, seed=2)
    y = F.drop_path(y, 0.2, seed=3)
    y = F.dropout(y, 0.3, seed=5) + F.dropout(y, 0.3, seed=6, scale_train=False)
    y = F.alpha_dropout(y, 0.2, True, seed=7) + F.feature_alpha_dropout(y, 0.2, True, seed=8)
    y = F.dropout1d(y, 0.2, seed=9)
    return F.dropout2d(y.unsqueeze(-1), 0.2, seed=4) + F.dropout3d(y.unsqueeze(-1).unsqueeze(-1), 0.2, seed=10)[..., 0]


@pytest.mark.quick
@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph_matches_eager_with_seed(device):
    """The ops that serve the op names (the compiled ones; the Python fallback's in the
    forced-Python run of test_packaging.py): every op with seed=, compiled with
    fullgraph=True (aot_eager), gives eager's output and gradients; a module with its own
    seeded dropout too."""
    torch._dynamo.reset()
    x = torch.randn(4, 6, 8, device=device, requires_grad=True)
    b, r = torch.randn(8, device=device), torch.randn(4, 6, 8, device=device)
    eager = _every_op(x, b, r)
    compiled = torch.compile(_every_op, fullgraph=True, backend="aot_eager")(x, b, r)
    assert_same_bits(compiled, eager)
    (g_e,) = torch.autograd.grad(eager.sum(), x)
    (g_c,) = torch.autograd.grad(compiled.sum(), x)
    assert_same_bits(g_c, g_e)
    torch.manual_seed(0)
    m = Block(seed=1234).to(device)
    xm = torch.randn(8, 16, device=device, requires_grad=True)
    m.drop.eval()  # the module's own mask is random: test the seeded functional here
    eager = m(xm)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")(xm)
    assert_same_bits(compiled, eager)
    (g_e,) = torch.autograd.grad(eager.sum(), xm)
    (g_c,) = torch.autograd.grad(compiled.sum(), xm)
    assert_same_bits(g_c, g_e)


@requires_compiled
@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_inductor_nn_dropout(device):
    """Default backend (inductor), nn.Dropout with seed=None: compiles without graph
    breaks, trains, and with fallback_random the masks match eager under manual_seed; a
    seeded dropout is the oracle's mask."""
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    with inductor_config.patch(fallback_random=True):
        torch.manual_seed(0)
        m = Block().to(device)
        x = torch.randn(8, 16, device=device)
        cm = torch.compile(m, fullgraph=True)
        torch.manual_seed(7)
        out_c = cm(x)
        torch.manual_seed(7)
        out_e = m(x)
        assert_same_bits(out_c, out_e)
        out_c.sum().backward()
        assert m.lin.weight.grad is not None
    seeded = torch.compile(lambda t: F.dropout(t, 0.5, seed=77), fullgraph=True)(x)
    assert_same_bits(seeded, (x * keep_mask(x.shape, 0.5, 77).to(device) * 2.0))


# ------------------------------------------------------------ activation checkpointing


@pytest.mark.parametrize("kernels", BACKEND_KERNELS, indirect=True)
def test_activation_checkpointing_recomputes_the_same_mask(kernels):
    from torch.utils.checkpoint import checkpoint

    dev = kernels.device
    lin = torch.nn.Linear(32, 32).to(dev)
    x = torch.randn(16, 32, device=dev, requires_grad=True)
    b = torch.randn(32, device=dev)

    def block(t):
        h = torch.relu(lin(t))
        return (F.dropout(h, 0.5) + F.dropout_add(t, t, 0.3) + F.bias_dropout_add(h, b, t, 0.2)
                + F.dropout1d(h.view(4, 4, 32), 0.5).view(16, 32) + F.alpha_dropout(h, 0.2, True))

    torch.manual_seed(5)
    ref = block(x)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    for storage in ("bits", "seed"):
        with storage_ctx(storage):
            torch.manual_seed(5)
            out = checkpoint(block, x, use_reentrant=False, preserve_rng_state=True)
            (g,) = torch.autograd.grad(out.sum(), x)
        assert_same_bits(out, ref)
        assert_same_bits(g, g_ref)


@requires_gpu
@pytest.mark.cuda
def test_func_grad_and_vmap_different_on_gpu():
    """On CUDA tensors: grad gives the CPU mask of the same seed; vmap(randomness="different")
    draws a mask per sample."""
    x = torch.randn(8, 33, device="cuda")
    g = torch.func.grad(lambda t: F.dropout(t, 0.5, seed=3).sum())(x)
    assert_same_bits(g.cpu(), F.dropout(torch.ones(8, 33), 0.5, seed=3))
    per_sample = torch.func.vmap(torch.func.grad(lambda t: F.dropout(t, 0.5).sum()), randomness="different")(x)
    assert len({tuple((row != 0).tolist()) for row in per_sample}) > 1


# ---------------------------------------------------------------------- CUDA graphs


@requires_gpu
@pytest.mark.cuda
@pytest.mark.parametrize("storage", ["bits", "seed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)  # bfloat16: the persistent kernel
def test_cuda_graph_replays(storage, dtype):
    """Every op, forward and backward, captured in one graph: each replay draws fresh
    masks (outputs and gradients differ), torch.manual_seed before a replay reproduces it;
    a seed= call replays the oracle's mask every time."""
    x = torch.randn(64, 256, device="cuda", dtype=dtype, requires_grad=True)
    r = torch.randn(64, 256, device="cuda", dtype=dtype)
    b = torch.randn(256, device="cuda", dtype=dtype)

    def step():
        out = (F.dropout(x, 0.5) + F.dropout_add(x, r, 0.3) + F.bias_dropout_add(x, b, r, 0.2)
               + F.dropout1d(x.view(8, 8, 256), 0.5).view(64, 256) + F.alpha_dropout(x, 0.2, True)
               + F.drop_path(x, 0.5))
        out.sum().backward()
        return out

    with storage_ctx(storage):
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                x.grad = None
                step()
        torch.cuda.current_stream().wait_stream(s)
        x.grad = None
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = step()
        graph.replay()
        first, g1 = out.clone(), x.grad.clone()
        graph.replay()
        assert not torch.equal(out, first)
        assert not torch.equal(x.grad, g1)
        torch.cuda.manual_seed(9)
        graph.replay()
        a, ga = out.clone(), x.grad.clone()
        torch.cuda.manual_seed(9)
        graph.replay()
        assert_same_bits(out, a)
        assert_same_bits(x.grad, ga)
        fixed_graph = torch.cuda.CUDAGraph()
        xd = x.detach()
        F.dropout(xd, 0.5, seed=9)
        with torch.cuda.graph(fixed_graph):
            fixed = F.dropout(xd, 0.5, seed=9)
        for _ in range(2):
            fixed_graph.replay()
            assert_same_bits(fixed, (xd.float() * keep_mask(x.shape, 0.5, 9).cuda() * 2.0).to(dtype))
