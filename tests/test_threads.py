"""Threads. The CPU launcher splits a pass into items (64-element row segments, or tiles of
rows x 64 columns) and hands torch's intra-op threads chunks of at least 2**15 elements:
on every compiled CPU path, with 2 and 3 threads, tensors and shards a few times that size
(rows that straddle chunks, tiles, shards whose first word is not on a Philox block) give
the oracle's values and gradients for every op. And calls from several Python threads at
once give the results of the same calls made one after another."""
import concurrent.futures

import pytest
import torch
from testing import (assert_same_bits, expected_input_grad, expected_output, family, op_mask, storage_ctx,
                     threads_ctx)

from dropout_ext import _backend
from dropout_ext import functional as F

SEED = 0x7EAD5
GRAIN = 1 << 15  # elements per chunk handed to a thread, at least


def _inputs():
    """(name, x) of a few times GRAIN elements in the launcher's modes: flat rows, rows
    that straddle chunks, tiles (channels_last, a transpose), a 3-D input for the channel
    ops."""
    g = torch.Generator().manual_seed(1)

    def rnd(*shape):
        return torch.randn(*shape, generator=g)

    return [
        ("flat", rnd(3 * GRAIN + 13)),
        ("rows", rnd(97, 1031)),
        ("transposed", rnd(1031, 97).t()),
        ("channels_last", rnd(4, 64, 23, 17).to(memory_format=torch.channels_last)),
        ("channels", rnd(8, 41, 307)),
    ]


_MASKS = {}


def _mask(op, shape):
    """The oracle's mask of op for an input of `shape` (kept: the shapes repeat)."""
    key = (tuple(shape)[:op.lead(len(shape))], op.p)
    if key not in _MASKS:
        _MASKS[key] = op_mask(op, shape, SEED)
    return _MASKS[key]


# (threads, backward storage) of each run: 2 and 3 threads (an uneven split), each storage
RUNS = [(2, "bits"), (3, "seed")]


def _check(op, x, r=None, b=None, shard=None):
    """op on x (a shard of `shard` = (full input, full residual, full bias, slices,
    offsets) when given), with 2 and 3 threads: output and input gradient the oracle's."""
    if shard is None:
        full, rf, bf, sl, kw = x, r, b, None, {}
    else:
        full, rf, bf, sl, offsets = shard
        kw = {"global_shape": tuple(full.shape), "global_offset": offsets}
    keep = _mask(op, full.shape)
    want = expected_output(op, full, rf, bf, keep)
    g = torch.randn(tuple(full.shape), generator=torch.Generator().manual_seed(2))
    want_g = expected_input_grad(op, full, g, keep)
    if sl is not None:
        want, g, want_g = want[sl], g[sl], want_g[sl]
    for threads, storage in RUNS:
        with threads_ctx(threads), storage_ctx(storage):
            assert torch.get_num_threads() == threads
            leaf = x.detach().requires_grad_()
            out = op(leaf, r, b, seed=SEED, **kw)
            (gx,) = torch.autograd.grad(out, leaf, g)
        assert_same_bits(out, want)
        assert_same_bits(gx, want_g)


def test_chunks_every_cpu_path(cpu_isa):
    """Every op on inputs that the launcher splits between threads."""
    for name, x in _inputs():
        for op in family(x.dim()):
            r, b = op.operands(x)
            _check(op, x, r, b)


def test_shards_split_between_threads_every_cpu_path(cpu_isa):
    """Shards of a few times GRAIN elements at offsets whose first word is not on a Philox
    block (nor on a byte of the saved bits): rows, a column block, a copy in another
    layout; every op."""
    g = torch.Generator().manual_seed(3)
    full, res = torch.randn(200, 1031, generator=g), torch.randn(200, 1031, generator=g)
    bias = torch.randn(1031, generator=g)
    cases = [((3, 5), (123, 1006), "contiguous"), ((1, 0), (199, 1031), "transposed"),
             ((0, 333), (200, 697), "contiguous")]
    for (i, j), (n, m), layout in cases:
        sl = (slice(i, i + n), slice(j, j + m))
        local = full[sl].clone()
        if layout == "transposed":
            local = local.t().contiguous().t()
        for op in family(2):
            r = res[sl] if op.residual else None
            b = bias[sl[1]] if op.bias else None
            _check(op, local, r, b, shard=(full, res if op.residual else None, bias if op.bias else None, sl, (i, j)))


def test_threads_give_the_same_results_as_serial(backend):
    """Calls from four Python threads at once (each call itself single- or
    multi-threaded) give the bits of the same calls made one by one."""
    xs = [torch.randn(1 << 15) for _ in range(8)]
    jobs = [(i, s) for s in range(16) for i in range(8)]

    def work(job):
        i, s = job
        return (F.dropout(xs[i], 0.3, seed=s),
                F.bias_dropout_add(xs[i].view(-1, 64), xs[i][:64], xs[i].view(-1, 64), 0.3, seed=s),
                F.dropout2d(xs[i].view(8, 16, 16, 16), 0.3, seed=s))

    serial = [work(j) for j in jobs]
    with threads_ctx(2), concurrent.futures.ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(work, jobs))
    for a, b in zip(serial, parallel):
        for u, v in zip(a, b):
            assert_same_bits(u, v)
    assert _backend.ops() is not None
