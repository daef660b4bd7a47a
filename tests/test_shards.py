"""Sharded dropout equals unsharded dropout (issue 14): with global_shape= and
global_offset=, a shard's output and gradient are exactly its slice of the full tensor's,
for every op, shards along any dims (uneven, the last dim, several dims at once), any
layout of the shard, both storages, every backend and CPU path. (DTensor inputs over
several processes: test_dtensor.py.)"""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from testing import CPU_PATHS, assert_same_bits, cpu_isa_ctx, storage_ctx

from dropout_ext import functional as F

SEED = 1234567


def _family(dim):
    """(name, fn(x, residual, bias, **kw)) of every op for an input of `dim` dims."""
    ops = [
        ("dropout", lambda x, r, b, **kw: F.dropout(x, 0.4, **kw)),
        ("vanilla", lambda x, r, b, **kw: F.dropout(x, 0.4, scale_train=False, **kw)),
        ("alpha_dropout", lambda x, r, b, **kw: F.alpha_dropout(x, 0.3, True, **kw)),
        ("drop_path", lambda x, r, b, **kw: F.drop_path(x, 0.5, **kw)),
        ("dropout_add", lambda x, r, b, **kw: F.dropout_add(x, r, 0.4, **kw)),
        ("bias_dropout_add", lambda x, r, b, **kw: F.bias_dropout_add(x, b, r, 0.4, **kw)),
    ]
    if dim >= 2:
        ops.append(("feature_alpha_dropout", lambda x, r, b, **kw: F.feature_alpha_dropout(x, 0.3, True, **kw)))
    if dim == 3:
        ops.append(("dropout1d", lambda x, r, b, **kw: F.dropout1d(x, 0.5, **kw)))
    if dim == 4:
        ops.append(("dropout2d", lambda x, r, b, **kw: F.dropout2d(x, 0.5, **kw)))
    if dim == 5:
        ops.append(("dropout3d", lambda x, r, b, **kw: F.dropout3d(x, 0.5, **kw)))
    return ops


def check_shard(shape, starts, stops, rng_kw, layout=None, grad=True):
    """Every op: the shard [starts, stops) of a full tensor of `shape` gives the slice of
    the full output and, for the grad of a slice of the full grad, the slice of the
    full gradient."""
    g = torch.Generator().manual_seed(7)
    full = torch.randn(shape, generator=g)
    res = torch.randn(shape, generator=g)
    bias = torch.randn(shape[-1], generator=g)
    grad_out = torch.randn(shape, generator=g)
    sl = tuple(slice(a, b) for a, b in zip(starts, stops))
    for name, fn in _family(len(shape)):
        kw = rng_kw()
        ref = fn(full.requires_grad_(), res, bias, **kw)
        (gref,) = torch.autograd.grad(ref, full, grad_out)
        full.requires_grad_(False)
        local = full[sl].clone()
        if layout is not None:
            local = layout(local)
        local.requires_grad_(grad)
        kw = rng_kw()
        out = fn(local, res[sl], bias[sl[-1]], global_shape=shape, global_offset=starts, **kw)
        assert_same_bits(out, ref[sl].detach())
        if grad:
            (gl,) = torch.autograd.grad(out, local, grad_out[sl])
            assert_same_bits(gl, gref[sl])


def _seeded():
    return {"seed": SEED}


def _generator():
    return {"generator": torch.Generator().manual_seed(31)}


@pytest.mark.parametrize("rng", ["seed", "generator"])
@pytest.mark.parametrize("storage", ["bits", "seed"])
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_shard_every_op(backend, storage, rng, data):
    nd = data.draw(st.integers(1, 4))
    shape = tuple(data.draw(st.lists(st.integers(1, 11), min_size=nd, max_size=nd)))
    starts, stops = [], []
    for n in shape:
        a = data.draw(st.integers(0, n - 1))
        b = data.draw(st.integers(a + 1, n))
        starts.append(a)
        stops.append(b)
    with storage_ctx(storage):
        check_shard(shape, tuple(starts), tuple(stops), _seeded if rng == "seed" else _generator)


def test_column_and_row_parallel_shards(backend):
    """The shards of tensor parallelism: the last dim split (column-parallel, uneven too),
    dim 0 (sequence parallel), and a 2x2 grid of blocks."""
    shape = (6, 10, 37)
    for starts, stops in [((0, 0, 0), (6, 10, 19)), ((0, 0, 19), (6, 10, 37)), ((3, 0, 0), (6, 10, 37)),
                          ((0, 5, 13), (3, 10, 37)), ((0, 0, 36), (6, 10, 37))]:
        check_shard(shape, starts, stops, _seeded)


@pytest.mark.parametrize("isa", CPU_PATHS or ["none"])
def test_shards_in_any_layout_every_isa(isa):
    if isa == "none":
        pytest.skip("compiled extension not built")
    with cpu_isa_ctx(isa):
        shape = (4, 9, 6, 70)
        cases = [((1, 2, 0, 3), (4, 9, 5, 70)), ((0, 0, 0, 0), (4, 9, 6, 35)), ((2, 3, 1, 33), (3, 8, 6, 69))]
        for starts, stops in cases:
            check_shard(shape, starts, stops, _seeded, layout=lambda t: t.to(memory_format=torch.channels_last))
            check_shard(shape, starts, stops, _seeded, layout=lambda t: t.transpose(1, 3).contiguous().transpose(1, 3))


def test_whole_tensor_as_its_own_shard_changes_nothing(backend):
    x = torch.randn(5, 33)
    assert_same_bits(F.dropout(x, 0.5, seed=3, global_shape=(5, 33), global_offset=(0, 0)), F.dropout(x, 0.5, seed=3))


def test_bad_shard_arguments_raise_and_leave_input_untouched(backend):
    x = torch.randn(4, 6)
    before = x.clone()
    bad = [
        dict(global_shape=(4, 6)),                         # offset missing
        dict(global_offset=(0, 0)),                        # shape missing
        dict(global_shape=(4, 6, 1), global_offset=(0, 0, 0)),  # wrong length
        dict(global_shape=(4, 6), global_offset=(1, 0)),   # does not fit
        dict(global_shape=(4, 6), global_offset=(-1, 0)),  # negative
    ]
    for kw in bad:
        with pytest.raises(ValueError, match="global"):
            F.dropout(x, 0.5, inplace=True, seed=1, **kw)
    assert torch.equal(x, before)
