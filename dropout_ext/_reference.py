"""The pure-Python backend: every op of the `dropout_ext` schema written with torch
operations only (no compiled code), bit-identical to the C++ and CUDA kernels.

Philox4x32-10 runs on int64 tensors holding uint32 words. A 32x32-bit product does not
fit in int64, so the multiplier is split into 16-bit halves and the high and low words
are assembled from two products under 2**48. The element arithmetic is done in float32
for the 16-bit types (float64 for float64) and rounded once, like the kernels.

The mask word of an element is its logical row-major index in the mask shape: the
leading `lead` dims of the input (all of them for element-wise dropout), or of
`global_shape` for a shard at `global_offset` (docs/design.md; csrc/index.h).
"""
import math

import torch

MASK32 = 0xFFFFFFFF
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
SELU_ALPHA = 1.7580993408473766  # SELU's negative saturation, scale * alpha

KIND_INVERTED, KIND_VANILLA, KIND_ALPHA = 0, 1, 2
SAVE_NONE, SAVE_BITS, SAVE_RNG = 0, 1, 2
# base = offset with the top bit set on CUDA, apart from torch's own curand counters (csrc/pass_args.h)
CUDA_BASE_TAG = 1 << 63


def _mulhilo32(a, m):
    """(low word, high word) of a * m for int64 tensors `a` of uint32 values, int m."""
    m_lo, m_hi = m & 0xFFFF, m >> 16
    t = a * m_lo
    u = a * m_hi + (t >> 16)
    lo = ((u & 0xFFFF) << 16) | (t & 0xFFFF)
    return lo, u >> 16


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Ten Philox rounds on int64 tensors (or ints) of uint32 words; broadcasts."""
    for _ in range(10):
        lo0, hi0 = _mulhilo32(c0, PHILOX_M0)
        lo1, hi1 = _mulhilo32(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


def _words32(v):
    """(low, high) uint32 words of an int64 tensor's bits."""
    return v & MASK32, (v >> 32) & MASK32


def keep_threshold(p):
    """floor(p * 2**32) in float64: keep iff word >= it."""
    return math.floor(p * 2**32)


def keep_scale(p, kind):
    """Factor for kept elements (forward and backward) of `kind`."""
    if p >= 1.0:
        return 0.0
    if kind == KIND_INVERTED:
        return 1.0 / (1.0 - p)
    if kind == KIND_VANILLA:
        return 1.0
    return 1.0 / math.sqrt((SELU_ALPHA * SELU_ALPHA * p + 1) * (1 - p))


# --------------------------------------------------------------------------- (key, base)


def _signed64(v):
    return v - 2**64 if v >= 2**63 else v


def draw_rng(generator, device):
    """(key, base) as int64[2] on `device`, drawn as the compiled kernels draw them: two
    words of the CPU generator (as torch.randint(-2**63, 2**63 - 1) gives them), or
    (seed, offset ^ 2**63) of the CUDA generator's Philox state, the offset advanced by 4."""
    if device.type == "cuda":
        gen = generator
        if gen is None:
            index = device.index if device.index is not None else torch.cuda.current_device()
            gen = torch.cuda.default_generators[index]
        offset = gen.get_offset()
        gen.set_offset(offset + 4)
        pair = [_signed64(gen.initial_seed()), _signed64(offset ^ CUDA_BASE_TAG)]
        return torch.tensor(pair, dtype=torch.int64, device=device)
    return torch.randint(-(2**63), 2**63 - 1, (2,), dtype=torch.int64, generator=generator).to(device)


def _rng_pair(rng, generator, device):
    return rng.to(device) if rng is not None else draw_rng(generator, device)


# ------------------------------------------------------------------------------ the mask


def _mask_words(shape, lead, global_shape, global_offset, device):
    """Mask words of the local mask shape shape[:lead], row-major: (None, first) when they
    are consecutive from `first` (always without a shard), else (words, None)."""
    local = tuple(shape[:lead])
    n = math.prod(local)
    if global_shape is None or n == 0:
        return None, 0
    gshape = tuple(global_shape[:lead])
    strides = [1] * lead
    for d in range(lead - 2, -1, -1):
        strides[d] = strides[d + 1] * gshape[d + 1]
    words = torch.zeros(local, dtype=torch.int64, device=device)
    for d in range(lead):
        view = [1] * lead
        view[d] = local[d]
        index = torch.arange(local[d], dtype=torch.int64, device=device) + int(global_offset[d])
        words = words + (index * strides[d]).view(view)
    words = words.reshape(-1)
    if n == 1 or bool((words[1:] - words[:-1] == 1).all()):
        return None, int(words[0])
    return words, None


def keep_mask(rng, p, shape, lead, device, global_shape=None, global_offset=None):
    """Bool keep mask of the local mask shape shape[:lead] (flattened, row-major) for
    rng = int64[key, base] (docs/design.md, the mask)."""
    n = math.prod(tuple(shape[:lead]))
    if p >= 1.0:
        return torch.zeros(n, dtype=torch.bool, device=device)
    if keep_threshold(p) == 0:
        return torch.ones(n, dtype=torch.bool, device=device)
    rng = rng.to(device)
    k0, k1 = _words32(rng[0])
    c2, c3 = _words32(rng[1])
    words, first = _mask_words(shape, lead, global_shape, global_offset, device)
    if words is None:
        # consecutive words first .. first + n - 1: one Philox block per four of them
        j0 = first // 4
        blocks = (first + n + 3) // 4 - j0
        j = torch.arange(j0, j0 + blocks, dtype=torch.int64, device=device)
        out = philox4x32_10(j & MASK32, j >> 32, c2, c3, k0, k1)
        all_words = torch.stack([w.expand(blocks) for w in out], dim=1).reshape(-1)
        u = all_words[first - 4 * j0:first - 4 * j0 + n]
    else:
        j = words >> 2
        out = philox4x32_10(j & MASK32, j >> 32, c2, c3, k0, k1)
        stacked = torch.stack([w.expand(j.shape) for w in out], dim=1)
        u = stacked.gather(1, (words & 3)[:, None]).squeeze(1)
    return u >= keep_threshold(p)


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def pack_bits(keep):
    """Bit (i % 8) of byte i // 8 is keep[i]."""
    n = keep.numel()
    padded = torch.nn.functional.pad(keep.to(torch.int64), (0, (-n) % 8)).view(-1, 8)
    weights = 1 << torch.arange(8, dtype=torch.int64, device=keep.device)
    return (padded * weights).sum(1).to(torch.uint8)


def unpack_bits(bits, n):
    shifts = torch.arange(8, dtype=torch.int64, device=bits.device)
    return ((bits.to(torch.int64)[:, None] >> shifts) & 1).reshape(-1)[:n].bool()


def _like(input, values, strides=None):
    """values (row-major, input's shape) in a tensor with torch.empty_like(input)'s
    strides (or `strides`)."""
    if strides is not None:
        out = torch.empty_strided(input.shape, strides, dtype=input.dtype, device=input.device)
    else:
        out = torch.empty_like(input)
    out.copy_(values.reshape(input.shape))
    return out


def _broadcast(keep, shape, lead):
    """The keep mask of shape[:lead] shaped to broadcast over `shape`."""
    return keep.reshape(tuple(shape[:lead]) + (1,) * (len(shape) - lead))


def _values(op, x, keep, p, kind, lead, residual=None, bias=None):
    """The op's output values in x's dtype, computed in the accumulation type."""
    acc = _acc_dtype(x.dtype)
    k = _broadcast(keep, x.shape, lead)
    scale = torch.tensor(keep_scale(p, kind), dtype=acc, device=x.device)
    factor = torch.where(k, scale, torch.zeros((), dtype=acc, device=x.device))
    v = x.to(acc)
    if bias is not None:
        v = v + bias.to(acc)
    v = v * factor
    if residual is not None:
        v = residual.to(acc) + v
    if kind == KIND_ALPHA and op == "dropout":
        keep_shift, drop_shift = alpha_shifts(p, acc, x.device)
        v = v + torch.where(k, keep_shift, drop_shift)
    return v.to(x.dtype)


def alpha_shifts(p, acc, device):
    """(shift of kept, shift of dropped elements) of alpha dropout in `acc`, rounded as
    ATen's formula (keep - 1) * (alpha * a) + alpha * a * p rounds them."""
    if p >= 1.0:
        z = torch.tensor(-0.0, dtype=acc, device=device)
        return z, z
    a = keep_scale(p, KIND_ALPHA)
    alpha_a = torch.tensor(SELU_ALPHA * a, dtype=acc, device=device)
    alpha_a_p = torch.tensor(SELU_ALPHA * a * p, dtype=acc, device=device)
    return 0 * alpha_a + alpha_a_p, -1 * alpha_a + alpha_a_p


def _saved(save, keep, rng, input):
    if save == SAVE_BITS:
        return pack_bits(keep)
    if save == SAVE_RNG:
        return rng.clone()
    return torch.empty(0, dtype=torch.uint8, device=input.device)


def _forward(op, input, rng, generator, p, kind, lead, save, global_shape, global_offset,
             residual=None, bias=None):
    _check_call(input, p, kind, lead, save, global_shape, global_offset, generator, rng, residual, bias)
    device = input.device
    pair = rng.clone() if rng is not None else draw_rng(generator, device)
    keep = keep_mask(pair, p, input.shape, lead, device, global_shape, global_offset)
    out = _like(input, _values(op, input, keep, p, kind, lead, residual, bias))
    return out, _saved(save, keep, pair, input)


# ---------------------------------------------------------------------------- checks
# The Python kernels' checks: the same conditions, exception types and texts as the
# compiled kernels' (csrc/ops.cpp). The public API relies on the op's checks and calls
# these only where no op runs (eval mode, shortcuts) or before the torch.func route.

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_floating(t, what):
    if t.dtype not in _FLOATS:
        raise TypeError("dropout_ext: %s must be a floating point tensor (float16, bfloat16, float32 or "
                        "float64), got %s" % (what, t.dtype))


def _same_device(generator_device, device):
    if generator_device.type != device.type:
        return False
    if device.type != "cuda":
        return True
    index = device.index if device.index is not None else torch.cuda.current_device()
    gindex = generator_device.index if generator_device.index is not None else torch.cuda.current_device()
    return index == gindex


def check_generator(generator, input):
    if generator is not None and not _same_device(generator.device, input.device):
        raise ValueError("dropout_ext: generator is on %s but the input is on %s" % (generator.device, input.device))


def check_shard(input, global_shape, global_offset):
    if (global_shape is None) != (global_offset is None):
        raise ValueError("dropout_ext: global_shape and global_offset must be given together")
    if global_shape is None:
        return
    if len(global_shape) != input.dim() or len(global_offset) != input.dim():
        raise ValueError("dropout_ext: global_shape and global_offset need one entry per input dim (%d), got %s "
                         "and %s" % (input.dim(), list(global_shape), list(global_offset)))
    for o, n, g in zip(global_offset, input.shape, global_shape):
        if o < 0 or o + n > g:
            raise ValueError("dropout_ext: the input (shape %s) at global_offset %s does not fit in "
                             "global_shape %s" % (list(input.shape), list(global_offset), list(global_shape)))


def check_operands(input, residual=None, bias=None):
    """The fused ops' residual (input's shape) and bias (1-D, the input's last dim): dtype,
    device and shape."""
    for name, t in (("residual", residual), ("bias", bias)):
        if t is None:
            continue
        check_floating(t, name)
        if t.dtype != input.dtype:
            raise TypeError("dropout_ext: %s must have the input's dtype %s, got %s" % (name, input.dtype, t.dtype))
        if t.device != input.device:
            raise RuntimeError("dropout_ext: %s must be on the input's device %s, got %s"
                               % (name, input.device, t.device))
    if residual is not None and residual.shape != input.shape:
        raise RuntimeError("dropout_ext: residual must have the input's shape %s, got %s"
                           % (list(input.shape), list(residual.shape)))
    if bias is not None and (input.dim() < 1 or bias.dim() != 1 or bias.shape[0] != input.shape[-1]):
        raise RuntimeError("dropout_ext: bias must be 1-D with the input's last dimension (%s), got shape %s"
                           % (input.shape[-1] if input.dim() else "none", list(bias.shape)))


def _check_call(input, p, kind, lead, save=0, global_shape=None, global_offset=None, generator=None,
                rng=None, residual=None, bias=None):
    check_floating(input, "input")
    if not 0.0 <= p <= 1.0:
        raise ValueError("dropout probability has to be between 0 and 1, but got %s" % p)
    if kind not in (0, 1, 2):
        raise ValueError("dropout_ext: kind must be 0 (inverted), 1 (vanilla) or 2 (alpha), got %s" % kind)
    if not 0 <= lead <= input.dim():
        raise ValueError("dropout_ext: lead must be in [0, %d], got %d" % (input.dim(), lead))
    if save not in (0, 1, 2):
        raise ValueError("dropout_ext: save must be 0 (nothing), 1 (bits) or 2 (rng), got %s" % save)
    check_shard(input, global_shape, global_offset)
    if rng is not None:
        if rng.dtype != torch.int64 or rng.numel() != 2:
            raise RuntimeError("dropout_ext: rng must be an int64 tensor of two elements (key, base), got %s with %d "
                               "elements" % (rng.dtype, rng.numel()))
        if rng.device.type != "cpu" and rng.device != input.device:
            raise RuntimeError("dropout_ext: rng must be on the CPU or on the input's device %s, got %s"
                               % (input.device, rng.device))
    check_generator(generator, input)
    check_operands(input, residual, bias)


# ------------------------------------------------------------------------------ the ops


def dropout(input, rng, generator, p, kind, lead, save, global_shape=None, global_offset=None):
    return _forward("dropout", input, rng, generator, p, kind, lead, save, global_shape, global_offset)


def dropout_(input, rng, generator, p, kind, lead, global_shape=None, global_offset=None):
    check_floating(input, "input")
    out, _ = dropout(input, rng, generator, p, kind, lead, SAVE_NONE, global_shape, global_offset)
    input.copy_(out)


def dropout_add(input, residual, rng, generator, p, save, global_shape=None, global_offset=None):
    return _forward("dropout_add", input, rng, generator, p, KIND_INVERTED, input.dim(), save,
                    global_shape, global_offset, residual=residual)


def bias_dropout_add(input, bias, residual, rng, generator, p, save, global_shape=None, global_offset=None):
    return _forward("bias_dropout_add", input, rng, generator, p, KIND_INVERTED, input.dim(), save,
                    global_shape, global_offset, residual=residual, bias=bias)


def _check_strides(grad, strides):
    """The gradient's strides (those of the forward output): one entry per dim, dense."""
    if len(strides) != grad.dim():
        raise ValueError("dropout_ext: strides need %d entries, got %s" % (grad.dim(), list(strides)))
    extent = 0  # sorted by stride, each must be the extent of the smaller ones plus one
    for stride, size in sorted((st, sz) for st, sz in zip(strides, grad.shape) if sz > 1):
        if grad.numel() and stride != extent + 1:
            raise ValueError("dropout_ext: strides %s are not dense for shape %s" % (list(strides), list(grad.shape)))
        extent += (size - 1) * stride


def dropout_backward(grad, saved, p, kind, lead, global_shape=None, global_offset=None, strides=None):
    _check_call(grad, p, kind, lead, 0, global_shape, global_offset, rng=None if saved.dtype == torch.uint8 else saved)
    if strides is not None:
        _check_strides(grad, strides)
    if saved.dtype == torch.uint8:
        words = math.prod(tuple(grad.shape[:lead]))
        if saved.numel() != (words + 7) // 8:
            raise RuntimeError("dropout_ext: saved bits must hold %d bytes, got %d" % ((words + 7) // 8, saved.numel()))
        keep = unpack_bits(saved, math.prod(tuple(grad.shape[:lead])))
    else:
        keep = keep_mask(saved, p, grad.shape, lead, grad.device, global_shape, global_offset)
    return _like(grad, _values("backward", grad, keep, p, kind, lead), strides)


# ------------------------------------------------- fused dropout + add + norm (rows)
# h = residual + (input + input_bias) * f over the mask of `input`'s shape, rounded to h's
# dtype, then LayerNorm or RMSNorm of each row of h (the last dim) in the accumulation type;
# the kernels' definition (csrc/norm_args.h). Sums over a row are divided by max(hidden, 1).


def norm_h_dtype(input_dtype, residual_in_fp32):
    """h's dtype: float32 for a 16-bit input with residual_in_fp32, else the input's."""
    if residual_in_fp32 and input_dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return input_dtype


def check_norm_call(input, residual, weight, bias, input_bias, p, save, residual_in_fp32, global_shape=None,
                    global_offset=None, generator=None, rng=None):
    """The fused norm ops' checks (the same texts as csrc/ops.cpp)."""
    check_floating(input, "input")
    if input.dim() < 1:
        raise RuntimeError("dropout_ext: the normalized input needs at least 1 dim, got a 0-dim tensor")
    hidden = input.shape[-1]
    if not 0.0 <= p <= 1.0:
        raise ValueError("dropout probability has to be between 0 and 1, but got %s" % p)
    if save not in (0, 1, 2):
        raise ValueError("dropout_ext: save must be 0 (nothing), 1 (bits) or 2 (rng), got %s" % save)
    if residual is not None:
        check_floating(residual, "residual")
        ok = (input.dtype,) + ((torch.float32,) if residual_in_fp32 else ())
        if residual.dtype not in ok:
            raise TypeError("dropout_ext: residual must have the input's dtype %s%s, got %s"
                            % (input.dtype, " or float32" if residual_in_fp32 else "", residual.dtype))
        if residual.device != input.device:
            raise RuntimeError("dropout_ext: residual must be on the input's device %s, got %s"
                               % (input.device, residual.device))
        if residual.shape != input.shape:
            raise RuntimeError("dropout_ext: residual must have the input's shape %s, got %s"
                               % (list(input.shape), list(residual.shape)))
    for name, t, dtypes in (("weight", weight, (input.dtype, torch.float32)),
                            ("bias", bias, (input.dtype, torch.float32)),
                            ("input_bias", input_bias, (input.dtype,))):
        if t is None:
            continue
        check_floating(t, name)
        if t.dtype not in dtypes:
            raise TypeError("dropout_ext: %s must have the input's dtype %s%s, got %s"
                            % (name, input.dtype, " or float32" if len(dtypes) > 1 else "", t.dtype))
        if t.device != input.device:
            raise RuntimeError("dropout_ext: %s must be on the input's device %s, got %s"
                               % (name, input.device, t.device))
        if t.dim() != 1 or t.shape[0] != hidden:
            raise RuntimeError("dropout_ext: %s must be 1-D with the input's last dimension (%d), got shape %s"
                               % (name, hidden, list(t.shape)))
    check_shard(input, global_shape, global_offset)
    if global_shape is not None and (global_shape[-1] != hidden or global_offset[-1] != 0):
        raise ValueError("dropout_ext: a shard of the normalized (last) dim is not supported: global_shape[-1] "
                         "must be the input's last dim (%d) and global_offset[-1] 0, got %s and %s"
                         % (hidden, list(global_shape), list(global_offset)))
    if rng is not None:
        if rng.dtype != torch.int64 or rng.numel() != 2:
            raise RuntimeError("dropout_ext: rng must be an int64 tensor of two elements (key, base), got %s with %d "
                               "elements" % (rng.dtype, rng.numel()))
        if rng.device.type != "cpu" and rng.device != input.device:
            raise RuntimeError("dropout_ext: rng must be on the CPU or on the input's device %s, got %s"
                               % (input.device, rng.device))
    check_generator(generator, input)


def _norm_keep(pair, p, input, global_shape, global_offset):
    return keep_mask(pair, p, input.shape, input.dim(), input.device, global_shape, global_offset)


def _factor(keep, p, acc):
    scale = torch.tensor(keep_scale(p, KIND_INVERTED), dtype=acc, device=keep.device)
    return torch.where(keep, scale, torch.zeros((), dtype=acc, device=keep.device))


def dropout_add_norm(input, residual, weight, bias, input_bias, rng, generator, p, eps, rms, residual_in_fp32,
                     save, global_shape=None, global_offset=None):
    check_norm_call(input, residual, weight, bias, input_bias, p, save, residual_in_fp32, global_shape,
                    global_offset, generator, rng)
    device, acc = input.device, _acc_dtype(input.dtype)
    hidden = input.shape[-1]
    rows = input.numel() // hidden if hidden else math.prod(input.shape[:-1])
    pair = rng.clone() if rng is not None else draw_rng(generator, device)
    keep = _norm_keep(pair, p, input, global_shape, global_offset)
    v = input.to(acc).reshape(rows, hidden)
    if input_bias is not None:
        v = v + input_bias.to(acc)
    v = v * _factor(keep, p, acc).reshape(rows, hidden)
    if residual is not None:
        v = residual.to(acc).reshape(rows, hidden) + v
    h = v.to(norm_h_dtype(input.dtype, residual_in_fp32))
    hf = h.to(acc)
    n = max(hidden, 1)
    if rms:
        mean = torch.empty(0, dtype=acc, device=device)
        rstd = torch.rsqrt((hf * hf).sum(-1) / n + eps)
        y = hf * rstd[:, None]
    else:
        mean = hf.sum(-1) / n
        centered = hf - mean[:, None]
        rstd = torch.rsqrt((centered * centered).sum(-1) / n + eps)
        y = centered * rstd[:, None]
    if weight is not None:
        y = y * weight.to(acc)
    if bias is not None and not rms:
        y = y + bias.to(acc)
    out = y.to(input.dtype).reshape(input.shape).contiguous()
    return out, h.reshape(input.shape).contiguous(), mean, rstd, _saved(save, keep, pair, input)


def dropout_add_norm_backward(grad_out, grad_h, h, weight, bias, mean, rstd, saved, p, rms, input_bias_grad,
                              global_shape=None, global_offset=None):
    device, acc = grad_out.device, _acc_dtype(grad_out.dtype)
    hidden = grad_out.shape[-1] if grad_out.dim() else 1
    rows = grad_out.numel() // hidden if hidden else math.prod(grad_out.shape[:-1])
    if saved.dtype == torch.uint8:
        if saved.numel() != (grad_out.numel() + 7) // 8:
            raise RuntimeError("dropout_ext: saved bits must hold %d bytes, got %d"
                               % ((grad_out.numel() + 7) // 8, saved.numel()))
        keep = unpack_bits(saved, grad_out.numel())
    else:
        keep = _norm_keep(saved, p, grad_out, global_shape, global_offset)
    dy = grad_out.to(acc).reshape(rows, hidden)
    hf = h.to(acc).reshape(rows, hidden)
    xhat = hf * rstd[:, None] if rms else (hf - mean[:, None]) * rstd[:, None]
    g = dy * weight.to(acc) if weight is not None else dy
    n = max(hidden, 1)
    dh = g - xhat * ((g * xhat).sum(-1, keepdim=True) / n)
    if not rms:
        dh = dh - g.sum(-1, keepdim=True) / n
    dh = dh * rstd[:, None]
    if grad_h is not None:
        dh = dh + grad_h.to(acc).reshape(rows, hidden)
    dx = dh * _factor(keep, p, acc).reshape(rows, hidden)
    def empty():
        return torch.empty(0, dtype=acc, device=device)

    gw = (dy * xhat).sum(0) if weight is not None else empty()
    gb = dy.sum(0) if bias is not None and not rms else empty()
    gib = dx.sum(0) if input_bias_grad else empty()
    shape = grad_out.shape
    return (dx.to(grad_out.dtype).reshape(shape).contiguous(), dh.to(h.dtype).reshape(shape).contiguous(),
            gw, gb, gib)
