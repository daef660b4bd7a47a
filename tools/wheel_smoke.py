"""Smoke test of an installed wheel, run from outside the source tree by
`./dev.sh wheel-check`: the package imports from site-packages, its compiled kernels load,
they give the Python backend's results, and the wheel holds no development code (no
testing module, no op beyond the public ones in torch.ops.dropout_ext)."""
import glob
import importlib.util
import os
import sys

import torch

import dropout_ext
from dropout_ext import _backend, _ops
from dropout_ext import functional as F

where = os.path.dirname(dropout_ext.__file__)
print("dropout_ext", dropout_ext.__version__, "imported from", where)
assert "site-packages" in where, "imported from the source tree, not the installed wheel: " + where
backends = dropout_ext.compiled_backends()
print("compiled backends:", backends, "| torch", torch.__version__)
assert "cpu" in backends, "the wheel's compiled extension did not load: %s" % (_backend.load_error,)
assert os.path.exists(os.path.join(where, "py.typed")) and os.path.exists(os.path.join(where, "csrc", "ops.cpp"))

# No development code: the testing module (dropout_ext._testing, its op namespace
# dropout_ext_testing: the CUDA kernel emulator, philox4x32_10, the CUDA tuning knobs) is
# built only with DROPOUT_EXT_TESTING, and the product's namespace has only the public ops
# and the run-time CPU path switch.
assert importlib.util.find_spec("dropout_ext._testing") is None, "the wheel has the testing module"
assert not glob.glob(os.path.join(where, "_testing*")), glob.glob(os.path.join(where, "_testing*"))
assert not os.path.exists(os.path.join(where, "csrc", "testing")), "the wheel ships the testing module's sources"
assert _backend.testing_ops() is None
op_names = sorted(torch._C._dispatch_get_all_op_names())
ours = {n.split("::", 1)[1] for n in op_names if n.startswith("dropout_ext::")}
# the ops of the package's one schema table, and the run-time CPU path switch the extension defines
public = set(_ops.SCHEMAS) | {"_cpu_isa", "_cpu_isas_supported"}
assert ours == public, "torch.ops.dropout_ext holds %s, expected %s" % (sorted(ours), sorted(public))
assert not [n for n in op_names if n.startswith("dropout_ext_testing::")]
assert "cuda-emu" not in _backend.cpu_isas_supported()
print("ops in torch.ops.dropout_ext:", ", ".join(sorted(ours)))
x = torch.randn(64, 33).t()
checks = {
    "dropout": lambda: F.dropout(x, 0.3, seed=7),
    "bias_dropout_add": lambda: F.bias_dropout_add(x, torch.ones(64), x, 0.3, seed=7),
    "dropout2d": lambda: F.dropout2d(torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(1)), 0.5, seed=7),
}
for name, fn in checks.items():
    compiled = fn()
    with _backend.use("python"):
        python = fn()
    assert torch.equal(compiled, python), name
    assert compiled.stride() == torch.empty_like(compiled).stride()
xr = x.detach().requires_grad_()
F.dropout(xr, 0.3).sum().backward()
assert xr.grad is not None
print("wheel smoke test passed:", ", ".join(checks))
sys.exit(0)
