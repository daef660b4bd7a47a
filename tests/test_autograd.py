"""Autograd (issue 10, SPEC sections 6 and 7): the compiled ops' autograd is C++ (no
Python runs in forward beyond the public function, none in backward), every op keeps at
most numel/8 + 64 bytes for backward, double backward works, activation checkpointing
recomputes the same mask, and deterministic mode is accepted."""
import os
import sys

import pytest
import torch
from testing import assert_same_bits, requires_compiled, storage_ctx

import dropout_ext
from dropout_ext import functional as F

OPS = {
    "dropout": lambda x, **kw: F.dropout(x, 0.4, **kw),
    "vanilla": lambda x, **kw: F.dropout(x, 0.4, scale_train=False, **kw),
    "dropout2d": lambda x, **kw: F.dropout2d(x, 0.5, **kw),
    "alpha_dropout": lambda x, **kw: F.alpha_dropout(x, 0.3, True, **kw),
    "feature_alpha_dropout": lambda x, **kw: F.feature_alpha_dropout(x, 0.3, True, **kw),
    "drop_path": lambda x, **kw: F.drop_path(x, 0.5, **kw),
    "dropout_add": lambda x, **kw: F.dropout_add(x, torch.ones_like(x), 0.4, **kw),
    "bias_dropout_add": lambda x, **kw: F.bias_dropout_add(x, torch.ones(x.shape[-1], dtype=x.dtype), torch.ones_like(x),
                                                           0.4, **kw),
}


def _python_calls(fn):
    """Names of the dropout_ext Python functions entered while fn() runs."""
    calls = []
    package = os.path.dirname(os.path.abspath(dropout_ext.__file__))

    def profile(frame, event, arg):
        if event == "call" and os.path.abspath(frame.f_code.co_filename).startswith(package):
            calls.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


@requires_compiled
@pytest.mark.parametrize("storage", ["bits", "seed"])
@pytest.mark.parametrize("name", list(OPS))
def test_compiled_autograd_is_cpp(name, storage):
    with dropout_ext._backend.use("compiled"), storage_ctx(storage):
        x = torch.randn(4, 6, 5, 8, requires_grad=True)
        out = OPS[name](x)
        assert out.grad_fn.name().startswith("torch::autograd::CppNode<dropout_ext::"), out.grad_fn.name()
        g = torch.randn_like(out)
        assert _python_calls(lambda: out.backward(g)) == []
        # the forward runs only the public function and the fast entry
        calls = _python_calls(lambda: F.dropout(x, 0.4))
        assert calls == ["dropout", "fast_dropout"], calls
        F.dropout(x, 0.4, seed=91)  # the first call with a seed checks it and keeps its tensor
        calls = _python_calls(lambda: F.dropout(x, 0.4, seed=91))
        assert calls == ["dropout", "fast_dropout"], calls


def test_python_backend_autograd_is_python():
    with dropout_ext._backend.use("python"):
        out = F.dropout(torch.randn(5, requires_grad=True), 0.5)
        assert "CppNode" not in out.grad_fn.name()


@pytest.mark.parametrize("storage", ["bits", "seed"])
@pytest.mark.parametrize("name", list(OPS))
def test_bytes_saved_for_backward(backend, name, storage):
    """At most numel/8 + 64 bytes (bits), 16 bytes (seed); channel-wise ops one bit per
    channel. Counted with saved_tensors_hooks (every tensor autograd keeps)."""
    x = torch.randn(16, 8, 32, 32, requires_grad=True)
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.numel(), t.dtype)] = t.numel() * t.element_size()
        return t

    with storage_ctx(storage), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = OPS[name](x)
    saved = sum(seen.values())
    words = {"dropout2d": 16 * 8, "feature_alpha_dropout": 16 * 8, "drop_path": 16}.get(name, x.numel())
    limit = 16 if storage == "seed" else (words + 7) // 8
    assert saved <= limit + 64, (name, saved, limit)
    out.sum().backward()


@pytest.mark.parametrize("storage", ["bits", "seed"])
def test_double_backward(backend, storage):
    with storage_ctx(storage):
        for name, op in OPS.items():
            x = torch.randn(3, 4, 2, 5, dtype=torch.float64, requires_grad=True)
            assert torch.autograd.gradgradcheck(lambda t: op(t, seed=17), (x,)), name


@pytest.mark.parametrize("preserve", [True])
def test_activation_checkpointing_recomputes_the_same_mask(backend, preserve):
    from torch.utils.checkpoint import checkpoint

    lin = torch.nn.Linear(32, 32)
    x = torch.randn(16, 32, requires_grad=True)

    def block(t):
        return F.dropout(torch.relu(lin(t)), 0.5) + F.dropout_add(t, t, 0.3)

    torch.manual_seed(5)
    ref = block(x)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    torch.manual_seed(5)
    out = checkpoint(block, x, use_reentrant=False, preserve_rng_state=preserve)
    (g,) = torch.autograd.grad(out.sum(), x)
    assert_same_bits(out, ref)
    assert_same_bits(g, g_ref)


def test_deterministic_algorithms(backend):
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        x = torch.randn(100, requires_grad=True)
        out = F.dropout(x, 0.5, seed=3)
        out.sum().backward()
        assert_same_bits(out, F.dropout(x.detach(), 0.5, seed=3))
    finally:
        torch.use_deterministic_algorithms(old)


def test_inplace_bumps_the_version_counter(backend):
    for fn in (lambda t: F.dropout(t, 0.5, inplace=True), lambda t: F.alpha_dropout(t, 0.5, True, inplace=True),
               lambda t: F.dropout2d(t, 0.5, inplace=True)):
        x = torch.randn(4, 3, 5, 5)
        v = x._version
        fn(x)
        assert x._version > v


def test_raw_op_with_save_0_and_grad_raises(backend):
    ops = dropout_ext._backend.ops()
    x = torch.randn(8, requires_grad=True)
    with pytest.raises(ValueError, match="save"):
        ops.dropout(x, torch.tensor([1, 2]), None, 0.5, 0, 1, 0)


@requires_compiled
@pytest.mark.parametrize("save", [1, 2])
def test_compiled_ops_saved_output_has_no_history(save):
    """The raw ops' second output (bits or (key, base)) leaves the C++ Function outside its
    node: no grad_fn, no requires_grad; backward still reads it, and double backward
    (create_graph) goes through the backward op's own node."""
    ops = torch.ops.dropout_ext
    x = torch.randn(6, 40, requires_grad=True)
    r = torch.randn(6, 40, requires_grad=True)
    b = torch.randn(40, requires_grad=True)
    calls = {
        "dropout": lambda: ops.dropout(x, None, None, 0.3, 0, 2, save, None, None),
        "dropout_add": lambda: ops.dropout_add(x, r, None, None, 0.3, save, None, None),
        "bias_dropout_add": lambda: ops.bias_dropout_add(x, b, r, None, None, 0.3, save, None, None),
    }
    with dropout_ext._backend.use("compiled"):
        for name, call in calls.items():
            out, saved = call()
            assert saved.grad_fn is None and not saved.requires_grad, name
            assert saved.dtype == (torch.uint8 if save == 1 else torch.int64), name
            assert out.grad_fn.name().startswith("torch::autograd::CppNode<dropout_ext::"), name
            g = torch.randn_like(out)
            (gx,) = torch.autograd.grad(out, x, g, retain_graph=True)
            # the gradient is g * keep / (1 - p); dropped elements are where out equals 0
            # (dropout) or the residual (the fused ops)
            dropped = {"dropout": out.detach() == 0, "dropout_add": out.detach() == r.detach(),
                       "bias_dropout_add": out.detach() == r.detach()}[name]
            assert torch.all(gx[dropped] == 0), name
            assert torch.allclose(gx[~dropped], g[~dropped] / 0.7), name
            assert 0 < int(dropped.sum()) < dropped.numel(), name
            gg = g.clone().requires_grad_()
            (gx2,) = torch.autograd.grad(out, x, gg, create_graph=True)
            assert torch.equal(gx2.detach(), gx), name
            assert gx2.grad_fn.name().startswith("torch::autograd::CppNode<dropout_ext::"), name
            (ggg,) = torch.autograd.grad(gx2, gg, torch.ones_like(gx2))
            assert torch.all(ggg[dropped] == 0) and torch.all(ggg[~dropped] != 0), name
