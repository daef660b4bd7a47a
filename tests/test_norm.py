"""The fused dropout + residual + norm, dropout_add_layer_norm and dropout_add_rms_norm, on
every set of kernels: h against the oracle's mask (bit for bit, and bit for bit what
dropout_add / bias_dropout_add returns), the output against torch's layer_norm / rms_norm
of that h, gradients against autograd of the composition with the same mask, the routes
(torch.func, torch.compile, checkpointing, shards), operand layouts, threads, errors and
the bytes kept for backward."""
import math

import pytest
import torch
from testing import (BACKEND_KERNELS, acc_dtype, assert_same_bits, clone_generator, keep_mask, oracle_mask,
                     requires_compiled, threads_ctx)

import dropout_ext
from dropout_ext import _backend
from dropout_ext import functional as F

SEED = 2**63 + 99
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
HIDDEN = [1, 3, 7, 64, 65, 768, 1000, 4097]
NORMS = ["layer", "rms"]


def _tensors(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed + shape[-1])
    hidden = shape[-1]
    make = lambda s, dt=dtype: torch.randn(s, generator=g).to(dt).to(device)  # noqa: E731
    x, r, ib = make(shape), make(shape), make((hidden,))
    w, b = (1 + 0.5 * make((hidden,))), make((hidden,))
    return x, r, w, b, ib


def _fused(norm, x, r, w, b, p, **kw):
    if norm == "rms":
        return F.dropout_add_rms_norm(x, r, w, p, eps=kw.pop("eps", 1e-6), **kw)
    return F.dropout_add_layer_norm(x, r, w, b, p, eps=kw.pop("eps", 1e-5), **kw)


def expected_h(x, r, ib, keep, p, h_dtype=None):
    """The contract's h: r + ((x + ib) * f) with one rounding per step in the accumulation
    dtype, rounded once to h's dtype; f = keep / (1 - p)."""
    acc = acc_dtype(x.dtype)
    scale = torch.tensor(1.0 / (1.0 - p) if p < 1 else 0.0, dtype=acc)
    f = torch.where(keep.reshape(x.shape).to(x.device), scale.to(x.device), torch.zeros((), dtype=acc, device=x.device))
    v = x.to(acc)
    if ib is not None:
        v = v + ib.to(acc)
    v = v * f
    if r is not None:
        v = r.to(acc) + v
    return v.to(h_dtype or x.dtype)


def expected_out(norm, h, w, b, eps, dtype):
    """torch's norm of h in the accumulation dtype, rounded to the input's dtype."""
    acc = acc_dtype(dtype)
    hf, shape = h.to(acc), (h.shape[-1],)
    w = w.to(acc) if w is not None else None
    if norm == "rms":
        return torch.nn.functional.rms_norm(hf, shape, w, eps).to(dtype)
    return torch.nn.functional.layer_norm(hf, shape, w, b.to(acc) if b is not None else None, eps).to(dtype)


def assert_close_out(got, want):
    """Within the norm's rounding: float32 accumulation, one rounding to the output dtype."""
    assert got.dtype == want.dtype and got.shape == want.shape
    tol = {torch.float16: (2e-3, 1e-2), torch.bfloat16: (1.6e-2, 8e-2), torch.float32: (2e-5, 2e-5),
           torch.float64: (1e-12, 1e-12)}[got.dtype]
    torch.testing.assert_close(got, want, rtol=tol[0], atol=tol[1])


# ----------------------------------------------------------------- values, every kernel


@pytest.mark.quick
@pytest.mark.parametrize("norm", NORMS)
def test_quick(kernels, norm):
    x, r, w, b, ib = _tensors((5, 33), torch.float32, kernels.device)
    out, h = _fused(norm, x, r, w, b, 0.3, seed=SEED, input_bias=ib, prenorm=True)
    keep = keep_mask(x.shape, 0.3, SEED)
    assert_same_bits(h, expected_h(x, r, ib, keep, 0.3))
    assert_close_out(out, expected_out(norm, h, w, b, 1e-6 if norm == "rms" else 1e-5, x.dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("norm", NORMS)
def test_h_is_dropout_add_and_out_is_torch_norm(kernels, dtype, norm):
    """For each hidden size (odd ones, not multiples of any vector width) and leading shape:
    h bit for bit the oracle's and dropout_add's / bias_dropout_add's; out torch's norm of h."""
    for hidden in HIDDEN:
        for lead in [(3,), (2, 5), ()]:
            shape = lead + (hidden,)
            x, r, w, b, ib = _tensors(shape, dtype, kernels.device)
            keep = keep_mask(shape, 0.3, SEED)
            for bias_in in (None, ib):
                eps = 1e-6 if norm == "rms" else 1e-5
                out, h = _fused(norm, x, r, w, b, 0.3, seed=SEED, input_bias=bias_in, prenorm=True, eps=eps)
                assert h.dtype == dtype and out.dtype == dtype and h.is_contiguous() and out.is_contiguous()
                assert_same_bits(h, expected_h(x, r, bias_in, keep, 0.3))
                unfused = (F.dropout_add(x, r, 0.3, seed=SEED) if bias_in is None
                           else F.bias_dropout_add(x, bias_in, r, 0.3, seed=SEED))
                assert_same_bits(h, unfused)
                assert_close_out(out, expected_out(norm, h, w, b, eps, dtype))


@pytest.mark.parametrize("norm", NORMS)
def test_optional_terms_and_parameters(kernels, norm):
    """residual=None, weight/bias None, weights in float32 with 16-bit inputs."""
    for dtype in (torch.bfloat16, torch.float32):
        x, r, w, b, ib = _tensors((4, 96), dtype, kernels.device)
        keep = keep_mask(x.shape, 0.25, 7)
        for res in (None, r):
            for params in ((None, None), (w, b), (w.float(), b.float()), (w, None)):
                out, h = _fused(norm, x, res, *params, 0.25, seed=7, input_bias=ib, prenorm=True)
                assert_same_bits(h, expected_h(x, res, ib, keep, 0.25))
                eps = 1e-6 if norm == "rms" else 1e-5
                assert_close_out(out, expected_out(norm, h, params[0], params[1], eps, dtype))


@pytest.mark.parametrize("norm", NORMS)
def test_residual_in_fp32(kernels, norm):
    """residual_in_fp32: h is float32 (r + x * f unrounded to the 16-bit type), the residual
    may be float32; the output keeps the input's dtype."""
    for dtype in (torch.float16, torch.bfloat16):
        x, r, w, b, ib = _tensors((6, 130), dtype, kernels.device)
        keep = keep_mask(x.shape, 0.4, 11)
        for res in (r, r.float()):
            out, h = _fused(norm, x, res, w, b, 0.4, seed=11, prenorm=True, residual_in_fp32=True)
            assert h.dtype == torch.float32 and out.dtype == dtype
            assert_same_bits(h, expected_h(x.float(), res.float(), None, keep, 0.4))
            eps = 1e-6 if norm == "rms" else 1e-5
            assert_close_out(out, expected_out(norm, h, w, b, eps, dtype))
    x, r, w, b, _ = _tensors((3, 8), torch.float64, kernels.device)
    _, h = _fused(norm, x, r, w, b, 0.4, seed=11, prenorm=True, residual_in_fp32=True)
    assert h.dtype == torch.float64  # never narrower than the input


@pytest.mark.parametrize("norm", NORMS)
def test_p_edges_and_eval(kernels, norm):
    x, r, w, b, ib = _tensors((4, 40), torch.float32, kernels.device)
    eps = 1e-6 if norm == "rms" else 1e-5
    for p in (0.0, 1.0):
        _, h = _fused(norm, x, r, w, b, p, seed=5, input_bias=ib, prenorm=True)
        assert_same_bits(h, expected_h(x, r, ib, torch.full(x.shape, p == 0.0), p))
    state = torch.get_rng_state()
    out, h = _fused(norm, x, r, w, b, 0.5, training=False, input_bias=ib, prenorm=True)
    assert torch.equal(torch.get_rng_state(), state)  # evaluation draws nothing
    assert_same_bits(h, r + (x + ib))
    assert_close_out(out, expected_out(norm, h, w, b, eps, x.dtype))


def test_large_hidden(kernels):
    """Rows of 65536: past any cache-in-registers or shared-memory limit of a kernel."""
    x, r, w, b, ib = _tensors((2, 65536), torch.bfloat16, kernels.device)
    for norm in NORMS:
        out, h = _fused(norm, x, r, w, b, 0.1, seed=3, input_bias=ib, prenorm=True)
        assert_same_bits(h, expected_h(x, r, ib, keep_mask(x.shape, 0.1, 3), 0.1))
        eps = 1e-6 if norm == "rms" else 1e-5
        assert_close_out(out, expected_out(norm, h, w, b, eps, x.dtype))


def test_empty_and_generator(kernels):
    x = torch.randn(0, 16, device=kernels.device)
    out = F.dropout_add_layer_norm(x, x, None, None, 0.3)
    assert out.shape == (0, 16)
    # seed=None: the generator's words, drawn as dropout_add draws them (same state after)
    x, r, w, b, _ = _tensors((8, 24), torch.float32, kernels.device)
    g = torch.Generator(device=kernels.device).manual_seed(17)
    g2 = clone_generator(g)
    _, h = F.dropout_add_layer_norm(x, r, w, b, 0.3, generator=g, prenorm=True)
    assert_same_bits(h, F.dropout_add(x, r, 0.3, generator=g2))
    assert torch.equal(g.get_state(), g2.get_state())


# ------------------------------------------------------------------------- gradients


def _composition(norm, x, r, w, b, ib, keep, p, eps):
    """The unfused composition in the accumulation dtype with the same mask."""
    acc = acc_dtype(x.dtype)
    f = keep.reshape(x.shape).to(acc).to(x.device) / (1 - p)
    v = x.to(acc) if ib is None else x.to(acc) + ib.to(acc)
    h = r.to(acc) + v * f
    shape = (x.shape[-1],)
    if norm == "rms":
        return torch.nn.functional.rms_norm(h, shape, w.to(acc), eps)
    return torch.nn.functional.layer_norm(h, shape, w.to(acc), b.to(acc), eps)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("storage", ["bits", "seed"])
def test_gradients_match_the_composition(kernels, norm, storage):
    eps = 1e-6 if norm == "rms" else 1e-5
    with _storage(storage):
        for shape in [(6, 33), (2, 3, 768)]:
            x, r, w, b, ib = (t.double().requires_grad_() for t in _tensors(shape, torch.float32, kernels.device))
            keep = keep_mask(shape, 0.3, SEED)
            gy = torch.randn(shape, dtype=torch.float64, device=kernels.device)
            gh = torch.randn(shape, dtype=torch.float64, device=kernels.device)
            out, h = _fused(norm, x, r, w, b, 0.3, seed=SEED, input_bias=ib, prenorm=True, eps=eps)
            leaves = [x, r, w, ib] + ([b] if norm == "layer" else [])
            got = torch.autograd.grad((out * gy).sum() + (h * gh).sum(), leaves)
            h_ref = r + (x + ib) * keep.reshape(shape).double().to(kernels.device) / 0.7
            ref_out = _composition(norm, x, r, w, b, ib, keep, 0.3, eps)
            want = torch.autograd.grad((ref_out * gy).sum() + (h_ref * gh).sum(), leaves)
            for g1, g2 in zip(got, want):
                torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-10)


class _storage:
    def __init__(self, mode):
        self.mode = mode

    def __enter__(self):
        self.before = dropout_ext.backward_storage()
        dropout_ext.set_backward_storage(self.mode)

    def __exit__(self, *exc):
        dropout_ext.set_backward_storage(self.before)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_gradients_16_bit_within_rounding(kernels, dtype):
    x, r, w, b, ib = (t.requires_grad_() for t in _tensors((16, 200), dtype, kernels.device))
    wf, bf = w.detach().float().requires_grad_(), b.detach().float().requires_grad_()
    out = F.dropout_add_layer_norm(x, r, wf, bf, 0.2, seed=1, input_bias=ib)
    gy = torch.randn(out.shape).to(dtype).to(kernels.device)
    got = torch.autograd.grad((out.float() * gy.float()).sum(), [x, r, wf, bf, ib])
    keep = keep_mask(x.shape, 0.2, 1)
    ref = _composition("layer", x, r, wf, bf, ib, keep, 0.2, 1e-5)
    want = torch.autograd.grad((ref * gy.float()).sum(), [x, r, wf, bf, ib])
    for g1, g2 in zip(got, want):
        assert g1.dtype == g2.dtype
        tol = 5e-2 if dtype == torch.bfloat16 else 1e-4
        torch.testing.assert_close(g1.float(), g2.float(), rtol=tol, atol=tol * 4)


@pytest.mark.parametrize("kernels", BACKEND_KERNELS, indirect=True)
def test_gradcheck_float64(kernels):
    for norm in NORMS:
        x, r, w, b, ib = (t.double().requires_grad_() for t in _tensors((3, 9), torch.float32, kernels.device))
        fn = lambda x, r, w, b, ib: _fused(norm, x, r, w, b, 0.3, seed=5, input_bias=ib, prenorm=True)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, r, w, b, ib))


# ----------------------------------------------------------------------------- routes


@pytest.mark.parametrize("kernels", BACKEND_KERNELS, indirect=True)
def test_torch_func_grad_and_vmap(kernels):
    x, r, w, b, ib = _tensors((4, 20), torch.float32, kernels.device)
    fn = lambda x: F.dropout_add_layer_norm(x, r, w, b, 0.3, seed=9, input_bias=ib).sum()  # noqa: E731
    xr = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(fn(xr), xr)
    torch.testing.assert_close(torch.func.grad(fn)(x), want, rtol=1e-5, atol=1e-5)  # torch's norm backward there
    batched = torch.func.vmap(lambda row: F.dropout_add_layer_norm(row, r[0], w, b, 0.3, seed=9, prenorm=True))(x)
    for i in range(4):
        out, h = F.dropout_add_layer_norm(x[i], r[0], w, b, 0.3, seed=9, prenorm=True)
        assert_same_bits(batched[1][i], h)  # the same mask and sum, bit for bit
        assert_close_out(batched[0][i], out)


def test_torch_compile_fullgraph(device):
    """On the ops that serve the names (the compiled kernels, or the Python ones where forced)."""
    torch._dynamo.reset()
    x, r, w, b, ib = (t.requires_grad_() for t in _tensors((8, 48), torch.float32, device))

    def block(x, r, w, b, ib):
        out, h = F.dropout_add_layer_norm(x, r, w, b, 0.2, seed=4, input_bias=ib, prenorm=True)
        return out * 2 + h

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    got = compiled(x, r, w, b, ib)
    want = block(x, r, w, b, ib)
    assert_same_bits(got, want)
    g1 = torch.autograd.grad(got.sum(), [x, r, w, b, ib])
    g2 = torch.autograd.grad(want.sum(), [x, r, w, b, ib])
    for a, c in zip(g1, g2):
        assert_same_bits(a, c)


@pytest.mark.parametrize("kernels", BACKEND_KERNELS, indirect=True)
def test_activation_checkpointing(kernels):
    x, r, w, b, _ = (t.requires_grad_() for t in _tensors((8, 64), torch.float32, kernels.device))
    fn = lambda x, r: F.dropout_add_layer_norm(x, r, w, b, 0.5)  # noqa: E731
    torch.manual_seed(3)
    out = torch.utils.checkpoint.checkpoint(fn, x, r, use_reentrant=False)
    got = torch.autograd.grad(out.sum(), [x, r, w])
    torch.manual_seed(3)
    out2 = fn(x, r)
    want = torch.autograd.grad(out2.sum(), [x, r, w])
    assert_same_bits(out, out2)
    for a, c in zip(got, want):
        assert_same_bits(a, c)


def test_row_shards_are_rows_of_the_unsharded_result(kernels):
    """global_shape / global_offset on leading dims (rows not on a Philox block boundary):
    the shard's rows of the full call, values and gradients."""
    shape = (5, 6, 37)
    x, r, w, b, _ = _tensors(shape, torch.float32, kernels.device)
    xf = x.clone().requires_grad_()
    full = F.dropout_add_layer_norm(xf, r, w, b, 0.3, seed=SEED)
    (gfull,) = torch.autograd.grad(full.sum(), xf)
    for offset, size in [((1, 0, 0), (3, 6, 37)), ((2, 3, 0), (2, 3, 37)), ((0, 1, 0), (5, 4, 37))]:
        sl = tuple(slice(o, o + n) for o, n in zip(offset, size))
        xs = x[sl].clone().requires_grad_()
        part = F.dropout_add_layer_norm(xs, r[sl], w, b, 0.3, seed=SEED, global_shape=shape, global_offset=offset)
        assert_same_bits(part, full[sl])
        (gs,) = torch.autograd.grad(part.sum(), xs)
        assert_same_bits(gs, gfull[sl])
    with pytest.raises(ValueError, match="normalized"):
        F.dropout_add_layer_norm(x[..., :10], r[..., :10], None, None, 0.3, seed=1, global_shape=shape,
                                 global_offset=(0, 0, 5))


@requires_compiled
def test_threads_split_rows(kernels):
    """Two threads over many rows, shards starting off block boundaries: the oracle's h."""
    if not kernels.compiled:
        pytest.skip("the Python kernels run on torch's own threads")
    shape = (1000, 37)
    x, r, w, b, ib = _tensors(shape, torch.float32, kernels.device)
    with threads_ctx(2):
        for offset in [(0, 0), (3, 0)]:
            gshape = (1003, 37)
            _, h = F.dropout_add_layer_norm(x, r, w, b, 0.3, seed=SEED, input_bias=ib, prenorm=True,
                                            global_shape=gshape, global_offset=offset)
            words = torch.arange(offset[0] * 37, (offset[0] + 1000) * 37)
            keep = oracle_mask(gshape, 0.3, SEED % 2**64).reshape(-1)[words]
            assert_same_bits(h, expected_h(x, r, ib, keep, 0.3))
            xg = x.clone().requires_grad_()
            out = F.dropout_add_layer_norm(xg, r, w, b, 0.3, seed=SEED, global_shape=gshape, global_offset=offset)
            (g,) = torch.autograd.grad(out.sum(), xg)
            assert g.shape == x.shape and torch.isfinite(g).all()
            assert ((g == 0) == ~keep.reshape(shape)).all()


def test_operand_layouts(kernels):
    """A transposed input, an expanded residual, strided parameters: the oracle's result."""
    x, r, w, b, ib = _tensors((24, 40), torch.float32, kernels.device)
    xt = x.t().contiguous().t()
    r_exp = r[:1].expand(24, 40)
    w_str = torch.stack([w, w], 1)[:, 0]
    keep = keep_mask(x.shape, 0.3, 8)
    out, h = F.dropout_add_layer_norm(xt, r_exp, w_str, b, 0.3, seed=8, input_bias=ib, prenorm=True)
    assert_same_bits(h, expected_h(x, r_exp.contiguous(), ib, keep, 0.3))
    assert_close_out(out, expected_out("layer", h, w, b, 1e-5, x.dtype))


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("kernels", BACKEND_KERNELS, indirect=True)
def test_errors_name_the_problem_and_write_nothing(kernels):
    dev = kernels.device
    x, r, w, b, ib = _tensors((4, 8), torch.float32, dev)
    cases = [
        (dict(input=x.long()), TypeError, "input must be a floating point"),
        (dict(residual=r[:, :4]), RuntimeError, "residual must have the input's shape"),
        (dict(residual=r.double()), TypeError, "residual must have the input's dtype"),
        (dict(weight=w[:4]), RuntimeError, "weight must be 1-D with the input's last dimension"),
        (dict(bias=b.double()), TypeError, "bias must have the input's dtype"),
        (dict(input_bias=ib.bfloat16()), TypeError, "input_bias must have the input's dtype"),
        (dict(input=torch.tensor(1.0, device=dev), residual=None, weight=None, bias=None), RuntimeError,
         "at least 1 dim"),
        (dict(p=1.5), ValueError, "dropout probability"),
        (dict(seed=-1), ValueError, "seed must be in"),
    ]
    for change, exc, text in cases:
        args = dict(input=x, residual=r, weight=w, bias=b, p=0.3, input_bias=ib)
        args.update(change)
        kw = {k: args.pop(k) for k in ("input_bias", "seed") if k in args}
        state = torch.get_rng_state()
        before = [t.clone() for t in (x, r, w, b, ib)]
        with pytest.raises(exc, match=text):
            F.dropout_add_layer_norm(args["input"], args["residual"], args["weight"], args["bias"], args["p"], **kw)
        assert torch.equal(torch.get_rng_state(), state)
        for t, t0 in zip((x, r, w, b, ib), before):
            assert torch.equal(t, t0)


# ------------------------------------------------------------------- what is kept


@pytest.mark.parametrize("kernels", BACKEND_KERNELS, indirect=True)
@pytest.mark.parametrize("prenorm", [False, True])
def test_saved_for_backward(kernels, prenorm):
    """Beside h (with prenorm=True the returned h itself): the bits (numel / 8 bytes) or
    the seed, mean and 1/std per row; no full-size mask, no copy of an input."""
    rows, hidden = 64, 96
    x, r, w, b, _ = (t.requires_grad_() for t in _tensors((rows, hidden), torch.float32, kernels.device))
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = F.dropout_add_layer_norm(x, r, w, b, 0.3, seed=1, prenorm=prenorm)
    big = [t for t in saved if t.numel() == rows * hidden]
    assert len(big) == 1  # h
    if prenorm:
        assert big[0].data_ptr() == result[1].data_ptr()
    small = sum(t.numel() * t.element_size() for t in saved
                if t.numel() != rows * hidden and all(t is not p for p in (w, b)))
    assert small <= rows * hidden // 8 + 8 * rows + 64


# ---------------------------------------------------------------------------- modules


def test_modules_load_torch_norm_state_and_match_functional():
    ln = torch.nn.LayerNorm(16)
    m = dropout_ext.nn.DropoutAddLayerNorm(16, p=0.1)
    m.load_state_dict(ln.state_dict())
    assert set(m.state_dict()) == {"weight", "bias"}
    rms = dropout_ext.nn.DropoutAddRMSNorm(16, p=0.1)
    rms.load_state_dict(torch.nn.RMSNorm(16).state_dict())
    x, r = torch.randn(3, 16), torch.randn(3, 16)
    m.eval()
    assert_close_out(m(x, r), ln(x + r))
    rms.eval()
    assert_close_out(rms(x, r), torch.nn.RMSNorm(16)(x + r))
    assert "p=0.1" in repr(m) and "DropoutAddRMSNorm" in repr(rms)
    pre = dropout_ext.nn.DropoutAddLayerNorm(16, p=0.2, prenorm=True, bias=False)
    assert pre.bias is None
    torch.manual_seed(0)
    out, h = pre(x, r)
    torch.manual_seed(0)
    assert_same_bits(h, F.dropout_add(x, r, 0.2))
    with pytest.raises(ValueError, match="last dim only"):
        dropout_ext.nn.DropoutAddLayerNorm((4, 16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@requires_compiled
def test_cuda_graph_replays_draw_fresh_masks():
    x, r, w, b, _ = _tensors((64, 512), torch.bfloat16, "cuda")
    fn = lambda: F.dropout_add_layer_norm(x, r, w, b, 0.5, prenorm=True)  # noqa: E731
    fn()  # warm up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, h = fn()
    graph.replay()
    h1 = h.clone()
    graph.replay()
    assert not torch.equal(h1, h)  # each replay draws a fresh mask
    assert_close_out(out, expected_out("layer", h, w, b, 1e-5, x.dtype))


def test_example_blocks_match_their_unfused_forms():
    """examples/fused_norm_blocks.py: the post-norm (BERT) and pre-norm (GPT-2) blocks give
    the unfused composition's loss and gradients, to rounding, for the same seed."""
    import runpy
    import os

    ex = runpy.run_path(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples",
                                     "fused_norm_blocks.py"))
    for name in ("PostNormBlock", "PreNormBlock"):
        ex["compare"](ex[name])
