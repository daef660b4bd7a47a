"""Smoke test of an installed wheel, run from outside the source tree by
`./dev.sh wheel-check`: the package imports from site-packages, its compiled kernels load,
and they give the Python backend's results."""
import os
import sys

import torch

import dropout_ext
from dropout_ext import _backend
from dropout_ext import functional as F

where = os.path.dirname(dropout_ext.__file__)
print("dropout_ext", dropout_ext.__version__, "imported from", where)
assert "site-packages" in where, "imported from the source tree, not the installed wheel: " + where
backends = dropout_ext.compiled_backends()
print("compiled backends:", backends, "| torch", torch.__version__)
assert "cpu" in backends, "the wheel's compiled extension did not load: %s" % (_backend.load_error,)
assert os.path.exists(os.path.join(where, "py.typed")) and os.path.exists(os.path.join(where, "csrc", "ops.cpp"))
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
