"""Op schemas and fake kernels of both backends, and the Python backend's autograd.

`dropout_ext` holds the compiled kernels (schemas declared here, define_library; autograd
in csrc/autograd.cpp); `dropout_ext_py` holds the same schemas with the pure-Python kernels
of _reference.py and the Python autograd formulas below. Both get the same fake kernels,
so torch.compile traces either.
"""
import math

import torch

from . import _reference

# The schemas of every namespace: dropout_ext_py (define_python_namespace), and dropout_ext
# and dropout_ext_testing (define_library), whose kernels the C++ extensions register.
SCHEMAS = {
    "dropout": "dropout(Tensor input, Tensor? rng, Generator? generator, float p, int kind, int lead, int save, "
               "int[]? global_shape=None, int[]? global_offset=None) -> (Tensor, Tensor)",
    "dropout_": "dropout_(Tensor(a!) input, Tensor? rng, Generator? generator, float p, int kind, int lead, "
                "int[]? global_shape=None, int[]? global_offset=None) -> ()",
    "dropout_add": "dropout_add(Tensor input, Tensor residual, Tensor? rng, Generator? generator, float p, int save, "
                   "int[]? global_shape=None, int[]? global_offset=None) -> (Tensor, Tensor)",
    "bias_dropout_add": "bias_dropout_add(Tensor input, Tensor bias, Tensor residual, Tensor? rng, Generator? generator, "
                        "float p, int save, int[]? global_shape=None, int[]? global_offset=None) -> (Tensor, Tensor)",
    "dropout_backward": "dropout_backward(Tensor grad, Tensor saved, float p, int kind, int lead, "
                        "int[]? global_shape=None, int[]? global_offset=None, int[]? strides=None) -> Tensor",
    "philox4x32_10": "philox4x32_10(Tensor counter, Tensor key) -> Tensor",
}

# Ops that draw from a generator when no rng tensor is given.
RANDOM_OPS = ("dropout", "dropout_", "dropout_add", "bias_dropout_add")

PYTHON_KERNELS = {
    "dropout": _reference.dropout,
    "dropout_": _reference.dropout_,
    "dropout_add": _reference.dropout_add,
    "bias_dropout_add": _reference.bias_dropout_add,
    "dropout_backward": _reference.dropout_backward,
    "philox4x32_10": _reference.philox4x32_10_op,
}

_python_library = None
_libraries = {}


def define_library(namespace):
    """Declare the compiled ops' schemas (SCHEMAS, but philox4x32_10, which only the testing
    module's C++ and the Python backend define) under `namespace`: "dropout_ext" before
    `_C` is imported, "dropout_ext_testing" before `_testing`. The C++ side registers
    kernels only."""
    if namespace not in _libraries:
        lib = torch.library.Library(namespace, "DEF")
        for name, schema in SCHEMAS.items():
            if name == "philox4x32_10":
                continue
            tags = (torch.Tag.nondeterministic_seeded,) if "Generator?" in schema else ()
            lib.define(schema, tags=tags)
        _libraries[namespace] = lib
    return getattr(torch.ops, namespace)


def define_python_namespace():
    """Declare `dropout_ext_py` with the Python kernels (for every device)."""
    global _python_library
    if _python_library is None:
        lib = torch.library.Library("dropout_ext_py", "DEF")
        for name, schema in SCHEMAS.items():
            tags = (torch.Tag.nondeterministic_seeded,) if name in RANDOM_OPS else ()
            lib.define(schema, tags=tags)
            lib.impl(name, PYTHON_KERNELS[name], "CompositeExplicitAutograd")
        _python_library = lib
    return torch.ops.dropout_ext_py


def _saved_like(input, words, save, rng):
    """The second output: packed bits, the (key, base) pair, or an empty uint8 tensor."""
    if save == _reference.SAVE_BITS:
        return input.new_empty(((words + 7) // 8,), dtype=torch.uint8)
    if save == _reference.SAVE_RNG:
        device = rng.device if rng is not None else input.device
        return torch.empty(2, dtype=torch.int64, device=device)
    return input.new_empty((0,), dtype=torch.uint8)


def _words(input, lead):
    return math.prod(input.shape[:lead])


def register_fakes(namespace):
    q = namespace + "::"

    @torch.library.register_fake(q + "dropout")
    def _(input, rng, generator, p, kind, lead, save, global_shape=None, global_offset=None):
        return torch.empty_like(input), _saved_like(input, _words(input, lead), save, rng)

    @torch.library.register_fake(q + "dropout_")
    def _(input, rng, generator, p, kind, lead, global_shape=None, global_offset=None):
        return None

    @torch.library.register_fake(q + "dropout_add")
    def _(input, residual, rng, generator, p, save, global_shape=None, global_offset=None):
        return torch.empty_like(input), _saved_like(input, input.numel(), save, rng)

    @torch.library.register_fake(q + "bias_dropout_add")
    def _(input, bias, residual, rng, generator, p, save, global_shape=None, global_offset=None):
        return torch.empty_like(input), _saved_like(input, input.numel(), save, rng)

    @torch.library.register_fake(q + "dropout_backward")
    def _(grad, saved, p, kind, lead, global_shape=None, global_offset=None, strides=None):
        if strides is not None:
            return torch.empty_strided(grad.shape, strides, dtype=grad.dtype, device=grad.device)
        return torch.empty_like(grad)

    if hasattr(getattr(torch.ops, namespace), "philox4x32_10"):  # not in the product's namespace
        @torch.library.register_fake(q + "philox4x32_10")
        def _(counter, key):
            return torch.empty_like(counter)


def register_python_autograd(ops):
    """Autograd of the Python backend (the compiled backend's is in csrc/autograd.cpp);
    the same formulas: grad * keep * scale from the saved bits or (key, base)."""
    q = "dropout_ext_py::"

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

    torch.library.register_autograd(q + "dropout", dropout_backward, setup_context=dropout_setup)

    def dropout_add_setup(ctx, inputs, output):
        input, _, _, _, p, save, gs, go = _pad(inputs, 8)
        save_mask(ctx, output[1], output[0], p, _reference.KIND_INVERTED, input.dim(), gs, go, save)

    def dropout_add_backward(ctx, grad_out, _grad_saved):
        return (grad_input(ctx, grad_out), grad_out) + (None,) * 6

    torch.library.register_autograd(q + "dropout_add", dropout_add_backward, setup_context=dropout_add_setup)

    def bias_dropout_add_setup(ctx, inputs, output):
        input, _, _, _, _, p, save, gs, go = _pad(inputs, 9)
        save_mask(ctx, output[1], output[0], p, _reference.KIND_INVERTED, input.dim(), gs, go, save)
        ctx.leading_dims = tuple(range(input.dim() - 1))

    def bias_dropout_add_backward(ctx, grad_out, _grad_saved):
        gx = grad_input(ctx, grad_out)
        gb = gx.sum(ctx.leading_dims) if ctx.leading_dims and gx is not None else gx
        return (gx, gb, grad_out) + (None,) * 6

    torch.library.register_autograd(q + "bias_dropout_add", bias_dropout_add_backward,
                                    setup_context=bias_dropout_add_setup)

    def backward_setup(ctx, inputs, output):
        _, saved, p, kind, lead, gs, go, _ = _pad(inputs, 8)
        save_mask(ctx, saved, output, p, kind, lead, gs, go)

    def backward_backward(ctx, grad):
        return (grad_input(ctx, grad),) + (None,) * 7

    torch.library.register_autograd(q + "dropout_backward", backward_backward, setup_context=backward_setup)


def _pad(inputs, n):
    """Inputs with the schema's trailing defaults (None) filled in."""
    return tuple(inputs) + (None,) * (n - len(inputs))
