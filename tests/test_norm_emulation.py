"""The fused dropout + add + norm CUDA kernels (csrc/cuda/norm_kernel.cuh) run on the host
by the emulator (csrc/testing/norm_emulation.cpp: the CPU kernels of the testing module's
dropout_ext_testing::dropout_add_norm(_backward)), against the Python oracle
(dropout_ext/_reference.py): h bit for bit, out / mean / rstd and the gradients within
float32 (float64) accumulation rounding, the saved bits or (key, base) exactly.

The shapes reach every path of the kernels: a warp per row (hidden <= 512) and a block per
row, rows that fit the row cache and rows that do not, column sums in shared and in global
memory (the emulator's shared memory budget is lowered for small rows:
set_norm_smem_budget), vector and element-wise accesses (hidden % 8, strided rows), keep
bits drawn or read from saved bits, shards (global_shape / global_offset), and grids whose
blocks loop over rows (the emulator runs three blocks). norm_last_plan says which path a
launch took; test_paths checks that each is reached."""
import math
import zlib

import pytest
import torch
from testing import requires_compiled, requires_emulator

from dropout_ext import _reference as ref

pytestmark = [requires_compiled, requires_emulator]

KEY, BASE = 0x1234_5678_9ABC, 77
EPS = 1e-5
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def ops():
    return torch.ops.dropout_ext_testing


@pytest.fixture
def budget():
    """Sets the emulated kernels' shared memory budget for the test, then restores the GPU's."""
    def set_budget(b):
        ops().set_norm_smem_budget(b)
    yield set_budget
    ops().set_norm_smem_budget(0)


def _tol(dtype):
    """(rtol, atol) of one rounding of `dtype` plus float32 accumulation differences."""
    return {torch.float16: (4e-3, 4e-3), torch.bfloat16: (2e-2, 2e-2), torch.float32: (2e-5, 2e-5),
            torch.float64: (1e-12, 1e-12)}[dtype]


def _close(got, exp, dtype, what, scale=1.0):
    rtol, atol = _tol(dtype)
    assert got.dtype == exp.dtype and got.shape == exp.shape, (what, got.dtype, exp.dtype, got.shape, exp.shape)
    torch.testing.assert_close(got.double(), exp.double(), rtol=rtol, atol=atol * scale, msg=lambda m: what + ": " + m)


def _same_bits(got, exp, what):
    assert got.dtype == exp.dtype and got.shape == exp.shape, (what, got.dtype, exp.dtype, got.shape, exp.shape)
    if got.is_floating_point():
        got, exp = got.contiguous().view(torch.uint8), exp.contiguous().view(torch.uint8)
    assert torch.equal(got, exp), what


def _rows_strided(t, extra):
    """t's values in a tensor whose rows are `extra` elements apart beyond the last dim (a
    row stride that is not a multiple of 8 for odd `extra`)."""
    if t is None:
        return None
    big = torch.zeros(t.shape[:-1] + (t.shape[-1] + extra,), dtype=t.dtype)
    big[..., :t.shape[-1]] = t
    return big[..., :t.shape[-1]]


def case(shape, dtype, *, residual=True, weight=True, bias=True, input_bias=False, rms=False, res_f32=False,
         param_f32=False, save=1, p=0.3, shard=None, grad_h=True, strided=0, ib_grad=None, backward=True,
         in_fp32=None):
    """One forward (and backward, where save allows) on the emulator and the oracle.
    res_f32: a float32 residual, and residual_in_fp32 unless in_fp32 says otherwise."""
    g = torch.Generator().manual_seed(zlib.crc32(repr((shape, dtype, rms, p, save)).encode()))
    hidden = shape[-1]

    def rand(sh, dt):
        return torch.randn(sh, generator=g, dtype=torch.float64).to(dt)

    pdt = torch.float32 if param_f32 else dtype
    x = rand(shape, dtype) * 2 + 0.5
    r = rand(shape, torch.float32 if res_f32 else dtype) if residual else None
    w = rand((hidden,), pdt) * 0.5 + 1 if weight else None
    b = rand((hidden,), pdt) if bias else None
    ib = rand((hidden,), dtype) if input_bias else None
    if strided:
        x, r = _rows_strided(x, strided), _rows_strided(r, strided)
    rng = torch.tensor([KEY, BASE], dtype=torch.int64)
    gs, go = shard if shard else (None, None)
    in_fp32 = res_f32 if in_fp32 is None else in_fp32
    args = (x, r, w, b, ib, rng, None, p, EPS, rms, in_fp32, save, gs, go)
    got = ops().dropout_add_norm(*args)
    exp = ref.dropout_add_norm(*args)
    plan_f = ops().norm_last_plan()
    _same_bits(got[1], exp[1], "h")
    _close(got[0], exp[0], dtype, "out")
    acc = exp[3].dtype
    _close(got[2], exp[2], acc, "mean")
    _close(got[3], exp[3], acc, "rstd", scale=max(1.0, float(exp[3].abs().max()) if exp[3].numel() else 1.0))
    _same_bits(got[4], exp[4], "saved")
    if not backward or save == 0:
        return plan_f, None
    hdt = exp[1].dtype
    dy = rand(shape, dtype)
    gh = rand(shape, hdt) if grad_h else None
    if strided:
        dy, gh = _rows_strided(dy, strided), _rows_strided(gh, strided)
    ib_grad = input_bias if ib_grad is None else ib_grad
    bargs = (dy, gh, exp[1], w, b, exp[2], exp[3], exp[4], p, rms, ib_grad, gs, go)
    gotb = ops().dropout_add_norm_backward(*bargs)
    plan_b = ops().norm_last_plan()
    expb = ref.dropout_add_norm_backward(*bargs)
    rows = max(1, math.prod(shape[:-1]))
    for name, i, dt, scale in (("grad_input", 0, dtype, 4.0), ("grad_h_total", 1, hdt, 4.0),
                               ("grad_weight", 2, acc, math.sqrt(rows) * 4), ("grad_bias", 3, acc, math.sqrt(rows) * 4),
                               ("grad_input_bias", 4, acc, math.sqrt(rows) * 8)):
        _close(gotb[i], expb[i], dt, name, scale=scale)
    return plan_f, plan_b


# ------------------------------------------------------------------ dtypes x hidden sizes

HIDDEN = [1, 3, 7, 64, 65, 768, 1000, 4097, 16384]


def _rows_for(hidden):
    """Enough rows for the grid-stride loop (3 blocks of 8 rows in warp mode), few for long rows."""
    if hidden <= 512:
        return (5, 7)  # 35 rows: 24 per sweep of the grid
    return (2, 3) if hidden <= 1000 else (5,)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("hidden", HIDDEN)
def test_layer_norm(dtype, hidden):
    case(_rows_for(hidden) + (hidden,), dtype, input_bias=hidden % 2 == 1)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("hidden", [3, 64, 1000, 4097])
def test_rms_norm(dtype, hidden):
    case(_rows_for(hidden) + (hidden,), dtype, rms=True, save=2, bias=False)


def test_long_rows_past_the_cache():
    """65536 float32 elements (256 KB) per row: no row cache, h re-read from global memory;
    the backward's column sums in global memory."""
    pf, pb = case((2, 65536), torch.float32, input_bias=True)
    assert not pf[5] and not pb[5] and not pb[6], (pf, pb)


# ------------------------------------------------------------------ operands and options

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("hidden", [64, 1000])
def test_residual_in_fp32(dtype, hidden):
    """h (and grad_h, grad_h_total) in float32; the residual in float32 or in the input's
    dtype; parameters in float32 or in the input's dtype."""
    case((5, 7, hidden), dtype, res_f32=True, param_f32=True)
    case((4, hidden), dtype, res_f32=False, in_fp32=True, input_bias=True, save=2)
    case((4, hidden), dtype, res_f32=True, residual=False, param_f32=False)


def test_float64_with_float32_parameters():
    case((3, 5, 96), torch.float64, param_f32=True, input_bias=True)


def test_float64_with_float32_residual():
    case((3, 5, 96), torch.float64, res_f32=True, input_bias=True)


@pytest.mark.parametrize("residual,weight,bias,input_bias", [
    (False, False, False, False), (True, False, False, False), (False, True, False, True),
    (True, True, False, True), (False, False, True, False)])
@pytest.mark.parametrize("hidden", [65, 768])
def test_optional_operands(residual, weight, bias, input_bias, hidden):
    case((5, 7, hidden) if hidden < 512 else (4, hidden), torch.float32, residual=residual, weight=weight,
         bias=bias, input_bias=input_bias, grad_h=residual)


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("save", [0, 1, 2])
def test_p_and_save(p, save):
    case((5, 7, 40), torch.bfloat16, p=p, save=save, input_bias=True)
    case((4, 520), torch.float16, p=p, save=save, rms=True, bias=False)


def test_input_bias_grad_without_input_bias():
    """The column sum of dh * f is asked for on its own."""
    case((4, 600), torch.float32, input_bias=False, ib_grad=True, weight=False, bias=False)


def test_strided_rows():
    """Rows of x, residual, grad_out and grad_h that are not on 16-byte boundaries: the
    element-wise accesses with hidden % 8 == 0."""
    pf, pb = case((5, 7, 64), torch.float16, strided=3)
    assert not pf[4] and not pb[4], (pf, pb)
    pf, pb = case((3, 1024), torch.float32, strided=8)
    assert pf[4] and pb[4], (pf, pb)


@pytest.mark.parametrize("hidden", [40, 1000])
def test_shards(hidden):
    """A shard of the leading dims draws its slice of the full tensor's mask."""
    local, gshape, goff = (3, 5, hidden), [7, 9, hidden], [2, 3, 0]
    for save in (1, 2):
        case(local, torch.bfloat16, shard=(gshape, goff), save=save, input_bias=True)
    case((2, 3, 4, hidden), torch.float32, shard=([3, 5, 6, hidden], [1, 2, 1, 0]), save=2, rms=True, bias=False)


def test_empty():
    for shape in [(0, 64), (3, 0), (0,)]:
        case(shape, torch.float32, save=1, input_bias=True)


# ------------------------------------------------------------------ every path, on purpose

def test_paths(budget):
    """Each path of the kernels, checked against the plan the launcher reports
    ([backward, group, rows_per_block, kmax, vec, cache, acc_smem, slots, blocks]): warp
    and block mode, vector and element-wise accesses, with and without the row cache, and
    (backward) with the column sums in shared or in global memory. The budgets put float32
    rows of 63/64 (a warp each, 8 per block) and 1004/1024 elements (a block each, with
    three column sums) on each side of each limit."""
    seen = set()
    for hidden, budgets in [(64, (0, 600, 8000, 5000)), (63, (0, 600, 8000, 5000)),
                            (1024, (0, 600, 18000, 10000)), (1004, (0, 600, 18000, 10000))]:
        for b in budgets:
            budget(b)
            shape = (5, 7, hidden) if hidden <= 512 else (5, hidden)
            pf, pb = case(shape, torch.float32, input_bias=True)
            for plan in (pf, pb):
                assert plan[8] == 3, plan  # blocks loop over rows
                seen.add(("b" if plan[0] else "f", plan[1] == 32, bool(plan[4]), bool(plan[5]))
                         + ((bool(plan[6]),) if plan[0] else ()))
    budget(0)
    want = {("f", warp, vec, cache) for warp in (True, False) for vec in (True, False) for cache in (True, False)}
    want |= {("b", warp, vec, cache, acc) for warp in (True, False) for vec in (True, False)
             for cache in (True, False) for acc in (True, False)}
    assert want <= seen, sorted(want - seen)


def test_generator_draw_and_autograd():
    """rng=None: (key, base) drawn from the generator as the oracle draws them; and the
    autograd formula over the emulated kernels gives the oracle's gradients."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 200, generator=g, dtype=torch.float64)
    r = torch.randn(6, 200, generator=g, dtype=torch.float64)
    w, b = torch.randn(200, generator=g, dtype=torch.float64), torch.randn(200, generator=g, dtype=torch.float64)
    got = ops().dropout_add_norm(x, r, w, b, None, None, torch.Generator().manual_seed(9), 0.4, EPS, False, False,
                                 2)
    exp = ref.dropout_add_norm(x, r, w, b, None, None, torch.Generator().manual_seed(9), 0.4, EPS, False, False, 2)
    _same_bits(got[4], exp[4], "drawn (key, base)")
    _same_bits(got[1], exp[1], "h")
    leaves = [t.clone().requires_grad_() for t in (x, r, w, b)]
    rng = got[4]
    out, h, _, _, _ = ops().dropout_add_norm(*leaves, None, rng, None, 0.4, EPS, False, False, 1)
    dy, dh = torch.randn_like(out), torch.randn_like(h)
    grads = torch.autograd.grad((out, h), leaves, (dy, dh))
    exp_leaves = [t.clone().requires_grad_() for t in (x, r, w, b)]
    eout, eh, _, _, _ = ref.dropout_add_norm(*exp_leaves, None, rng, None, 0.4, EPS, False, False, 1)
    exp_grads = torch.autograd.grad((eout, eh), exp_leaves, (dy, dh))
    for name, a, e in zip(("input", "residual", "weight", "bias"), grads, exp_grads):
        _close(a, e, torch.float64, "grad " + name, scale=10)
