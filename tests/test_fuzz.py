"""Property-based fuzzing: for random shapes, strides, dtypes, p, seeds and every op,
each compiled CPU path equals the Python fallback bit for bit, forward and backward.
The profile is derandomized with no example database, so CI runs the same examples
every time in bounded time (HYPOTHESIS_PROFILE=long for a deeper run)."""
import math
import os
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from testing import CPU_ISAS, HAS_COMPILED, assert_same_bits, backend_ctx, cpu_isa_ctx, storage_ctx

from dropout_ext import functional as F

settings.register_profile("ci", max_examples=400, deadline=None, derandomize=True, database=None,
                          suppress_health_check=list(HealthCheck))
settings.register_profile("long", max_examples=3000, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

pytestmark = pytest.mark.skipif(not HAS_COMPILED, reason="compiled extension not built")

P_VALUES = [0.0, 1.0, 2.0**-32, 1 - 2.0**-32, 0.5, 1 / 3, 0.999999, 1e-9,
            3 / 2**32, (2**31 + 1) / 2**32, (2**32 - 5) / 2**32]
SEEDS = [0, 1, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]
OPS = ["dropout", "dropout_inplace", "vanilla", "dropout2d", "dropout1d", "drop_path", "dropout_add",
       "bias_dropout_add", "alpha_dropout", "feature_alpha_dropout"]


@st.composite
def tensors(draw):
    dims = draw(st.integers(0, 4))
    shape = draw(st.lists(st.integers(0, 9), min_size=dims, max_size=dims))
    if draw(st.booleans()):  # sizes around the SIMD widths and Philox blocks
        shape = [draw(st.sampled_from([1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 63, 64, 65, 127, 129, 1023, 4099]))] + shape[1:]
    while math.prod(shape) > 20000:
        shape[shape.index(max(shape))] //= 2
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


def run(op, x, p, seed, aux):
    """Output and input gradient of `op` on x (clones, so backends see the same input)."""
    x = x.detach().clone() if op == "dropout_inplace" else x.detach()
    xg = x.detach().requires_grad_()  # keeps x's strides (expanded, transposed, ...)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if op == "dropout":
            out = F.dropout(xg, p, seed=seed)
        elif op == "dropout_inplace":
            out = F.dropout(x, p, inplace=True, seed=seed)
            return out, None
        elif op == "vanilla":
            out = F.dropout(xg, p, seed=seed, scale_train=False)
        elif op == "dropout2d":
            if x.dim() < 2:
                return None, None
            out = F.dropout2d(xg, p, seed=seed)
        elif op == "dropout1d":
            if x.dim() not in (2, 3):
                return None, None
            out = F.dropout1d(xg, p, seed=seed)
        elif op == "drop_path":
            if x.dim() < 1:
                return None, None
            out = F.drop_path(xg, p, seed=seed)
        elif op == "dropout_add":
            out = F.dropout_add(xg, aux.expand_as(x) if aux.numel() == 1 else aux, p, seed=seed)
        elif op == "bias_dropout_add":
            if x.dim() < 1:
                return None, None
            bias = aux.reshape(-1)[:1].expand(x.shape[-1]).contiguous() if aux.numel() else torch.zeros(x.shape[-1], dtype=x.dtype)
            out = F.bias_dropout_add(xg, bias, x * 0.5, p, seed=seed)
        elif op == "alpha_dropout":
            out = F.alpha_dropout(xg, p, True, seed=seed)
        else:
            if x.dim() < 2:
                return None, None
            out = F.feature_alpha_dropout(xg, p, True, seed=seed)
    if out.numel() and out.requires_grad:
        (grad,) = torch.autograd.grad(out, xg, torch.ones_like(out))
    else:
        grad = None
    return out.detach(), grad


@given(x=tensors(), p=st.one_of(st.sampled_from(P_VALUES), st.floats(0, 1)),
       seed=st.one_of(st.sampled_from(SEEDS), st.integers(0, 2**64 - 1)),
       op=st.sampled_from(OPS), storage=st.sampled_from(["seed", "bits"]))
def test_compiled_paths_equal_python(x, p, seed, op, storage):
    aux = torch.randn(x.shape, dtype=x.dtype) if op == "dropout_add" else torch.randn(1, dtype=x.dtype)
    with storage_ctx(storage):
        with backend_ctx("python"):
            ref_out, ref_grad = run(op, x, p, seed, aux)
        if ref_out is None:
            return
        for isa in CPU_ISAS:
            with backend_ctx("compiled"), cpu_isa_ctx(isa):
                out, grad = run(op, x, p, seed, aux)
            assert_same_bits(out, ref_out)
            if ref_grad is not None:
                assert_same_bits(grad, ref_grad)
