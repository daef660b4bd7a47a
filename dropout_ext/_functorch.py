"""The route for calls made inside torch.func transforms (grad, vjp, jacrev, vmap).

Transforms refuse C++ autograd Functions, so here only the keep mask comes from the op
(a `torch.autograd.Function` with `setup_context` and a `vmap` rule, drawing the mask of
the reduced shape with the same (key, base) the normal route would draw), and the rest is
written with torch ops that every transform already knows. The values and gradients are
the same as the normal route's, bit for bit: the same mask, the same factor rounded the
same way, the arithmetic in the same accumulation type.

Under vmap the mask follows torch's randomness modes: "different" draws one mask for
the whole batch (so every sample differs), "same" one mask shared by the samples, and
"error" raises torch's error. With seed= the mask is a pure function of the seed and the
sample's shape, so every sample gets the same mask and no mode is needed.
"""
import torch

from . import _backend, _reference

_VMAP_ERROR = (
    "vmap: called random operation while in randomness error mode. Please either use the 'same' or "
    "'different' randomness flags on vmap or perform the randomness operation out of vmap"
)


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


class KeepMask(torch.autograd.Function):
    """keep (1.0 or 0.0, in x's accumulation type) of the mask shape x.shape[:lead],
    shaped to broadcast over x. x only carries the shape, dtype, device and vmap dims."""

    @staticmethod
    def forward(x, rng, generator, p, lead, global_shape, global_offset):
        shape = tuple(x.shape[:lead])
        ones = torch.ones(shape, dtype=_acc(x.dtype), device=x.device)
        gs = tuple(global_shape[:lead]) if global_shape is not None else None
        go = tuple(global_offset[:lead]) if global_offset is not None else None
        keep, _ = _backend.OPS.dropout(ones, rng, generator, p, _reference.KIND_VANILLA, lead,
                                       _reference.SAVE_NONE, gs, go)
        return keep.reshape(shape + (1,) * (x.dim() - lead))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output)

    @staticmethod
    def backward(ctx, grad):
        return (None,) * 7

    @staticmethod
    def vmap(info, in_dims, x, rng, generator, p, lead, global_shape, global_offset):
        bdim = in_dims[0]
        if rng is not None or info.randomness == "same":
            # seed= (stateless) or randomness="same": one mask for every sample
            return KeepMask.apply(x.select(bdim, 0), rng, generator, p, lead, global_shape, global_offset), None
        if info.randomness == "error":
            raise RuntimeError(_VMAP_ERROR)
        # "different": the mask of the batched shape, so each sample has its own
        x = x.movedim(bdim, 0)
        if global_shape is not None:
            global_shape = (x.shape[0],) + tuple(global_shape)
            global_offset = (0,) + tuple(global_offset)
        return KeepMask.apply(x, rng, generator, p, lead + 1, global_shape, global_offset), 0


def run(c, rng, generator):
    """The output of Call `c` (_route.py) in torch ops around KeepMask (see the module
    docstring). The op checks only the mask's leading dims: the whole call is checked here."""
    if c.op == "dropout_add_norm":
        return _run_norm(c, rng, generator)
    input, p, kind = c.input, c.p, c.kind
    _reference._check_call(input, p, kind, c.lead, 0, c.global_shape, c.global_offset, generator, rng,
                           c.residual, c.bias)
    acc = _acc(input.dtype)
    keep = KeepMask.apply(input, rng, generator, p, c.lead, c.global_shape, c.global_offset)
    x = input.to(acc)
    if kind == _reference.KIND_ALPHA:
        a = _reference.keep_scale(p, kind)
        shift = (keep - 1) * (_reference.SELU_ALPHA * a) + _reference.SELU_ALPHA * a * p
        return (x * (keep * a) + shift).to(input.dtype)
    factor = keep * _reference.keep_scale(p, kind)
    if c.bias is not None:
        x = x + c.bias.to(acc)
    y = x * factor
    if c.residual is not None:
        y = c.residual.to(acc) + y
    return y.to(input.dtype)


def _run_norm(c, rng, generator):
    """dropout_add_norm: h as the kernels compute it (the same mask and rounding), then
    torch's norm of h in the accumulation type."""
    input, p, n = c.input, c.p, c.norm
    _reference.check_norm_call(input, c.residual, n.weight, n.bias, c.bias, p, 0, n.residual_in_fp32,
                               c.global_shape, c.global_offset, generator, rng)
    acc = _acc(input.dtype)
    keep = KeepMask.apply(input, rng, generator, p, input.dim(), c.global_shape, c.global_offset)
    v = input.to(acc)
    if c.bias is not None:
        v = v + c.bias.to(acc)
    v = v * (keep * _reference.keep_scale(p, _reference.KIND_INVERTED))
    if c.residual is not None:
        v = c.residual.to(acc) + v
    h = v.to(_reference.norm_h_dtype(input.dtype, n.residual_in_fp32))
    hf, shape = h.to(acc), (input.shape[-1],)
    weight = n.weight.to(acc) if n.weight is not None else None
    if n.rms:
        y = torch.nn.functional.rms_norm(hf, shape, weight, n.eps)
    else:
        bias = n.bias.to(acc) if n.bias is not None else None
        y = torch.nn.functional.layer_norm(hf, shape, weight, bias, n.eps)
    out = y.to(input.dtype)
    return (out, h) if n.prenorm else out
