"""Op schemas, fake kernels and autograd, registered once for each backend namespace.

`dropout_ext` holds the compiled kernels (schemas declared in csrc/dropout.cpp);
`dropout_ext_py` holds the same schemas with the pure-Python kernels of _reference.py.
Both get the same fake kernels and autograd formulas from `register(namespace)`.
"""
import torch

from . import _reference

# Must match TORCH_LIBRARY(dropout_ext, m) in csrc/dropout.cpp (a test compares them).
SCHEMAS = {
    "dropout": "dropout(Tensor input, Tensor rng, float p, bool scale_train, int group, bool save_bits) -> (Tensor, Tensor)",
    "dropout_": "dropout_(Tensor(a!) input, Tensor rng, float p, bool scale_train, int group, bool save_bits) -> Tensor",
    "apply_mask_bits": "apply_mask_bits(Tensor input, Tensor bits, float p, bool scale_train, int group) -> Tensor",
    "dropout_add": "dropout_add(Tensor input, Tensor residual, Tensor rng, float p, bool save_bits) -> (Tensor, Tensor)",
    "bias_dropout_add": "bias_dropout_add(Tensor input, Tensor bias, Tensor residual, Tensor rng, float p, bool save_bits) -> (Tensor, Tensor)",
    "philox4x32_10": "philox4x32_10(Tensor counter, Tensor key) -> Tensor",
}

PYTHON_KERNELS = {
    "dropout": _reference.dropout,
    "dropout_": _reference.dropout_,
    "apply_mask_bits": _reference.apply_mask_bits,
    "dropout_add": _reference.dropout_add,
    "bias_dropout_add": _reference.bias_dropout_add,
    "philox4x32_10": _reference.philox4x32_10_op,
}

_python_library = None


def define_python_namespace():
    """Declare `dropout_ext_py` with the Python kernels (for every device)."""
    global _python_library
    if _python_library is None:
        lib = torch.library.Library("dropout_ext_py", "DEF")
        for name, schema in SCHEMAS.items():
            lib.define(schema)
            lib.impl(name, PYTHON_KERNELS[name], "CompositeExplicitAutograd")
        _python_library = lib
    return torch.ops.dropout_ext_py


def _bits_like(input, words, save_bits):
    return input.new_empty(((words + 7) // 8) if save_bits else 0, dtype=torch.uint8)


def register(namespace):
    """Fake kernels and autograd formulas for every op of `namespace`."""
    ops = getattr(torch.ops, namespace)
    q = namespace + "::"

    @torch.library.register_fake(q + "dropout")
    def _(input, rng, p, scale_train, group, save_bits):
        return torch.empty_like(input), _bits_like(input, input.numel() // group, save_bits)

    @torch.library.register_fake(q + "dropout_")
    def _(input, rng, p, scale_train, group, save_bits):
        return _bits_like(input, input.numel() // group, save_bits)

    @torch.library.register_fake(q + "apply_mask_bits")
    def _(input, bits, p, scale_train, group):
        return torch.empty_like(input)

    @torch.library.register_fake(q + "dropout_add")
    def _(input, residual, rng, p, save_bits):
        return torch.empty_like(input), _bits_like(input, input.numel(), save_bits)

    @torch.library.register_fake(q + "bias_dropout_add")
    def _(input, bias, residual, rng, p, save_bits):
        return torch.empty_like(input), _bits_like(input, input.numel(), save_bits)

    @torch.library.register_fake(q + "philox4x32_10")
    def _(counter, key):
        return torch.empty_like(counter)

    # Backward of every mask op: grad * keep * scale, from the saved bits when the
    # forward stored them, else by drawing the same mask again from (key, base).
    def masked_grad(ctx, grad):
        rng, bits = ctx.saved_tensors
        if ctx.from_bits:
            return ops.apply_mask_bits(grad, bits, ctx.p, ctx.scale_train, ctx.group)
        return ops.dropout(grad, rng, ctx.p, ctx.scale_train, ctx.group, False)[0]

    def save_mask(ctx, rng, bits, p, scale_train, group, save_bits):
        ctx.p, ctx.scale_train, ctx.group, ctx.from_bits = p, scale_train, group, save_bits
        ctx.save_for_backward(rng, bits)

    def dropout_setup(ctx, inputs, output):
        _, rng, p, scale_train, group, save_bits = inputs
        save_mask(ctx, rng, output[1], p, scale_train, group, save_bits)

    def dropout_backward(ctx, grad_out, _grad_bits):
        return masked_grad(ctx, grad_out), None, None, None, None, None

    torch.library.register_autograd(q + "dropout", dropout_backward, setup_context=dropout_setup)

    def apply_bits_setup(ctx, inputs, output):
        _, bits, p, scale_train, group = inputs
        save_mask(ctx, bits.new_empty(0), bits, p, scale_train, group, True)

    def apply_bits_backward(ctx, grad_out):
        return masked_grad(ctx, grad_out), None, None, None, None

    torch.library.register_autograd(q + "apply_mask_bits", apply_bits_backward, setup_context=apply_bits_setup)

    def dropout_add_setup(ctx, inputs, output):
        _, _, rng, p, save_bits = inputs
        save_mask(ctx, rng, output[1], p, True, 1, save_bits)

    def dropout_add_backward(ctx, grad_out, _grad_bits):
        return masked_grad(ctx, grad_out), grad_out, None, None, None

    torch.library.register_autograd(q + "dropout_add", dropout_add_backward, setup_context=dropout_add_setup)

    def bias_dropout_add_setup(ctx, inputs, output):
        input, _, _, rng, p, save_bits = inputs
        save_mask(ctx, rng, output[1], p, True, 1, save_bits)
        ctx.leading_dims = tuple(range(input.dim() - 1))

    def bias_dropout_add_backward(ctx, grad_out, _grad_bits):
        grad_input = masked_grad(ctx, grad_out)
        grad_bias = grad_input.sum(ctx.leading_dims) if ctx.leading_dims else grad_input
        return grad_input, grad_bias, grad_out, None, None, None

    torch.library.register_autograd(
        q + "bias_dropout_add", bias_dropout_add_backward, setup_context=bias_dropout_add_setup
    )
    return ops
