"""The CUDA kernels against the CPU kernels, bit for bit: every op and dtype, every layout
(flat kernel, tile kernel in row and tile mode), shards, both storages, the flat kernel's
work sizes, (key, base) from the CUDA generator (Python backend and kernels agree),
torch.func's per-sample masks. (CUDA graphs and torch.compile on the GPU: test_transforms.py.)
Skipped (visibly) without a GPU."""
import pytest
import torch
from testing import DTYPES, HAS_TUNABLE_CUDA, assert_same_bits, backend_ctx, requires_gpu, storage_ctx

import dropout_ext
from dropout_ext import _backend
from dropout_ext import functional as F

pytestmark = [pytest.mark.cuda, requires_gpu]

SEED = 0xC0FFEE


def _ops(dim):
    ops = {
        "dropout": lambda x, r, b, **kw: F.dropout(x, 0.4, **kw),
        "vanilla": lambda x, r, b, **kw: F.dropout(x, 0.4, scale_train=False, **kw),
        "alpha_dropout": lambda x, r, b, **kw: F.alpha_dropout(x, 0.3, True, **kw),
        "drop_path": lambda x, r, b, **kw: F.drop_path(x, 0.5, **kw),
        "dropout_add": lambda x, r, b, **kw: F.dropout_add(x, r, 0.4, **kw),
        "bias_dropout_add": lambda x, r, b, **kw: F.bias_dropout_add(x, b, r, 0.4, **kw),
    }
    if dim >= 2:
        ops["feature_alpha_dropout"] = lambda x, r, b, **kw: F.feature_alpha_dropout(x, 0.3, True, **kw)
    if dim == 4:
        ops["dropout2d"] = lambda x, r, b, **kw: F.dropout2d(x, 0.5, **kw)
    if dim == 5:
        ops["dropout3d"] = lambda x, r, b, **kw: F.dropout3d(x, 0.5, **kw)
    return ops


def _layouts(dtype):
    g = torch.Generator().manual_seed(3)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    return {
        "contiguous": rnd(3, 7, 33, 65),
        "long_rows": rnd(5, 4099),
        "one_row": rnd(100_003),
        "channels_last": rnd(4, 48, 9, 11).to(memory_format=torch.channels_last),
        "channels_last_3d": rnd(2, 40, 3, 5, 7).to(memory_format=torch.channels_last_3d),
        "transposed": rnd(257, 129).t(),
        "stepped": rnd(33, 200)[:, ::3],
        "offset": rnd(10_007)[3:],
        "permuted_slice": rnd(6, 40, 5, 9).permute(0, 3, 1, 2)[:, 1:],
        "small_mem_dim": rnd(7, 3, 50).transpose(1, 2),
    }


@pytest.mark.parametrize("storage", ["bits", "seed"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_layout_and_op_equals_cpu(dtype, storage):
    with storage_ctx(storage), backend_ctx("compiled"):
        for lname, x in _layouts(dtype).items():
            r = torch.randn(x.shape, generator=torch.Generator().manual_seed(4)).to(dtype)
            b = torch.randn(x.shape[-1], generator=torch.Generator().manual_seed(5)).to(dtype)
            gout = torch.randn(x.shape, generator=torch.Generator().manual_seed(6)).to(dtype)
            for name, op in _ops(x.dim()).items():
                xc = x.detach().requires_grad_()
                ref = op(xc, r, b, seed=SEED)
                (gref,) = torch.autograd.grad(ref, xc, gout)
                xg = x.detach().cuda().requires_grad_()  # .cuda() keeps a dense layout's strides
                out = op(xg, r.cuda(), b.cuda(), seed=SEED)
                assert out.stride() == torch.empty_like(xg).stride(), (lname, name)
                assert_same_bits(out.cpu(), ref.detach())
                (g,) = torch.autograd.grad(out, xg, gout.cuda())
                assert_same_bits(g.cpu(), gref)


def test_non_dense_gpu_views_equal_cpu():
    """Stepped, sliced and expanded views made on the GPU (not copies of them)."""
    base_cpu = torch.randn(12, 40, 9)
    base = base_cpu.cuda()
    views = [lambda t: t[:, ::3], lambda t: t[1:, 2:, ::2].transpose(0, 2), lambda t: t[:1].expand(5, 40, 9),
             lambda t: t.permute(2, 0, 1)[:, 3:7]]
    for view in views:
        for name, op in _ops(3).items():
            xc, xg = view(base_cpu), view(base)
            r = torch.randn(xc.shape)
            b = torch.randn(xc.shape[-1])
            with backend_ctx("compiled"):
                assert_same_bits(op(xg, r.cuda(), b.cuda(), seed=9).cpu(), op(xc, r, b, seed=9))


@pytest.mark.skipif(not HAS_TUNABLE_CUDA, reason="the testing module's tunable CUDA launcher is not built (a build "
                    "with DROPOUT_EXT_TESTING=cuda has it, as bench/gpu_check.sh makes)")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_flat_kernel_work_sizes(dtype):
    """Every configuration of the GPU bench's sweep (the testing module's tunable launcher,
    torch.ops.dropout_ext_testing) gives the product's mask and values."""
    ops = _backend.testing_ops()
    x = torch.randn(3 * 2**20 + 5, dtype=dtype)
    ref = F.dropout(x, 0.3, seed=2)
    assert_same_bits(F.dropout(x.cuda(), 0.3, seed=2).cpu(), ref)  # the product's configuration
    old = ops.cuda_tuning()
    try:
        for unroll in (1, 2, 4):
            for persistent in (False, True):  # 16-bit types: a grid covering the tensor, or the resident blocks
                ops.set_cuda_tuning(unroll, persistent)
                with backend_ctx("emulator"):  # the testing namespace: its CUDA kernels are the tunable ones
                    assert_same_bits(F.dropout(x.cuda(), 0.3, seed=2).cpu(), ref)
    finally:
        ops.set_cuda_tuning(*old)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_flat_kernel_bias_lengths(dtype):
    for cols in (1, 3, 7, 8, 9, 768, 1000, 4099):
        rows = max(1, 50_000 // cols)
        xb = torch.randn(rows, cols, dtype=dtype)
        b = torch.randn(cols, dtype=dtype)
        r = torch.randn(rows, cols, dtype=dtype)
        want = F.bias_dropout_add(xb, b, r, 0.2, seed=cols)
        assert_same_bits(F.bias_dropout_add(xb.cuda(), b.cuda(), r.cuda(), 0.2, seed=cols).cpu(), want)


@pytest.mark.parametrize("storage", ["bits", "seed"])
def test_shards_on_gpu_equal_the_full_tensor_slice(storage):
    shape = (6, 10, 37)
    full = torch.randn(shape, device="cuda")
    res, bias = torch.randn(shape, device="cuda"), torch.randn(37, device="cuda")
    gout = torch.randn(shape, device="cuda")
    with storage_ctx(storage):
        for starts, stops in [((0, 0, 0), (6, 10, 19)), ((0, 0, 19), (6, 10, 37)), ((3, 2, 5), (6, 9, 30)),
                              ((0, 0, 36), (6, 10, 37))]:
            sl = tuple(slice(a, b) for a, b in zip(starts, stops))
            for name, op in _ops(3).items():
                xf = full.clone().requires_grad_()
                ref = op(xf, res, bias, seed=SEED)
                (gref,) = torch.autograd.grad(ref, xf, gout)
                local = full[sl].clone().requires_grad_()
                out = op(local, res[sl], bias[sl[-1]], seed=SEED, global_shape=shape, global_offset=starts)
                assert_same_bits(out, ref[sl].detach())
                (g,) = torch.autograd.grad(out, local, gout[sl])
                assert_same_bits(g, gref[sl])


def test_default_path_python_backend_agrees_with_kernels():
    """seed=None / generator=: (key, base) from the CUDA generator's Philox state; the
    Python backend draws the same pair from the same state."""
    x = torch.randn(3, 1000, device="cuda")
    for make_gen in (lambda: None, lambda: torch.Generator(device="cuda").manual_seed(77)):
        outs = []
        for backend in ("compiled", "python"):
            torch.cuda.manual_seed(123)
            gen = make_gen()
            with backend_ctx(backend):
                outs.append((F.dropout(x, 0.5, generator=gen), F.dropout_add(x, x, 0.3, generator=gen),
                             F.dropout2d(x.view(3, 10, 10, 10), 0.5, generator=gen)))
        for a, b in zip(*outs):
            assert_same_bits(a, b)


def test_seed_storage_pair_is_written_by_the_kernel():
    """With seed=None and the seed storage, backward regenerates the mask from the pair
    the forward kernel resolved: the same gradient as the bits storage."""
    x = torch.randn(4097, device="cuda")
    grads = []
    for storage in ("seed", "bits"):
        with storage_ctx(storage):
            torch.cuda.manual_seed(5)
            xr = x.clone().requires_grad_()
            out = F.dropout(xr, 0.5)
            out.backward(torch.ones_like(out))
            assert torch.equal(xr.grad != 0, out != 0)
            grads.append(xr.grad)
    assert_same_bits(grads[0], grads[1])


def test_second_output_compiled_backends():
    assert dropout_ext.compiled_backends() == ("cpu", "cuda")
