"""Every argument on every route. A call reaches the kernels by one of several routes: the
fast entry (a plain out-of-place call), the op path (forced by generator= or by a shard),
in place (on a tensor, or on a non-leaf that requires grad), with an input that requires
grad, inside torch.func; each with seed= or seed=None. Every bad argument (p, seed=,
generator=, shards, input, residual and bias, ranks) gives the same error on every route,
with torch's type and message where torch has one, and leaves the inputs and every
generator as they were; every edge argument (p at 0 and 1 and as a tensor or an int,
seed= at its extremes and as a numpy integer, empty and 0-dim inputs, evaluation mode with
scale_train=False and in place) gives the same result on every route, the contract's.
Also: the raw ops' own checks, and the (key, base) tensors kept per seed."""
import math

import numpy as np
import pytest
import torch
from testing import (BACKEND_KERNELS, EMULATOR, FAMILY, HAS_GPU, assert_same_bits, expected_output, op_mask, peek_rng_pair,
                     storage_ctx, torch_error)

from dropout_ext import _backend, _reference, _route
from dropout_ext import functional as F
from dropout_ext import nn

SEED = 2**63 + 321
STATE = 2024  # torch.manual_seed / Generator.manual_seed for seed=None

_UNSET = object()
ROUTES = ["fast", "grad", "generator", "shard", "inplace", "inplace_grad", "func"]


class Case:
    """A call's arguments, changed from the defaults: p, keyword arguments, the input,
    residual and bias (functions of the default ones); `routes` limits the routes that
    apply (None: all)."""

    def __init__(self, name, p=_UNSET, kw=None, x=None, r=None, b=None, routes=None, ops=None, shard=False):
        self.name, self.p, self.kw, self.shard = name, p, dict(kw or {}), shard
        self.x, self.r, self.b = x, r, b
        self.routes, self.ops = routes, ops

    def __repr__(self):
        return self.name


def _float(t):
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def bad_cases(dev):
    other = "cpu" if dev == "cuda" else ("cuda" if HAS_GPU else None)
    cases = [Case("p=%r" % (p,), p=p) for p in (-0.1, 1.5, -1, 2, float("nan"), float("inf"), -float("inf"), "0.5",
                                                 None, [0.5], 0.5j)]
    cases += [Case("p=tensor of 2", p=torch.tensor([0.1, 0.2]))]
    cases += [Case("seed=%r" % (s,), kw={"seed": s}) for s in (-1, 2**64, 1.5, True, "3", torch.tensor(3))]
    cases += [Case("generator=3", kw={"generator": 3}),
              Case("seed= and generator=", kw={"seed": 1, "generator": torch.Generator(device=dev)})]
    if other is not None:
        cases += [Case("generator on another device", kw={"generator": torch.Generator(device=other)})]
    cases += [
        Case("global_shape only", kw={"global_shape": (4, 6)}),
        Case("global_offset only", kw={"global_offset": (0, 0)}),
        Case("shard of the wrong rank", kw={"global_shape": (4, 6, 1), "global_offset": (0, 0, 0)}),
        Case("shard that does not fit", kw={"global_shape": (4, 6), "global_offset": (1, 0)}),
        Case("negative offset", kw={"global_shape": (4, 6), "global_offset": (-1, 0)}),
    ]
    cases += [Case("input %s" % d, x=lambda x, d=d: torch.ones(x.shape, dtype=d, device=x.device))
              for d in (torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64)]
    cases += [Case("input a list", x=lambda x: x.tolist(), routes=["fast", "generator", "inplace"])]
    fused = ["dropout_add", "bias_dropout_add"]
    cases += [
        Case("residual of another shape", r=lambda r: r[:, :-1], ops=fused),
        Case("residual of another dtype", r=lambda r: r.double(), ops=fused),
        Case("residual an int tensor", r=lambda r: r.long(), ops=fused),
        Case("residual a list", r=lambda r: r.tolist(), ops=fused),
        Case("bias of another length", b=lambda b: b[:-1], ops=["bias_dropout_add"]),
        Case("bias 2-D", b=lambda b: b.expand(2, -1), ops=["bias_dropout_add"]),
        Case("bias of another dtype", b=lambda b: b.half(), ops=["bias_dropout_add"]),
        Case("bias not a tensor", b=lambda b: b.tolist(), ops=["bias_dropout_add"]),
        Case("input of another rank", x=lambda x: x.reshape(2, 2, 3, 2), ops=["dropout1d"]),
        Case("input 1-D", x=lambda x: x.reshape(-1), ops=["feature_alpha_dropout", "dropout2d"]),
        Case("input 0-dim", x=lambda x: x[0, 0], ops=["drop_path", "dropout1d", "feature_alpha_dropout"]),
        Case("in place on overlapping elements", x=lambda x: x.reshape(-1)[:1].expand(x.shape), routes=["inplace"]),
        Case("in place on overlapping elements, generator=", x=lambda x: x.reshape(-1)[:1].expand(x.shape),
             kw={"generator": torch.Generator(device=dev).manual_seed(7)}, routes=["inplace"]),
        Case("in place on an inference tensor", x=lambda x: _inference_copy(x), routes=["inplace"]),
    ]
    if other is not None:
        cases += [Case("residual on another device", r=lambda r: r.to(other), ops=fused)]
    return cases


def _inference_copy(x):
    with torch.inference_mode():
        return x.clone()


def edge_cases(dev):
    cases = [Case("p=%r" % (p,), p=p) for p in (0.0, 1.0, 0, 1, 2.0**-32, 1 - 2.0**-32)]
    cases += [Case("p=tensor(0.25)", p=torch.tensor(0.25)), Case("p=numpy float", p=np.float32(0.25))]
    cases += [Case("seed=%r" % (s,), kw={"seed": s}) for s in (0, 1, 2**32, 2**63, 2**64 - 1)]
    cases += [Case("seed=numpy %s" % type(s).__name__, kw={"seed": s}) for s in (np.int64(5), np.uint64(2**64 - 1))]
    cases += [Case("empty input", x=lambda x: x[:0], r=lambda r: r[:0]),
              Case("0-dim input", x=lambda x: x.reshape(-1)[0], r=lambda r: r.reshape(-1)[0])]
    cases += [Case("eval", kw={"training": False}),
              Case("eval, scale_train=False", kw={"training": False, "scale_train": False}, ops=["dropout"])]
    cases += [Case("a shard at offsets off the Philox blocks", shard=True),
              Case("a shard, seed at the top of the range", shard=True, kw={"seed": 2**64 - 1})]
    return cases


def _shard(x):
    """global_shape and global_offset that make x the shard at (1, 2, ...) of a bigger tensor."""
    offsets = tuple(range(1, x.dim() + 1))
    return tuple(n + o + 2 for n, o in zip(x.shape, offsets)), offsets


def _operands(op, dev):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 6, generator=g).to(dev)
    r = torch.randn(4, 6, generator=g).to(dev) if op.residual else None
    b = torch.randn(6, generator=g).to(dev) if op.bias else None
    if op.name in ("dropout2d", "dropout3d"):  # the ranks they take
        x = x.reshape(2, 2, 2, 3)
    return x, r, b


def _arguments(op, case, dev):
    x, r, b = _operands(op, dev)
    if case.name in ("input of another rank", "input 1-D", "input 0-dim"):
        x = torch.randn(4, 6, device=dev)
    x = case.x(x) if case.x else x
    r = case.r(r) if case.r and r is not None else r
    b = case.b(b) if case.b and b is not None else b
    if case.p is not _UNSET:
        op = op.with_p(case.p)
    return op, x, r, b


def _routes(op, case, x, seed_mode):
    kw = case.kw
    out = []
    for route in case.routes or ROUTES:
        if route == "generator" and ("seed" in kw or "generator" in kw or seed_mode == "seed"):
            continue
        if route == "shard" and ("global_shape" in kw or "global_offset" in kw or case.shard
                                 or not isinstance(x, torch.Tensor)):
            continue
        if route in ("inplace", "inplace_grad") and not op.inplace:
            continue
        if route in ("grad", "inplace_grad", "func") and not _float(x):
            continue
        out.append(route)
    return out


def _call(op, route, case, x, r, b, seed_mode, dev):
    """The output of the call on `route`, or ("error", type, message)."""
    kw = dict(case.kw)
    if seed_mode == "seed" and "seed" not in kw:
        kw["seed"] = SEED
    torch.manual_seed(STATE)
    if route == "generator":
        kw["generator"] = torch.Generator(device=dev).manual_seed(STATE)
    if route == "shard":
        kw["global_shape"], kw["global_offset"] = tuple(x.shape), (0,) * x.dim()
    if case.shard:
        kw["global_shape"], kw["global_offset"] = _shard(x)
    try:
        if route in ("fast", "generator", "shard"):
            return op(x, r, b, **kw)
        if route == "grad":
            leaf = x.detach().requires_grad_()
            return op(leaf, r, b, **kw).detach()
        if route == "inplace":
            y = x.clone() if isinstance(x, torch.Tensor) and x.is_contiguous() and not x.is_inference() else x
            out = op(y, r, b, inplace=True, **kw)
            assert out is y, "in place: the input is not returned"
            return y
        if route == "inplace_grad":
            h = x.detach().clone().requires_grad_() * 1
            out = op(h, r, b, inplace=True, **kw)
            assert out is h, "in place: the input is not returned"
            return h.detach()
        out, _ = torch.func.vjp(lambda t: op(t, r, b, **kw), x)
        return out
    except AssertionError:
        raise
    except Exception as e:  # noqa: BLE001  (compared across routes)
        if route == "generator":  # a rejected call draws nothing from generator= either
            fresh = torch.Generator(device=dev).manual_seed(STATE)
            assert torch.equal(kw["generator"].get_state(), fresh.get_state()), "a rejected call advanced generator="
        return ("error", type(e), str(e))


def _describe(outcome):
    return (outcome[1].__name__, outcome[2][:90]) if isinstance(outcome, tuple) else "no error"


def _snapshot(*ts):
    return [t.clone() if isinstance(t, torch.Tensor) else t for t in ts]


def _ops_quick_first():
    """Every op, the first (element-wise dropout) and the last (bias_dropout_add, with every
    operand) in the quick tier too."""
    return [pytest.param(op, marks=pytest.mark.quick) if op in (FAMILY[0], FAMILY[-1]) else op for op in FAMILY]


@pytest.mark.filterwarnings("ignore:dropout2d")
@pytest.mark.parametrize("op", _ops_quick_first(), ids=str)
@pytest.mark.parametrize("kernels", BACKEND_KERNELS, indirect=True)
def test_bad_arguments_same_error_on_every_route(kernels, op):
    dev = kernels.device
    problems = []
    for case in bad_cases(dev):
        if case.ops is not None and op.name not in case.ops:
            continue
        for seed_mode in ("seed", "none"):
            cop, x, r, b = _arguments(op, case, dev)
            before = _snapshot(x, r, b)
            default_state = torch.get_rng_state()
            outcomes = {}
            for route in _routes(cop, case, x, seed_mode):
                gen = case.kw.get("generator")
                gen_state = gen.get_state() if isinstance(gen, torch.Generator) else None
                torch.manual_seed(STATE)
                state = torch.get_rng_state()
                outcomes[route] = _call(cop, route, case, x, r, b, seed_mode, dev)
                if route == "fast" and seed_mode == "seed":  # a rejected seed is not remembered
                    again = _call(cop, route, case, x, r, b, seed_mode, dev)
                    if _describe(again) != _describe(outcomes[route]):
                        problems.append((case, seed_mode, "second call", _describe(again)))
                if not torch.equal(torch.get_rng_state(), state):
                    problems.append((case, seed_mode, route, "advanced the default generator"))
                if gen_state is not None and not torch.equal(gen.get_state(), gen_state):
                    problems.append((case, seed_mode, route, "advanced generator="))
            torch.set_rng_state(default_state)
            if not outcomes:
                continue
            errors = {route: o for route, o in outcomes.items() if isinstance(o, tuple)}
            if len(errors) != len(outcomes) or len(set(errors.values())) != 1:
                problems.append((case, seed_mode, {k: _describe(v) for k, v in outcomes.items()}))
            for t, t0 in zip((x, r, b), before):
                if isinstance(t, torch.Tensor) and not torch.equal(t, t0):
                    problems.append((case, seed_mode, "an input was written"))
            if "input " in case.name and "torch." not in case.name and case.name.split()[-1] in (
                    "int64", "int32", "uint8", "bool", "complex64"):
                if not all(case.name.split()[-1] in o[2] for o in errors.values()):
                    problems.append((case, "the message does not name the dtype", errors))
    assert not problems, "\n".join(map(str, problems[:12]))


@pytest.mark.parametrize("op", _ops_quick_first(), ids=str)
@pytest.mark.parametrize("kernels", BACKEND_KERNELS, indirect=True)
def test_edge_arguments_same_result_on_every_route(kernels, op):
    dev = kernels.device
    problems = []
    for case in edge_cases(dev):
        if case.ops is not None and op.name not in case.ops:
            continue
        for seed_mode in ("seed", "none"):
            cop, x, r, b = _arguments(op, case, dev)
            if not cop.takes(x.dim()):
                continue
            training = case.kw.get("training", True)
            if training:
                seed = case.kw.get("seed", SEED if seed_mode == "seed" else None)
                if seed is None:
                    torch.manual_seed(STATE)
                    key, base = peek_rng_pair(device=dev)
                else:
                    key, base = int(seed), 0
                p = float(cop.p)
                if case.shard:  # the shard's slice of the full tensor's mask
                    gs, go = _shard(x)
                    lead = cop.lead(x.dim())
                    keep = op_mask(cop.with_p(p), gs, key, base)[tuple(slice(o, o + n) for o, n in
                                                                      zip(go[:lead], x.shape[:lead]))]
                else:
                    keep = op_mask(cop.with_p(p), x.shape, key, base)
                want = expected_output(cop.with_p(p), x, r, b, keep)
            elif op.residual:
                want = r + x if b is None else r + (x + b)
            elif case.kw.get("scale_train") is False or op.kind == "vanilla":
                want = x * (1 - cop.p)
            else:
                want = x
            for route in _routes(cop, case, x, seed_mode):
                got = _call(cop, route, case, x, r, b, seed_mode, dev)
                if isinstance(got, tuple):
                    problems.append((case, seed_mode, route, got[1].__name__, got[2][:100]))
                    continue
                try:
                    assert_same_bits(got, want)
                except AssertionError as e:
                    problems.append((case, seed_mode, route, str(e)[:100]))
    assert not problems, "\n".join(map(str, problems[:12]))


@pytest.mark.quick
@pytest.mark.parametrize("kernels", BACKEND_KERNELS, indirect=True)
def test_routes_quick(kernels):
    op = FAMILY[0]
    x, _, _ = _operands(op, kernels.device)
    outs = {route: _call(op, route, Case("seed"), x, None, None, "seed", kernels.device) for route in ROUTES
            if route != "generator"}
    for route, out in outs.items():
        assert_same_bits(out, expected_output(op, x, None, None, op_mask(op, x.shape, SEED)))


# ---------------------------------------------------- torch's errors, word for word



@pytest.mark.parametrize("p", [-0.1, 1.5, -1, 2])
def test_bad_p_matches_torch(backend, p):
    x = torch.randn(4)
    expected = torch_error(lambda: torch.nn.functional.dropout(x, p))
    with pytest.raises(expected[0]) as err:
        F.dropout(x, p)
    assert str(err.value) == expected[1]
    for module in (nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.DropPath):
        with pytest.raises(expected[0]):
            module(p)


def test_error_messages(backend):
    """What each kind of bad argument says (the routes above check it is said alike)."""
    x, r, b = torch.randn(4, 8), torch.randn(4, 8), torch.randn(8)
    cases = [
        (lambda: F.dropout(x, float("nan")), ValueError, "dropout probability has to be between 0 and 1"),
        (lambda: F.dropout(x, "0.5"), TypeError, "dropout probability must be a real number"),
        (lambda: F.dropout(x, torch.tensor([0.1, 0.2])), TypeError, "dropout probability must be a real number"),
        (lambda: F.dropout(x, 0.5, seed=-1), ValueError, r"seed must be in \[0, 2\*\*64\)"),
        (lambda: F.dropout(x, 0.5, seed=True), TypeError, "seed must be an int"),
        (lambda: F.dropout(x, 0.5, generator=3), TypeError, "generator must be a torch.Generator"),
        (lambda: F.dropout(x, 0.5, seed=1, generator=torch.Generator()), ValueError, "seed= or generator="),
        (lambda: F.dropout(x, 0.5, global_shape=(4, 8)), ValueError, "global_shape and global_offset"),
        (lambda: F.dropout(x, 0.5, global_shape=(4, 8), global_offset=(1, 0)), ValueError, "does not fit"),
        (lambda: F.dropout([1.0, 2.0], 0.5), TypeError, "input must be a torch.Tensor"),
        (lambda: F.dropout(x.long(), 0.5), TypeError, "int64"),
        (lambda: F.dropout_add(x, torch.randn(4, 7), 0.5), RuntimeError, "residual must have the input's shape"),
        (lambda: F.dropout_add(x, r.double(), 0.5), TypeError, "residual must have the input's dtype"),
        (lambda: F.bias_dropout_add(x, torch.randn(4), r, 0.5), RuntimeError, "bias must be 1-D"),
        (lambda: F.bias_dropout_add(x, torch.randn(2, 8), r, 0.5), RuntimeError, "bias must be 1-D"),
        (lambda: F.bias_dropout_add(x, b.half(), r, 0.5), TypeError, "bias must have the input's dtype"),
        (lambda: F.bias_dropout_add(x, [0.0] * 8, r, 0.5), TypeError, "bias must be a torch.Tensor"),
        (lambda: F.dropout_add(x.long(), r.long(), 0.5), TypeError, "int64"),
        (lambda: F.feature_alpha_dropout(torch.randn(5), 0.5, True), RuntimeError,
         "Feature dropout requires at least 2 dimensions"),
        (lambda: F.drop_path(torch.tensor(1.0), 0.5), ValueError, "0-dim"),
    ]
    for fn, exc, match in cases:
        with pytest.raises(exc, match=match):
            fn()


def test_generator_device_rule():
    """A generator serves inputs of its device type (and CUDA index)."""
    assert not _reference._same_device(torch.device("cuda", 0), torch.device("cpu"))
    assert not _reference._same_device(torch.device("cpu"), torch.device("meta"))
    assert _reference._same_device(torch.device("cpu"), torch.device("cpu"))
    assert not _reference._same_device(torch.device("cuda", 1), torch.device("cuda", 0))
    assert _reference._same_device(torch.device("cuda", 0), torch.device("cuda", 0))


# -------------------------------------------------------------------- the raw ops


@pytest.mark.parametrize("kernels", [k for k in BACKEND_KERNELS if not k.endswith("cuda")], indirect=True)
def test_raw_ops_reject_bad_arguments(kernels):
    """The ops called directly (bypassing the public functions' checks) raise, never
    crash, and write nothing: the compiled kernels' checks (csrc/ops.cpp, also those of
    the testing module's namespace) and the Python kernels' (_reference.py)."""
    ops = _backend.ops()
    x = torch.randn(4, 8)
    rng = torch.tensor([1, 2])
    bad = [
        lambda: ops.dropout(x, torch.tensor([1, 2, 3]), None, 0.5, 0, 2, 0),          # rng of 3
        lambda: ops.dropout(x, torch.tensor([1.0, 2.0]), None, 0.5, 0, 2, 0),         # float rng
        lambda: ops.dropout(x, rng, None, 1.5, 0, 2, 0),                              # p > 1
        lambda: ops.dropout(x, rng, None, float("nan"), 0, 2, 0),                     # p NaN
        lambda: ops.dropout(x, rng, None, 0.5, 3, 2, 0),                              # kind
        lambda: ops.dropout(x, rng, None, 0.5, 0, 3, 0),                              # lead > dim
        lambda: ops.dropout(x, rng, None, 0.5, 0, -1, 0),                             # lead < 0
        lambda: ops.dropout(x, rng, None, 0.5, 0, 2, 3),                              # save
        lambda: ops.dropout(x, rng, None, 0.5, 0, 2, 0, [4, 8]),                      # shape without offset
        lambda: ops.dropout(x, rng, None, 0.5, 0, 2, 0, [4, 8], [1, 0]),              # shard does not fit
        lambda: ops.dropout(x, rng, None, 0.5, 0, 2, 0, [4], [0]),                    # wrong length
        lambda: ops.dropout(x.long(), rng, None, 0.5, 0, 2, 0),                       # int input
        lambda: ops.dropout_(x.clone().int(), rng, None, 0.5, 0, 2),
        lambda: ops.dropout_backward(x, torch.zeros(3, dtype=torch.uint8), 0.5, 0, 2),    # too few bits
        lambda: ops.dropout_backward(x, torch.zeros(4), 0.5, 0, 2),                   # float saved
        lambda: ops.dropout_backward(x, torch.zeros(4, dtype=torch.uint8), 0.5, 0, 2, None, None, [1]),
        lambda: ops.dropout_add(x, torch.randn(4, 7), rng, None, 0.5, 0),             # shape
        lambda: ops.dropout_add(x, x.double(), rng, None, 0.5, 0),                    # dtype
        lambda: ops.bias_dropout_add(x, torch.randn(7), x, rng, None, 0.5, 0),        # bias length
        lambda: ops.bias_dropout_add(x, torch.randn(2, 8), x, rng, None, 0.5, 0),     # bias rank
        lambda: ops.bias_dropout_add(torch.randn(()), torch.randn(1), torch.randn(()), rng, None, 0.5, 0),
    ]
    if kernels.name == EMULATOR:  # philox4x32_10: the testing module's namespace only
        testing_ops = _backend.testing_ops()
        bad += [
            lambda: testing_ops.philox4x32_10(torch.zeros(3, 3, dtype=torch.long), rng),  # counter shape
            lambda: testing_ops.philox4x32_10(torch.zeros(3, 4, dtype=torch.long), torch.tensor([1])),
        ]
    before = x.clone()
    for i, fn in enumerate(bad):
        with pytest.raises((RuntimeError, ValueError, TypeError)):
            fn()
    assert torch.equal(x, before)


def test_raw_backward_rejects_overlapping_strides(backend):
    """dropout_backward's `strides` must describe a dense, non-overlapping gradient."""
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="strides"):
        _backend.ops().dropout_backward(x, torch.zeros(4, dtype=torch.uint8), 0.5, 0, 2, None, None, [1, 1])


# ----------------------------------------------------- the (key, base) kept per seed


def test_seed_fast_path_checks_the_input_first(backend):
    """A bad input with a seed raises the input's error, whether the seed was seen before
    (kept tensor) or not, as with seed=None."""
    bad = torch.arange(8)
    F.dropout(torch.randn(4), 0.5, seed=424242)  # now kept
    _route._SEED_RNG.pop(424243, None)  # and this one not
    msgs = []
    for kw in ({}, dict(seed=424242), dict(seed=424243), dict(seed=-1)):
        with pytest.raises(TypeError) as e:
            F.dropout(bad, 0.5, **kw)
        msgs.append(str(e.value))
    assert len(set(msgs)) == 1, msgs


@pytest.mark.parametrize("storage", ["bits", "seed"])
def test_seed_first_used_in_inference_mode_serves_training(backend, storage):
    """The kept (key, base) tensor of a seed first used under inference_mode is an ordinary
    tensor: a later training call with that seed runs forward and backward."""
    s = 2**63 + 12345 if storage == "bits" else 2**40 + 7
    _route._SEED_RNG.pop(s, None)  # first used below
    x = torch.randn(64)
    with torch.inference_mode():
        a = F.dropout(x, 0.5, seed=s)
    leaf = x.clone().requires_grad_()
    with storage_ctx(storage):
        out = F.dropout(leaf, 0.5, seed=s)
        out.sum().backward()
    assert_same_bits(out.detach(), a)
    assert torch.equal(leaf.grad != 0, a != 0)


def test_seed_tensors_kept_are_bounded():
    x = torch.randn(8)
    for s in range(10_000, 10_000 + _route._SEED_RNG_MAX + 10):
        F.dropout(x, 0.5, seed=s)
    assert 0 < len(_route._SEED_RNG) <= _route._SEED_RNG_MAX
    assert_same_bits(F.dropout(x, 0.5, seed=10_003), F.dropout(x, 0.5, seed=10_003))
    assert math.isfinite(float(F.dropout(x, 0.5, seed=10_003).sum()))
