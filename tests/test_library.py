"""torch.library integration: one namespace defined from one set of schemas, opcheck on
every op, and torch.compile(fullgraph=True)."""
import pytest
import torch
from testing import HAS_EMULATOR, assert_same_bits, requires_compiled

from dropout_ext import _backend, _ops
from dropout_ext import functional as F
from dropout_ext import nn


def test_schemas_are_defined_once_from_python():
    for name, schema in _ops.SCHEMAS.items():
        assert str(getattr(torch.ops.dropout_ext, name).default._schema) == "dropout_ext::" + schema
    assert not hasattr(torch.ops.dropout_ext_py, "dropout")  # no second namespace


@requires_compiled
def test_compiled_kernels_serve_the_op_names():
    for name in _ops.SCHEMAS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key("dropout_ext::" + name, "CPU")
        if name != "dropout_":
            assert torch._C._dispatch_has_kernel_for_dispatch_key("dropout_ext::" + name, "Autograd")


def _samples(dtype=torch.float32):
    x = torch.randn(5, 12, dtype=dtype, requires_grad=True)
    rng = torch.tensor([123, 4])
    bits = torch.randint(0, 256, ((60 + 7) // 8,), dtype=torch.uint8)
    r = torch.randn(5, 12, dtype=dtype, requires_grad=True)
    b = torch.randn(12, dtype=dtype, requires_grad=True)
    return {
        "dropout": [(x.detach(), rng, None, 0.3, 0, 2, 0), (x, rng, None, 0.3, 1, 2, 1), (x, rng, None, 0.5, 0, 1, 1),
                    (x, rng, None, 0.3, 2, 2, 2), (x, rng, None, 0.3, 0, 2, 1, [10, 24], [5, 12])],
        "dropout_": [(x.detach().clone(), rng, None, 0.3, 0, 2), (x.detach().clone(), rng, None, 0.3, 2, 1)],
        "dropout_backward": [(x, bits, 0.3, 0, 2), (x, rng, 0.3, 0, 2), (x, rng, 0.3, 2, 1, None, None, [1, 5])],
        "dropout_add": [(x.detach(), r.detach(), rng, None, 0.2, 0), (x, r, rng, None, 0.2, 1)],
        "bias_dropout_add": [(x.detach(), b.detach(), r.detach(), rng, None, 0.2, 0), (x, b, r, rng, None, 0.2, 2)],
    }


@pytest.mark.parametrize("name", list(_ops.SCHEMAS))
@pytest.mark.parametrize("ns", ["dropout_ext"] + (["dropout_ext_testing"] if HAS_EMULATOR else []))
def test_opcheck(ns, name):
    """The ops of the backend that serves the op names (the fallback's in the forced-Python
    run of tests/test_fallback.py), and the emulated CUDA kernels of the testing module."""
    ops = torch.ops.dropout_ext if ns == "dropout_ext" else _backend.testing_ops()
    for args in _samples()[name]:
        torch.library.opcheck(getattr(ops, name).default, args)


class Block(torch.nn.Module):
    def __init__(self, seed=None):
        super().__init__()
        self.lin = torch.nn.Linear(16, 16)
        self.drop = nn.Dropout(0.25)
        self.seed = seed

    def forward(self, x):
        h = self.drop(torch.relu(self.lin(x)))
        return F.dropout(h, 0.5, seed=self.seed) if self.seed is not None else h


def test_torch_compile_fullgraph_matches_eager_with_seed():
    """The ops that serve the names: the compiled ones here, the Python fallback's in the
    forced-Python run of this file (tests/test_fallback.py)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = Block(seed=1234)
    x = torch.randn(8, 16, requires_grad=True)
    m.drop.eval()  # the module's own mask is random: test the seeded functional here
    eager = m(x)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")(x)
    assert_same_bits(compiled, eager)
    g_e, = torch.autograd.grad(eager.sum(), x)
    g_c, = torch.autograd.grad(compiled.sum(), x)
    assert_same_bits(g_c, g_e)


@requires_compiled
def test_torch_compile_inductor_nn_dropout():
    """Default backend (inductor), nn.Dropout with seed=None: compiles without graph
    breaks, trains, and with fallback_random the masks match eager under manual_seed."""
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    with inductor_config.patch(fallback_random=True):
        torch.manual_seed(0)
        m = Block()
        x = torch.randn(8, 16)
        cm = torch.compile(m, fullgraph=True)
        torch.manual_seed(7)
        out_c = cm(x)
        torch.manual_seed(7)
        out_e = m(x)
        assert_same_bits(out_c, out_e)
        out_c.sum().backward()
        assert m.lin.weight.grad is not None
