"""The compiled CPU kernels of the fused dropout + residual add + LayerNorm / RMSNorm ops
(torch.ops.dropout_ext.dropout_add_norm and its backward) against the Python reference
(dropout_ext._reference): h bit for bit, out, mean, rstd and the gradients within
float32-accumulation rounding, on every CPU path; shards, threads, operand layouts, and the
checks (the same exceptions and texts, nothing drawn or written)."""
import itertools

import pytest
import torch
from testing import (CPU_ISAS, assert_same_bits, clone_generator, cpu_isa_ctx, requires_compiled, threads_ctx,
                     torch_error)

from dropout_ext import _reference as R

pytestmark = requires_compiled

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
HIDDEN = [1, 3, 7, 64, 65, 768, 1000, 4097, 65536]
LEADS = [(), (5,), (2, 3)]
EPS = 1e-5
RNG = (0x243F6A8885A308D3, 0x13198A2E03707344)  # a key and a base with both words non-zero


def ops():
    return torch.ops.dropout_ext


def rng_tensor(key=RNG[0], base=RNG[1]):
    return torch.tensor([key - 2**64 if key >= 2**63 else key, base - 2**64 if base >= 2**63 else base])


def _tol(dtype):
    """Relative to the reference's magnitude: a rounding of the output dtype (out and the
    gradients are rounded once from a float32 value whose sums were added in another order)."""
    return {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 2e-5, torch.float64: 1e-12}[dtype]


def assert_close(got, ref, tol, what=""):
    assert got.shape == ref.shape and got.dtype == ref.dtype, (what, got.shape, ref.shape, got.dtype, ref.dtype)
    if not ref.numel():
        return
    g, r = got.double(), ref.double()
    assert torch.equal(torch.isnan(g), torch.isnan(r)), what
    g, r = torch.nan_to_num(g), torch.nan_to_num(r)
    err = (g - r).abs().max().item()
    assert err <= tol * (r.abs().max().item() + 1.0), (what, err, tol)


def _make(lead, hidden, dtype, residual, weight, bias, input_bias, rif, seed=0):
    g = torch.Generator().manual_seed(seed * 1000 + hidden)
    shape = tuple(lead) + (hidden,)
    x = (torch.randn(shape, generator=g) * 2).to(dtype)
    rdt = torch.float32 if rif and dtype in (torch.float16, torch.bfloat16) and seed % 2 else dtype
    r = (torch.randn(shape, generator=g) + 0.5).to(rdt) if residual else None
    pdt = torch.float32 if seed % 3 == 1 else dtype  # weight and bias in float32 as well
    w = (torch.randn(hidden, generator=g) * 0.5 + 1).to(pdt) if weight else None
    b = torch.randn(hidden, generator=g).to(pdt if seed % 5 else dtype) if bias else None
    ib = torch.randn(hidden, generator=g).to(dtype) if input_bias else None
    return x, r, w, b, ib


def same(a, b):
    """Bit for bit (floating point: NaNs in the same places), any dtype."""
    if a.is_floating_point():
        assert_same_bits(a, b)
    else:
        assert a.dtype == b.dtype and torch.equal(a, b)


def check_forward(args, tol):
    """The op against the reference: h, saved bits / rng bit for bit, out, mean, rstd close."""
    got = ops().dropout_add_norm(*args)
    ref = R.dropout_add_norm(*args)
    assert_same_bits(got[1], ref[1])
    assert torch.equal(got[4], ref[4]) and got[4].dtype == ref[4].dtype
    assert_close(got[0], ref[0], tol, "out")
    assert_close(got[2], ref[2], _tol(got[2].dtype) * 10, "mean")
    assert_close(got[3], ref[3], _tol(got[3].dtype) * 10, "rstd")
    assert got[0].is_contiguous() and got[1].is_contiguous()
    return got, ref


def check_backward(args, tol):
    got = ops().dropout_add_norm_backward(*args)
    ref = R.dropout_add_norm_backward(*args)
    for name, a, b in zip(("grad_input", "grad_h_total", "grad_weight", "grad_bias", "grad_input_bias"), got, ref):
        assert_close(a, b, tol * 4, name)
    assert got[0].is_contiguous() and got[1].is_contiguous()
    return got


# Every value of every option appears on every CPU path, dtype and hidden size, in a few
# calls each (the full product would be tens of thousands of calls).
OPTIONS = list(itertools.product(LEADS, [True, False], [True, False], [0.0, 0.3, 1.0]))


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("isa", CPU_ISAS)
def test_forward_and_backward_match_the_reference(isa, dtype, hidden):
    calls = 2 if hidden == 65536 else 6
    with cpu_isa_ctx(isa):
        for k in range(calls):
            i = (k * 7 + hidden + DTYPES.index(dtype) * 5) % len(OPTIONS)
            lead, rms, rif, p = OPTIONS[i]
            if hidden == 65536:
                lead = (2,)
            residual, weight, bias, input_bias = ((k + j) % 4 != 0 for j in range(4))
            save = [1, 2, 0][k % 3]
            x, r, w, b, ib = _make(lead, hidden, dtype, residual, weight, bias, input_bias, rif, seed=k)
            args = (x, r, w, b, ib, rng_tensor(), None, p, EPS, rms, rif, save)
            (out, h, mean, rstd, saved), _ = check_forward(args, _tol(dtype))
            if save == 0:
                saved = rng_tensor()  # backward from (key, base) drawn again
            g = torch.Generator().manual_seed(k)
            dy = torch.randn(out.shape, generator=g).to(dtype)
            gh = torch.randn(h.shape, generator=g).to(h.dtype) if k % 2 else None
            check_backward((dy, gh, h, w, b, mean, rstd, saved, p, rms, input_bias), _tol(dtype))


@pytest.mark.parametrize("isa", CPU_ISAS)
def test_h_is_dropout_add(isa):
    """h is bit for bit dropout_add's (bias_dropout_add's with input_bias) output for the
    same (key, base), as the contract says."""
    with cpu_isa_ctx(isa):
        for dtype, shape in itertools.product(DTYPES, [(3, 65), (4, 5, 64), (2, 1000)]):
            x, r, _, _, ib = _make(shape[:-1], shape[-1], dtype, True, False, False, True, False)
            for p in (0.0, 0.3, 1.0):
                h = ops().dropout_add_norm(x, r, None, None, None, rng_tensor(), None, p, EPS, False, False, 0)[1]
                assert_same_bits(h, ops().dropout_add(x, r, rng_tensor(), None, p, 0)[0])
                h = ops().dropout_add_norm(x, r, None, None, ib, rng_tensor(), None, p, EPS, True, False, 1)[1]
                assert_same_bits(h, ops().bias_dropout_add(x, ib, r, rng_tensor(), None, p, 0)[0])


def test_special_values():
    """NaN, infinities, signed zeros and subnormals go through h as dropout_add rounds them."""
    for isa, dtype in itertools.product(CPU_ISAS, DTYPES):
        x = torch.randn(4, 70).to(dtype)
        r = torch.randn(4, 70).to(dtype)
        x[0, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0])
        x[1, :3] = torch.tensor([1e-40, -1e-39, 3e-45]).to(dtype)
        r[2, :2] = torch.tensor([-0.0, float("nan")])
        with cpu_isa_ctx(isa):
            for p in (0.0, 0.3, 1.0):
                for res in (r, None):
                    args = (x, res, None, None, None, rng_tensor(), None, p, EPS, False, False, 1)
                    assert_same_bits(ops().dropout_add_norm(*args)[1], R.dropout_add_norm(*args)[1])


@pytest.mark.parametrize("shape", [(3, 0), (0, 5), (2, 0, 4), (0,)])
def test_empty(shape):
    """No element: empty out and h; rows of no element get mean 0 and rstd 1 / sqrt(eps);
    backward sums over no row are 0."""
    for dtype, rms, save in itertools.product([torch.float32, torch.bfloat16], [False, True], [0, 1, 2]):
        x = torch.randn(shape).to(dtype)
        args = (x, x.clone(), torch.ones(shape[-1]).to(dtype), None, None, rng_tensor(), None, 0.3, EPS, rms, False,
                save)
        got, ref = check_forward(args, _tol(dtype))
        saved = got[4] if save else rng_tensor()
        check_backward((x, None, got[1], args[2], None, got[2], got[3], saved, 0.3, rms, True), _tol(dtype))


def test_generator_draw():
    """rng=None draws (key, base) from the generator as dropout_add does, even for p = 0,
    and leaves it where dropout_add leaves it; save 2 returns that pair."""
    x = torch.randn(6, 40)
    r = torch.randn(6, 40)
    for p in (0.0, 0.3):
        gen = torch.Generator().manual_seed(7)
        a, b, c = clone_generator(gen), clone_generator(gen), clone_generator(gen)
        got = ops().dropout_add_norm(x, r, None, None, None, None, a, p, EPS, False, False, 2)
        ref = R.dropout_add_norm(x, r, None, None, None, None, b, p, EPS, False, False, 2)
        assert_same_bits(got[1], ref[1])
        assert torch.equal(got[4], ref[4])
        ops().dropout_add(x, r, None, c, p, 0)
        assert torch.equal(a.get_state(), c.get_state())
        # the default generator
        torch.manual_seed(3)
        got = ops().dropout_add_norm(x, r, None, None, None, None, None, p, EPS, False, False, 2)
        after = torch.get_rng_state()
        torch.manual_seed(3)
        ref = R.dropout_add_norm(x, r, None, None, None, None, None, p, EPS, False, False, 2)
        assert torch.equal(got[4], ref[4]) and torch.equal(after, torch.get_rng_state())


# ------------------------------------------------------------------------------ shards


def _shard_case(full, index, isa, save):
    """The shard full[index] at its offset gives the full call's rows, forward and backward
    (from bits and from (key, base))."""
    dtype = full.dtype
    H = full.shape[-1]
    g = torch.Generator().manual_seed(1)
    r = torch.randn(full.shape, generator=g).to(dtype)
    w = torch.randn(H, generator=g).to(dtype)
    b = torch.randn(H, generator=g).to(dtype)
    dy = torch.randn(full.shape, generator=g).to(dtype)
    x = full[index]
    offset = [s.start or 0 for s in index] + [0] * (full.dim() - len(index))
    shard = (list(full.shape), offset)
    with cpu_isa_ctx(isa):
        fo = ops().dropout_add_norm(full, r, w, b, None, rng_tensor(), None, 0.3, EPS, False, False, 1)
        so = ops().dropout_add_norm(x, r[index], w, b, None, rng_tensor(), None, 0.3, EPS, False, False, save, *shard)
        ref = R.dropout_add_norm(x, r[index], w, b, None, rng_tensor(), None, 0.3, EPS, False, False, save, *shard)
        for k in (0, 1):  # the same rows: the same values, bit for bit
            assert_same_bits(so[k], fo[k][index].contiguous())
        assert_same_bits(so[1], ref[1])
        assert torch.equal(so[4], ref[4])
        rows = fo[3].reshape(full.shape[:-1])[index].reshape(-1)
        assert_same_bits(so[3], rows)
        saved = so[4] if save else rng_tensor()
        fb = ops().dropout_add_norm_backward(dy, None, fo[1], w, b, fo[2], fo[3], fo[4], 0.3, False, False)
        sb = ops().dropout_add_norm_backward(dy[index], None, so[1], w, b, so[2], so[3], saved, 0.3, False, False,
                                             *shard)
        for k in (0, 1):
            assert_same_bits(sb[k], fb[k][index].contiguous())


@pytest.mark.parametrize("isa", CPU_ISAS)
def test_shards_are_the_full_tensors_rows(isa):
    # rows whose first word is not on a Philox block (65 columns), 2 and 3 leading dims,
    # a full dim inside (merged), a dim of size 1
    full = torch.randn(6, 5, 65)
    _shard_case(full, (slice(2, 5), slice(1, 4)), isa, 1)
    _shard_case(full, (slice(1, 6),), isa, 0)
    _shard_case(torch.randn(4, 3, 2, 96).bfloat16(), (slice(1, 3), slice(0, 3), slice(1, 2)), isa, 2)
    _shard_case(torch.randn(9, 7).half(), (slice(3, 4),), isa, 1)


def test_shard_with_many_leading_dims():
    """Leading dims that merge (whole inner dims, dims of 1) fit any count; more than eight
    cut dims are refused before anything is drawn."""
    full = torch.randn(*([2] * 10), 5)
    _shard_case(full, (slice(1, 2),), CPU_ISAS[-1], 1)  # one cut dim, nine whole ones
    _shard_case(full, (slice(1, 2),) * 9, CPU_ISAS[-1], 2)  # nine dims of 1, one whole
    full = torch.randn(*([3] * 9), 5)
    x = full[(slice(0, 2),) * 9]  # nine cut dims
    shard = (list(full.shape), [0] * 10)
    assert torch_error(lambda: R.dropout_add_norm(x, None, None, None, None, rng_tensor(), None, 0.3, EPS, False,
                                                  False, 1, *shard)) is None  # the reference takes it
    state = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="merge into at most 8 dims"):
        ops().dropout_add_norm(x, None, None, None, None, None, None, 0.3, EPS, False, False, 1, *shard)
    assert torch.equal(state, torch.get_rng_state())


# ----------------------------------------------------------------------------- threads


@pytest.mark.parametrize("isa", CPU_ISAS)
def test_two_threads(isa):
    """Rows split between two threads (chunks of whole bytes of the mask): the reference's
    values, and the same as one thread (backward's column sums within rounding)."""
    for dtype, shape in ((torch.float32, (1003, 77)), (torch.bfloat16, (130, 1001))):
        x, r, w, b, ib = _make(shape[:-1], shape[-1], dtype, True, True, True, True, False)
        args = (x, r, w, b, ib, rng_tensor(), None, 0.3, EPS, False, False, 1)
        dy = torch.randn(shape).to(dtype)
        with cpu_isa_ctx(isa):
            with threads_ctx(1):
                one = ops().dropout_add_norm(*args)
                one_b = ops().dropout_add_norm_backward(dy, None, one[1], w, b, one[2], one[3], one[4], 0.3, False,
                                                        True)
            with threads_ctx(2):
                two, _ = check_forward(args, _tol(dtype))
                two_b = check_backward((dy, None, two[1], w, b, two[2], two[3], two[4], 0.3, False, True),
                                       _tol(dtype))
        for a, c in zip(one, two):
            same(a, c)
        for a, c in zip(one_b[:2], two_b[:2]):
            same(a, c)


# ----------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("isa", CPU_ISAS)
def test_operand_layouts(isa):
    """Strided, expanded and transposed operands give the values of their contiguous copies."""
    g = torch.Generator().manual_seed(5)
    H = 72
    big = torch.randn(8, 2 * H, generator=g)
    cases = {
        "row stride": (torch.randn(8, H, generator=g), big[:, :H]),
        "expanded residual": (torch.randn(8, H, generator=g), torch.randn(1, H, generator=g).expand(8, H)),
        "expanded 3-D residual": (torch.randn(2, 4, H, generator=g), torch.randn(H, generator=g).expand(2, 4, H)),
        "transposed input": (torch.randn(H, 8, generator=g).t(), torch.randn(8, H, generator=g)),
        "permuted leading dims": (torch.randn(4, 2, H, generator=g).transpose(0, 1), torch.randn(2, 4, H,
                                                                                                  generator=g)),
        "sliced rows": (torch.randn(16, H, generator=g)[::2], torch.randn(3, 8, H, generator=g)[1]),
        "stepped last dim": (torch.randn(8, 2 * H, generator=g)[:, ::2], torch.randn(8, H, generator=g)),
    }
    w = torch.randn(2 * H, generator=g)[::2]  # a stepped weight
    with cpu_isa_ctx(isa):
        for name, (x, r) in cases.items():
            for dtype in (torch.float32, torch.bfloat16):
                xd, rd, wd = x.to(dtype), r.to(dtype), w.to(dtype)
                args = (xd, rd, wd, None, None, rng_tensor(), None, 0.3, EPS, False, False, 1)
                got = ops().dropout_add_norm(*args)
                flat = ops().dropout_add_norm(xd.contiguous(), rd.contiguous(), wd.contiguous(), None, None,
                                              rng_tensor(), None, 0.3, EPS, False, False, 1)
                for a, c in zip(got, flat):
                    same(a, c)
                assert_same_bits(got[1], R.dropout_add_norm(*args)[1])
                dy = r.to(dtype)  # a strided gradient
                gb = ops().dropout_add_norm_backward(dy, dy, got[1], wd, None, got[2], got[3], got[4], 0.3, False,
                                                     False)
                gf = ops().dropout_add_norm_backward(dy.contiguous(), dy.contiguous(), got[1], wd.contiguous(), None,
                                                     got[2], got[3], got[4], 0.3, False, False)
                for a, c in zip(gb, gf):
                    same(a, c)


# ------------------------------------------------------------------------------ errors


def _bad_forward_calls():
    x = torch.randn(4, 8)
    r = torch.randn(4, 8)
    w = torch.randn(8)

    def call(**kw):
        d = dict(input=x, residual=r, weight=w, bias=None, input_bias=None, rng=None, generator=None, p=0.3, eps=EPS,
                 rms=False, residual_in_fp32=False, save=1, global_shape=None, global_offset=None)
        d.update(kw)
        return tuple(d.values())

    return {
        "integer input": call(input=x.int()),
        "0-dim input": call(input=torch.tensor(1.0), residual=None, weight=None),
        "p above 1": call(p=1.5),
        "p below 0": call(p=-0.1),
        "p NaN": call(p=float("nan")),
        "save": call(save=3),
        "residual dtype": call(residual=r.double()),
        "residual dtype with residual_in_fp32": call(input=x.half(), residual=r.double(), weight=None,
                                                     residual_in_fp32=True),
        "float32 residual without residual_in_fp32": call(input=x.half(), residual=r, weight=None),
        "integer residual": call(residual=r.int()),
        "residual shape": call(residual=r[:2]),
        "weight dtype": call(weight=w.double()),
        "integer weight": call(weight=w.long()),
        "weight shape": call(weight=w[:3]),
        "0-dim weight": call(weight=w[0]),
        "bias shape": call(bias=torch.randn(2, 8)),
        "input_bias dtype": call(input=x.bfloat16(), residual=None, weight=None, input_bias=w),
        "input_bias shape": call(input_bias=torch.randn(9)),
        "shard of the last dim": call(global_shape=[8, 16], global_offset=[0, 0]),
        "offset in the last dim": call(global_shape=[8, 8], global_offset=[0, 1]),
        "shape without offset": call(global_shape=[8, 8], global_offset=None),
        "shard does not fit": call(global_shape=[4, 8], global_offset=[1, 0]),
        "shard entries": call(global_shape=[8], global_offset=[0]),
        "rng dtype": call(rng=torch.tensor([1, 2], dtype=torch.int32)),
        "rng size": call(rng=torch.tensor([1, 2, 3])),
    }


@pytest.mark.parametrize("case", list(_bad_forward_calls()))
def test_bad_forward_calls_raise_what_the_reference_raises(case):
    args = _bad_forward_calls()[case]
    before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    state = torch.get_rng_state()
    gen = torch.Generator().manual_seed(3)
    gstate = gen.get_state()
    args = args[:6] + (gen,) + args[7:]  # a generator that must not move
    got = torch_error(lambda: ops().dropout_add_norm(*args))
    ref = torch_error(lambda: R.dropout_add_norm(*args))
    assert got is not None and got == ref, (got, ref)
    assert torch.equal(state, torch.get_rng_state()) and torch.equal(gstate, gen.get_state())
    for a, b in zip(args, before):
        if isinstance(a, torch.Tensor):
            assert_same_bits(a, b)


def test_bad_backward_calls():
    """The saved bits' size as the reference words it; the other operands' shapes, dtypes
    and devices refused before anything is written."""
    x = torch.randn(4, 8)
    out, h, mean, rstd, bits = ops().dropout_add_norm(x, x, None, None, None, rng_tensor(), None, 0.3, EPS, False,
                                                      False, 1)

    def call(**kw):
        d = dict(grad_out=x, grad_h=None, h=h, weight=None, bias=None, mean=mean, rstd=rstd, saved=bits, p=0.3,
                 rms=False, input_bias_grad=False)
        d.update(kw)
        return tuple(d.values())

    bad_bits = call(saved=bits[:3])
    got = torch_error(lambda: ops().dropout_add_norm_backward(*bad_bits))
    assert got is not None and got == torch_error(lambda: R.dropout_add_norm_backward(*bad_bits))
    for kw, exc in [(dict(grad_out=x.int()), TypeError), (dict(grad_out=torch.tensor(1.0)), RuntimeError),
                    (dict(h=h[:2]), RuntimeError), (dict(h=h.double()), TypeError),
                    (dict(grad_h=h[:, :3]), RuntimeError), (dict(grad_h=h.double()), TypeError),
                    (dict(weight=torch.randn(3)), RuntimeError), (dict(mean=mean[:2]), RuntimeError),
                    (dict(rstd=rstd.double()), RuntimeError), (dict(mean=mean, rms=True), RuntimeError),
                    (dict(saved=torch.tensor([1, 2, 3])), RuntimeError), (dict(p=2.0), ValueError),
                    (dict(saved=rng_tensor(), global_shape=[4, 9], global_offset=[0, 0]), ValueError)]:
        with pytest.raises(exc):
            ops().dropout_add_norm_backward(*call(**kw))
