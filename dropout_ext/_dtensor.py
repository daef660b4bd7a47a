"""DTensor inputs: run the op on the local shard with the shard's place in the global
tensor (global_shape=, global_offset=), and wrap the result back with the input's
placements. Each shard then draws exactly its slice of the mask of one unsharded call.

With seed=None every rank draws (key, base) from its own generator, as DTensor's random
ops do since torch 2.5: the ranks of a mesh must be seeded alike (torch.manual_seed with
the same seed everywhere) and call the same ops in the same order, so the draws agree
and no communication is needed.
"""
import torch
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset


def _local(t, like):
    """t's local shard laid out like `like` (a DTensor), or t itself if it is local."""
    if not isinstance(t, DTensor):
        return t
    if t.placements != like.placements:
        t = t.redistribute(like.device_mesh, like.placements)
    return t.to_local()


def _bias_local(bias, like):
    """The bias slice matching the input's last dim on this rank."""
    if not isinstance(bias, DTensor):
        return bias
    last = like.dim() - 1
    placements = [Shard(0) if isinstance(pl, Shard) and pl.dim % like.dim() == last else Replicate()
                  for pl in like.placements]
    return bias.redistribute(like.device_mesh, placements).to_local()


def run(op, input, p, kind, lead, inplace, seed, generator, global_shape, global_offset, residual, bias):
    from . import functional

    if global_shape is not None or global_offset is not None:
        raise ValueError("dropout_ext: a DTensor input carries its own global shape; do not pass global_shape=")
    mesh, placements = input.device_mesh, input.placements
    local = input.to_local()
    _, offset = compute_local_shape_and_global_offset(input.shape, mesh, placements)
    shape = tuple(input.shape)
    kw = dict(seed=seed, generator=generator, global_shape=shape, global_offset=tuple(offset))
    if op == "dropout_add":
        out = functional._run(op, local, p, kind, lead, False, seed, generator, shape, tuple(offset),
                              residual=_local(residual, input))
    elif op == "bias_dropout_add":
        out = functional._run(op, local, p, kind, lead, False, seed, generator, shape, tuple(offset),
                              residual=_local(residual, input), bias=_bias_local(bias, input))
    else:
        out = functional._run(op, local, p, kind, lead, False, seed, generator, shape, tuple(offset))
    del kw
    result = DTensor.from_local(out, mesh, placements, run_check=False, shape=input.shape, stride=input.stride())
    if inplace:
        return input.copy_(result)
    return result
