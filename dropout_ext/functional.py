"""Drop-in replacements for torch.nn.functional's dropout functions.

Every function validates its arguments here, once, with torch's wording where torch has
one, before any tensor is written; the kernels come from `_backend.ops()`.
"""
import math
import numbers
import operator
import warnings

import torch

from . import _backend

__all__ = [
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
    "drop_path", "dropout_add", "bias_dropout_add",
]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_SEED_LIMIT = 2**64


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
    if not isinstance(input, torch.Tensor):
        raise TypeError("%s must be a torch.Tensor, got %s" % (name, type(input).__name__))
    if input.dtype not in FLOAT_DTYPES:
        raise TypeError(
            "dropout_ext: %s must be a floating point tensor (float16, bfloat16, float32 or "
            "float64), got %s" % (name, input.dtype)
        )


def _check_seed(seed):
    if isinstance(seed, bool) or isinstance(seed, torch.Tensor):
        raise TypeError("seed must be an int in [0, 2**64), got %s" % type(seed).__name__)
    try:
        seed = operator.index(seed)
    except TypeError:
        raise TypeError("seed must be an int in [0, 2**64), got %s" % type(seed).__name__) from None
    if not 0 <= seed < _SEED_LIMIT:
        raise ValueError("seed must be in [0, 2**64), got %d" % seed)
    return seed


def _same_device(generator_device, device):
    if generator_device.type != device.type:
        return False
    if device.type != "cuda":
        return True
    index = device.index if device.index is not None else torch.cuda.current_device()
    gindex = generator_device.index if generator_device.index is not None else torch.cuda.current_device()
    return index == gindex


def _rng_state(input, seed, generator):
    """int64[2] = (key, base) as data. seed=s: (s, 0), the same mask on every device.
    Otherwise two words drawn from the device's generator (or `generator`), so that
    torch.manual_seed reproduces runs and, on CUDA, graph replays draw fresh masks."""
    if seed is not None:
        if generator is not None:
            raise ValueError("dropout_ext: pass seed= or generator=, not both")
        s = _check_seed(seed)
        key = s - _SEED_LIMIT if s >= 2**63 else s
        return torch.tensor([key, 0], dtype=torch.int64)
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError("generator must be a torch.Generator, got %s" % type(generator).__name__)
        if not _same_device(generator.device, input.device):
            raise ValueError(
                "dropout_ext: generator is on %s but the input is on %s" % (generator.device, input.device)
            )
    device = input.device if input.device.type == "cuda" else torch.device("cpu")
    return torch.randint(-(2**63), 2**63 - 1, (2,), dtype=torch.int64, device=device, generator=generator)


def _may_overlap(t):
    """True when two elements of t may share memory. Dims sorted by stride: each stride
    must pass the extent of the smaller ones (torch's own check gives up on non-dense
    strides and then writes anyway; an in-place dropout there would be ill-defined)."""
    if t.numel() == 0:
        return False
    extent = 0
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz > 1):
        if stride <= extent:
            return True
        extent += (size - 1) * stride
    return False


def _check_inplace(input):
    if torch.compiler.is_compiling():
        return
    if input.is_inference() and not torch.is_inference_mode_enabled():
        raise RuntimeError(
            "Inplace update to inference tensor outside InferenceMode is not allowed.You can make "
            "a clone to get a normal tensor before doing inplace update.See "
            "https://github.com/pytorch/rfcs/pull/17 for more details."
        )
    if _may_overlap(input):
        raise RuntimeError(
            "unsupported operation: more than one element of the written-to tensor refers to a "
            "single memory location. Please clone() the tensor before performing the operation."
        )


def _save_bits(*tensors):
    return (
        _backend.backward_storage() == "bits"
        and torch.is_grad_enabled()
        and any(t.requires_grad for t in tensors)
    )


def _masked(input, p, scale_train, group, inplace, seed, generator):
    """Training-mode dropout with one mask word per `group` consecutive elements. The
    checks come before (key, base) is drawn, so a rejected call leaves the generator as
    it was."""
    ops = _backend.ops()
    if inplace:
        _check_inplace(input)
    rng = _rng_state(input, seed, generator)
    if inplace:
        if torch.is_grad_enabled() and input.requires_grad:
            # Autograd of in-place writes is torch's: copy_ records the graph edge and
            # raises torch's error for a leaf that requires grad.
            out, _ = ops.dropout(input, rng, p, scale_train, group, _save_bits(input))
            return input.copy_(out)
        ops.dropout_(input, rng, p, scale_train, group, False)
        # A custom op does not bump the version counter as torch's in-place ops do; without
        # it, autograd could not tell that a tensor saved for another op's backward changed.
        if not torch.compiler.is_compiling() and not input.is_inference():
            torch.autograd.graph.increment_version(input)
        return input
    out, _ = ops.dropout(input, rng, p, scale_train, group, _save_bits(input))
    return out


def _eval(input, p, inplace, scale_train):
    """training=False: the input itself, or input * (1 - p) for vanilla dropout."""
    if scale_train or p == 0.0:
        return input
    return input.mul_(1.0 - p) if inplace else input * (1.0 - p)


def dropout(input, p=0.5, training=True, inplace=False, *, seed=None, generator=None, scale_train=True):
    """Like torch.nn.functional.dropout: zeroes each element with probability p.

    training=True: out = input * keep / (1 - p) (scale_train=True, "inverted" dropout)
    or input * keep (scale_train=False, "vanilla"); training=False: input itself, or
    input * (1 - p) with scale_train=False. seed= gives a stateless mask that is the same
    on every device; generator= draws (key, base) from that generator.
    """
    p = _check_p(p)
    _check_input(input)
    if not training:
        return _eval(input, p, inplace, scale_train)
    return _masked(input, p, scale_train, 1, inplace, seed, generator)


# ------------------------------------------------------------------ channel-wise


def _feature_dropout(input, p, training, inplace, seed, generator):
    """One mask word per (N, C) position of an input of at least 2 dims (torch's
    feature_dropout): `group` = the elements of one channel."""
    if input.dim() < 2:
        raise RuntimeError("Feature dropout requires at least 2 dimensions in the input")
    if not training:
        return _eval(input, p, inplace, True)
    return _masked(input, p, True, _channel_size(input, 2), inplace, seed, generator)


def _channel_size(input, lead):
    """Elements per mask word when the first `lead` dims index the words."""
    return math.prod(input.shape[lead:]) if input.numel() else 1


def _unbatched(input, batched_dim):
    """torch's dropout1d/3d treat an input without the batch dim as a batch of one:
    only the channel dim (dim 0) indexes the mask words."""
    return input.dim() != batched_dim


def _channel_dropout(input, p, training, inplace, seed, generator, batched_dim):
    if not training:
        return _eval(input, p, inplace, True)
    if _unbatched(input, batched_dim):
        if input.dim() < 1:
            raise RuntimeError("Feature dropout requires at least 2 dimensions in the input")
        return _masked(input, p, True, _channel_size(input, 1), inplace, seed, generator)
    return _feature_dropout(input, p, training, inplace, seed, generator)


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


def dropout1d(input, p=0.5, training=True, inplace=False, *, seed=None, generator=None):
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
    return _channel_dropout(input, p, training, inplace, seed, generator, batched_dim=3)


def dropout2d(input, p=0.5, training=True, inplace=False, *, seed=None, generator=None):
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
    return _feature_dropout(input, p, training, inplace, seed, generator)


def dropout3d(input, p=0.5, training=True, inplace=False, *, seed=None, generator=None):
    """torch.nn.functional.dropout3d: zero whole channels of (N, C, D, H, W) or (C, D, H, W)."""
    p = _check_p(p)
    _check_input(input)
    _warn_unusual_rank(3, input.dim())
    return _channel_dropout(input, p, training, inplace, seed, generator, batched_dim=5)


# -------------------------------------------------------------------- alpha dropout

SELU_ALPHA = 1.7580993408473766  # -SELU's negative saturation: scale * alpha


def _alpha(input, p, training, inplace, seed, generator, feature):
    """torch's alpha dropout: out = x * (m * a) + ((m - 1) * alpha * a + alpha * a * p),
    with a = 1 / sqrt((alpha**2 * p + 1) * (1 - p)); p == 1 gives x * 0 as torch does."""
    if not training or p == 0.0 or input.numel() == 0:
        return input
    if feature and input.dim() < 2:
        raise RuntimeError("Feature dropout requires at least 2 dimensions in the input")
    if p == 1.0:
        return input.mul_(0.0) if inplace else input * 0.0
    if inplace:
        _check_inplace(input)
    rng = _rng_state(input, seed, generator)
    mask_shape = tuple(input.shape[:2]) + (1,) * (input.dim() - 2) if feature else tuple(input.shape)
    acc = torch.float64 if input.dtype == torch.float64 else torch.float32
    ones = torch.ones(mask_shape, dtype=acc, device=input.device)
    keep, _ = _backend.ops().dropout(ones, rng, p, False, 1, False)  # 0/1, the SPEC mask
    a = 1.0 / math.sqrt((SELU_ALPHA * SELU_ALPHA * p + 1) * (1 - p))
    shift = (keep - 1) * (SELU_ALPHA * a) + SELU_ALPHA * a * p
    out = (input.to(acc) * (keep * a) + shift).to(input.dtype)
    return input.copy_(out) if inplace else out


def alpha_dropout(input, p=0.5, training=False, inplace=False, *, seed=None, generator=None):
    """torch.nn.functional.alpha_dropout (for SELU networks); training=False by default."""
    p = _check_p(p)
    _check_input(input)
    return _alpha(input, p, training, inplace, seed, generator, feature=False)


def feature_alpha_dropout(input, p=0.5, training=False, inplace=False, *, seed=None, generator=None):
    """torch.nn.functional.feature_alpha_dropout: alpha dropout of whole channels."""
    p = _check_p(p)
    _check_input(input)
    return _alpha(input, p, training, inplace, seed, generator, feature=True)


# ------------------------------------------------------------------------ drop_path


def drop_path(input, p=0.5, training=True, *, seed=None, generator=None):
    """Stochastic depth (timm's drop_path, torchvision's stochastic_depth "row" mode):
    each sample (index of dim 0) is kept with probability 1 - p and scaled by 1 / (1 - p)."""
    p = _check_p(p)
    _check_input(input)
    if input.dim() < 1:
        raise ValueError("drop_path needs an input with a batch dimension, got a 0-dim tensor")
    if not training or p == 0.0:
        return input
    return _masked(input, p, True, _channel_size(input, 1), False, seed, generator)


# ------------------------------------------------------------------- fused residual


def _check_fused(input, residual, bias=None):
    _check_input(input)
    _check_input(residual, "residual")
    if bias is not None:
        _check_input(bias, "bias")
    for name, t in (("residual", residual),) + ((("bias", bias),) if bias is not None else ()):
        if t.dtype != input.dtype:
            raise TypeError("dropout_ext: %s must have the input's dtype %s, got %s" % (name, input.dtype, t.dtype))
        if t.device != input.device:
            raise RuntimeError("dropout_ext: %s must be on the input's device %s, got %s" % (name, input.device, t.device))
    if residual.shape != input.shape:
        raise RuntimeError("dropout_ext: residual must have the input's shape %s, got %s"
                           % (tuple(input.shape), tuple(residual.shape)))
    if bias is not None:
        if input.dim() < 1 or bias.dim() != 1 or bias.shape[0] != input.shape[-1]:
            raise RuntimeError("dropout_ext: bias must be 1-D with the input's last dimension (%s), got shape %s"
                               % (input.shape[-1] if input.dim() else "none", tuple(bias.shape)))


def dropout_add(input, residual, p=0.5, training=True, *, seed=None, generator=None):
    """residual + dropout(input, p) in one pass (read input and residual once, write once)."""
    p = _check_p(p)
    _check_fused(input, residual)
    if not training:
        return residual + input
    rng = _rng_state(input, seed, generator)
    out, _ = _backend.ops().dropout_add(input, residual, rng, p, _save_bits(input, residual))
    return out


def bias_dropout_add(input, bias, residual, p=0.5, training=True, *, seed=None, generator=None):
    """residual + dropout(input + bias, p) in one pass; bias broadcasts over the last dim."""
    p = _check_p(p)
    _check_fused(input, residual, bias)
    if not training:
        return residual + (input + bias)
    rng = _rng_state(input, seed, generator)
    out, _ = _backend.ops().bias_dropout_add(input, bias, residual, rng, p, _save_bits(input, bias, residual))
    return out
