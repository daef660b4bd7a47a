"""The CUDA kernels (csrc/cuda/flat_kernel.cuh, tile_kernel.cuh) run on the host by the
emulator (csrc/testing/cuda_emulation.cpp: the CPU kernels of the testing module's
namespace dropout_ext_testing, the backend "emulator", the CPU path "cuda-emu"), on every
machine, GPU or not; and the product's op namespace, which has none of it.

The emulator runs the kernels' own code for each block and thread of the grid the CUDA
launcher uses, with real barriers and shared memory, and checks the alignment of vector
accesses. Here: every op, dtype, layout and backward storage, in shapes that take several
blocks and partial tiles of both kernels, bit for bit against the Python backend. The
tests that go over every CPU path (test_mask, test_fuzz, test_layouts, test_shards) run
the emulator too."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from testing import (assert_same_bits, backend_ctx, cpu_isa_ctx, requires_compiled, requires_emulator,
                     storage_ctx)
from test_layouts import _ops, _strided_input

import dropout_ext
from dropout_ext import _backend
from dropout_ext import functional as F

pytestmark = requires_compiled  # and requires_emulator on every test of the emulator

SEED = 0xC0DA


def _run(x, fn, grad):
    """Output (and the gradient for a fixed upstream gradient) of fn on x."""
    out = fn(x, seed=SEED)
    if not grad or x.numel() == 0:
        return out, None
    leaf = x.detach().requires_grad_()
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    (gx,) = torch.autograd.grad(fn(leaf, seed=SEED), leaf, g)
    return out, gx


def check_against_python(x, grad=True, ops=None):
    for name, fn in _ops(x):
        if ops and name not in ops:
            continue
        with backend_ctx("python"):
            ref, ref_g = _run(x, fn, grad)
        with backend_ctx("emulator"):
            out, g = _run(x, fn, grad)
        assert out.stride() == ref.stride(), (name, out.stride(), ref.stride())
        assert_same_bits(out, ref)
        if ref_g is not None:
            assert g.stride() == ref_g.stride(), (name, g.stride(), ref_g.stride())
            assert_same_bits(g, ref_g)


# The product's op namespace: only what dropout_ext/_ops.py declares (SCHEMAS, but the
# testing module's philox4x32_10) and the run-time CPU path switch.
PUBLIC_OPS = {"dropout", "dropout_", "dropout_add", "bias_dropout_add", "dropout_backward", "dropout_add_norm",
              "dropout_add_norm_backward", "_cpu_isa", "_cpu_isas_supported"}


def _namespace_ops(namespace):
    return {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith(namespace + "::")}


def test_the_product_namespace_has_no_development_ops():
    assert _namespace_ops("dropout_ext") == PUBLIC_OPS
    assert "cuda-emu" not in _backend.cpu_isas_supported()
    with pytest.raises(ValueError, match="unknown CPU ISA"):
        torch.ops.dropout_ext._cpu_isa("cuda-emu")


@requires_emulator
def test_the_emulator_is_the_testing_namespace_not_a_cpu_isa():
    """cpu_isa_ctx("cuda-emu") runs the API on dropout_ext_testing (same schemas, no fast
    entry points) and leaves the product's CPU path alone."""
    assert _namespace_ops("dropout_ext_testing") == PUBLIC_OPS - {"_cpu_isa", "_cpu_isas_supported"} | {
        "philox4x32_10", "set_cuda_tuning", "cuda_tuning", "set_norm_smem_budget", "norm_last_plan"}
    for name in PUBLIC_OPS - {"_cpu_isa", "_cpu_isas_supported"}:
        testing = getattr(torch.ops.dropout_ext_testing, name).default
        product = getattr(torch.ops.dropout_ext, name).default
        assert str(testing._schema).split("::", 1)[1] == str(product._schema).split("::", 1)[1]
        assert testing.tags == product.tags
    before = _backend.cpu_isa()
    with backend_ctx("compiled"), cpu_isa_ctx("cuda-emu"):
        assert _backend.ops().namespace is torch.ops.dropout_ext_testing and _backend.FAST is None
        assert _backend.cpu_isa() == before
        with backend_ctx("compiled"):  # the tests' compiled backend stays on the emulator
            assert _backend.ops().namespace is torch.ops.dropout_ext_testing
    assert _backend.ops().namespace is _backend.compiled_ops()


def _layouts(dtype):
    g = torch.Generator().manual_seed(1)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    return {
        # flat kernel: several blocks, a tail unit, units past the grid's first sweep
        "contiguous": randn(3, 1999),
        # tile kernel, lanes along M: partial tiles along M (C = 40) and D (W = 11)
        "channels_last": randn(3, 40, 9, 11).to(memory_format=torch.channels_last),
        # tile mode, D = 70: one full and one partial 64-wide tile, 10 tiles along M
        "transposed": randn(70, 300).t(),
        # row mode, stride 2 along D
        "stepped": randn(21, 260)[:, ::2],
        # row mode, rows of 100 that do not start on a byte of the mask nor on a vector
        "offset": randn(4100)[1:4001].view(40, 100),
        # row mode with vector accesses: rows of 96 at a row stride of 128
        "row-sliced": randn(30, 128)[:, :96],
        "expanded": randn(1, 67).expand(33, 67),
    }


@requires_emulator
@pytest.mark.parametrize("storage", ["bits", "seed"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed", "stepped", "offset", "row-sliced",
                                    "expanded"])
def test_every_op_and_layout_equals_the_python_backend(layout, dtype, storage):
    x = _layouts(dtype)[layout]
    with storage_ctx(storage):
        check_against_python(x, grad=layout != "expanded")


@requires_emulator
@pytest.mark.parametrize("storage", ["bits", "seed"])
@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(shape=st.lists(st.integers(1, 12), min_size=1, max_size=4), perm_seed=st.integers(0, 1000),
       step=st.integers(1, 3), start=st.integers(0, 2))
def test_any_strides(storage, shape, perm_seed, step, start):
    perm = torch.randperm(len(shape), generator=torch.Generator().manual_seed(perm_seed)).tolist()
    slices = [(start, step) if i == perm_seed % len(shape) else (0, 1) for i in range(len(shape))]
    x = _strided_input(shape, perm, slices, seed=perm_seed)
    with storage_ctx(storage):
        check_against_python(x, ops=("dropout", "dropout_add", "bias_dropout_add", "drop_path", "alpha_dropout"))


@requires_emulator
@pytest.mark.parametrize("bias_len", [1, 3, 8, 13, 64, 1000, 4096])
def test_flat_bias_indexing(bias_len):
    """bias_dropout_add's bias is advanced per unit of 8 and wrapped per element."""
    g = torch.Generator().manual_seed(bias_len)
    rows = max(1, 12000 // bias_len)
    x = torch.randn(rows, bias_len, generator=g)
    r = torch.randn(rows, bias_len, generator=g)
    b = torch.randn(bias_len, generator=g)
    for storage in ("bits", "seed"):
        with storage_ctx(storage):
            outs = []
            for backend in ("python", "emulator"):
                with backend_ctx(backend):
                    outs.append(F.bias_dropout_add(x, b, r, 0.3, seed=SEED))
            assert_same_bits(outs[1], outs[0])


@requires_emulator
@pytest.mark.parametrize("offset", [(0, 0), (0, 1), (0, 3), (0, 5), (2, 7), (1, 64)])
def test_shard_word_offsets(offset):
    """Shards whose first word is not on a Philox block: keep8's three-block path."""
    full = torch.randn(6, 150, generator=torch.Generator().manual_seed(3))
    i, j = offset
    local = full[i:i + 4, j:j + 80]
    kw = dict(seed=SEED, global_shape=(6, 150), global_offset=(i, j))
    with backend_ctx("python"):
        ref = F.dropout(local, 0.4, **kw)
        whole = F.dropout(full, 0.4, seed=SEED)
    assert_same_bits(ref, whole[i:i + 4, j:j + 80])
    with backend_ctx("emulator"):
        got = F.dropout(local, 0.4, **kw)
        got_contig = F.dropout(local.contiguous(), 0.4, **kw)
    assert_same_bits(got, ref)
    assert_same_bits(got_contig, ref)


def _compare_backends(fn, x, grad=True):
    """fn(x, seed=...) and its gradient on the Python backend and through the emulated CUDA
    kernels, bit for bit, for both backward storages."""
    for storage in ("bits", "seed"):
        with storage_ctx(storage):
            with backend_ctx("python"):
                ref, ref_g = _run(x, fn, grad)
            with backend_ctx("emulator"):
                out, g = _run(x, fn, grad)
            assert_same_bits(out, ref)
            if grad:
                assert_same_bits(g, ref_g)


@requires_emulator
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_flat_grid_stride_loop(dtype):
    """The emulator caps the flat grid at three blocks, so these contiguous tensors (more
    than 3 * 256 * 4 units of 8) take several iterations of the grid-stride loop; the
    16-bit ones through the pipelined kernel, whose loads run one iteration ahead. Every
    op with contiguous operands, a tail unit, and forward unroll 1, 2 and 4."""
    g = torch.Generator().manual_seed(11)
    rows, cols = 131, 768
    x = torch.randn(rows * cols + 5, generator=g, dtype=dtype)[:rows * cols - 3]
    r = torch.randn(x.shape, generator=g, dtype=dtype)
    x2, r2 = x[:rows * (cols - 8)].view(rows, cols - 8), r[:rows * (cols - 8)].view(rows, cols - 8)
    b = torch.randn(cols - 8, generator=g, dtype=dtype)
    _compare_backends(lambda t, **kw: F.dropout(t, 0.4, **kw), x)
    _compare_backends(lambda t, **kw: F.alpha_dropout(t, 0.3, True, **kw), x)
    _compare_backends(lambda t, **kw: F.dropout_add(t, r, 0.4, **kw), x)
    _compare_backends(lambda t, **kw: F.bias_dropout_add(t, b, r2, 0.4, **kw), x2)
    ops = _backend.testing_ops()
    with backend_ctx("python"):
        want = F.dropout(x, 0.4, seed=SEED)
    old = ops.cuda_tuning()
    assert old == (2, True)  # the product's compile-time choice (csrc/cuda/dispatch.h)
    try:
        for unroll in (1, 4):
            for persistent in (False, True):
                ops.set_cuda_tuning(unroll, persistent)
                assert ops.cuda_tuning() == (unroll, persistent)
                with backend_ctx("emulator"):
                    assert_same_bits(F.dropout(x, 0.4, seed=SEED), want)
        with pytest.raises(ValueError, match="unroll must be 1, 2 or 4"):
            ops.set_cuda_tuning(3, True)
    finally:
        ops.set_cuda_tuning(*old)


@requires_emulator
@pytest.mark.parametrize("run", [1, 3, 7, 8, 9, 49, 196, 256, 3001])
def test_flat_channel_wise_runs(run):
    """A contiguous input of a channel-wise op reads its mask with the flat kernel, one bit
    per run of `run` elements (groups that start inside a unit of 8, runs shorter than a
    unit, a single run), forward from the drawn bits and backward from the saved ones."""
    g = torch.Generator().manual_seed(run)
    channels = max(2, 40_000 // run)
    x1 = torch.randn(2, (channels + 1) // 2, run, generator=g)
    _compare_backends(lambda t, **kw: F.dropout1d(t, 0.5, **kw), x1)
    _compare_backends(lambda t, **kw: F.feature_alpha_dropout(t, 0.3, True, **kw), x1)
    xp = torch.randn(max(2, 40_000 // (3 * run + 1)), 3 * run + 1, generator=g)
    _compare_backends(lambda t, **kw: F.drop_path(t, 0.5, **kw), xp)
    _compare_backends(lambda t, **kw: F.drop_path(t, 0.5, **kw), x1[:1].contiguous())  # one sample: one bit


@requires_emulator
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("cols, gcols, j", [(64, 128, 64), (48, 101, 5), (8, 27, 19), (512, 1030, 3), (40, 41, 1),
                                            (100, 230, 7), (12, 30, 2)])
def test_flat_column_shards(dtype, cols, gcols, j):
    """A column shard (rows of `cols` contiguous elements whose mask words advance by
    `gcols` from row to row) takes the flat kernel's row mode when `cols` is a multiple of
    8, the tile kernel otherwise: every op that has it, forward and both backward storages,
    words that start inside a Philox block, enough rows for the grid-stride loop; equal to
    the Python backend and to the full tensor's slice."""
    g = torch.Generator().manual_seed(cols * 7 + j)
    rows = max(2, 40_000 // cols)
    full = torch.randn(rows + 3, gcols, generator=g).to(dtype)
    i = 2
    x = full[i:i + rows, j:j + cols].contiguous()
    r = torch.randn(x.shape, generator=g).to(dtype)
    b = torch.randn(cols, generator=g).to(dtype)
    kw = dict(global_shape=(rows + 3, gcols), global_offset=(i, j))
    ops = {
        "dropout": lambda t, **k: F.dropout(t, 0.4, **kw, **k),
        "alpha_dropout": lambda t, **k: F.alpha_dropout(t, 0.3, True, **kw, **k),
        "dropout_add": lambda t, **k: F.dropout_add(t, r, 0.4, **kw, **k),
        "bias_dropout_add": lambda t, **k: F.bias_dropout_add(t, b, r, 0.4, **kw, **k),
    }
    for name, fn in ops.items():
        _compare_backends(fn, x)
    with backend_ctx("python"):
        whole = F.dropout(full, 0.4, seed=SEED)
    with backend_ctx("emulator"):
        got = ops["dropout"](x, seed=SEED)
    assert_same_bits(got, whole[i:i + rows, j:j + cols])
