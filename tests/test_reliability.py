"""Reliability: more bad input, 64-bit indexing on the CPU, memory that stays flat over
100,000 calls, AddressSanitizer, and thread safety."""
import concurrent.futures
import os
import shutil
import subprocess

import oracle
import pytest
import torch
from testing import assert_same_bits, expected_dropout, keep_mask, requires_compiled, storage_ctx

from dropout_ext import _backend
from dropout_ext import functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_inplace_on_inference_tensor_outside_inference_mode(backend):
    with torch.inference_mode():
        x = torch.randn(10)
    before = x.clone()
    with pytest.raises(RuntimeError, match="[Ii]nference"):
        F.dropout(x, 0.5, inplace=True)
    assert torch.equal(x, before)
    with torch.inference_mode():  # inside inference mode it works
        y = F.dropout(x, 0.5, inplace=True, seed=3)
    assert y is x
    assert_same_bits(x, expected_dropout(before, keep_mask(x.shape, 0.5, 3), 0.5))


def test_inplace_bumps_version_like_torch(backend):
    """A tensor saved for another op's backward and then changed by an in-place dropout
    makes that backward raise, as with torch's own in-place ops."""
    for fn in (lambda t: F.dropout(t, 0.5, inplace=True), lambda t: F.dropout1d(t, 0.5, inplace=True),
               lambda t: torch.nn.functional.dropout(t, 0.5, inplace=True)):
        w = torch.randn(4, 6, 5, requires_grad=True)
        x = torch.randn(4, 6, 5)
        y = (w * x).sum()
        v = x._version
        fn(x)
        assert x._version > v
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.backward()


def test_inplace_on_view_of_leaf_that_requires_grad(backend):
    leaf = torch.randn(4, 4, requires_grad=True)
    view = leaf[0]
    before = leaf.detach().clone()
    with pytest.raises(RuntimeError, match="view of a leaf Variable"):
        F.dropout(view, 0.5, inplace=True)
    assert torch.equal(leaf.detach(), before)


def test_inplace_on_overlapping_strides_never_writes(backend):
    base = torch.randn(8)
    x = base.as_strided((4, 4), (1, 1))  # rows overlap in memory
    before = base.clone()
    with pytest.raises(RuntimeError, match="more than one element"):
        F.dropout(x, 0.5, inplace=True)
    assert torch.equal(base, before)
    out = F.dropout(x, 0.5, seed=1)  # out of place is fine
    assert_same_bits(out, F.dropout(x.contiguous(), 0.5, seed=1))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "0.5", None, torch.tensor([0.1, 0.2])])
def test_bad_p_everywhere_leaves_input(backend, bad):
    x = torch.randn(16, 4, 4)
    before = x.clone()
    for fn in (lambda: F.dropout(x, bad, inplace=True), lambda: F.dropout2d(x, bad, inplace=True),
               lambda: F.drop_path(x, bad), lambda: F.dropout_add(x, x, bad),
               lambda: F.alpha_dropout(x, bad, True, inplace=True)):
        with pytest.raises((ValueError, TypeError)):
            fn()
    assert torch.equal(x, before)


@requires_compiled
def test_past_2_31_elements_on_cpu():
    """64-bit indexing: a float16 tensor of 2**31 + 77 elements, checked against the
    reference mask at a few indices around 2**31."""
    n = (1 << 31) + 77
    x = torch.ones(n, dtype=torch.float16)
    seed = 0xC0FFEE
    with _backend.use("compiled"):
        F.dropout(x, 0.5, inplace=True, seed=seed)
    idx = torch.tensor([0, 1, 2, 3, (1 << 31) - 2, (1 << 31) - 1, 1 << 31, (1 << 31) + 3, n - 2, n - 1]
                       + torch.randint(0, n, (32,), generator=torch.Generator().manual_seed(0)).tolist())
    w = torch.from_numpy(oracle.words_at(seed, 0, idx.numpy()).astype("int64"))
    expected = torch.where(w >= (1 << 31), 2.0, 0.0)
    assert torch.equal(x[idx].float(), expected)


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@requires_compiled
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_no_leak_over_100k_forward_backward_calls():
    """Compiled kernels (the fallback is plain torch code): resident memory stays flat."""
    x = torch.randn(256, requires_grad=True)
    r = torch.randn(256, requires_grad=True)
    b = torch.randn(16, requires_grad=True)
    import dropout_ext

    def step(i):
        if i % 3 == 0:
            out = F.dropout(x, 0.3)
        elif i % 3 == 1:
            out = F.bias_dropout_add(x.view(16, 16), b, r.view(16, 16), 0.3, seed=i)
        else:
            out = F.dropout2d(x.view(4, 8, 4, 2), 0.3)
        torch.autograd.grad(out.sum(), x)

    with _backend.use("compiled"), storage_ctx(dropout_ext.backward_storage()):  # restores it after
        for storage in ("seed", "bits"):
            dropout_ext.set_backward_storage(storage)
            for i in range(5000):  # warm up allocator caches
                step(i)
        before = _rss_bytes()
        for i in range(100_000):
            dropout_ext.set_backward_storage("bits" if i % 2 else "seed")
            step(i)
    growth = _rss_bytes() - before
    assert growth < 16 << 20, "resident memory grew by %.1f MiB" % (growth / 2**20)


@requires_compiled
@pytest.mark.skipif(shutil.which("g++") is None or not os.path.exists(
    subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip() or "/nonexistent"),
    reason="needs g++ with AddressSanitizer")
def test_address_sanitizer_small_run(tmp_path):
    """Builds the CPU extension with -fsanitize=address (tools/asan_check.sh) and runs every
    op on every CPU path under it."""
    env = dict(os.environ, ASAN_BUILD_DIR=str(tmp_path / "asan"))
    proc = subprocess.run(["bash", os.path.join(ROOT, "tools", "asan_check.sh")], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "ERROR: AddressSanitizer" not in output
    assert "asan check passed" in output


def test_threads_give_the_same_results_as_serial(backend):
    xs = [torch.randn(1 << 15) for _ in range(8)]
    jobs = [(i, s) for s in range(16) for i in range(8)]

    def work(job):
        i, s = job
        return F.dropout(xs[i], 0.3, seed=s), F.bias_dropout_add(xs[i].view(-1, 64), xs[i][:64], xs[i].view(-1, 64), 0.3, seed=s)

    serial = [work(j) for j in jobs]
    with _backend.use(backend), concurrent.futures.ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(work, jobs))
    for (a1, b1), (a2, b2) in zip(serial, parallel):
        assert_same_bits(a1, a2)
        assert_same_bits(b1, b2)


def test_inplace_on_empty_tensor_with_zero_strides(backend):
    """Found by the fuzzer: an empty tensor whose strides look overlapping is fine."""
    x = torch.randn(1, 0).expand(2, 0)
    assert F.dropout(x, 0.5, inplace=True) is x


@requires_compiled
def test_freed_outputs_go_back_to_the_system(tmp_path):
    """Outputs come from torch's allocator and the package keeps no memory: after ten
    64 MiB outputs are freed, the process's resident memory is back where it started
    (glibc returns blocks this large at once)."""
    code = r"""
import torch
from dropout_ext import functional as F
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
x = torch.randn(1 << 24)
F.dropout(x, 0.5)
before = rss()
for _ in range(10):
    y = F.dropout(x, 0.5)
    y.fill_(1.0)
    del y
print(rss() - before)
"""
    proc = subprocess.run([__import__("sys").executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    grown = int(proc.stdout.strip().splitlines()[-1])
    assert grown < 16 << 20, grown


@requires_compiled
def test_raw_ops_reject_bad_arguments():
    """torch.ops.dropout_ext.* called directly (bypassing the Python checks) raise, never crash."""
    ops = _backend.compiled_ops()
    x = torch.randn(4, 8)
    rng = torch.tensor([1, 2])
    bad = [
        lambda: ops.dropout(x, torch.tensor([1, 2, 3]), None, 0.5, 0, 2, 0),          # rng of 3
        lambda: ops.dropout(x, torch.tensor([1.0, 2.0]), None, 0.5, 0, 2, 0),         # float rng
        lambda: ops.dropout(x, rng, None, 1.5, 0, 2, 0),                              # p > 1
        lambda: ops.dropout(x, rng, None, float("nan"), 0, 2, 0),                     # p NaN
        lambda: ops.dropout(x, rng, None, 0.5, 3, 2, 0),                              # kind
        lambda: ops.dropout(x, rng, None, 0.5, 0, 3, 0),                              # lead > dim
        lambda: ops.dropout(x, rng, None, 0.5, 0, -1, 0),                             # lead < 0
        lambda: ops.dropout(x, rng, None, 0.5, 0, 2, 3),                              # save
        lambda: ops.dropout(x, rng, None, 0.5, 0, 2, 0, [4, 8]),                      # shape without offset
        lambda: ops.dropout(x, rng, None, 0.5, 0, 2, 0, [4, 8], [1, 0]),              # shard does not fit
        lambda: ops.dropout(x, rng, None, 0.5, 0, 2, 0, [4], [0]),                    # wrong length
        lambda: ops.dropout(x.long(), rng, None, 0.5, 0, 2, 0),                       # int input
        lambda: ops.dropout_(x.clone().int(), rng, None, 0.5, 0, 2),
        lambda: ops.dropout_backward(x, torch.zeros(3, dtype=torch.uint8), 0.5, 0, 2),    # too few bits
        lambda: ops.dropout_backward(x, torch.zeros(4), 0.5, 0, 2),                   # float saved
        lambda: ops.dropout_backward(x, torch.zeros(4, dtype=torch.uint8), 0.5, 0, 2, None, None, [1, 1]),
        lambda: ops.dropout_add(x, torch.randn(4, 7), rng, None, 0.5, 0),             # shape
        lambda: ops.dropout_add(x, x.double(), rng, None, 0.5, 0),                    # dtype
        lambda: ops.bias_dropout_add(x, torch.randn(7), x, rng, None, 0.5, 0),        # bias length
        lambda: ops.bias_dropout_add(x, torch.randn(2, 8), x, rng, None, 0.5, 0),     # bias rank
        lambda: ops.bias_dropout_add(torch.randn(()), torch.randn(1), torch.randn(()), rng, None, 0.5, 0),
    ]
    testing_ops = _backend.testing_ops()  # philox4x32_10 is in the testing module's namespace only
    if testing_ops is not None:
        bad += [
            lambda: testing_ops.philox4x32_10(torch.zeros(3, 3, dtype=torch.long), rng),  # counter shape
            lambda: testing_ops.philox4x32_10(torch.zeros(3, 4, dtype=torch.long), torch.tensor([1])),
        ]
    before = x.clone()
    for i, fn in enumerate(bad):
        with pytest.raises((RuntimeError, ValueError, TypeError)):
            fn()
    assert torch.equal(x, before)


def test_rejected_call_leaves_the_generator_alone(backend):
    """Checks run before (key, base) is drawn: a rejected in-place call does not advance
    the generator."""
    g = torch.Generator().manual_seed(4)
    state = g.get_state()
    x = torch.randn(1, 3).expand(4, 3)
    with pytest.raises(RuntimeError, match="more than one element"):
        F.dropout(x, 0.5, inplace=True, generator=g)
    with pytest.raises(RuntimeError, match="more than one element"):
        F.dropout2d(torch.randn(1, 3, 2, 2).expand(4, 3, 2, 2), 0.5, inplace=True, generator=g)
    assert torch.equal(g.get_state(), state)


def test_bias_not_a_tensor(backend):
    x = torch.randn(2, 3)
    with pytest.raises(TypeError, match="bias must be a torch.Tensor"):
        F.bias_dropout_add(x, [0.0, 0.0, 0.0], x, 0.5)
