"""Drop-in replacements for torch.nn.functional's dropout functions.

Every function validates its arguments here, once, with torch's wording where torch has
one, before any tensor is written; the kernels come from `_backend.ops()`.
"""
import numbers
import operator

import torch

from . import _backend

__all__ = ["dropout"]

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


def _check_inplace(input):
    if torch.compiler.is_compiling():
        return
    if torch._debug_has_internal_overlap(input) == 1:
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


def _masked(input, rng, p, scale_train, group, inplace):
    """Training-mode dropout with one mask word per `group` consecutive elements."""
    ops = _backend.ops()
    if inplace:
        _check_inplace(input)
        if torch.is_grad_enabled() and input.requires_grad:
            # Autograd of in-place writes is torch's: copy_ records the graph edge and
            # raises torch's error for a leaf that requires grad.
            out, _ = ops.dropout(input, rng, p, scale_train, group, _save_bits(input))
            return input.copy_(out)
        ops.dropout_(input, rng, p, scale_train, group, False)
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
    rng = _rng_state(input, seed, generator)
    return _masked(input, rng, p, scale_train, 1, inplace)
