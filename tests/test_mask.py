"""The keep mask against the independent oracle (tests/oracle.py), on every set of kernels
(the Python kernels, every compiled CPU path, the emulator, CUDA where present): exact
threshold boundaries built from known Philox words, explicit (key, base) with a non-zero
base, the bit-packed mask saved for backward, the draw rule of `seed=None` and
`generator=`, `seed=` at its extremes, 64-bit element indices."""
import math

import numpy as np
import oracle
import pytest
import torch
from testing import (BACKEND_KERNELS, DEFAULT_ISA, DTYPES, FAMILY, assert_same_bits, clone_generator,
                     expected_dropout, expected_output, expected_rng_pair, keep_mask, op_mask, oracle_mask,
                     peek_rng_pair, raw_dropout, raw_dropout_bits, signed64)

from dropout_ext import _backend
from dropout_ext import functional as F

N = 4099  # past every SIMD width, with a tail that is not a multiple of 4, 8, 16 or 64
# Elements whose words we aim the threshold at: the four lanes of block 0 (at seed=0 these
# are the first known-answer words of Philox4x32-10), SIMD lane and chunk edges, the tail.
PROBES = [0, 1, 2, 3, 5, 15, 16, 17, 63, 64, 1000, 4096, 4098]
KEY, BASE = 0x0123456789ABCDEF, 0xF0E1D2C3B4A59687  # both words of both halves non-zero


def boundary_ps(u):
    """p values around the word u: (p, element kept?). t = floor(p * 2**32) (float64):
    p = u / 2**32 gives t = u (kept, u >= t); the largest p below (u + 1) / 2**32 still
    gives t = u (kept: a threshold rounded instead of floored would drop it); (u + 1) / 2**32
    gives t = u + 1 (dropped)."""
    above = (u + 1) / 2**32
    return [(u / 2**32, True), (math.nextafter(above, 0.0), True), (above, False)]


def check_boundaries(run, key, base, device):
    """run(x, p) -> vanilla dropout output of x = ones(N) with the mask of (key, base)."""
    words = oracle.words(key, base, N)
    x = torch.ones(N, device=device)
    for i in PROBES:
        u = int(words[i])
        for p, kept in boundary_ps(u):
            out = run(x, p).cpu()
            assert bool(out[i] != 0) == kept, (i, hex(u), p, kept)
            assert torch.equal(out != 0, oracle_mask((N,), p, key, base)), (i, p)


def test_boundary_words_are_the_known_answers():
    """At seed=0 the words of elements 0..3 are Philox4x32-10's first known-answer vector,
    so the boundary cases include p = 0x6627E8D5 / 2**32 on element 0; and p = k / 2**32
    gives the threshold k exactly."""
    assert oracle.words(0, 0, 4).tolist() == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert boundary_ps(0x6627E8D5) == [(0x6627E8D5 / 2**32, True), (math.nextafter(0x6627E8D6 / 2**32, 0), True),
                                       (0x6627E8D6 / 2**32, False)]
    assert math.floor(math.nextafter(0x6627E8D6 / 2**32, 0) * 2**32) == 0x6627E8D5
    for k in (1, 2**31, 2**32 - 1):
        assert math.floor(k / 2**32 * 2**32) == k


@pytest.mark.parametrize("seed", [0, KEY])
def test_threshold_boundaries_seed(kernels, seed):
    check_boundaries(lambda x, p: F.dropout(x, p, seed=seed, scale_train=False), seed, 0, kernels.device)


def test_threshold_boundaries_key_and_base(kernels):
    check_boundaries(lambda x, p: raw_dropout(x, KEY, BASE, p, scale_train=False), KEY, BASE, kernels.device)


def test_threshold_boundaries_generator(kernels):
    """generator=: the mask is the oracle's for the (key, base) the generator yields."""
    g = torch.Generator(device=kernels.device).manual_seed(2024)
    key, base = peek_rng_pair(g)
    assert base != 0
    check_boundaries(lambda x, p: F.dropout(x, p, generator=clone_generator(g), scale_train=False), key, base,
                     kernels.device)


# ------------------------------------------------------- explicit (key, base)

KEY_BASES = [(KEY, BASE), (0, 1), (0, 2**32), (2**64 - 1, 2**63), (7, 2**64 - 1)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_key_and_base_mask_is_the_oracle_mask(kernels, dtype):
    """Every (key, base), base words in either half, sizes around the SIMD widths and
    past 2**16: the values are x * m / (1 - p) with the oracle's m."""
    for n in (1, 3, 17, 64, 65, 129, 1023, N, (1 << 16) + 13):
        x = torch.randn(n, generator=torch.Generator().manual_seed(n)).to(dtype)
        for key, base in KEY_BASES:
            out = raw_dropout(x.to(kernels.device), key, base, 0.375)
            assert_same_bits(out, expected_dropout(x, oracle_mask((n,), 0.375, key, base), 0.375))


def test_base_words_reach_the_counter(kernels):
    """The same key with another base (low word, high word) gives another mask, the oracle's."""
    x = torch.ones(4096, device=kernels.device)
    a = raw_dropout(x, KEY, 1, 0.5)
    b = raw_dropout(x, KEY, 1 << 32, 0.5)
    c = raw_dropout(x, KEY, 0, 0.5)
    assert torch.equal((a != 0).cpu(), oracle_mask(x.shape, 0.5, KEY, 1))
    assert torch.equal((b != 0).cpu(), oracle_mask(x.shape, 0.5, KEY, 1 << 32))
    assert not torch.equal(a, b) and not torch.equal(a, c)


def test_rng_tensor_on_the_cpu_or_on_the_input_device(kernels):
    """The ops take (key, base) on the CPU or on the input's device: the same mask."""
    ops = _backend.ops()
    x = torch.randn(10_000, device=kernels.device)
    rng = torch.tensor([123456789, 42])
    a, _ = ops.dropout(x, rng, None, 0.5, 0, 1, 0)
    b, _ = ops.dropout(x, rng.to(kernels.device), None, 0.5, 0, 1, 0)
    assert_same_bits(a, b)
    assert_same_bits(a, expected_dropout(x.cpu(), oracle_mask(x.shape, 0.5, 123456789, 42), 0.5))


@pytest.mark.parametrize("n", [1, 8, 9, 64, 4099])
def test_saved_bits_are_the_packed_oracle_mask(kernels, n):
    """Bit i % 8 of byte i // 8 of the bits saved for backward is element i's keep."""
    bits = raw_dropout_bits(torch.randn(n, device=kernels.device), KEY, BASE, 0.4)
    assert bits.dtype == torch.uint8 and bits.device.type == kernels.device
    np.testing.assert_array_equal(bits.cpu().numpy(), oracle.pack_bits(oracle.keep_mask(n, 0.4, KEY, BASE)))


# ---------------------------------------------------------------- seed=


def test_seed_extremes(kernels):
    """seed= anywhere in [0, 2**64): key = seed, base = 0 (signed and unsigned halves)."""
    x = torch.randn(100, device=kernels.device)
    for s in (0, 1, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1):
        out = F.dropout(x, 0.5, seed=s)
        assert_same_bits(out, expected_dropout(x.cpu(), keep_mask(x.shape, 0.5, s), 0.5))
        assert signed64(s) == (s - 2**64 if s >= 2**63 else s)


def test_same_seed_same_mask_on_every_dtype(kernels):
    x = torch.randn(10000, device=kernels.device).abs() + 1
    assert_same_bits(F.dropout(x, 0.5, seed=11), F.dropout(x, 0.5, seed=11))
    assert not torch.equal(F.dropout(x, 0.5, seed=11), F.dropout(x, 0.5, seed=12))
    masks = [(F.dropout(x.to(d), 0.5, seed=99) != 0) for d in DTYPES]
    for m in masks[1:]:
        assert torch.equal(m, masks[0])


# ------------------------------------------------------------- the default path


def _state(generator):
    return generator.get_state()


def test_generator_call_draws_the_expected_pair(kernels):
    """generator= and seed=None: the mask is the oracle's for expected_rng_pair, the
    generator advances exactly as that draw does, successive calls draw fresh pairs, and
    torch.manual_seed reproduces a call."""
    dev = kernels.device
    x = torch.ones(4099, device=dev)
    g = torch.Generator(device=dev).manual_seed(77)
    outs = []
    for _ in range(3):
        mirror = clone_generator(g)
        key, base = expected_rng_pair(mirror)
        out = F.dropout(x, 0.5, generator=g)
        assert torch.equal((out != 0).cpu(), oracle_mask(x.shape, 0.5, key, base))
        assert torch.equal(_state(g), _state(mirror))
        outs.append(out)
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[1], outs[2])
    g.manual_seed(77)
    assert_same_bits(F.dropout(x, 0.5, generator=g), outs[0])
    torch.manual_seed(5)
    key, base = peek_rng_pair(device=dev)
    a, b = F.dropout(x, 0.5), F.dropout(x, 0.5)
    assert torch.equal((a != 0).cpu(), oracle_mask(x.shape, 0.5, key, base))
    assert not torch.equal(a, b)
    torch.manual_seed(5)
    assert_same_bits(F.dropout(x, 0.5), a)


def fit(op, x):
    """x with a rank the op takes (trailing dims added or merged)."""
    while not op.takes(x.dim()):
        x = x.unsqueeze(-1) if any(op.takes(d) for d in range(x.dim() + 1, 6)) else x.flatten(-2)
    return x


@pytest.mark.quick
@pytest.mark.parametrize("kernels", BACKEND_KERNELS, indirect=True)
def test_every_op_default_path_quick(kernels):
    """The quick tier's check of every op on each backend: generator= against the oracle."""
    _check_default_path(kernels, torch.float32, [(3, 5, 7, 9)])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_op_default_path_is_the_oracle_formula(kernels, dtype):
    """generator= and seed=None (after torch.manual_seed), every op: the values are the
    contract's formula for the oracle's mask of the (key, base) the draw rule gives, and the
    generator advances exactly as that draw."""
    _check_default_path(kernels, dtype, [(3, 5, 7, 9), (2, 16, 8, 65)])


def _check_default_path(kernels, dtype, shapes):
    dev = kernels.device
    default = torch.cuda.default_generators[torch.cuda.current_device()] if dev == "cuda" else torch.default_generator
    for shape in shapes:
        base_x = torch.randn(shape, generator=torch.Generator().manual_seed(3)).to(dtype).to(dev)
        for op in FAMILY:
            x = fit(op, base_x)
            r, b = op.operands(x)
            g = torch.Generator(device=dev).manual_seed(11)
            mirror = clone_generator(g)
            key, base = expected_rng_pair(mirror)
            out = op(x, r, b, generator=g)
            assert_same_bits(out, expected_output(op, x, r, b, op_mask(op, x.shape, key, base)))
            assert torch.equal(g.get_state(), mirror.get_state()), op
            torch.manual_seed(123)
            key, base = expected_rng_pair(device=dev)
            after = default.get_state()
            torch.manual_seed(123)
            out = op(x, r, b)
            assert_same_bits(out, expected_output(op, x, r, b, op_mask(op, x.shape, key, base)))
            assert torch.equal(default.get_state(), after), op


# ------------------------------------------------------------ 64-bit indices


@pytest.mark.parametrize("kernels", [k for k in BACKEND_KERNELS if k in (DEFAULT_ISA, "cuda")] or ["python"],
                         indirect=True)
def test_past_2_31_elements(kernels):
    """64-bit indexing: a float16 tensor of 2**31 + 77 elements, dropped in place, checked
    against the oracle's words at indices around 2**31 (and on CUDA the saved bits too)."""
    if not kernels.compiled:
        pytest.skip("the compiled kernels are not loaded")
    n = (1 << 31) + 77
    dev = kernels.device
    if dev == "cuda":
        free, _ = torch.cuda.mem_get_info()
        if free < 3 * n * 2 + (1 << 30):
            pytest.skip("needs about %d GiB of free GPU memory" % (3 * n * 2 >> 30))
    seed = 0xC0FFEE
    x = torch.ones(n, dtype=torch.float16, device=dev)
    idx = torch.tensor([0, 1, 2, 3, (1 << 31) - 2, (1 << 31) - 1, 1 << 31, (1 << 31) + 3, n - 2, n - 1]
                       + torch.randint(0, n, (32,), generator=torch.Generator().manual_seed(0)).tolist())
    w = torch.from_numpy(oracle.words_at(seed, 0, idx.numpy()).astype("int64"))
    keep = w >= (1 << 31)
    if dev == "cuda":
        bits = raw_dropout_bits(x, seed, 0, 0.5)
        got_bits = ((bits[(idx // 8).to(dev)].cpu().to(torch.int64) >> (idx % 8)) & 1).bool()
        assert torch.equal(got_bits, keep)
        del bits
    F.dropout(x, 0.5, inplace=True, seed=seed)
    assert torch.equal(x[idx.to(dev)].float().cpu(), torch.where(keep, 2.0, 0.0))
