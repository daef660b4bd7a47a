"""The op layer in Python: each op's schema, written once, and its fake kernel; the
pure-Python kernels with their autograd, registered under the same op names when the
compiled extension is not loaded.

The library `dropout_ext` is defined here from SCHEMAS before the extension is
imported; the extension registers only kernels for it (TORCH_LIBRARY_IMPL in csrc/),
its autograd in C++ (csrc/autograd.cpp). The arguments the schemas share:
  rng      int64[2] (key, base) as data (seed=, or drawn in Python under torch.compile);
           None: drawn from `generator` (or the device's default one) by the kernel.
  kind     0: out = x * keep / (1 - p); 1: x * keep; 2: alpha dropout (SELU).
  lead     the leading dims that index the mask: input.dim() for element-wise dropout,
           2 for channel-wise (N, C), 1 for drop_path and unbatched channel dropout.
  save     what the second output holds for backward: 0 nothing (an empty uint8 tensor),
           1 the packed keep bits (uint8, ceil(words / 8)), 2 the (key, base) pair (int64[2]).
           An input that requires grad needs 1 or 2.
  global_shape, global_offset  the input is the shard at global_offset of a tensor of
           global_shape: its mask is that shard's slice of the full tensor's mask.
  strides  (backward) the gradient's strides: those of the forward output.
See docs/design.md for the mask and the layouts.
"""
import math

import torch

from . import _reference

_SHARD = "int[]? global_shape=None, int[]? global_offset=None"
SCHEMAS = {
    "dropout": "dropout(Tensor input, Tensor? rng, Generator? generator, float p, int kind, int lead, int save, "
               + _SHARD + ") -> (Tensor, Tensor)",
    "dropout_": "dropout_(Tensor(a!) input, Tensor? rng, Generator? generator, float p, int kind, int lead, "
                + _SHARD + ") -> ()",
    "dropout_add": "dropout_add(Tensor input, Tensor residual, Tensor? rng, Generator? generator, float p, int save, "
                   + _SHARD + ") -> (Tensor, Tensor)",
    "bias_dropout_add": "bias_dropout_add(Tensor input, Tensor bias, Tensor residual, Tensor? rng, "
                        "Generator? generator, float p, int save, " + _SHARD + ") -> (Tensor, Tensor)",
    "dropout_backward": "dropout_backward(Tensor grad, Tensor saved, float p, int kind, int lead, " + _SHARD
                        + ", int[]? strides=None) -> Tensor",
    # the fused dropout + add + norm (csrc/norm_args.h): out, h, mean, rstd, saved
    "dropout_add_norm": "dropout_add_norm(Tensor input, Tensor? residual, Tensor? weight, Tensor? bias, "
                        "Tensor? input_bias, Tensor? rng, Generator? generator, float p, float eps, bool rms, "
                        "bool residual_in_fp32, int save, " + _SHARD
                        + ") -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    "dropout_add_norm_backward": "dropout_add_norm_backward(Tensor grad_out, Tensor? grad_h, Tensor h, "
                                 "Tensor? weight, Tensor? bias, Tensor mean, Tensor rstd, Tensor saved, float p, "
                                 "bool rms, bool input_bias_grad, " + _SHARD
                                 + ") -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
}
# Ops whose autograd is the Python formula below for every backend (the compiled kernels'
# too): registered with the library's definition.
PYTHON_AUTOGRAD = ("dropout_add_norm",)

# The pure-Python kernel of each op (_reference.py).
PYTHON_KERNELS = {
    "dropout": _reference.dropout,
    "dropout_": _reference.dropout_,
    "dropout_add": _reference.dropout_add,
    "bias_dropout_add": _reference.bias_dropout_add,
    "dropout_backward": _reference.dropout_backward,
    "dropout_add_norm": _reference.dropout_add_norm,
    "dropout_add_norm_backward": _reference.dropout_add_norm_backward,
}

_libraries = {}


def define_library(namespace):
    """Define every op of SCHEMAS under `namespace` (once) and register their fake
    kernels. Ops that draw from a generator are tagged nondeterministic_seeded."""
    if namespace not in _libraries:
        lib = torch.library.Library(namespace, "DEF")
        for name, schema in SCHEMAS.items():
            tags = (torch.Tag.nondeterministic_seeded,) if "Generator?" in schema else ()
            lib.define(schema, tags=tags)
        _libraries[namespace] = lib
        _register_fakes(namespace, lib)
        ops = getattr(torch.ops, namespace)
        for name, (setup, backward) in _formulas(ops).items():
            if name in PYTHON_AUTOGRAD:
                torch.library.register_autograd(namespace + "::" + name, backward, setup_context=setup, lib=lib)
    return getattr(torch.ops, namespace)


# ------------------------------------------------------------------------ fake kernels


def _saved_like(input, words, save, rng):
    """The second output: packed bits, the (key, base) pair, or an empty uint8 tensor."""
    if save == _reference.SAVE_BITS:
        return input.new_empty(((words + 7) // 8,), dtype=torch.uint8)
    if save == _reference.SAVE_RNG:
        device = rng.device if rng is not None else input.device
        return torch.empty(2, dtype=torch.int64, device=device)
    return input.new_empty((0,), dtype=torch.uint8)


def _register_fakes(namespace, lib):
    q = namespace + "::"

    @torch.library.register_fake(q + "dropout", lib=lib)
    def _(input, rng, generator, p, kind, lead, save, global_shape=None, global_offset=None):
        return torch.empty_like(input), _saved_like(input, math.prod(input.shape[:lead]), save, rng)

    @torch.library.register_fake(q + "dropout_", lib=lib)
    def _(input, rng, generator, p, kind, lead, global_shape=None, global_offset=None):
        return None

    @torch.library.register_fake(q + "dropout_add", lib=lib)
    def _(input, residual, rng, generator, p, save, global_shape=None, global_offset=None):
        return torch.empty_like(input), _saved_like(input, input.numel(), save, rng)

    @torch.library.register_fake(q + "bias_dropout_add", lib=lib)
    def _(input, bias, residual, rng, generator, p, save, global_shape=None, global_offset=None):
        return torch.empty_like(input), _saved_like(input, input.numel(), save, rng)

    @torch.library.register_fake(q + "dropout_add_norm", lib=lib)
    def _(input, residual, weight, bias, input_bias, rng, generator, p, eps, rms, residual_in_fp32, save,
          global_shape=None, global_offset=None):
        acc = _reference._acc_dtype(input.dtype)
        rows = math.prod(input.shape[:-1])
        h_dtype = _reference.norm_h_dtype(input.dtype, residual_in_fp32)
        return (input.new_empty(input.shape), input.new_empty(input.shape, dtype=h_dtype),
                input.new_empty((0 if rms else rows,), dtype=acc), input.new_empty((rows,), dtype=acc),
                _saved_like(input, input.numel(), save, rng))

    @torch.library.register_fake(q + "dropout_add_norm_backward", lib=lib)
    def _(grad_out, grad_h, h, weight, bias, mean, rstd, saved, p, rms, input_bias_grad, global_shape=None,
          global_offset=None):
        acc = _reference._acc_dtype(grad_out.dtype)
        hidden = grad_out.shape[-1]

        def sums(wanted):
            return grad_out.new_empty((hidden if wanted else 0,), dtype=acc)

        return (grad_out.new_empty(grad_out.shape), grad_out.new_empty(grad_out.shape, dtype=h.dtype),
                sums(weight is not None), sums(bias is not None and not rms), sums(input_bias_grad))

    @torch.library.register_fake(q + "dropout_backward", lib=lib)
    def _(grad, saved, p, kind, lead, global_shape=None, global_offset=None, strides=None):
        if strides is not None:
            return torch.empty_strided(grad.shape, strides, dtype=grad.dtype, device=grad.device)
        return torch.empty_like(grad)


# -------------------------------------------------------- the Python kernels' autograd
# The formulas of csrc/autograd.cpp: grad * keep * scale from the saved bits or
# (key, base). Each is a (setup_context, backward) pair with torch.library's signatures,
# which torch.autograd.Function shares, so they serve both the registered fallback and
# the Python kernels called directly (python_kernels()).


def _pad(inputs, n):
    """Inputs with the schema's trailing defaults (None) filled in."""
    return tuple(inputs) + (None,) * (n - len(inputs))


def _formulas(ops):
    """{op name: (setup_context, backward)}, the backward calling ops.dropout_backward."""

    def save_mask(ctx, saved, out, p, kind, lead, global_shape, global_offset, save=None):
        if save == _reference.SAVE_NONE:
            raise ValueError("dropout_ext: save=0 keeps no mask for backward, but an input requires grad "
                             "(use 1 for bits, 2 for (key, base))")
        ctx.set_materialize_grads(False)  # the second output has no gradient
        ctx.save_for_backward(saved)
        ctx.p, ctx.kind, ctx.lead = p, kind, lead
        ctx.global_shape, ctx.global_offset = global_shape, global_offset
        ctx.strides = out.stride()

    def grad_input(ctx, grad):
        if grad is None:
            return None
        (saved,) = ctx.saved_tensors
        return ops.dropout_backward(grad, saved, ctx.p, ctx.kind, ctx.lead, ctx.global_shape,
                                    ctx.global_offset, ctx.strides)

    def dropout_setup(ctx, inputs, output):
        _, _, _, p, kind, lead, save, gs, go = _pad(inputs, 9)
        save_mask(ctx, output[1], output[0], p, kind, lead, gs, go, save)

    def dropout_backward(ctx, grad_out, _grad_saved):
        return (grad_input(ctx, grad_out),) + (None,) * 8

    def dropout_add_setup(ctx, inputs, output):
        input, _, _, _, p, save, gs, go = _pad(inputs, 8)
        save_mask(ctx, output[1], output[0], p, _reference.KIND_INVERTED, input.dim(), gs, go, save)

    def dropout_add_backward(ctx, grad_out, _grad_saved):
        return (grad_input(ctx, grad_out), grad_out) + (None,) * 6

    def bias_dropout_add_setup(ctx, inputs, output):
        input, _, _, _, _, p, save, gs, go = _pad(inputs, 9)
        save_mask(ctx, output[1], output[0], p, _reference.KIND_INVERTED, input.dim(), gs, go, save)
        ctx.leading_dims = tuple(range(input.dim() - 1))

    def bias_dropout_add_backward(ctx, grad_out, _grad_saved):
        gx = grad_input(ctx, grad_out)
        gb = gx.sum(ctx.leading_dims) if ctx.leading_dims and gx is not None else gx
        return (gx, gb, grad_out) + (None,) * 6

    def backward_setup(ctx, inputs, output):
        _, saved, p, kind, lead, gs, go, _ = _pad(inputs, 8)
        save_mask(ctx, saved, output, p, kind, lead, gs, go)

    def backward_backward(ctx, grad):
        return (grad_input(ctx, grad),) + (None,) * 7

    def norm_setup(ctx, inputs, output):
        input, residual, weight, bias, input_bias, _, _, p, _, rms, _, save, gs, go = _pad(inputs, 14)
        _, h, mean, rstd, saved = output
        if save == _reference.SAVE_NONE:
            raise ValueError("dropout_ext: save=0 keeps no mask for backward, but an input requires grad "
                             "(use 1 for bits, 2 for (key, base))")
        ctx.set_materialize_grads(False)
        # h is an output (with prenorm=True the one returned): saved, never copied
        ctx.save_for_backward(h, weight, bias, mean, rstd, saved)
        ctx.p, ctx.rms, ctx.global_shape, ctx.global_offset = p, rms, gs, go
        ctx.out_dtype = output[0].dtype
        ctx.dtypes = tuple(t.dtype if t is not None else None for t in (residual, weight, bias, input_bias))

    def norm_backward(ctx, grad_out, grad_h, _grad_mean, _grad_rstd, _grad_saved):
        none = (None,) * 14
        if grad_out is None and grad_h is None:
            return none
        h, weight, bias, mean, rstd, saved = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros(h.shape, dtype=ctx.out_dtype, device=h.device)
        need = ctx.needs_input_grad
        gx, gh, gw, gb, gib = ops.dropout_add_norm_backward(
            grad_out, grad_h, h, weight, bias if need[3] else None, mean, rstd, saved, ctx.p, ctx.rms, need[4],
            ctx.global_shape, ctx.global_offset)
        rd, wd, bd, ibd = ctx.dtypes
        return (gx if need[0] else None, gh.to(rd) if need[1] else None, gw.to(wd) if need[2] else None,
                gb.to(bd) if need[3] else None, gib.to(ibd) if need[4] else None) + none[5:]

    return {
        "dropout_add_norm": (norm_setup, norm_backward),
        "dropout": (dropout_setup, dropout_backward),
        "dropout_add": (dropout_add_setup, dropout_add_backward),
        "bias_dropout_add": (bias_dropout_add_setup, bias_dropout_add_backward),
        "dropout_backward": (backward_setup, backward_backward),
    }


_fallback_library = None


def register_fallback(namespace="dropout_ext"):
    """Serve `namespace`'s ops with the Python kernels (every device) and their autograd.
    The registrations live in one library object, so unregister_fallback() can drop them
    before compiled kernels are loaded (dropout_ext.build())."""
    global _fallback_library
    if _fallback_library is not None:
        return
    lib = torch.library.Library(namespace, "IMPL")
    for name, kernel in PYTHON_KERNELS.items():
        lib.impl(name, kernel, "CompositeExplicitAutograd")
    for name, (setup, backward) in _formulas(getattr(torch.ops, namespace)).items():
        if name in PYTHON_AUTOGRAD:
            continue  # registered with the definition
        torch.library.register_autograd(namespace + "::" + name, backward, setup_context=setup, lib=lib)
    _fallback_library = lib


def unregister_fallback():
    global _fallback_library
    if _fallback_library is not None:
        _fallback_library._destroy()
        _fallback_library = None


class _PythonOp:
    """One Python kernel called directly, through a torch.autograd.Function with the
    op's formulas when an input requires grad."""

    def __init__(self, name, kernel, formulas, n_args):
        self.name, self.kernel, self.n_args = name, kernel, n_args
        self.function = None
        if formulas is not None:
            setup, backward = formulas
            self.function = type(name, (torch.autograd.Function,), {
                "forward": staticmethod(lambda *args: kernel(*args)),
                "setup_context": staticmethod(setup),
                "backward": staticmethod(backward),
            })

    def __call__(self, *args):
        args = _pad(args, self.n_args)
        if (self.function is not None and torch.is_grad_enabled()
                and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)):
            return self.function.apply(*args)
        return self.kernel(*args)


class PythonKernels:
    """The Python kernels with the attribute names of an op namespace, called directly
    (no dispatcher): how tests and benchmarks reach them when the compiled kernels are
    registered under the op names."""

    def __init__(self):
        formulas = _formulas(self)
        for name, kernel in PYTHON_KERNELS.items():
            n_args = len(torch._C.parse_schema(SCHEMAS[name]).arguments)
            setattr(self, name, _PythonOp(name, kernel, formulas.get(name), n_args))
