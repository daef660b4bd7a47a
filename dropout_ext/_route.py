"""The one place that picks how a training-mode call runs.

The public functions (functional.py) check what torch checks in Python, then come here:
  - the fast entry: plain tensors, (key, base) from the default generator or from seed=,
    no generator=, not in place, no shard, outside torch.func and torch.compile: the
    compiled module's entry points (csrc/python.cpp), one typed dispatcher call, C++
    autograd (fast_dropout, fast_dropout_add);
  - otherwise a Call, the one description of the call, goes to run(), which picks:
    DTensor inputs (_dtensor.py unwraps them and calls back down with the shard's place),
    torch.func transforms (_functorch.py), or the op of the backend in use.
The ops validate their arguments (csrc/ops.cpp, or _reference.py for the Python
kernels); this module checks only what the ops cannot see: seed= (a Python int) and the
in-place rules torch applies in Python. (key, base) are drawn after the checks the op
makes, so a rejected call leaves the generator as it was.
"""
import operator

import torch

from . import _backend, _functorch, _reference

_Tensor = torch.Tensor
_is_compiling = torch.compiler.is_compiling
_grad_enabled = torch.is_grad_enabled
_transforms_active = torch._C._are_functorch_transforms_active
_SEED_LIMIT = 2**64


class Norm:
    """The norm after the sum of a "dropout_add_norm" call: its parameters (either may be
    None) and options."""

    __slots__ = ("weight", "bias", "eps", "rms", "prenorm", "residual_in_fp32")

    def __init__(self, weight, bias, eps, rms, prenorm, residual_in_fp32):
        self.weight, self.bias, self.eps, self.rms = weight, bias, eps, rms
        self.prenorm, self.residual_in_fp32 = prenorm, residual_in_fp32

    def replace(self, weight, bias):
        return Norm(weight, bias, self.eps, self.rms, self.prenorm, self.residual_in_fp32)


class Call:
    """One training-mode call: the op ("dropout", "dropout_add", "bias_dropout_add",
    "dropout_add_norm"), its tensors and its mask parameters (kind, and `lead`: the leading
    dims that index the mask words). For "dropout_add_norm", `bias` is the input's bias
    (input_bias=), `residual` may be None and `norm` describes the norm."""

    __slots__ = ("op", "input", "p", "kind", "lead", "inplace", "seed", "generator", "global_shape",
                 "global_offset", "residual", "bias", "norm")

    def __init__(self, op, input, p, kind=_reference.KIND_INVERTED, lead=None, inplace=False, seed=None,
                 generator=None, global_shape=None, global_offset=None, residual=None, bias=None, norm=None):
        self.op, self.input, self.p, self.kind = op, input, p, kind
        self.lead = input.dim() if lead is None else lead
        self.inplace, self.seed, self.generator = inplace, seed, generator
        self.global_shape, self.global_offset = global_shape, global_offset
        self.residual, self.bias, self.norm = residual, bias, norm

    def replace(self, **changes):
        c = Call.__new__(Call)
        for name in Call.__slots__:
            setattr(c, name, changes.get(name, getattr(self, name)))
        return c

    def requires_grad(self):
        tensors = (self.input, self.residual, self.bias)
        if self.norm is not None:
            tensors += (self.norm.weight, self.norm.bias)
        return _grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# ----------------------------------------------------------------------- the fast entry

# seed -> its (key, base) tensor, (seed, 0) as int64 on the CPU: the ops read it and never
# write or keep it (the seed storage keeps a copy), so one tensor serves every call with
# that seed and seed= costs no tensor per call. Bounded: cleared when full.
_SEED_RNG = {}
_SEED_RNG_MAX = 4096


def fast_dropout(input, p, kind, seed):
    """The element-wise dropout of a plain tensor through the compiled entry points, or
    NotImplemented when the call must take run() (a subclass, a transform, torch.compile,
    the Python backend)."""
    fast = _backend.FAST
    if fast is None or _transforms_active() or _is_compiling():
        return NotImplemented
    if seed is None:
        return fast.dropout(input, p, kind, _backend.SAVE)
    rng = _SEED_RNG.get(seed) if seed.__class__ is int else None
    if rng is None:  # first use of this seed: checked on the slow path's order
        if input.__class__ is not _Tensor:
            return NotImplemented
        _reference.check_floating(input, "input")
        rng = _seed_rng(seed)
    return fast.dropout_rng(input, rng, p, kind, _backend.SAVE)


def fast_dropout_add(input, residual, bias, p):
    """residual + dropout(input (+ bias)) through the compiled entry points, or
    NotImplemented (see fast_dropout)."""
    fast = _backend.FAST
    if fast is None or _transforms_active() or _is_compiling():
        return NotImplemented
    if bias is None:
        return fast.dropout_add(input, residual, p, _backend.SAVE)
    return fast.bias_dropout_add(input, bias, residual, p, _backend.SAVE)


# ----------------------------------------------------------------------------- run()


def run(c):
    """The output of a training-mode Call, on the route it needs."""
    if c.input.__class__ is not _Tensor and type(c.input).__name__ == "DTensor":
        from . import _dtensor  # imports torch.distributed: only when a DTensor comes

        return _dtensor.run(c, run)
    if c.global_shape is not None or c.global_offset is not None:
        c = c.replace(global_shape=_ints(c.global_shape), global_offset=_ints(c.global_offset))
    if c.inplace:
        _check_inplace(c.input)
    rng, gen = _rng(c)
    if _transforms_active():
        out = _functorch.run(c, rng, gen)
        return c.input.copy_(out) if c.inplace else out
    ops = _backend.OPS
    input, p, gs, go = c.input, c.p, c.global_shape, c.global_offset
    save = _backend.SAVE if c.requires_grad() else 0
    if c.op == "dropout_add_norm":
        n = c.norm
        out, h, _, _, _ = ops.dropout_add_norm(input, c.residual, n.weight, n.bias, c.bias, rng, gen, p, n.eps, n.rms,
                                               n.residual_in_fp32, save, gs, go)
        return (out, h) if n.prenorm else out
    if c.op == "dropout_add":
        return ops.dropout_add(input, c.residual, rng, gen, p, save, gs, go)[0]
    if c.op == "bias_dropout_add":
        return ops.bias_dropout_add(input, c.bias, c.residual, rng, gen, p, save, gs, go)[0]
    if not c.inplace:
        return ops.dropout(input, rng, gen, p, c.kind, c.lead, save, gs, go)[0]
    if save:
        # Autograd of in-place writes is torch's: copy_ records the graph edge and raises
        # torch's error for a leaf that requires grad.
        return input.copy_(ops.dropout(input, rng, gen, p, c.kind, c.lead, save, gs, go)[0])
    ops.dropout_(input, rng, gen, p, c.kind, c.lead, gs, go)
    return input


def _ints(v):
    """A shape-like argument as a tuple of ints (the op checks its values)."""
    return None if v is None else tuple(operator.index(int(x)) for x in v)


# ------------------------------------------------------------------------- (key, base)


def check_seed(seed):
    if isinstance(seed, bool) or isinstance(seed, torch.Tensor):
        raise TypeError("seed must be an int in [0, 2**64), got %s" % type(seed).__name__)
    try:
        seed = operator.index(seed)
    except TypeError:
        raise TypeError("seed must be an int in [0, 2**64), got %s" % type(seed).__name__) from None
    if not 0 <= seed < _SEED_LIMIT:
        raise ValueError("seed must be in [0, 2**64), got %d" % seed)
    return seed


def _seed_tensor(s, device=None):
    """(key, base) = (s, 0) for a checked seed s in [0, 2**64), as int64 (two's complement)."""
    return torch.tensor([s - _SEED_LIMIT if s >= 2**63 else s, 0], dtype=torch.int64, device=device)


def _seed_rng(seed):
    s = check_seed(seed)
    with torch.inference_mode(False):  # a kept tensor must serve calls outside inference mode too
        rng = _seed_tensor(s, "cpu")
    if seed.__class__ is int:
        if len(_SEED_RNG) >= _SEED_RNG_MAX:
            _SEED_RNG.clear()
        _SEED_RNG[seed] = rng
    return rng


def _rng(c):
    """(rng tensor or None, generator or None). seed=s: (s, 0) as data, the same mask on
    every device. Under torch.compile the pair is drawn as a tensor in the graph. Else
    None: the op draws from the generator (or the device's default generator) itself."""
    if c.seed is not None:
        if c.generator is not None:
            raise ValueError("dropout_ext: pass seed= or generator=, not both")
        return _seed_tensor(check_seed(c.seed)), None
    if c.generator is not None and not isinstance(c.generator, torch.Generator):
        raise TypeError("generator must be a torch.Generator, got %s" % type(c.generator).__name__)
    if _is_compiling():
        # traced as an op of the graph; on the CPU the same words the op would draw
        _reference.check_generator(c.generator, c.input)
        return torch.randint(-(2**63), 2**63 - 1, (2,), dtype=torch.int64, device=c.input.device,
                             generator=c.generator), None
    return None, c.generator


# ------------------------------------------------------------------- torch's in-place rules


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
    if _is_compiling():
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
