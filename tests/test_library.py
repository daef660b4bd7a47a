"""torch.library integration: schemas, opcheck on every op of both namespaces, and
torch.compile(fullgraph=True)."""
import pytest
import torch
from testing import BACKENDS, HAS_COMPILED, HAS_EMULATOR, assert_same_bits, requires_compiled

from dropout_ext import _backend, _ops
from dropout_ext import functional as F
from dropout_ext import nn


def _namespaces():
    if not HAS_COMPILED:
        return [("python", _backend.python_ops())]
    testing = [("testing", _backend.testing_ops())] if HAS_EMULATOR else []
    return [("compiled", _backend.compiled_ops()), ("python", _backend.python_ops())] + testing


@requires_compiled
def test_python_schemas_match_compiled():
    for name, schema in _ops.SCHEMAS.items():
        # philox4x32_10: in the testing module's namespace only
        compiled_ns = _backend.testing_ops() if name == "philox4x32_10" else torch.ops.dropout_ext
        if compiled_ns is None:
            continue
        compiled = str(getattr(compiled_ns, name).default._schema)
        python = str(getattr(torch.ops.dropout_ext_py, name).default._schema)
        assert compiled.split("::", 1)[1] == python.split("::", 1)[1] == schema


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
        "philox4x32_10": [(torch.randint(0, 2**32, (6, 4)), torch.tensor([1, 2]))],
    }


@pytest.mark.parametrize("name", list(_ops.SCHEMAS))
@pytest.mark.parametrize("ns", [n for n, _ in _namespaces()])
def test_opcheck(ns, name):
    ops = dict(_namespaces())[ns]
    if not hasattr(ops, name):
        pytest.skip("%s is not in %s (the testing module's namespace has it)" % (name, ops.name))
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


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_torch_compile_fullgraph_matches_eager_with_seed(backend_name):
    torch._dynamo.reset()
    with _backend.use(backend_name):
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
    with _backend.use("compiled"), inductor_config.patch(fallback_random=True):
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
