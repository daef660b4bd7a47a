"""Memory: resident memory stays flat over 100,000 forward and backward calls, freed
outputs go back to the system (the package keeps no memory of its own), and an
AddressSanitizer build of the CPU extension runs every op on every CPU path without an
error (out-of-bounds accesses, use after free, double free)."""
import os
import shutil
import subprocess
import sys

import pytest
import torch
from testing import (HAS_COMPILED, build_cache_dir, requires_compiled, source_digest, storage_ctx, wait_warm,
                     warm_in_background)

import dropout_ext
from dropout_ext import _backend
from dropout_ext import functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_freed_outputs_go_back_to_the_system():
    """Outputs come from torch's allocator and the package keeps no memory: after ten
    64 MiB outputs are freed, the process's resident memory is back where it started
    (glibc returns blocks this large at once). In a fresh process: this one's heap is
    the suite's."""
    code = r"""
import os, torch
from dropout_ext import functional as F
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
x = torch.randn(1 << 24)
F.dropout(x, 0.5)
before = rss()
for _ in range(10):
    y = F.dropout(x, 0.5)
    y.fill_(1.0)
    del y
print(rss() - before)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    grown = int(proc.stdout.strip().splitlines()[-1])
    assert grown < 16 << 20, grown


def _asan_problem():
    """Why the AddressSanitizer check cannot run here, or None."""
    for tool in ("bash", "g++", "flock", "sha1sum"):
        if shutil.which(tool) is None:
            return "needs %s" % tool
    lib = subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not lib or not os.path.isabs(lib) or not os.path.exists(lib):
        return "needs g++ with AddressSanitizer (libasan)"
    return None


def _asan_run(*args):
    """The command and environment of tools/asan_check.sh with this interpreter."""
    out_dir = build_cache_dir("asan", source_digest(os.path.join(ROOT, "dropout_ext", "csrc"),
                                                    os.path.join(ROOT, "setup.py"),
                                                    os.path.join(ROOT, "dropout_ext", "_build.py")))
    env = dict(os.environ, ASAN_BUILD_DIR=out_dir, PYTHON=sys.executable)
    env.pop("DROPOUT_EXT_FORCE_PYTHON", None)
    return ["bash", os.path.join(ROOT, "tools", "asan_check.sh"), *args], env


def _warm_asan():
    if HAS_COMPILED and _asan_problem() is None:
        argv, env = _asan_run("--build-only")
        warm_in_background("asan", argv, env=env, cwd=ROOT)


@requires_compiled
@pytest.mark.slow
def test_address_sanitizer_small_run():
    """tools/asan_check.sh with this interpreter: builds the CPU extension with
    -fsanitize=address (kept between runs while the sources, the compiler and torch are
    the same: a fresh build takes minutes, a kept one seconds; started in the background
    when this test is collected) and runs every op on every CPU path, and the launcher's
    split between threads, under it."""
    problem = _asan_problem()
    if problem:
        pytest.skip(problem)
    wait_warm("asan")
    argv, env = _asan_run()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1200)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "ERROR: AddressSanitizer" not in output
    assert "asan check passed" in output


test_address_sanitizer_small_run.warm = _warm_asan
