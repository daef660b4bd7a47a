"""CUDA backend: the same bits as the CPU for every dtype, shape and layout; gradients;
CUDA graphs; torch.compile; opcheck; 64-bit indexing. Skipped (visibly) without a GPU."""
import oracle
import pytest
import torch
from testing import (DTYPES, LAYOUTS, SHAPES, assert_same_bits, backend_ctx, clone_generator, expected_dropout,
                     keep_mask, make, oracle_mask, raw_dropout, raw_dropout_bits, requires_gpu, storage_ctx)

import dropout_ext
from dropout_ext import _backend
from dropout_ext import functional as F

pytestmark = [pytest.mark.cuda, requires_gpu]

SEED = 0xDEADBEEFCAFEF00D


def cpu_reference(x, p, seed, **kw):
    with backend_ctx("compiled"):
        return F.dropout(x.cpu(), p, seed=seed, **kw)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES + [(1 << 20) + 3], ids=str)
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_gpu_equals_cpu(dtype, shape, p):
    x = torch.randn(shape, dtype=dtype)
    with backend_ctx("compiled"):
        out = F.dropout(x.cuda(), p, seed=SEED)
    assert_same_bits(out.cpu(), cpu_reference(x, p, SEED))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_gpu_layouts(dtype, layout):
    x = make(layout, (5, 6, 7, 9), dtype, "cuda")
    with backend_ctx("compiled"):
        out = F.dropout(x, 0.4, seed=SEED)
    assert out.stride() == torch.empty_like(x).stride()
    assert_same_bits(out.cpu(), cpu_reference(x, 0.4, SEED))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gpu_unaligned_takes_scalar_path(dtype):
    base = torch.randn(10_003, dtype=dtype, device="cuda")
    x = base[1:]  # storage offset of one element: not 16-byte aligned
    with backend_ctx("compiled"):
        out = F.dropout(x, 0.5, seed=1)
    assert_same_bits(out.cpu(), cpu_reference(x, 0.5, 1))


def test_python_backend_on_gpu_equals_compiled():
    x = torch.randn(4097, device="cuda")
    with backend_ctx("python"):
        a = F.dropout(x, 0.5, seed=SEED)
    with backend_ctx("compiled"):
        b = F.dropout(x, 0.5, seed=SEED)
    assert_same_bits(a, b)


@pytest.mark.parametrize("storage", ["seed", "bits"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gpu_masks_and_gradients_equal_cpu(storage, dtype):
    with storage_ctx(storage):
        x = torch.randn(3, 1000, dtype=dtype)
        g = torch.randn_like(x)
        grads = []
        for dev in ("cpu", "cuda"):
            # a fresh leaf on each device (x.to("cpu") would be x itself, and after the
            # CPU pass made it require grad, x.to("cuda") would be a non-leaf without .grad)
            xd = x.detach().clone().to(dev).requires_grad_()
            with backend_ctx("compiled"):
                F.dropout(xd, 0.25, seed=SEED).backward(g.to(dev))
            assert xd.grad is not None and xd.grad.device.type == dev
            grads.append(xd.grad.cpu())
        assert_same_bits(grads[1], grads[0])
        assert_same_bits(grads[0], expected_dropout(g, keep_mask(x.shape, 0.25, SEED), 0.25))
        with backend_ctx("compiled"):
            bits_cpu = raw_dropout_bits(x, 5, 6, 0.25)
            bits_gpu = raw_dropout_bits(x.cuda(), 5, 6, 0.25)
        assert torch.equal(bits_gpu.cpu(), bits_cpu)
        assert bits_cpu.tolist() == oracle.pack_bits(oracle.keep_mask(x.numel(), 0.25, 5, 6)).tolist()


@pytest.mark.parametrize("n", [1, 5, 64, 65, 4099, (1 << 20) + 3])
def test_gpu_key_and_base_is_the_oracle_mask(dtype, n):
    """Explicit (key, base) with a non-zero base, on the GPU, against the oracle."""
    key, base = 0x0123456789ABCDEF, 0xF0E1D2C3B4A59687
    x = torch.randn(n, dtype=dtype)
    for name in ("compiled", "python"):
        with backend_ctx(name):
            out = raw_dropout(x.cuda(), key, base, 0.3).cpu()
        assert_same_bits(out, expected_dropout(x, oracle_mask((n,), 0.3, key, base), 0.3))


@pytest.mark.parametrize("op", ["dropout", "dropout2d", "drop_path", "dropout_add", "alpha_dropout"])
def test_gpu_default_path_python_equals_compiled(op):
    """seed=None and a CUDA generator=: the Python backend on the GPU and the CUDA kernels
    draw the same (key, base) from the same generator state and give the same bits."""
    x = torch.randn(4, 6, 33, 5, device="cuda")
    r = torch.randn_like(x)
    call = {
        "dropout": lambda **kw: F.dropout(x, 0.3, **kw),
        "dropout2d": lambda **kw: F.dropout2d(x, 0.3, **kw),
        "drop_path": lambda **kw: F.drop_path(x, 0.3, **kw),
        "dropout_add": lambda **kw: F.dropout_add(x, r, 0.3, **kw),
        "alpha_dropout": lambda **kw: F.alpha_dropout(x, 0.3, True, **kw),
    }[op]
    gen = torch.Generator(device="cuda").manual_seed(21)
    results = []
    for name in ("compiled", "python"):
        with backend_ctx(name):
            gc = clone_generator(gen)
            a = call(generator=gc)
            torch.cuda.manual_seed(13)
            b = call()
        results.append((a, b, gc.get_state()))
    assert_same_bits(results[0][0], results[1][0])
    assert_same_bits(results[0][1], results[1][1])
    assert torch.equal(results[0][2], results[1][2])


def test_rng_on_device_equals_rng_on_host():
    ops = _backend.compiled_ops()
    x = torch.randn(10_000, device="cuda")
    rng = torch.tensor([123456789, 42])
    a, _ = ops.dropout(x, rng, None, 0.5, 0, 1, 0)
    b, _ = ops.dropout(x, rng.cuda(), None, 0.5, 0, 1, 0)
    assert_same_bits(a, b)


def test_seed_none_uses_cuda_generator():
    x = torch.randn(10_000, device="cuda")
    torch.cuda.manual_seed(11)
    a, b = F.dropout(x, 0.5), F.dropout(x, 0.5)
    torch.cuda.manual_seed(11)
    assert_same_bits(F.dropout(x, 0.5), a)
    assert not torch.equal(a, b)
    gen = torch.Generator(device="cuda").manual_seed(3)
    c = F.dropout(x, 0.5, generator=gen)
    gen.manual_seed(3)
    assert_same_bits(F.dropout(x, 0.5, generator=gen), c)


def test_cpu_generator_for_gpu_input_rejected():
    x = torch.randn(10, device="cuda")
    before = x.clone()
    with pytest.raises(ValueError, match="generator is on"):
        F.dropout(x, 0.5, generator=torch.Generator(), inplace=True)
    assert torch.equal(x, before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)  # bfloat16: the persistent kernel
def test_cuda_graph_replays_draw_fresh_masks_and_manual_seed_reproduces(dtype):
    x = torch.randn(1 << 20, device="cuda", dtype=dtype)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        F.dropout(x, 0.5)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = F.dropout(x, 0.5)
    graph.replay()
    first = out.clone()
    graph.replay()
    second = out.clone()
    assert not torch.equal(first, second)
    torch.cuda.manual_seed(5)
    graph.replay()
    a = out.clone()
    torch.cuda.manual_seed(5)
    graph.replay()
    assert_same_bits(out, a)
    # with seed=, a replay is the same stateless mask every time
    g2 = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g2):
        fixed = F.dropout(x, 0.5, seed=9)
    g2.replay()
    assert_same_bits(fixed.cpu(), cpu_reference(x, 0.5, 9))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_device():
    x = torch.randn(5000, device="cuda:1")
    out = F.dropout(x, 0.5, seed=SEED)
    assert out.device == x.device
    assert_same_bits(out.cpu(), cpu_reference(x, 0.5, SEED))
    y = torch.randn(5000, device="cuda:1", requires_grad=True)
    F.dropout(y, 0.5).sum().backward()
    assert y.grad.device == y.device


def test_opcheck_cuda():
    ops = _backend.compiled_ops()
    x = torch.randn(5, 12, device="cuda", requires_grad=True)
    r = torch.randn(5, 12, device="cuda", requires_grad=True)
    b = torch.randn(12, device="cuda", requires_grad=True)
    for rng in (torch.tensor([1, 2]), torch.tensor([1, 2], device="cuda")):
        torch.library.opcheck(ops.dropout.default, (x, rng, None, 0.3, 0, 2, 1))
        torch.library.opcheck(ops.dropout.default, (x, rng, None, 0.3, 2, 1, 2))
        torch.library.opcheck(ops.dropout.default, (x.detach(), rng, None, 0.3, 1, 2, 0, [10, 24], [5, 12]))
        torch.library.opcheck(ops.dropout_add.default, (x, r, rng, None, 0.3, 1))
        torch.library.opcheck(ops.bias_dropout_add.default, (x, b, r, rng, None, 0.3, 2))
        torch.library.opcheck(ops.dropout_backward.default, (x, rng, 0.3, 0, 2))
    torch.library.opcheck(ops.dropout_backward.default,
                          (x, torch.randint(0, 256, (8,), dtype=torch.uint8, device="cuda"), 0.3, 0, 2))


def test_torch_compile_cuda():
    torch._dynamo.reset()
    m = torch.nn.Sequential(torch.nn.Linear(32, 32), dropout_ext.nn.Dropout(0.1)).cuda()
    x = torch.randn(16, 32, device="cuda")

    def f(t):
        return F.dropout(m(t), 0.5, seed=77)

    m.eval()  # nn.Dropout's own mask is drawn from the generator; compare the seeded layer
    assert_same_bits(torch.compile(f, fullgraph=True)(x), f(x))
    m.train()
    out = torch.compile(f, fullgraph=True)(x)
    assert out.shape == (16, 32) and out.device.type == "cuda"


def test_past_2_31_elements():
    n = (1 << 31) + 77
    free, _ = torch.cuda.mem_get_info()
    if free < 3 * n * 2 + (1 << 30):
        pytest.skip("needs about %d GiB of free GPU memory" % (3 * n * 2 >> 30))
    x = torch.ones(n, dtype=torch.bfloat16, device="cuda")
    with backend_ctx("compiled"):
        bits = raw_dropout_bits(x, SEED, 0, 0.5)
        out = raw_dropout(x, SEED, 0, 0.5)
    idx = torch.tensor([0, 5, (1 << 31) - 1, 1 << 31, (1 << 31) + 1, n - 1] + torch.randint(0, n, (64,)).tolist())
    w = torch.from_numpy(oracle.words_at(SEED, 0, idx.numpy()).astype("int64"))
    keep = w >= (1 << 31)
    got = out[idx.cuda()].float().cpu()
    assert torch.equal(got, torch.where(keep, 2.0, 0.0))
    got_bits = ((bits[(idx // 8).cuda()].cpu().to(torch.int64) >> (idx % 8)) & 1).bool()
    assert torch.equal(got_bits, keep)
