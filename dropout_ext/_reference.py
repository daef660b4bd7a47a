"""The pure-Python backend: every op of the `dropout_ext` schema written with torch
operations only (no compiled code), bit-identical to the C++ and CUDA kernels.

Philox4x32-10 runs on int64 tensors holding uint32 words. A 32x32-bit product does not
fit in int64, so the multiplier is split into 16-bit halves and the high and low words
are assembled from two products under 2**48. The element arithmetic is done in float32
for the 16-bit types (float64 for float64) and rounded once, like the kernels.
"""
import math

import torch

MASK32 = 0xFFFFFFFF
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85


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


def keep_mask(rng, p, n, device):
    """Bool keep mask of n logical positions for rng = int64[key, base] (SPEC section 3)."""
    if p >= 1.0:
        return torch.zeros(n, dtype=torch.bool, device=device)
    rng = rng.to(device)
    k0, k1 = _words32(rng[0])
    c2, c3 = _words32(rng[1])
    blocks = (n + 3) // 4
    j = torch.arange(blocks, dtype=torch.int64, device=device)
    words = philox4x32_10(j & MASK32, j >> 32, c2, c3, k0, k1)
    words = torch.stack([w.expand(blocks) for w in words], dim=1).reshape(-1)[:n]
    return words >= keep_threshold(p)


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def keep_scale(p, scale_train):
    """Factor for kept elements: 1 / (1 - p) (inverted dropout) or 1 (vanilla)."""
    return 1.0 / (1.0 - p) if scale_train and p < 1.0 else 1.0


def _factor(keep, p, scale_train, dtype):
    acc = _acc_dtype(dtype)
    scale = torch.tensor(keep_scale(p, scale_train), dtype=acc, device=keep.device)
    return torch.where(keep, scale, torch.zeros((), dtype=acc, device=keep.device))


def pack_bits(keep):
    """Bit (i % 8) of byte i // 8 is keep[i]."""
    n = keep.numel()
    padded = torch.nn.functional.pad(keep.to(torch.int64), (0, (-n) % 8)).view(-1, 8)
    weights = 1 << torch.arange(8, dtype=torch.int64, device=keep.device)
    return (padded * weights).sum(1).to(torch.uint8)


def unpack_bits(bits, n):
    shifts = torch.arange(8, dtype=torch.int64, device=bits.device)
    return ((bits.to(torch.int64)[:, None] >> shifts) & 1).reshape(-1)[:n].bool()


def _like(input, values):
    """values (row-major, input's shape) in a tensor with input's memory format."""
    out = torch.empty_like(input)
    out.copy_(values.reshape(input.shape))
    return out


def _scaled(input, keep, p, scale_train, group):
    """input * factor with one factor per `group` consecutive logical elements."""
    factor = _factor(keep, p, scale_train, input.dtype)
    x = input.reshape(-1, group).to(factor.dtype)
    return _like(input, (x * factor[:, None]).to(input.dtype))


def _no_bits(input):
    return torch.empty(0, dtype=torch.uint8, device=input.device)


def dropout(input, rng, p, scale_train, group, save_bits):
    keep = keep_mask(rng, p, input.numel() // group, input.device)
    bits = pack_bits(keep) if save_bits else _no_bits(input)
    return _scaled(input, keep, p, scale_train, group), bits


def dropout_(input, rng, p, scale_train, group, save_bits):
    out, bits = dropout(input, rng, p, scale_train, group, save_bits)
    input.copy_(out)
    return bits


def apply_mask_bits(input, bits, p, scale_train, group):
    keep = unpack_bits(bits, input.numel() // group)
    return _scaled(input, keep, p, scale_train, group)


def _fused(input, bias, residual, rng, p, save_bits):
    keep = keep_mask(rng, p, input.numel(), input.device)
    factor = _factor(keep, p, True, input.dtype)
    acc = factor.dtype
    x = input.reshape(-1).to(acc)
    if bias is not None and x.numel():
        x = (x.view(-1, bias.numel()) + bias.to(acc)).view(-1)
    y = residual.reshape(-1).to(acc) + x * factor
    bits = pack_bits(keep) if save_bits else _no_bits(input)
    return _like(input, y.to(input.dtype)), bits


def dropout_add(input, residual, rng, p, save_bits):
    return _fused(input, None, residual, rng, p, save_bits)


def bias_dropout_add(input, bias, residual, rng, p, save_bits):
    return _fused(input, bias, residual, rng, p, save_bits)


def philox4x32_10_op(counter, key):
    c = counter & MASK32
    out = philox4x32_10(c[..., 0], c[..., 1], c[..., 2], c[..., 3], key[0] & MASK32, key[1] & MASK32)
    return torch.stack(out, dim=-1)
