"""Drop-in replacements for torch.nn.functional's dropout functions.

Each function checks what torch checks in Python (p, the input's rank, its warnings),
handles evaluation mode, and hands a training-mode call to _route.py: the compiled fast
entry for the common case, else one Call description that _route.run sends on its route
(op, torch.func, DTensor). The ops check everything else.
"""
import numbers
import warnings
from typing import Optional, Sequence

import torch
from torch import Tensor

from . import _reference, _route
from ._route import Call

__all__ = [
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
    "drop_path", "dropout_add", "bias_dropout_add", "dropout_add_layer_norm", "dropout_add_rms_norm",
]

KIND_INVERTED, KIND_VANILLA, KIND_ALPHA = _reference.KIND_INVERTED, _reference.KIND_VANILLA, _reference.KIND_ALPHA


def _check_p(p):
    """p as a float in [0, 1]; torch's ValueError text otherwise (NaN included)."""
    if isinstance(p, torch.Tensor):
        if p.numel() != 1 or p.is_complex():
            raise TypeError("dropout probability must be a real number, got a tensor of shape %s and dtype %s"
                            % (tuple(p.shape), p.dtype))
        value = float(p)
    elif isinstance(p, numbers.Real):
        value = float(p)
    else:
        raise TypeError("dropout probability must be a real number, got %s" % type(p).__name__)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    return value


def _check_input(input, name="input"):
    """A tensor of a floating dtype (the ops check it too; this serves the paths that run
    no op, such as evaluation mode)."""
    if not isinstance(input, torch.Tensor):
        raise TypeError("%s must be a torch.Tensor, got %s" % (name, type(input).__name__))
    _reference.check_floating(input, name)


def _eval(input, p, inplace, scale_train):
    """training=False: the input itself, or input * (1 - p) for vanilla dropout."""
    if scale_train or p == 0.0:
        return input
    return input.mul_(1.0 - p) if inplace else input * (1.0 - p)


# ------------------------------------------------------------------------------ dropout


def dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *, seed: Optional[int] = None,
            generator: Optional[torch.Generator] = None, scale_train: bool = True,
            global_shape: Optional[Sequence[int]] = None, global_offset: Optional[Sequence[int]] = None) -> Tensor:
    """Like torch.nn.functional.dropout: zeroes each element with probability p.

    training=True: out = input * keep / (1 - p) (scale_train=True, "inverted" dropout)
    or input * keep (scale_train=False, "vanilla"); training=False: input itself, or
    input * (1 - p) with scale_train=False. seed= gives a stateless mask that is the same
    on every device; generator= draws (key, base) from that generator. global_shape= and
    global_offset= make the input the shard at that offset of a tensor of that shape: it
    gets its slice of the full tensor's mask.
    """
    if p.__class__ is not float or not 0.0 <= p <= 1.0:
        p = _check_p(p)
    kind = KIND_INVERTED if scale_train else KIND_VANILLA
    if training and not inplace and generator is None and global_shape is None and global_offset is None:
        out = _route.fast_dropout(input, p, kind, seed)
        if out is not NotImplemented:
            return out
    _check_input(input)
    if not training:
        return _eval(input, p, inplace, scale_train)
    return _route.run(Call("dropout", input, p, kind, None, inplace, seed, generator, global_shape, global_offset))


# ------------------------------------------------------------------ channel-wise


def _feature_dropout(input, p, training, inplace, seed, generator, global_shape, global_offset):
    """One mask word per (N, C) position of an input of at least 2 dims (torch's
    feature_dropout)."""
    if input.dim() < 2:
        raise RuntimeError("Feature dropout requires at least 2 dimensions in the input")
    if not training:
        return _eval(input, p, inplace, True)
    return _route.run(Call("dropout", input, p, KIND_INVERTED, 2, inplace,
                           seed, generator, global_shape, global_offset))


def _unbatched(input, batched_dim):
    """torch's dropout1d/3d treat an input without the batch dim as a batch of one:
    only the channel dim (dim 0) indexes the mask words."""
    return input.dim() != batched_dim


def _channel_dropout(input, p, training, inplace, seed, generator, batched_dim, global_shape, global_offset):
    if not training:
        return _eval(input, p, inplace, True)
    if _unbatched(input, batched_dim):
        if input.dim() < 1:
            raise RuntimeError("Feature dropout requires at least 2 dimensions in the input")
        return _route.run(Call("dropout", input, p, KIND_INVERTED, 1, inplace,
                               seed, generator, global_shape, global_offset))
    return _feature_dropout(input, p, training, inplace, seed, generator, global_shape, global_offset)


def _warn_unusual_rank(spatial, inp_dim):
    """torch's deprecation warning for dropout2d/3d on an input of another rank (stacklevel
    3: the user's call of dropout2d/3d)."""
    name = "dropout%dd" % spatial
    if inp_dim not in (spatial + 1, spatial + 2):
        warnings.warn(
            f"{name}: Received a {inp_dim}-D input to {name}, which is deprecated "
            "and will result in an error in a future release. To retain the behavior "
            f"and silence this warning, please use dropout instead. Note that {name} "
            f"exists to provide channel-wise dropout on inputs with {spatial} spatial dimensions, "
            f"a channel dimension, and an optional batch dimension (i.e. {spatial + 1}D or {spatial + 2}D inputs).",
            stacklevel=3,
        )


def dropout1d(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *,
              seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
              global_shape: Optional[Sequence[int]] = None, global_offset: Optional[Sequence[int]] = None) -> Tensor:
    """torch.nn.functional.dropout1d: zero whole channels of (N, C, L) or (C, L) input."""
    p = _check_p(p)
    _check_input(input)
    if input.dim() not in (2, 3):
        raise RuntimeError(
            f"dropout1d: Expected 2D or 3D input, but received a {input.dim()}D input. "
            "Note that dropout1d exists to provide channel-wise dropout on inputs with 1 "
            "spatial dimension, a channel dimension, and an optional batch dimension "
            "(i.e. 2D or 3D inputs)."
        )
    return _channel_dropout(input, p, training, inplace, seed, generator, 3, global_shape, global_offset)


def dropout2d(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *,
              seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
              global_shape: Optional[Sequence[int]] = None, global_offset: Optional[Sequence[int]] = None) -> Tensor:
    """torch.nn.functional.dropout2d, warnings included (3-D input is taken as (N, C, L))."""
    p = _check_p(p)
    _check_input(input)
    inp_dim = input.dim()
    _warn_unusual_rank(2, inp_dim)
    if inp_dim == 3:
        warnings.warn(
            "dropout2d: Received a 3D input to dropout2d and assuming that channel-wise "
            "1D dropout behavior is desired - input is interpreted as shape (N, C, L), where C "
            "is the channel dim. This behavior will change in a future release to interpret the "
            "input as one without a batch dimension, i.e. shape (C, H, W). To maintain the 1D "
            "channel-wise dropout behavior, please switch to using dropout1d instead.",
            stacklevel=2,
        )
    return _feature_dropout(input, p, training, inplace, seed, generator, global_shape, global_offset)


def dropout3d(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *,
              seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
              global_shape: Optional[Sequence[int]] = None, global_offset: Optional[Sequence[int]] = None) -> Tensor:
    """torch.nn.functional.dropout3d: zero whole channels of (N, C, D, H, W) or (C, D, H, W)."""
    p = _check_p(p)
    _check_input(input)
    _warn_unusual_rank(3, input.dim())
    return _channel_dropout(input, p, training, inplace, seed, generator, 5, global_shape, global_offset)


# -------------------------------------------------------------------- alpha dropout


def _alpha(input, p, training, inplace, seed, generator, feature, global_shape, global_offset):
    """torch's alpha dropout, one fused pass: out = x * (m * a) + ((m - 1) * alpha * a +
    alpha * a * p), a = 1 / sqrt((alpha**2 * p + 1) * (1 - p)); backward keeps the bits.
    p == 1 gives x * 0, as torch does."""
    if not training or p == 0.0 or input.numel() == 0:
        return input
    if feature and input.dim() < 2:
        raise RuntimeError("Feature dropout requires at least 2 dimensions in the input")
    if p == 1.0:
        return input.mul_(0.0) if inplace else input * 0.0
    lead = 2 if feature else input.dim()
    return _route.run(Call("dropout", input, p, KIND_ALPHA, lead, inplace, seed, generator, global_shape,
                           global_offset))


def alpha_dropout(input: Tensor, p: float = 0.5, training: bool = False, inplace: bool = False, *,
                  seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                  global_shape: Optional[Sequence[int]] = None, global_offset: Optional[Sequence[int]] = None) -> Tensor:
    """torch.nn.functional.alpha_dropout (for SELU networks); training=False by default."""
    p = _check_p(p)
    _check_input(input)
    return _alpha(input, p, training, inplace, seed, generator, False, global_shape, global_offset)


def feature_alpha_dropout(input: Tensor, p: float = 0.5, training: bool = False, inplace: bool = False, *,
                          seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                          global_shape: Optional[Sequence[int]] = None,
                          global_offset: Optional[Sequence[int]] = None) -> Tensor:
    """torch.nn.functional.feature_alpha_dropout: alpha dropout of whole channels."""
    p = _check_p(p)
    _check_input(input)
    return _alpha(input, p, training, inplace, seed, generator, True, global_shape, global_offset)


# ------------------------------------------------------------------------ drop_path


def drop_path(input: Tensor, p: float = 0.5, training: bool = True, *, seed: Optional[int] = None,
              generator: Optional[torch.Generator] = None, global_shape: Optional[Sequence[int]] = None,
              global_offset: Optional[Sequence[int]] = None) -> Tensor:
    """Stochastic depth (timm's drop_path, torchvision's stochastic_depth "row" mode):
    each sample (index of dim 0) is kept with probability 1 - p and scaled by 1 / (1 - p)."""
    p = _check_p(p)
    _check_input(input)
    if input.dim() < 1:
        raise ValueError("drop_path needs an input with a batch dimension, got a 0-dim tensor")
    if not training or p == 0.0:
        return input
    return _route.run(Call("dropout", input, p, KIND_INVERTED, 1, False,
                           seed, generator, global_shape, global_offset))


# ------------------------------------------------------------------- fused residual


def _fused(op, input, residual, bias, p, training, seed, generator, global_shape, global_offset):
    if p.__class__ is not float or not 0.0 <= p <= 1.0:
        p = _check_p(p)
    if training and generator is None and seed is None and global_shape is None and global_offset is None:
        out = _route.fast_dropout_add(input, residual, bias, p)
        if out is not NotImplemented:
            return out
    _check_input(input)
    _check_input(residual, "residual")
    if bias is not None:
        _check_input(bias, "bias")
    if not training:
        _reference.check_operands(input, residual, bias)
        return residual + input if bias is None else residual + (input + bias)
    return _route.run(Call(op, input, p, KIND_INVERTED, None, False, seed, generator, global_shape, global_offset,
                           residual, bias))


def dropout_add(input: Tensor, residual: Tensor, p: float = 0.5, training: bool = True, *,
                seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                global_shape: Optional[Sequence[int]] = None, global_offset: Optional[Sequence[int]] = None) -> Tensor:
    """residual + dropout(input, p) in one pass (read input and residual once, write once)."""
    return _fused("dropout_add", input, residual, None, p, training, seed, generator, global_shape, global_offset)


def bias_dropout_add(input: Tensor, bias: Tensor, residual: Tensor, p: float = 0.5, training: bool = True, *,
                     seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                     global_shape: Optional[Sequence[int]] = None,
                     global_offset: Optional[Sequence[int]] = None) -> Tensor:
    """residual + dropout(input + bias, p) in one pass; bias broadcasts over the last dim."""
    return _fused("bias_dropout_add", input, residual, bias, p, training, seed, generator, global_shape,
                  global_offset)


# ------------------------------------------------------- fused residual + normalization

# (key, base) of the evaluation-mode call: p = 0 keeps every element, nothing is drawn.
_EVAL_SEED = 0


def _norm_call(rms, input, residual, weight, bias, p, training, eps, input_bias, prenorm, residual_in_fp32, seed,
               generator, global_shape, global_offset):
    p = _check_p(p)
    _check_input(input)
    if residual is not None:
        _check_input(residual, "residual")
    norm = _route.Norm(weight, bias, float(eps), rms, bool(prenorm), bool(residual_in_fp32))
    if not training:  # no dropout, the same sum and norm; the generator is left alone
        p, seed, generator = 0.0, _EVAL_SEED, None
    return _route.run(Call("dropout_add_norm", input, p, KIND_INVERTED, None, False, seed, generator, global_shape,
                           global_offset, residual, input_bias, norm))


def dropout_add_layer_norm(input: Tensor, residual: Optional[Tensor], weight: Optional[Tensor], bias: Optional[Tensor],
                           p: float = 0.5, training: bool = True, *, eps: float = 1e-5,
                           input_bias: Optional[Tensor] = None, prenorm: bool = False, residual_in_fp32: bool = False,
                           seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                           global_shape: Optional[Sequence[int]] = None,
                           global_offset: Optional[Sequence[int]] = None):
    """layer_norm(residual + dropout(input + input_bias)) over the last dim, in one pass.

    h = residual + dropout(input + input_bias) (residual and input_bias may be None) is bit
    for bit what dropout_add / bias_dropout_add returns for the same seed or generator
    state; the norm is computed from h in float32 (float64 for float64 inputs). Returns the
    normalized output, or (output, h) with prenorm=True (h is the residual stream of a
    pre-norm block). residual_in_fp32=True keeps h in float32 for 16-bit inputs. weight and
    bias (of shape (hidden,), the input's dtype or float32) may be None. Backward keeps the
    mask as bits (or the seed), the mean and 1/std per row, and h."""
    return _norm_call(False, input, residual, weight, bias, p, training, eps, input_bias, prenorm, residual_in_fp32,
                      seed, generator, global_shape, global_offset)


def dropout_add_rms_norm(input: Tensor, residual: Optional[Tensor], weight: Optional[Tensor], p: float = 0.5,
                         training: bool = True, *, eps: Optional[float] = None, input_bias: Optional[Tensor] = None,
                         prenorm: bool = False, residual_in_fp32: bool = False, seed: Optional[int] = None,
                         generator: Optional[torch.Generator] = None, global_shape: Optional[Sequence[int]] = None,
                         global_offset: Optional[Sequence[int]] = None):
    """rms_norm(residual + dropout(input + input_bias)) over the last dim, in one pass; as
    dropout_add_layer_norm otherwise. eps=None is torch.finfo(input.dtype).eps, as
    torch.nn.functional.rms_norm takes it."""
    if eps is None:
        _check_input(input)
        eps = torch.finfo(input.dtype).eps
    return _norm_call(True, input, residual, weight, None, p, training, eps, input_bias, prenorm, residual_in_fp32,
                      seed, generator, global_shape, global_offset)
