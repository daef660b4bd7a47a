"""The keep mask against the independent oracle (tests/oracle.py): exact threshold
boundaries built from known Philox words, explicit (key, base) with a non-zero base, the
`generator=` / `seed=None` default path, and the bit-packed mask; on every backend, every
CPU ISA and (visibly skipped without one) the GPU."""
import contextlib
import math

import numpy as np
import oracle
import pytest
import torch
from testing import (BACKENDS, CPU_PATHS, DTYPES, assert_same_bits, backend_ctx, clone_generator, cpu_isa_ctx,
                     expected_dropout, expected_rng_pair, make, oracle_mask, peek_rng_pair, raw_dropout,
                     raw_dropout_bits, requires_compiled, requires_gpu)

from dropout_ext import functional as F

N = 4099  # past every SIMD width, with a tail that is not a multiple of 4, 8, 16 or 64
# Elements whose words we aim the threshold at: the four lanes of block 0 (at seed=0 these
# are the SPEC's first known-answer words), SIMD lane and chunk edges, and the tail.
PROBES = [0, 1, 2, 3, 5, 15, 16, 17, 63, 64, 1000, 4096, 4098]
KEY, BASE = 0x0123456789ABCDEF, 0xF0E1D2C3B4A59687  # both words of both halves non-zero


def boundary_ps(u):
    """p values around the word u: (p, element kept?). t = floor(p * 2**32) (float64):
    p = u / 2**32 gives t = u (kept, u >= t); the largest p below (u + 1) / 2**32 still
    gives t = u (kept: a threshold rounded instead of floored would drop it); (u + 1) / 2**32
    gives t = u + 1 (dropped)."""
    above = (u + 1) / 2**32
    return [(u / 2**32, True), (math.nextafter(above, 0.0), True), (above, False)]


def check_boundaries(run, key, base, device="cpu"):
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
    """At seed=0 the words of elements 0..3 are the SPEC's first known-answer vector,
    so the boundary cases below include p = 0x6627E8D5 / 2**32 on element 0."""
    assert oracle.words(0, 0, 4).tolist() == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert boundary_ps(0x6627E8D5) == [(0x6627E8D5 / 2**32, True), (math.nextafter(0x6627E8D6 / 2**32, 0), True),
                                       (0x6627E8D6 / 2**32, False)]
    assert math.floor(math.nextafter(0x6627E8D6 / 2**32, 0) * 2**32) == 0x6627E8D5


@pytest.mark.parametrize("seed", [0, KEY])
def test_threshold_boundaries_seed(backend, seed):
    check_boundaries(lambda x, p: F.dropout(x, p, seed=seed, scale_train=False), seed, 0)


def test_threshold_boundaries_key_and_base(backend):
    check_boundaries(lambda x, p: raw_dropout(x, KEY, BASE, p, scale_train=False), KEY, BASE)


def test_threshold_boundaries_generator(backend):
    """generator=: the mask is the oracle's for the (key, base) the generator yields."""
    g = torch.Generator().manual_seed(2024)
    key, base = peek_rng_pair(g)
    assert base != 0
    check_boundaries(lambda x, p: F.dropout(x, p, generator=clone_generator(g), scale_train=False), key, base)


@requires_compiled
def test_threshold_boundaries_every_isa(cpu_isa):
    with backend_ctx("compiled"):
        check_boundaries(lambda x, p: F.dropout(x, p, seed=0, scale_train=False), 0, 0)
        check_boundaries(lambda x, p: raw_dropout(x, KEY, BASE, p, scale_train=False), KEY, BASE)


@requires_gpu
@pytest.mark.cuda
def test_threshold_boundaries_gpu():
    with backend_ctx("compiled"):
        check_boundaries(lambda x, p: F.dropout(x, p, seed=0, scale_train=False), 0, 0, "cuda")
        check_boundaries(lambda x, p: raw_dropout(x, KEY, BASE, p, scale_train=False), KEY, BASE, "cuda")


# ------------------------------------------------------- explicit (key, base)


@pytest.mark.parametrize("key,base", [(KEY, BASE), (0, 1), (0, 2**32), (2**64 - 1, 2**63), (7, 2**64 - 1)])
@pytest.mark.parametrize("n", [1, 3, 17, 64, 65, 1023, 1 << 16])
def test_key_and_base_mask_is_the_oracle_mask(backend, key, base, n):
    x = torch.ones(n, dtype=torch.float64)
    out = raw_dropout(x, key, base, 0.375)
    assert torch.equal(out != 0, oracle_mask((n,), 0.375, key, base))


@requires_compiled
@pytest.mark.parametrize("n", [5, 63, 64, 65, 129, 4099, (1 << 16) + 13])
def test_key_and_base_every_isa(cpu_isa, dtype, n):
    x = torch.randn(n, dtype=dtype)
    with backend_ctx("compiled"):
        out = raw_dropout(x, KEY, BASE, 0.3)
    assert_same_bits(out, expected_dropout(x, oracle_mask((n,), 0.3, KEY, BASE), 0.3))


@pytest.mark.parametrize("n", [1, 8, 9, 64, 4099])
def test_saved_bits_are_the_packed_oracle_mask(backend, n):
    """Bit i % 8 of byte i // 8 of the bits saved for backward is element i's keep."""
    bits = raw_dropout_bits(torch.randn(n), KEY, BASE, 0.4)
    assert bits.dtype == torch.uint8
    np.testing.assert_array_equal(bits.numpy(), oracle.pack_bits(oracle.keep_mask(n, 0.4, KEY, BASE)))


@requires_compiled
def test_saved_bits_every_isa(cpu_isa):
    with backend_ctx("compiled"):
        bits = raw_dropout_bits(torch.randn(4099), KEY, BASE, 0.4)
    np.testing.assert_array_equal(bits.numpy(), oracle.pack_bits(oracle.keep_mask(4099, 0.4, KEY, BASE)))


# ------------------------------------------------------------- the default path


def test_generator_call_draws_the_expected_pair(backend):
    """generator= and seed=None: the mask is the oracle's for expected_rng_pair, and the
    generator advances exactly as that draw does."""
    x = torch.ones(4099)
    g = torch.Generator().manual_seed(77)
    for _ in range(3):  # successive calls: fresh pairs
        mirror = clone_generator(g)
        key, base = expected_rng_pair(mirror)
        out = F.dropout(x, 0.5, generator=g)
        assert torch.equal(out != 0, oracle_mask(x.shape, 0.5, key, base))
        assert torch.equal(g.get_state(), mirror.get_state())
    torch.manual_seed(5)
    key, base = peek_rng_pair()
    out = F.dropout(x, 0.5)
    assert torch.equal(out != 0, oracle_mask(x.shape, 0.5, key, base))


@contextlib.contextmanager
def _compiled_on(isa):
    with backend_ctx("compiled"), cpu_isa_ctx(isa):
        yield


def _configs():
    """(name, context) for the Python backend and every compiled CPU ISA."""
    return [("python", lambda: backend_ctx("python"))] + [
        ("compiled-" + isa, lambda isa=isa: _compiled_on(isa)) for isa in CPU_PATHS]


def _call(op, x, p, **kw):
    aux = torch.linspace(-2, 2, x.numel(), dtype=torch.float64).to(x.dtype).reshape(x.shape)
    if op == "dropout":
        return F.dropout(x, p, **kw)
    if op == "vanilla":
        return F.dropout(x, p, scale_train=False, **kw)
    if op == "dropout1d":
        return F.dropout1d(x.reshape(x.shape[0], x.shape[1], -1), p, **kw)
    if op == "dropout2d":
        return F.dropout2d(x, p, **kw)
    if op == "dropout3d":
        return F.dropout3d(x.unsqueeze(-1), p, **kw)
    if op == "drop_path":
        return F.drop_path(x, p, **kw)
    if op == "dropout_add":
        return F.dropout_add(x, aux, p, **kw)
    if op == "bias_dropout_add":
        return F.bias_dropout_add(x, aux.reshape(-1, x.shape[-1])[0].contiguous(), aux, p, **kw)
    if op == "alpha_dropout":
        return F.alpha_dropout(x, p, True, **kw)
    return F.feature_alpha_dropout(x, p, True, **kw)


DEFAULT_PATH_OPS = ["dropout", "vanilla", "dropout1d", "dropout2d", "dropout3d", "drop_path", "dropout_add",
                    "bias_dropout_add", "alpha_dropout", "feature_alpha_dropout"]


@pytest.mark.parametrize("op", DEFAULT_PATH_OPS)
@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (2, 16, 8, 65)], ids=str)
def test_default_path_same_on_every_backend_and_isa(op, shape, dtype):
    """generator= (a cloned state per backend) and seed=None (the same manual_seed): every
    backend and ISA gives the same bits and leaves the generator in the same state. No
    draw rule is assumed here."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3)).to(dtype)
    g = torch.Generator().manual_seed(11)
    results = {}
    for name, ctx in _configs():
        with ctx():
            gc = clone_generator(g)
            a = _call(op, x, 0.3, generator=gc)
            torch.manual_seed(123)
            b = _call(op, x, 0.3)
            results[name] = (a, b, gc.get_state(), torch.get_rng_state())
    first = results["python"]
    for name, (a, b, gstate, state) in results.items():
        assert_same_bits(a, first[0])
        assert_same_bits(b, first[1])
        assert torch.equal(gstate, first[2]) and torch.equal(state, first[3]), name


@pytest.mark.parametrize("layout", ["transposed", "sliced", "channels_last"])
def test_default_path_layouts_same_on_every_backend(layout):
    x = make(layout, (4, 6, 5, 33))
    g = torch.Generator().manual_seed(4)
    outs = []
    for _, ctx in _configs():
        with ctx():
            outs.append(F.dropout(x, 0.5, generator=clone_generator(g)))
    for o in outs[1:]:
        assert_same_bits(o, outs[0])
        assert o.stride() == outs[0].stride() == torch.empty_like(x).stride()
    key, base = peek_rng_pair(g)
    assert torch.equal(outs[0].contiguous() != 0, oracle_mask(x.shape, 0.5, key, base) & (x != 0))


def test_base_words_reach_the_counter():
    """The same key with another base (low word, high word) gives another mask, the oracle's."""
    x = torch.ones(4096)
    for name in BACKENDS:
        with backend_ctx(name):
            a = raw_dropout(x, KEY, 1, 0.5)
            b = raw_dropout(x, KEY, 1 << 32, 0.5)
            c = raw_dropout(x, KEY, 0, 0.5)
        assert torch.equal(a != 0, oracle_mask(x.shape, 0.5, KEY, 1))
        assert torch.equal(b != 0, oracle_mask(x.shape, 0.5, KEY, 1 << 32))
        assert not torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("dt", DTYPES, ids=str)
def test_generator_path_values(backend, dt):
    """The values of a generator= call: x * m / (1 - p) in the accumulation dtype."""
    x = torch.randn(1000, dtype=dt)
    g = torch.Generator().manual_seed(8)
    key, base = peek_rng_pair(g)
    out = F.dropout(x, 0.3, generator=g)
    assert_same_bits(out, expected_dropout(x, oracle_mask(x.shape, 0.3, key, base), 0.3))
