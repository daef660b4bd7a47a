"""Property-based fuzzing: for random shapes, strides, dtypes, p, (key, base) and every op,
every set of kernels (each compiled CPU path, the emulator, CUDA) equals the Python kernels
bit for bit, forward and backward, and the plain dropout ops equal the oracle's mask.
(key, base) comes from `seed=` (base 0), from a `generator=` (both words drawn: the
default path) or is given explicitly with a non-zero base. Sizes reach 2**16 elements, with many near multiples of the SIMD widths
(8, 16, 64 elements) and of the Philox block (4). The profile is derandomized with no
example database, so CI runs the same examples every time in bounded time
(HYPOTHESIS_PROFILE=long for a deeper run)."""
import math
import os
import random
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from testing import (KERNELS, assert_same_bits, backend_ctx, expected_dropout, kernels_available, kernels_ctx,
                     oracle_mask, peek_rng_pair, raw_dropout, storage_ctx)

from dropout_ext import functional as F

settings.register_profile("ci", max_examples=400, deadline=None, derandomize=True, database=None,
                          suppress_health_check=list(HealthCheck))
settings.register_profile("long", max_examples=3000, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

P_VALUES = [0.0, 1.0, 2.0**-32, 1 - 2.0**-32, 0.5, 1 / 3, 0.999999, 1e-9,
            3 / 2**32, (2**31 + 1) / 2**32, (2**32 - 5) / 2**32]
SEEDS = [0, 1, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]
OPS = ["dropout", "dropout_inplace", "vanilla", "dropout2d", "dropout1d", "drop_path", "dropout_add",
       "bias_dropout_add", "alpha_dropout", "feature_alpha_dropout"]
MAX_NUMEL = 1 << 16

WORDS = st.one_of(st.sampled_from(SEEDS), st.integers(0, 2**64 - 1))


@st.composite
def rngs(draw):
    """How (key, base) is chosen: ("seed", s), ("generator", manual_seed value) or
    ("raw", key, base) with base != 0."""
    kind = ["generator", "raw", "seed"][draw(st.integers(0, 2**32 - 1)) % 3]
    if kind == "seed":
        return ("seed", draw(WORDS))
    if kind == "generator":
        return ("generator", draw(st.integers(0, 2**63 - 1)))
    return ("raw", draw(WORDS), draw(WORDS.filter(bool)))


def size_of(r):
    """An element count spread over 0 .. 2**16 on a log scale (an exponent, then a value in
    [2**e, 2**(e+1))); half of them moved to within 3 of a multiple of 8, 16 or 64 (SIMD
    lanes and chunks; also multiples of the Philox block of 4)."""
    e = r.randrange(-1, 16)
    if e < 0:
        return 0
    n = (1 << e) + r.randrange(1 << e)
    if r.random() < 0.5:
        w = r.choice([8, 16, 64])
        n = max(1, (n // w) * w + r.randint(-3, 3))
    return min(n, MAX_NUMEL)


@st.composite
def shapes(draw):
    """A shape of 1..4 dims whose numel is size_of(), or (one in ten) a small shape of
    0..4 dims (0-dim and empty tensors included). Hypothesis favours small integers and
    first choices, so the choices are made by a random.Random seeded from one drawn word."""
    r = random.Random(draw(st.integers(0, 2**32 - 1)))
    if r.random() < 0.1:
        return [r.randrange(10) for _ in range(r.randrange(5))]
    rest = size_of(r)
    shape = []
    for _ in range(r.randrange(4)):
        d = r.choice([d for d in (1, 2, 3, 4, 5, 7, 8, 16) if rest % d == 0])
        shape.append(d)
        rest //= d
    shape.append(rest)
    r.shuffle(shape)
    return shape


@st.composite
def tensors(draw):
    shape = list(draw(shapes()))
    dtype = draw(st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]))
    layout = draw(st.sampled_from(["contiguous", "transposed", "stepped", "expanded", "offset"]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    if layout == "transposed" and len(shape) >= 2:
        x = torch.randn(shape[::-1], generator=g).to(dtype).permute(*reversed(range(len(shape))))
    elif layout == "stepped" and len(shape) >= 1:
        x = torch.randn([2 * shape[0]] + shape[1:], generator=g).to(dtype)[::2]
    elif layout == "expanded" and len(shape) >= 1:
        x = torch.randn([1] + shape[1:], generator=g).to(dtype).expand(shape)
    elif layout == "offset":
        x = torch.randn(math.prod(shape) + 1, generator=g).to(dtype)[1:].view(shape)
    else:
        x = torch.randn(shape, generator=g).to(dtype)
    if draw(st.booleans()):  # special values
        flat = x.reshape(-1)
        if flat.numel() and x.is_contiguous():
            flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from([float("nan"), float("inf"), -0.0, -3.0]))
    return x


RAW_OPS = ("dropout", "vanilla")  # the ops with a raw (key, base) adapter


def effective_rng(op, rng):
    """An explicit (key, base) goes through the raw adapter for RAW_OPS; the other ops
    get a generator seeded from the drawn key instead."""
    return ("generator", rng[1] % 2**63) if rng[0] == "raw" and op not in RAW_OPS else rng


def rng_kwargs(rng, device="cpu"):
    """Keyword arguments of a public call for `rng` (a fresh generator each time, so
    every backend starts from the same state)."""
    if rng[0] == "seed":
        return {"seed": rng[1]}
    return {"generator": torch.Generator(device=device).manual_seed(rng[1])}


def expected_key_base(rng):
    if rng[0] == "seed":
        return rng[1], 0
    if rng[0] == "generator":
        return peek_rng_pair(torch.Generator().manual_seed(rng[1]))
    return rng[1], rng[2]


def run(op, x, p, rng, aux):
    """Output and input gradient of `op` on x (clones, so backends see the same input)."""
    x = x.detach().clone() if op == "dropout_inplace" else x.detach()
    xg = x.detach().requires_grad_()  # keeps x's strides (expanded, transposed, ...)
    kw = rng_kwargs(rng, x.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if rng[0] == "raw":
            out = raw_dropout(xg, rng[1], rng[2], p, scale_train=op == "dropout")
        elif op == "dropout":
            out = F.dropout(xg, p, **kw)
        elif op == "dropout_inplace":
            out = F.dropout(x, p, inplace=True, **kw)
            return out, None
        elif op == "vanilla":
            out = F.dropout(xg, p, scale_train=False, **kw)
        elif op == "dropout2d":
            if x.dim() < 2:
                return None, None
            out = F.dropout2d(xg, p, **kw)
        elif op == "dropout1d":
            if x.dim() not in (2, 3):
                return None, None
            out = F.dropout1d(xg, p, **kw)
        elif op == "drop_path":
            if x.dim() < 1:
                return None, None
            out = F.drop_path(xg, p, **kw)
        elif op == "dropout_add":
            out = F.dropout_add(xg, aux.expand_as(x) if aux.numel() == 1 else aux, p, **kw)
        elif op == "bias_dropout_add":
            if x.dim() < 1:
                return None, None
            bias = aux.reshape(-1)[:1].expand(x.shape[-1]).contiguous() if aux.numel() else torch.zeros(x.shape[-1], dtype=x.dtype)
            out = F.bias_dropout_add(xg, bias, x * 0.5, p, **kw)
        elif op == "alpha_dropout":
            out = F.alpha_dropout(xg, p, True, **kw)
        else:
            if x.dim() < 2:
                return None, None
            out = F.feature_alpha_dropout(xg, p, True, **kw)
    if out.numel() and out.requires_grad:
        (grad,) = torch.autograd.grad(out, xg, torch.ones_like(out))
    else:
        grad = None
    return out.detach(), grad


# every set of kernels but the reference, the Python kernels on the CPU (CUDA inputs are
# copies of the CPU ones, and CUDA's generator= draws another (key, base): seed= and
# explicit (key, base) only there)
OTHERS = [k for k in KERNELS if k != "python"]


def _on(name, t):
    return t.to("cuda") if name.endswith("cuda") else t


@given(x=tensors(), p=st.one_of(st.sampled_from(P_VALUES), st.floats(0, 1)), rng=rngs(),
       op=st.integers(0, 2**32 - 1).map(lambda v: OPS[v % len(OPS)]), storage=st.sampled_from(["seed", "bits"]))
def test_compiled_paths_equal_python(x, p, rng, op, storage):
    rng = effective_rng(op, rng)
    aux = torch.randn(x.shape, dtype=x.dtype) if op == "dropout_add" else torch.randn(1, dtype=x.dtype)
    with storage_ctx(storage):
        with backend_ctx("python"):
            ref_out, ref_grad = run(op, x, p, rng, aux)
        if ref_out is None:
            return
        if op in ("dropout", "dropout_inplace", "vanilla"):  # the Python backend against the oracle
            key, base = expected_key_base(rng)
            keep = oracle_mask(x.shape, p, key, base)
            assert_same_bits(ref_out, expected_dropout(x, keep, p, scale_train=op != "vanilla"))
        for name in OTHERS:
            if not kernels_available(name) or (name.endswith("cuda") and rng[0] == "generator"):
                continue
            with kernels_ctx(name):
                out, grad = run(op, _on(name, x), p, rng, _on(name, aux))
            assert_same_bits(out, ref_out)
            if ref_grad is not None:
                assert_same_bits(grad, ref_grad)


# A fixed sweep next to the fuzz: every size within 3 of a multiple of 8, 16 and 64 at a
# few magnitudes up to 2**16, on the default path (a generator's (key, base)) and with an
# explicit non-zero base, forward and backward, every ISA against the Python backend and
# both against the oracle (the Python backend alone when no build is loaded).
SWEEP_SIZES = sorted({w * m + d for w in (8, 16, 64) for m in (1, 2, 5, 33, 257, MAX_NUMEL // w)
                      for d in (-3, -1, 0, 1, 3) if 0 < w * m + d <= MAX_NUMEL})


def test_size_sweep_default_path_and_base(kernels):
    """Every size of the sweep on these kernels, against the oracle: the generator's
    (key, base) (forward and backward) and an explicit (key, base) with a non-zero base."""
    dev = kernels.device
    for n in SWEEP_SIZES:
        g = torch.Generator().manual_seed(n)
        x = torch.randn(n, generator=g)
        dy = torch.randn(n, generator=g)
        gen = torch.Generator(device=dev).manual_seed(1000 + n)
        key, base = peek_rng_pair(gen)
        raw_key, raw_base = 0x9E3779B97F4A7C15 ^ n, 0xBB67AE8584CAA73B + n
        xg = x.to(dev).requires_grad_()
        a = F.dropout(xg, 0.3, generator=gen)
        (ga,) = torch.autograd.grad(a, xg, dy.to(dev))
        b = raw_dropout(x.to(dev), raw_key, raw_base, 0.7, scale_train=False)
        keep = oracle_mask((n,), 0.3, key, base)
        assert_same_bits(a, expected_dropout(x, keep, 0.3))
        assert_same_bits(ga, expected_dropout(dy, keep, 0.3))
        assert_same_bits(b, expected_dropout(x, oracle_mask((n,), 0.7, raw_key, raw_base), 0.7, False))
