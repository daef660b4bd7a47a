"""DTensor inputs: run the call on the local shard with the shard's place in the global
tensor (global_shape=, global_offset=) and wrap the result back with the input's
placements, shape and stride. Each shard then draws exactly its slice of the mask of one
unsharded call, with no communication.

Placements: Shard(d) (any d) and Replicate(), on meshes of any number of dims. A
_StridedShard or Partial input is refused (redistribute it first).

seed=None: every rank draws (key, base) from its own generator, as DTensor's random ops
do since torch 2.5: the ranks of a mesh must be seeded alike (torch.manual_seed with the
same seed everywhere) and call the same ops in the same order, so that the draws agree.
A rank with an empty shard draws too, so the ranks stay in step.

residual (dropout_add, bias_dropout_add): a DTensor on the input's mesh, redistributed to
the input's placements if they differ; or a plain tensor of the global shape, of which the
rank takes its slice. bias: a 1-D DTensor (redistributed to match the input's last dim) or
the plain full bias. A plain tensor's gradient is this rank's contribution only.
"""
import torch
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset


def _check_placements(input):
    for pl in input.placements:
        if type(pl) is not Shard and type(pl) is not Replicate:
            raise NotImplementedError(
                "dropout_ext: DTensor inputs with placement %r are not supported, only Shard(d) and "
                "Replicate(); redistribute the input first (e.g. x.redistribute(mesh, [Replicate()]))" % (pl,))


def _slice(t, offset, shape):
    """The block of plain tensor t at `offset` with `shape`."""
    for d, (o, n) in enumerate(zip(offset, shape)):
        t = t.narrow(d, o, n)
    return t


def _residual(residual, input, offset, local_shape):
    if not isinstance(residual, DTensor):
        return _slice(residual, offset, local_shape)
    if residual.device_mesh != input.device_mesh:
        raise ValueError("dropout_ext: residual is a DTensor on another device mesh than the input")
    return residual.redistribute(input.device_mesh, input.placements).to_local()


def _bias(bias, input, offset, local_shape):
    """This rank's part of the bias: the slice of the input's last dim that it holds."""
    if not isinstance(bias, DTensor):
        return _slice(bias, offset[-1:], local_shape[-1:])
    if bias.device_mesh != input.device_mesh:
        raise ValueError("dropout_ext: bias is a DTensor on another device mesh than the input")
    last = input.dim() - 1
    placements, grad_placements = [], []
    for pl in input.placements:
        if pl.is_shard(last):  # the input's last dim is split on this mesh dim: so is the bias
            placements.append(Shard(0))
            grad_placements.append(Shard(0))
        else:  # every rank needs the whole bias; if the input is split along another dim, each
            placements.append(Replicate())  # rank's bias gradient sums only its rows: Partial
            grad_placements.append(Partial() if pl.is_shard() else Replicate())
    return bias.redistribute(input.device_mesh, placements).to_local(grad_placements=grad_placements)


def run(c, run_local):
    """The output of Call `c` (_route.py) for a DTensor input: `run_local` runs the call
    built for the local shard (with its global shape and offset)."""
    input = c.input
    if c.global_shape is not None or c.global_offset is not None:
        raise ValueError("dropout_ext: a DTensor input carries its own global shape and offset; "
                         "do not pass global_shape= or global_offset=")
    _check_placements(input)
    mesh, placements, shape = input.device_mesh, input.placements, tuple(input.shape)
    local_shape, offset = compute_local_shape_and_global_offset(shape, mesh, placements)
    residual = _residual(c.residual, input, offset, local_shape) if c.residual is not None else None
    bias = _bias(c.bias, input, offset, local_shape) if c.bias is not None else None
    norm = c.norm
    if norm is not None:
        if any(pl.is_shard(input.dim() - 1) or pl.is_shard(-1) for pl in placements):
            raise ValueError("dropout_ext: a DTensor sharded on the normalized (last) dim is not supported; "
                             "shard a leading dim or redistribute the input")
        norm = norm.replace(*(_bias(t, input, offset, local_shape) if t is not None else None
                              for t in (norm.weight, norm.bias)))

    def local_op(local, inplace):
        return run_local(c.replace(input=local, inplace=inplace, global_shape=shape, global_offset=offset,
                                   residual=residual, bias=bias, norm=norm))

    if c.inplace and not (torch.is_grad_enabled() and input.requires_grad):
        # Write into the local shard; bump the DTensor's version as an in-place op would.
        with torch.no_grad():
            local_op(input.to_local(), True)
        torch.autograd.graph.increment_version(input)
        return input
    # Strides: those of torch.empty_like(the global tensor), as for a plain input.
    stride = torch.empty_like(torch.empty_strided(shape, input.stride(), device="meta")).stride()
    if norm is not None:  # contiguous outputs: out, and h with prenorm
        result = local_op(input.to_local(), False)
        wrap = lambda t: DTensor.from_local(t, mesh, placements, run_check=False, shape=input.shape,
                                            stride=torch.empty(shape, device="meta").stride())
        return tuple(wrap(t) for t in result) if norm.prenorm else wrap(result)
    out = DTensor.from_local(local_op(input.to_local(), False), mesh, placements, run_check=False,
                             shape=input.shape, stride=stride)
    # In place with autograd: torch's copy_ records the edge (and refuses a leaf).
    return input.copy_(out) if c.inplace else out
