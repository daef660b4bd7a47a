"""An independent oracle for the keep mask of docs/design.md (section 1), written from that
contract and from Salmon et al., "Parallel random numbers: as easy as 1, 2, 3" (SC'11), not from the
package: it imports nothing from dropout_ext, and it uses numpy uint64 arithmetic (a
product of two 32-bit words is below 2**64, so it is exact) instead of the package's
int64 tensors with split multipliers.

    philox4x32_10(counter, key)   counter = 4 words, key = 2 words -> 4 words
    words(key, base, n)           the words u of logical elements 0 .. n-1
    words_at(key, base, idx)      the same at chosen logical indices (any 64-bit index)
    threshold(p)                  t = floor(p * 2**32) in float64
    keep_mask(shape, p, key, base=0)   bool ndarray: u >= t (p == 1 keeps nothing)
    seed_mask(shape, p, seed)     the mask of `seed=` (key = seed, base = 0)
    pack_bits(mask)               bit i % 8 of byte i // 8 is mask[i]

The plain-integer `philox4x32_10_int` is a second, loop-free-of-numpy rendering of the
same rounds; both are checked against the known-answer vectors in test_philox.py.
"""
import math

import numpy as np

# Philox4x32 constants (Random123's PHILOX_M4x32_0/1 and PHILOX_W32_0/1).
M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
ROUNDS = 10
U32 = 0xFFFFFFFF
U64 = 2**64

KAT = [  # (counter c0..c3, key k0 k1) -> output words: Random123's known-answer vectors
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def philox4x32_10_int(counter, key):
    """Philox4x32-10 on plain Python ints: one S-box round is
    (hi(M1*c2) ^ c1 ^ k0, lo(M1*c2), hi(M0*c0) ^ c3 ^ k1, lo(M0*c0)),
    and the key is bumped by (W0, W1) between rounds (ten rounds, nine bumps)."""
    c0, c1, c2, c3 = (int(v) & U32 for v in counter)
    k0, k1 = (int(v) & U32 for v in key)
    for r in range(ROUNDS):
        if r:
            k0, k1 = (k0 + W0) & U32, (k1 + W1) & U32
        p0, p1 = M0 * c0, M1 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & U32, (p0 >> 32) ^ c3 ^ k1, p0 & U32
    return c0, c1, c2, c3


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """The same rounds, vectorised: c0..c3 broadcastable arrays of 32-bit words (any int
    dtype), k0 k1 ints. Returns four uint64 arrays of 32-bit words."""
    c = [np.asarray(v, dtype=np.uint64) & np.uint64(U32) for v in (c0, c1, c2, c3)]
    c0, c1, c2, c3 = np.broadcast_arrays(*c)
    k0, k1 = int(k0) & U32, int(k1) & U32
    lo32, m0, m1, s32 = np.uint64(U32), np.uint64(M0), np.uint64(M1), np.uint64(32)
    for r in range(ROUNDS):
        if r:
            k0, k1 = (k0 + W0) & U32, (k1 + W1) & U32
        p0 = c0 * m0  # < 2**64: exact in uint64
        p1 = c2 * m1
        c0, c1, c2, c3 = (p1 >> s32) ^ c1 ^ np.uint64(k0), p1 & lo32, (p0 >> s32) ^ c3 ^ np.uint64(k1), p0 & lo32
    return c0, c1, c2, c3


def _split64(v):
    v = int(v) % U64
    return v & U32, v >> 32


def words_at(key, base, idx):
    """The words u of the logical indices `idx` (uint64-able array): word idx % 4 of
    philox(counter = (j lo, j hi, base lo, base hi), key = (key lo, key hi)), j = idx // 4."""
    idx = np.asarray(idx, dtype=np.uint64)
    j = idx >> np.uint64(2)
    k0, k1 = _split64(key)
    b0, b1 = _split64(base)
    out = philox4x32_10(j & np.uint64(U32), j >> np.uint64(32), b0, b1, k0, k1)
    lanes = np.stack(out, axis=-1)
    return np.take_along_axis(lanes, (idx & np.uint64(3)).astype(np.intp)[..., None], axis=-1)[..., 0]


def words(key, base, n):
    """The words u of logical elements 0 .. n-1 (uint64 array of 32-bit values)."""
    n = int(n)
    blocks = (n + 3) // 4
    j = np.arange(blocks, dtype=np.uint64)
    k0, k1 = _split64(key)
    b0, b1 = _split64(base)
    out = philox4x32_10(j & np.uint64(U32), j >> np.uint64(32), b0, b1, k0, k1)
    return np.stack(out, axis=1).reshape(-1)[:n]


def threshold(p):
    """t = floor(p * 2**32), computed in float64 (p * 2**32 is exact)."""
    return math.floor(float(p) * 2.0**32)


def keep_mask(shape, p, key, base=0):
    """Bool mask of `shape` (row-major logical order): keep iff u >= t; p == 1 keeps none."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    n = math.prod(shape)
    if float(p) >= 1.0:
        return np.zeros(shape, dtype=bool)
    return (words(key, base, n) >= np.uint64(threshold(p))).reshape(shape)


def seed_mask(shape, p, seed):
    """The mask of `seed=s`: key = s, base = 0."""
    return keep_mask(shape, p, seed, 0)


def pack_bits(mask):
    """Bit i % 8 of byte i // 8 is mask[i] (last byte zero-padded)."""
    return np.packbits(np.asarray(mask, dtype=bool).reshape(-1), bitorder="little")
