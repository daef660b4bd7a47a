"""Sharded dropout: a shard's output and gradient are exactly its slice of the full
tensor's, with no communication. One process: the global_shape= / global_offset= API on
every set of kernels (any shard of any shape and layout, grids of blocks, both storages,
seed= and the generator). Several processes (gloo on 127.0.0.1): DTensor inputs over meshes
of 2 and 4 ranks (1-D and 2x2), every op and placement, seed= and seed=None, in place, and
where there is a GPU CUDA tensors; DistributedDataParallel training with
dropout_ext.nn.Dropout; the tensor-parallel example, bitwise identical across degrees.

The DTensor checks run in gloo process groups: one launch of 2 processes (1-D mesh) and
one of 4 (a 1-D mesh of 4 and a 2x2 mesh), CPU tensors. Each launch runs every case and
writes what it found; the tests read those results. A case is one op of the family on one
layout (placements Shard(0), Shard(1), Shard(-1), Replicate(), their 2-D combinations;
even, uneven and empty shards), with seed=s or seed=None (every rank seeded alike), in one
backward storage and on one backend: the output (.full_tensor()) and the gradients must
equal the unsharded call made in the same process after the same torch.manual_seed, and
the output keeps the input's placements, shape and stride.
"""
import itertools
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import traceback
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import testing
from testing import BACKEND_KERNELS, assert_same_bits, expected_input_grad, expected_output, family, op_mask
from dropout_ext import functional as F

HAS_GLOO = dist.is_available() and dist.is_gloo_available()
requires_gloo = pytest.mark.skipif(not HAS_GLOO, reason="torch.distributed with gloo is not available")

if HAS_GLOO:
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
else:  # the one-process tests below still run
    DTensor = Partial = distribute_tensor = None
    Replicate = Shard = lambda *a: None  # noqa: E731

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH_TIMEOUT = 150  # seconds for one launch of processes, start-up included
SEED = 2**63 + 12345  # seed=s cases (high bit set: the key's upper word matters)

# ------------------------------------------------------------------------------ the cases

# Base shapes (a, b, c): EVEN divides by 2 and 4; UNEVEN by neither (over 4 ranks, 5 and 9
# leave the last rank an empty shard).
BASES = {"even": (4, 8, 12), "uneven": (5, 7, 9)}


def _shape(op, base):
    a, b, c = base
    return {"dropout1d_unbatched": (b, c), "dropout2d": (a, b, 2, c), "dropout3d": (a, b, 2, 3, c)}.get(op, base)


# op name -> f(x, residual, bias, **kw). p = 0.5 where a bias gradient is summed over rows
# (scale 2: with integer-valued output gradients every partial sum is exact, so the ranks'
# sums in another order give the same bits).
OPS = {
    "dropout": lambda x, r, b, **kw: F.dropout(x, 0.3, True, **kw),
    "dropout_vanilla": lambda x, r, b, **kw: F.dropout(x, 0.3, True, scale_train=False, **kw),
    "dropout1d": lambda x, r, b, **kw: F.dropout1d(x, 0.3, True, **kw),
    "dropout1d_unbatched": lambda x, r, b, **kw: F.dropout1d(x, 0.3, True, **kw),
    "dropout2d": lambda x, r, b, **kw: F.dropout2d(x, 0.3, True, **kw),
    "dropout3d": lambda x, r, b, **kw: F.dropout3d(x, 0.3, True, **kw),
    "alpha_dropout": lambda x, r, b, **kw: F.alpha_dropout(x, 0.3, True, **kw),
    "feature_alpha_dropout": lambda x, r, b, **kw: F.feature_alpha_dropout(x, 0.3, True, **kw),
    "drop_path": lambda x, r, b, **kw: F.drop_path(x, 0.3, True, **kw),
    "dropout_add": lambda x, r, b, **kw: F.dropout_add(x, r, 0.5, True, **kw),
    "bias_dropout_add": lambda x, r, b, **kw: F.bias_dropout_add(x, b, r, 0.5, True, **kw),
    # residual and bias as plain tensors of the global shape (each rank takes its slice)
    "dropout_add_plain": lambda x, r, b, **kw: F.dropout_add(x, r, 0.5, True, **kw),
    "bias_dropout_add_plain": lambda x, r, b, **kw: F.bias_dropout_add(x, b, r, 0.5, True, **kw),
    # the fused norms: row shards only (a shard of the normalized last dim is refused, _check_errors)
    "dropout_add_layer_norm": lambda x, r, b, **kw: F.dropout_add_layer_norm(x, r, None, None, 0.5, True, **kw),
    "dropout_add_rms_norm": lambda x, r, b, **kw: F.dropout_add_rms_norm(x, r, None, 0.5, True, **kw),
}
INPLACE_OPS = ["dropout", "dropout_vanilla", "dropout1d", "dropout1d_unbatched", "dropout2d", "dropout3d",
               "alpha_dropout", "feature_alpha_dropout"]


def _uses(op):
    """Which of (x, residual, bias) the op reads."""
    return (True, "add" in op, "bias" in op)


def _takes(op, placements):
    """Whether the op takes an input with these placements (the norms: no shard of the last dim)."""
    return "norm" not in op or not any(pl.is_shard(-1) or pl.is_shard(2) for pl in placements)


S0, S1, SL, R = Shard(0), Shard(1), Shard(-1), Replicate()

# mesh name -> (mesh shape, {layout name: placements})
MESHES = {
    2: {"1d": ((2,), {"S0": (S0,), "S1": (S1,), "S-1": (SL,), "R": (R,)})},
    4: {"1d": ((4,), {"S0": (S0,), "S-1": (SL,), "R": (R,)}),
        "2x2": ((2, 2), {"S0,S1": (S0, S1), "R,S-1": (R, SL), "S-1,S0": (SL, S0), "S0,S0": (S0, S0),
                         "S1,R": (S1, R)})},
}


def _residual_placements(placements, device):
    """Another layout than the input's: the redistribution is part of the check (on the
    CPU; gloo's collectives on CUDA tensors crash, see _full)."""
    if device != "cpu":
        return placements
    return tuple(Replicate() if pl.is_shard() else Shard(0) for pl in placements)


def _bias_placements(placements):
    return tuple(Shard(0) if i % 2 == 0 else Replicate() for i in range(len(placements)))


def _cases(world):
    """(mesh name, layout name, base name, op, seed mode, storage, backend) of every case."""
    for mesh_name, (_, layouts) in MESHES[world].items():
        for layout, (i, base), op, (j, seed_mode), storage in itertools.product(
                layouts, enumerate(BASES), OPS, enumerate(("seed", "none")), ("bits", "seed")):
            # each (layout, op) gets each storage with each seed mode once, on one of the two
            # shapes (the storages' shard arithmetic is the plain shards' below)
            if storage == ("bits", "seed")[(i + j) % 2] and _takes(op, layouts[layout]):
                yield mesh_name, layout, base, op, seed_mode, storage, "compiled"
    if world == 2:  # a subset on the pure-Python backend
        for layout, op, seed_mode in itertools.product(("S0", "S-1"), OPS, ("seed", "none")):
            if _takes(op, MESHES[2]["1d"][1][layout]):
                yield "1d", layout, "uneven", op, seed_mode, "seed" if layout == "S0" else "bits", "python"


def _case_id(world, mesh, layout, base, op, seed_mode, storage, backend):
    return "w%d/%s:%s/%s/%s/seed=%s/%s/%s" % (world, mesh, layout, base, op, seed_mode, storage, backend)


# ------------------------------------------------------------------------- in the workers


_CPU_MESHES = {}  # mesh shape -> a CPU mesh of the same ranks (the worker fills it)


def _full(t):
    """t.full_tensor(); a CUDA DTensor is gathered on the CPU: gloo's collectives on CUDA
    tensors crashed the process (segfault; torch 2.11, two processes on one GPU)."""
    if t.device.type == "cpu":
        return t.full_tensor()
    return DTensor.from_local(t.to_local().detach().cpu(), _CPU_MESHES[tuple(t.device_mesh.shape)], t.placements,
                              run_check=False, shape=t.shape, stride=t.stride()).full_tensor()


def _same(a, b, what):
    try:
        testing.assert_same_bits(a, b)
    except AssertionError as e:
        raise AssertionError("%s: %s" % (what, e)) from None


def _inputs(op, base, idx, device):
    shape = _shape(op, BASES[base])
    g = torch.Generator().manual_seed(idx)
    x, r = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    b = torch.randn(shape[-1], generator=g)
    gout = torch.randint(-4, 5, shape, generator=g).float()
    return [t.to(device) for t in (x, r, b, gout)]


def _check_case(mesh, placements, op, base, seed_mode, storage, backend, idx, device):
    fn = OPS[op]
    x, r, b, gout = _inputs(op, base, idx, device)
    used = _uses(op)
    kw = {"seed": SEED + idx} if seed_mode == "seed" else {}
    # a plain bias on CUDA: a DTensor bias's gradient is reduced by a collective (see _full)
    plain = op.endswith("_plain") or (device != "cpu" and "bias" in op)
    with testing.backend_ctx(backend), testing.storage_ctx(storage):
        # the unsharded call
        leaves = [t.clone().requires_grad_() for t in (x, r, b)]
        torch.manual_seed(1000 + idx)
        ref = fn(*leaves, **kw)
        ref_next = fn(x, r, b, **kw)  # seed=None: the generators must stay in step
        ref_grads = torch.autograd.grad(ref, [t for t, u in zip(leaves, used) if u], gout)
        # the sharded call
        xd = distribute_tensor(x, mesh, placements, src_data_rank=None)
        if plain:
            rd, bd = r.clone(), b.clone()
        else:
            rd = distribute_tensor(r, mesh, _residual_placements(placements, device), src_data_rank=None)
            bd = distribute_tensor(b, mesh, _bias_placements(placements), src_data_rank=None)
        sharded = [t.requires_grad_() for t in (xd, rd, bd)]
        torch.manual_seed(1000 + idx)
        out = fn(*sharded, **kw)
        out_next = fn(*(t.detach() for t in sharded), **kw)
        gd = distribute_tensor(gout, mesh, out.placements, src_data_rank=None)
        grads = torch.autograd.grad(out, [t for t, u in zip(sharded, used) if u], gd)
    assert isinstance(out, DTensor), type(out)
    assert tuple(out.placements) == tuple(xd.placements), (out.placements, xd.placements)
    assert out.shape == ref.shape and out.stride() == ref.stride(), (out.shape, out.stride(), ref.stride())
    _same(_full(out), ref, "output")
    _same(_full(out_next), ref_next, "second call's output")
    replicas = mesh.size() // math.prod(mesh.size(i) for i, pl in enumerate(placements) if pl.is_shard())
    names = [n for n, u in zip(("grad input", "grad residual", "grad bias"), used) if u]
    for name, g, ref_g in zip(names, grads, ref_grads):
        if isinstance(g, DTensor):
            _same(_full(g), ref_g, name)
        else:  # a plain tensor's gradient is this rank's contribution: they add up to it
            g = g.cpu().clone()
            dist.all_reduce(g)
            _same(g / replicas, ref_g, name + " (sum of the ranks' contributions)")


def _check_inplace(mesh, placements, op, seed_mode, idx, device):
    """inplace=True: without autograd it writes the local shard (the same storage) and
    returns the input; with autograd (a non-leaf input) the gradient flows; a leaf that
    requires grad gets torch's error."""
    fn = OPS[op]
    x, _, _, gout = _inputs(op, "uneven", idx, device)
    kw = {"seed": SEED + idx} if seed_mode == "seed" else {}
    ref_in = x.clone()
    torch.manual_seed(1000 + idx)
    fn(ref_in, None, None, inplace=True, **kw)
    xd = distribute_tensor(x, mesh, placements, src_data_rank=None)
    ptr, version = xd.to_local().data_ptr(), xd._version
    torch.manual_seed(1000 + idx)
    out = fn(xd, None, None, inplace=True, **kw)
    assert out is xd and xd.to_local().data_ptr() == ptr and xd._version > version
    _same(_full(xd), ref_in, "in-place output")

    leaf = x.clone().requires_grad_()
    torch.manual_seed(1000 + idx)
    ref = fn(leaf * 1, None, None, inplace=True, **kw)
    (ref_grad,) = torch.autograd.grad(ref, leaf, gout)
    leaf_d = distribute_tensor(x, mesh, placements, src_data_rank=None).requires_grad_()
    torch.manual_seed(1000 + idx)
    out = fn(leaf_d * 1, None, None, inplace=True, **kw)
    (grad,) = torch.autograd.grad(out, leaf_d, distribute_tensor(gout, mesh, out.placements, src_data_rank=None))
    _same(_full(out), ref, "in-place output (autograd)")
    _same(_full(grad), ref_grad, "in-place grad input")
    try:
        fn(leaf_d, None, None, inplace=True, **kw)
    except RuntimeError as e:
        assert "leaf" in str(e), e
    else:
        raise AssertionError("in place on a leaf that requires grad did not raise")


def _check_layouts(mesh, device):
    """Non-contiguous inputs: the output has the strides of the unsharded output (those of
    torch.empty_like) and its values."""
    g = torch.Generator().manual_seed(11)
    for name, x, fn in (("transposed", torch.randn(9, 7, generator=g).t(), F.dropout),
                        ("channels_last", torch.randn(3, 5, 4, 6, generator=g).to(memory_format=torch.channels_last),
                         F.dropout2d)):
        x = x.to(device)
        ref = fn(x, 0.5, True, seed=SEED)
        for pl in (Shard(0), Shard(1), Shard(-1), Replicate()):
            out = fn(distribute_tensor(x, mesh, [pl] * mesh.ndim, src_data_rank=None), 0.5, True, seed=SEED)
            assert out.stride() == ref.stride(), (name, pl, out.stride(), ref.stride())
            _same(_full(out), ref, "%s input, %s" % (name, pl))


def _check_errors(mesh, device):
    """Unsupported placements and arguments get clear errors."""
    from torch.distributed.tensor.placement_types import _StridedShard

    local = torch.randn(4, 6, device=device)
    found = []
    for placements, needle in (([Partial()], "Partial"), ([_StridedShard(0, split_factor=2)], "_StridedShard")):
        dt = DTensor.from_local(local, mesh, placements, run_check=False)
        try:
            F.dropout(dt, 0.5, seed=1)
        except NotImplementedError as e:
            assert needle in str(e) and "Shard(d)" in str(e), e
            found.append(needle)
    dt = DTensor.from_local(local, mesh, [Shard(0)], run_check=False)
    try:
        F.dropout(dt, 0.5, seed=1, global_shape=(8, 6), global_offset=(0, 0))
    except ValueError as e:
        assert "global_shape" in str(e), e
        found.append("global_shape")
    dt = distribute_tensor(torch.randn(4, 6, device=device), mesh, [Shard(1)], src_data_rank=None)
    try:
        F.dropout_add_layer_norm(dt, None, None, None, 0.5, seed=1)
    except ValueError as e:
        assert "normalized" in str(e), e
        found.append("normalized dim")
    assert found == ["Partial", "_StridedShard", "global_shape", "normalized dim"], found


def _record(results, key, check, *args):
    try:
        check(*args)
        results[key] = "ok"
    except Exception as e:  # noqa: BLE001  (reported by the test that reads it)
        results[key] = "%s: %s\n%s" % (type(e).__name__, e, traceback.format_exc(limit=-3))


def _worker(rank, world, port, out_dir, device):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    if device == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    from torch.distributed.device_mesh import init_device_mesh

    results = {}
    meshes = {name: init_device_mesh(device, shape) for name, (shape, _) in MESHES[world].items()}
    if device != "cpu":
        _CPU_MESHES.update({shape: init_device_mesh("cpu", shape) for shape, _ in MESHES[world].values()})
    for idx, case in enumerate(_cases(world)):
        mesh_name, layout, base, op, seed_mode, storage, backend = case
        placements = MESHES[world][mesh_name][1][layout]
        _record(results, _case_id(world, *case), _check_case, meshes[mesh_name], placements, op, base, seed_mode,
                storage, backend, idx, device)
    for mesh_name, (_, layouts) in MESHES[world].items():
        cases = itertools.product(list(layouts)[:3], INPLACE_OPS, ("seed", "none"))
        for i, (layout, op, seed_mode) in enumerate(cases):
            _record(results, "w%d/%s:%s/inplace/%s/seed=%s" % (world, mesh_name, layout, op, seed_mode),
                    _check_inplace, meshes[mesh_name], layouts[layout], op, seed_mode, 5000 + i, device)
    _record(results, "w%d/layouts" % world, _check_layouts, meshes["1d"], device)
    _record(results, "w%d/errors" % world, _check_errors, meshes["1d"], device)
    with open(os.path.join(out_dir, "rank%d.json" % rank), "w") as f:
        json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


# ------------------------------------------------------------------------- in pytest


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(world, out_dir, device="cpu"):
    """Run _worker on `world` processes, at most LAUNCH_TIMEOUT seconds; {case: "ok" or what
    failed, on which rank}."""
    # CPU: forkserver, a fresh process that imports torch once and forks the workers (spawn
    # imports it in every worker, seconds each; fork from pytest's process is not safe with
    # OpenMP). CUDA: spawn (a forked child cannot use CUDA once its parent has touched it).
    mp.set_forkserver_preload(["torch", "torch.distributed.tensor", "dropout_ext"])
    ctx = mp.start_processes(_worker, args=(world, _free_port(), out_dir, device), nprocs=world, join=False,
                             start_method="spawn" if device == "cuda" else "forkserver")
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    try:
        while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                raise TimeoutError("the %d processes did not finish in %d s" % (world, LAUNCH_TIMEOUT))
    finally:
        for p in ctx.processes:  # only ours, by handle
            if p.is_alive():
                p.kill()
                p.join(5)
    merged = {}
    for rank in range(world):
        with open(os.path.join(out_dir, "rank%d.json" % rank)) as f:
            for key, value in json.load(f).items():
                if value != "ok" or key not in merged:
                    merged[key] = value if value == "ok" else "rank %d: %s" % (rank, value)
    return merged


@pytest.fixture(scope="module")
def world2(tmp_path_factory):
    return _launch(2, str(tmp_path_factory.mktemp("dtensor_w2")))


@pytest.fixture(scope="module")
def world4(tmp_path_factory):
    return _launch(4, str(tmp_path_factory.mktemp("dtensor_w4")))


def _assert_all_ok(results, pattern, at_least):
    """Every case whose id matches `pattern` ran (at least `at_least` of them) and passed."""
    picked = {k: v for k, v in results.items() if re.search(pattern, k)}
    assert len(picked) >= at_least, "only %d cases matched %r" % (len(picked), pattern)
    bad = {k: v for k, v in picked.items() if v != "ok"}
    assert not bad, "%d of %d cases failed:\n%s" % (len(bad), len(picked), "\n".join(
        "%s: %s" % kv for kv in list(bad.items())[:8]))


@requires_gloo
@pytest.mark.parametrize("op", list(OPS))
def test_dtensor_1d_mesh_of_2(world2, op):
    """Shard(0), Shard(1), Shard(-1), Replicate(); even and uneven shapes; seed=s and
    seed=None; both backward storages."""
    _assert_all_ok(world2, r"^w2/1d:[^/]*/[^/]*/%s/.*/compiled$" % op, (3 if "norm" in op else 4) * 2 * 2)


@requires_gloo
@pytest.mark.parametrize("op", list(OPS))
def test_dtensor_1d_mesh_of_4_and_2x2_mesh(world4, op):
    """A 1-D mesh of 4 (uneven shapes leave a rank an empty shard) and a 2x2 mesh with
    (Shard(0), Shard(1)), (Replicate(), Shard(-1)), (Shard(-1), Shard(0)), (Shard(0),
    Shard(0)) and (Shard(1), Replicate()); seed=s and seed=None, each with both storages."""
    norm = "norm" in op  # the norms skip the layouts that shard the last dim
    _assert_all_ok(world4, r"^w4/1d:[^/]*/[^/]*/%s/" % op, (2 if norm else 3) * 2 * 2)
    _assert_all_ok(world4, r"^w4/2x2:[^/]*/[^/]*/%s/" % op, (3 if norm else 5) * 2 * 2)


@requires_gloo
def test_dtensor_python_backend(world2):
    n_norm = sum("norm" in op for op in OPS)
    _assert_all_ok(world2, r"/python$", (len(OPS) * 2 - n_norm) * 2)


@requires_gloo
def test_dtensor_inplace(world2, world4):
    _assert_all_ok(world2, r"/inplace/", 3 * len(INPLACE_OPS) * 2)
    _assert_all_ok(world4, r"/inplace/", 2 * 3 * len(INPLACE_OPS) * 2)


@requires_gloo
def test_dtensor_non_contiguous_inputs(world2, world4):
    _assert_all_ok(world2, r"/layouts$", 1)
    _assert_all_ok(world4, r"/layouts$", 1)


@requires_gloo
def test_dtensor_unsupported_placements_raise(world2, world4):
    _assert_all_ok(world2, r"/errors$", 1)
    _assert_all_ok(world4, r"/errors$", 1)


@requires_gloo
@testing.requires_gpu
def test_dtensor_cuda_two_processes_on_one_gpu(tmp_path):
    """The world-2 cases with CUDA tensors: 2 processes (gloo) share the first GPU. gloo's
    collectives on CUDA tensors crash, so outputs and gradients are gathered on the CPU,
    the residual has the input's placements and bias_dropout_add's bias is a plain tensor."""
    results = _launch(2, str(tmp_path), device="cuda")
    _assert_all_ok(results, r"", len(list(_cases(2))) + 3 * len(INPLACE_OPS) * 2 + 2)  # every case above


# ------------------------------------------------ one process: global_shape= / global_offset=


def _shard_layout(t, layout):
    """The shard t (a slice of the full tensor) as a copy in `layout`, or t itself ("view")."""
    if layout == "contiguous":
        return t.clone()
    if layout == "column_major":
        dims = list(reversed(range(t.dim())))
        return t.permute(dims).contiguous().permute(dims)
    if layout == "channels_last" and t.dim() == 4:
        return t.clone().to(memory_format=torch.channels_last)
    return t.detach()


def check_shard(device, shape, starts, stops, rng, layout="contiguous"):
    """Every op: the shard [starts, stops) of a full tensor of `shape` gives the full
    tensor's output for the oracle's mask of the full shape, sliced; for the slice of an
    output gradient, the slice of the full gradient (input and residual)."""
    g = torch.Generator().manual_seed(7)
    full, res, grad_out = (torch.randn(shape, generator=g).to(device) for _ in range(3))
    bias = torch.randn(shape[-1], generator=g).to(device)
    sl = tuple(slice(a, b) for a, b in zip(starts, stops))
    for op in family(len(shape)):
        if rng == "seed":
            key, base, kw = SEED, 0, {"seed": SEED}
        else:
            gen = torch.Generator(device=device).manual_seed(31)
            key, base = testing.peek_rng_pair(gen)
            kw = {"generator": gen}
        r, b = (res if op.residual else None), (bias if op.bias else None)
        keep = op_mask(op, shape, key, base)
        local = _shard_layout(full[sl], layout).requires_grad_()
        rl, bl = (r[sl] if op.residual else None), (b[sl[-1]] if op.bias else None)
        out = op(local, rl, bl, global_shape=shape, global_offset=starts, **kw)
        where = (op, shape, starts, stops, layout, local.stride())
        assert out.stride() == torch.empty_like(local).stride(), where
        assert_same_bits(out, expected_output(op, full, r, b, keep)[sl])
        (gx,) = torch.autograd.grad(out, local, grad_out[sl])
        assert_same_bits(gx, expected_input_grad(op, full, grad_out, keep)[sl])


@st.composite
def shards(draw):
    nd = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 11), min_size=nd, max_size=nd)))
    starts, stops = [], []
    for n in shape:
        a = draw(st.integers(0, n - 1))
        starts.append(a)
        stops.append(draw(st.integers(a + 1, n)))
    layout = draw(st.sampled_from(["contiguous", "column_major", "channels_last", "view"]))
    return shape, tuple(starts), tuple(stops), layout


@pytest.mark.parametrize("rng", ["seed", "generator"])
@pytest.mark.parametrize("storage", ["bits", "seed"])
@settings(max_examples=20, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(case=shards())
def test_any_shard_every_op(kernels, storage, rng, case):
    """Shards along any dims (uneven, the last dim, several dims at once, single
    elements), in any layout, with either storage, seed= or generator=."""
    shape, starts, stops, layout = case
    with testing.storage_ctx(storage):
        check_shard(kernels.device, shape, starts, stops, rng, layout)


@pytest.mark.quick
@pytest.mark.parametrize("kernels", BACKEND_KERNELS, indirect=True)
def test_shards_quick(kernels):
    check_shard(kernels.device, (6, 10, 37), (0, 5, 13), (3, 10, 37), "seed", "column_major")


def test_whole_tensor_as_its_own_shard_changes_nothing(kernels):
    x = torch.randn(5, 33, device=kernels.device)
    assert_same_bits(F.dropout(x, 0.5, seed=3, global_shape=(5, 33), global_offset=(0, 0)), F.dropout(x, 0.5, seed=3))


# splits of the full tensor: (dim, parts) per split dim, cut as torch.chunk cuts: rows
# (sequence parallel), columns (column parallel, uneven too), blocks of a 2-D grid
GRIDS = [((0, 2),), ((1, 3),), ((-1, 4),), ((0, 2), (-1, 2)), ((0, 3), (1, 2))]


def _blocks(shape, grid):
    """Every block of the grid as (offset, size) per dim."""
    per_dim = [[(0, n)] for n in shape]
    for dim, parts in grid:
        n = shape[dim]
        edges = [c[0].item() for c in torch.arange(n).chunk(parts)] + [n]
        per_dim[dim] = [(a, b - a) for a, b in zip(edges, edges[1:])]
    return itertools.product(*per_dim)


def _check_grids(device, op, base, seed_mode):
    fn = OPS[op]
    x, r, b, gout = _inputs(op, base, 7, device)
    shape = x.shape
    used = _uses(op)
    kw = {"seed": SEED} if seed_mode == "seed" else {}
    leaves = [t.clone().requires_grad_() for t in (x, r, b)]
    torch.manual_seed(3)
    ref = fn(*leaves, **kw)
    ref_gx, ref_gr, ref_gb = torch.autograd.grad(ref, leaves, gout, allow_unused=True)
    for i, grid in enumerate(GRIDS):
        gb = torch.zeros_like(b)
        for block in _blocks(shape, grid):
            sl = tuple(slice(o, o + n) for o, n in block)
            xl = _shard_layout(x[sl], ("contiguous", "column_major", "view")[i % 3]).requires_grad_()
            rl, bl = r[sl].clone().requires_grad_(), b[sl[-1]].clone().requires_grad_()
            torch.manual_seed(3)
            out = fn(xl, rl, bl, global_shape=shape, global_offset=[o for o, _ in block], **kw)
            where = "%s block %s, input strides %s" % (grid, block, xl.stride())
            _same(out, ref[sl], "output, " + where)
            assert out.stride() == torch.empty_like(xl).stride(), where
            gx, gr, gbl = torch.autograd.grad(out, [xl, rl, bl], gout[sl], allow_unused=True)
            _same(gx, ref_gx[sl], "grad input, " + where)
            if used[1]:
                _same(gr, ref_gr[sl], "grad residual, " + where)
            if used[2]:
                gb[sl[-1]] += gbl
        if used[2]:
            _same(gb, ref_gb, "grad bias (sum over the blocks), %s" % (grid,))


@pytest.mark.parametrize("storage", ["bits", "seed"])
def test_grids_of_shards_match_unsharded(kernels, storage):
    """Each block of several grids, one call per block with global_shape=/global_offset=,
    against the unsharded call: outputs and their strides, gradients (the bias's summed
    over the blocks), seed=s and seed=None (the same torch.manual_seed before each call),
    even and uneven shapes, every op, shards copied or views of the full tensor."""
    with testing.storage_ctx(storage):
        # (the fused norms' row shards: test_norm.py)
        for op in [op for op in OPS if not op.endswith("_plain") and "norm" not in op]:
            for base, seed_mode in itertools.product(BASES, ("seed", "none")):
                _check_grids(kernels.device, op, base, seed_mode)


# ------------------------------------------------------------- data parallel


def _ddp_worker(rank, port, result_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    import dropout_ext

    torch.manual_seed(0)  # identical initial weights on both ranks
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), dropout_ext.nn.Dropout(0.2),
                                torch.nn.Linear(64, 1))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 1, generator=g)
    x = torch.randn(512, 8, generator=g)
    y = x @ w + 0.01 * torch.randn(512, 1, generator=g)
    shard = slice(rank * 256, (rank + 1) * 256)
    torch.manual_seed(1000 + rank)  # per-rank dropout seeding (README: data parallel)
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.mse_loss(ddp(x[shard]), y[shard])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    params = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    mask_none = (F.dropout(torch.ones(4096), 0.5) != 0).to(torch.uint8)
    mask_seed = (F.dropout(torch.ones(4096), 0.5, seed=42) != 0).to(torch.uint8)
    gathered = {}
    for name, t in (("params", params), ("mask_none", mask_none), ("mask_seed", mask_seed)):
        out = [torch.empty_like(t) for _ in range(2)]
        dist.all_gather(out, t)
        gathered[name] = out
    if rank == 0:
        torch.save({"losses": losses, **gathered}, result_path)
    dist.barrier()
    dist.destroy_process_group()
    # Leave at once: a gloo worker thread still being torn down by C++ static destructors
    # at interpreter exit can abort the process ("terminate called without an active exception").
    os._exit(0)


@requires_gloo
def test_ddp_training_with_dropout(tmp_path):
    """DistributedDataParallel around a model with dropout_ext.nn.Dropout, two ranks with
    their own dropout seeds: the loss falls, the replicas stay equal, seed=None masks
    differ between ranks and seed= masks do not."""
    path = str(tmp_path / "result.pt")
    mp.spawn(_ddp_worker, args=(_free_port(), path), nprocs=2, join=True)
    r = torch.load(path)
    first, last = sum(r["losses"][:5]) / 5, sum(r["losses"][-5:]) / 5
    assert last < 0.5 * first, (first, last)  # the loss falls
    assert torch.equal(r["params"][0], r["params"][1])  # replicas stay equal
    assert not torch.equal(r["mask_none"][0], r["mask_none"][1])  # per-rank seeds: masks differ
    assert torch.equal(r["mask_seed"][0], r["mask_seed"][1])  # same seed=: same mask


# ------------------------------------------------------------------------------ example


@requires_gloo
def test_tensor_parallel_example_is_bitwise_identical_across_degrees():
    """examples/tensor_parallel_mlp.py: loss and every gradient digest are the same for
    tensor-parallel degrees 1, 2 and 4 with dropout_ext, and not with torch.nn.Dropout."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "tensor_parallel_mlp.py")],
                          capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = {}
    for name, degree, rest in re.findall(r"^(dropout_ext|torch\.nn\.Dropout)\s+tp=(\d)\s+(.*)$", proc.stdout, re.M):
        rows.setdefault(name, {})[int(degree)] = rest.split()
    assert set(rows) == {"dropout_ext", "torch.nn.Dropout"} and all(set(r) == {1, 2, 4} for r in rows.values()), \
        proc.stdout
    ours, torch_rows = rows["dropout_ext"], rows["torch.nn.Dropout"]
    assert ours[1] == ours[2] == ours[4], proc.stdout  # loss and every gradient digest
    assert torch_rows[1] != torch_rows[2] and torch_rows[1] != torch_rows[4], proc.stdout
    assert "dropout_ext: bitwise identical across degrees 1, 2, 4: yes" in proc.stdout
    assert "torch.nn.Dropout: bitwise identical across degrees 1, 2, 4: no" in proc.stdout
