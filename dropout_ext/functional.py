"""Drop-in replacements for torch.nn.functional's dropout functions.

Each function validates what torch validates in Python, picks the route, and calls one
op of the backend in use (`_backend.OPS`). The common case (a plain tensor, seed=None, no
generator, not in place, no shard, outside torch.func and torch.compile) goes straight
to the op: (key, base) are drawn from the device's generator in C++, and autograd is
C++. The other routes:
  - seed= / torch.compile: (key, base) as an int64[2] tensor (data, so torch.compile
    neither specialises on it nor loses track of the randomness);
  - torch.func transforms (grad, vjp, jacrev, vmap): _functorch.py;
  - DTensor inputs: _dtensor.py, which calls back here with the shard's global offset.
"""
import numbers
import operator
import warnings
from typing import Optional, Sequence

import torch
from torch import Tensor

from . import _backend, _reference

__all__ = [
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
    "drop_path", "dropout_add", "bias_dropout_add",
]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_SEED_LIMIT = 2**64
_Tensor = torch.Tensor
_is_compiling = torch.compiler.is_compiling
_grad_enabled = torch.is_grad_enabled
_transforms_active = torch._C._are_functorch_transforms_active

KIND_INVERTED, KIND_VANILLA, KIND_ALPHA = _reference.KIND_INVERTED, _reference.KIND_VANILLA, _reference.KIND_ALPHA


# ----------------------------------------------------------------------------- checks


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


def _check_generator(generator, input):
    if not isinstance(generator, torch.Generator):
        raise TypeError("generator must be a torch.Generator, got %s" % type(generator).__name__)
    if not _same_device(generator.device, input.device):
        raise ValueError("dropout_ext: generator is on %s but the input is on %s" % (generator.device, input.device))


def _check_shard(input, global_shape, global_offset):
    """(global_shape, global_offset) as tuples of ints, or (None, None)."""
    if global_shape is None and global_offset is None:
        return None, None
    if global_shape is None or global_offset is None:
        raise ValueError("dropout_ext: global_shape and global_offset must be given together")
    shape, offset = tuple(int(s) for s in global_shape), tuple(int(o) for o in global_offset)
    if len(shape) != input.dim() or len(offset) != input.dim():
        raise ValueError("dropout_ext: global_shape and global_offset need one entry per input dim (%d), got %s and %s"
                         % (input.dim(), shape, offset))
    for d, (g, o, n) in enumerate(zip(shape, offset, input.shape)):
        if o < 0 or o + n > g:
            raise ValueError("dropout_ext: the input (shape %s) at global_offset %s does not fit in global_shape %s"
                             % (tuple(input.shape), offset, shape))
    return shape, offset


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


# ----------------------------------------------------------------------------- routing


# seed -> its (key, base) tensor, (seed, 0) as int64 on the CPU: the ops read it and never
# write or keep it (the seed storage keeps a copy), so one tensor serves every call with
# that seed and seed= costs no tensor per call. Bounded: cleared when full.
_SEED_RNG = {}
_SEED_RNG_MAX = 4096


def _seed_tensor(s, device=None):
    """(key, base) = (s, 0) for a checked seed s in [0, 2**64), as int64 (two's complement)."""
    return torch.tensor([s - _SEED_LIMIT if s >= 2**63 else s, 0], dtype=torch.int64, device=device)


def _seed_rng(seed):
    s = _check_seed(seed)
    with torch.inference_mode(False):  # a kept tensor must serve calls outside inference mode too
        rng = _seed_tensor(s, "cpu")
    if seed.__class__ is int:
        if len(_SEED_RNG) >= _SEED_RNG_MAX:
            _SEED_RNG.clear()
        _SEED_RNG[seed] = rng
    return rng


def _rng(input, seed, generator):
    """(rng tensor or None, generator or None). seed=s: (s, 0) as data, the same mask on
    every device. Under torch.compile the pair is drawn as a tensor in the graph. Else
    None: the op draws from `generator` (or the device's default generator) itself."""
    if seed is not None:
        if generator is not None:
            raise ValueError("dropout_ext: pass seed= or generator=, not both")
        return _seed_tensor(_check_seed(seed)), None
    if generator is not None:
        _check_generator(generator, input)
    if _is_compiling():
        # traced as an op of the graph; on the CPU the same words the op would draw
        return torch.randint(-(2**63), 2**63 - 1, (2,), dtype=torch.int64, device=input.device,
                             generator=generator), None
    return None, generator


def _is_dtensor(t):
    return t.__class__ is not _Tensor and type(t).__name__ == "DTensor"


def _run(op, input, p, kind, lead, inplace, seed, generator, global_shape, global_offset,
         residual=None, bias=None):
    """Training-mode call of `op` ("dropout", "dropout_add", "bias_dropout_add") with one
    mask word per element of the leading `lead` dims. The checks come before (key, base)
    is drawn, so a rejected call leaves the generator as it was."""
    if _is_dtensor(input):
        from . import _dtensor

        return _dtensor.run(op, input, p, kind, lead, inplace, seed, generator, global_shape, global_offset,
                            residual, bias)
    gs, go = _check_shard(input, global_shape, global_offset)
    if inplace:
        _check_inplace(input)
    rng, gen = _rng(input, seed, generator)
    if _transforms_active():
        from . import _functorch

        out = _functorch.run(op, input, rng, gen, p, kind, lead, gs, go, residual, bias)
        return input.copy_(out) if inplace else out
    ops = _backend.OPS
    save = _save(input, residual, bias)
    if op == "dropout_add":
        return ops.dropout_add(input, residual, rng, gen, p, save, gs, go)[0]
    if op == "bias_dropout_add":
        return ops.bias_dropout_add(input, bias, residual, rng, gen, p, save, gs, go)[0]
    if not inplace:
        return ops.dropout(input, rng, gen, p, kind, lead, save, gs, go)[0]
    if torch.is_grad_enabled() and input.requires_grad:
        # Autograd of in-place writes is torch's: copy_ records the graph edge and raises
        # torch's error for a leaf that requires grad.
        return input.copy_(ops.dropout(input, rng, gen, p, kind, lead, save, gs, go)[0])
    ops.dropout_(input, rng, gen, p, kind, lead, gs, go)
    return input


def _save(*tensors):
    """What the op keeps for backward: the storage mode when a gradient is needed, else 0."""
    if _grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _backend.SAVE
    return 0


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
    if (training and input.__class__ is _Tensor and generator is None and not inplace
            and global_shape is None and global_offset is None and not _transforms_active()
            and not _is_compiling()):
        # The common cases: one op call; dtype and device checks are the kernel's.
        kind = KIND_INVERTED if scale_train else KIND_VANILLA
        save = _backend.SAVE if input.requires_grad and _grad_enabled() else 0
        fast = _backend.FAST
        if seed is None:
            if fast is not None:
                return fast.dropout(input, p, kind, save)
            return _backend.OPS.dropout(input, None, None, p, kind, input.dim(), save)[0]
        if fast is not None:
            rng = _SEED_RNG.get(seed) if seed.__class__ is int else None
            if rng is None:  # first use of this seed: the slow path's checks, in its order
                _check_input(input)
                rng = _seed_rng(seed)
            return fast.dropout_rng(input, rng, p, kind, save)
    _check_input(input)
    if not training:
        return _eval(input, p, inplace, scale_train)
    kind = KIND_INVERTED if scale_train else KIND_VANILLA
    return _run("dropout", input, p, kind, input.dim(), inplace, seed, generator, global_shape, global_offset)


# ------------------------------------------------------------------ channel-wise


def _feature_dropout(input, p, training, inplace, seed, generator, global_shape, global_offset):
    """One mask word per (N, C) position of an input of at least 2 dims (torch's
    feature_dropout)."""
    if input.dim() < 2:
        raise RuntimeError("Feature dropout requires at least 2 dimensions in the input")
    if not training:
        return _eval(input, p, inplace, True)
    return _run("dropout", input, p, KIND_INVERTED, 2, inplace, seed, generator, global_shape, global_offset)


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
        return _run("dropout", input, p, KIND_INVERTED, 1, inplace, seed, generator, global_shape, global_offset)
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
    return _run("dropout", input, p, KIND_ALPHA, lead, inplace, seed, generator, global_shape, global_offset)


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
    return _run("dropout", input, p, KIND_INVERTED, 1, False, seed, generator, global_shape, global_offset)


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


def dropout_add(input: Tensor, residual: Tensor, p: float = 0.5, training: bool = True, *,
                seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                global_shape: Optional[Sequence[int]] = None, global_offset: Optional[Sequence[int]] = None) -> Tensor:
    """residual + dropout(input, p) in one pass (read input and residual once, write once)."""
    if p.__class__ is not float or not 0.0 <= p <= 1.0:
        p = _check_p(p)
    if (training and input.__class__ is _Tensor and residual.__class__ is _Tensor and seed is None
            and generator is None and global_shape is None and global_offset is None
            and not _transforms_active() and not _is_compiling()):
        save = _backend.SAVE if (input.requires_grad or residual.requires_grad) and _grad_enabled() else 0
        fast = _backend.FAST
        if fast is not None:
            return fast.dropout_add(input, residual, p, save)
        return _backend.OPS.dropout_add(input, residual, None, None, p, save)[0]
    _check_fused(input, residual)
    if not training:
        return residual + input
    return _run("dropout_add", input, p, KIND_INVERTED, input.dim(), False, seed, generator, global_shape,
                global_offset, residual=residual)


def bias_dropout_add(input: Tensor, bias: Tensor, residual: Tensor, p: float = 0.5, training: bool = True, *,
                     seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                     global_shape: Optional[Sequence[int]] = None,
                     global_offset: Optional[Sequence[int]] = None) -> Tensor:
    """residual + dropout(input + bias, p) in one pass; bias broadcasts over the last dim."""
    if p.__class__ is not float or not 0.0 <= p <= 1.0:
        p = _check_p(p)
    if (training and input.__class__ is _Tensor and residual.__class__ is _Tensor and bias.__class__ is _Tensor
            and seed is None and generator is None and global_shape is None and global_offset is None
            and not _transforms_active() and not _is_compiling()):
        save = (_backend.SAVE if (input.requires_grad or residual.requires_grad or bias.requires_grad)
                and _grad_enabled() else 0)
        fast = _backend.FAST
        if fast is not None:
            return fast.bias_dropout_add(input, bias, residual, p, save)
        return _backend.OPS.bias_dropout_add(input, bias, residual, None, None, p, save)[0]
    _check_fused(input, residual, bias)
    if not training:
        return residual + (input + bias)
    return _run("bias_dropout_add", input, p, KIND_INVERTED, input.dim(), False, seed, generator, global_shape,
                global_offset, residual=residual, bias=bias)
