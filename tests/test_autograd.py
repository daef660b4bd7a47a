"""Autograd: every op's gradient is grad * keep * scale with the forward's mask (the
residual's is grad, the bias's the sum over the leading dims), in the forward output's
strides, with either backward storage ("bits": the packed mask, "seed": (key, base)), on
every set of kernels; gradcheck and gradgradcheck; what backward keeps (at most
numel / 8 + 64 bytes, one bit per channel or sample); the compiled ops' autograd is C++
(no Python in backward); the raw ops' second output; deterministic mode."""
import os
import sys

import pytest
import torch
from testing import (BACKEND_KERNELS, DTYPES, FAMILY, assert_same_bits, expected_input_grad, family, op_mask,
                     requires_compiled, storage_ctx)

import dropout_ext
from dropout_ext import functional as F

SEED = 21


def _inputs(dtype, device):
    """4-D inputs in three layouts and a 3-D one (the ranks every op of the family takes)."""
    g = torch.Generator().manual_seed(2)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dtype).to(device)

    return [rnd(2, 3, 4, 5), rnd(2, 3, 4, 5).to(memory_format=torch.channels_last),
            rnd(5, 4, 3, 2).permute(3, 2, 1, 0), rnd(3, 67, 4)]


def check_gradients(op, x, storage):
    r, b = op.operands(x)
    leaves = [t.detach().requires_grad_() for t in (x, r, b) if t is not None]
    with storage_ctx(storage):
        out = op(*leaves[:1], *([leaves[1]] if op.residual else [None]), *([leaves[2]] if op.bias else [None]),
                 seed=SEED)
        g = torch.randn(tuple(out.shape), generator=torch.Generator().manual_seed(9)).to(x.dtype).to(x.device)
        grads = torch.autograd.grad(out, leaves, g)
    keep = op_mask(op, x.shape, SEED)
    want = expected_input_grad(op, x, g, keep)
    assert grads[0].stride() == torch.empty_like(x).stride(), (op, x.stride(), grads[0].stride())
    assert_same_bits(grads[0], want)
    if op.residual:
        assert_same_bits(grads[1], g)
    if op.bias:
        tol = 1e-2 if x.dtype in (torch.float16, torch.bfloat16) else 1e-5
        torch.testing.assert_close(grads[2], want.sum(tuple(range(x.dim() - 1))), rtol=tol, atol=tol)


@pytest.mark.parametrize("storage", ["seed", "bits"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_is_grad_times_mask_times_scale(kernels, dtype, storage):
    """Inverted: g * m / (1 - p); vanilla: g * m; alpha: g * m * a; channel-wise ops and
    drop_path with their reduced masks; for contiguous, channels_last and permuted inputs."""
    for x in _inputs(dtype, kernels.device):
        for op in family(x.dim()):
            check_gradients(op, x, storage)


@pytest.mark.quick
@pytest.mark.parametrize("kernels", BACKEND_KERNELS, indirect=True)
def test_backward_quick(kernels):
    for storage in ("bits", "seed"):
        for op in family(4):
            check_gradients(op, _inputs(torch.float32, kernels.device)[1], storage)


@pytest.mark.parametrize("storage", ["seed", "bits"])
@pytest.mark.parametrize("kernels", BACKEND_KERNELS, indirect=True)
def test_gradcheck_and_gradgradcheck(kernels, storage):
    """Every op in float64: gradcheck on every input it differentiates, and double
    backward (dropout_backward is linear in the gradient, its own derivative)."""
    dev = kernels.device
    with storage_ctx(storage):
        for shape in ((2, 3, 1, 2), (2, 2, 3)):
            for op in family(len(shape)):
                x = torch.randn(shape, dtype=torch.float64, device=dev, requires_grad=True)
                r, b = op.operands(x)
                extra = [t.requires_grad_() for t in (r, b) if t is not None]

                def f(x, *rest, op=op):
                    it = iter(rest)
                    return op(x, next(it) if op.residual else None, next(it) if op.bias else None, seed=17)

                assert torch.autograd.gradcheck(f, (x, *extra), check_undefined_grad=False), op
                assert torch.autograd.gradgradcheck(f, (x, *extra)), op


# ------------------------------------------------------- what backward keeps

BYTES_OPS = ["dropout", "vanilla", "dropout2d", "alpha_dropout", "feature_alpha_dropout", "drop_path", "dropout_add",
             "bias_dropout_add"]


@pytest.mark.parametrize("storage", ["bits", "seed"])
@pytest.mark.parametrize("kernels", BACKEND_KERNELS, indirect=True)
def test_bytes_saved_for_backward(kernels, storage):
    """At most numel/8 + 64 bytes (bits), 16 + 64 bytes (seed); channel-wise ops one bit
    per channel, drop_path one per sample. Counted with saved_tensors_hooks (every tensor
    autograd keeps, once per storage)."""
    x = torch.randn(16, 8, 32, 32, device=kernels.device, requires_grad=True)
    for op in family(4, BYTES_OPS):
        seen = {}

        def pack(t):
            seen[(t.untyped_storage().data_ptr(), t.numel(), t.dtype)] = t.numel() * t.element_size()
            return t

        r, b = op.operands(x)
        with storage_ctx(storage), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = op(x, r, b)
        saved = sum(seen.values())
        words = {"dropout2d": 16 * 8, "feature_alpha_dropout": 16 * 8, "drop_path": 16}.get(op.name, x.numel())
        limit = 16 if storage == "seed" else (words + 7) // 8
        assert 0 < saved <= limit + 64, (op, saved, limit)
        out.sum().backward()


# ------------------------------------------------------- C++ autograd


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
@pytest.mark.parametrize("name", [op.name for op in family(4)])
def test_compiled_autograd_is_cpp(name, storage):
    op = {o.name: o for o in FAMILY}[name]
    with dropout_ext._backend.use("compiled"), storage_ctx(storage):
        x = torch.randn(4, 6, 5, 8, requires_grad=True)
        out = op(x, *op.operands(x))
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
