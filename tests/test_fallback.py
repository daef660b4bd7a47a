"""The pure-Python fallback as a user meets it: forced by DROPOUT_EXT_FORCE_PYTHON=1, or
chosen with one warning when the extension cannot be loaded; same bits either way."""
import os
import subprocess
import sys

import torch
from testing import HAS_COMPILED, assert_same_bits

from dropout_ext import _backend
from dropout_ext import functional as F

SCRIPT = r"""
import sys, warnings, torch
if {break_extension}:
    sys.modules["dropout_ext._C"] = None  # makes `from . import _C` raise ImportError
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import dropout_ext
    from dropout_ext import functional as F
    x = torch.arange(-500, 500, dtype=torch.float32) / 7
    out = F.dropout(x, 0.3, seed=42)
    xg = x.clone().requires_grad_()
    F.dropout(xg, 0.3, seed=42).sum().backward()
ours = [w for w in caught if "dropout_ext" in str(w.message)]
torch.save({{"out": out, "grad": xg.grad, "backends": dropout_ext.compiled_backends(),
            "warnings": [str(w.message) for w in ours]}}, sys.argv[1])
"""


def run(tmp_path, env_extra, break_extension=False):
    path = tmp_path / "result.pt"
    env = dict(os.environ, **env_extra)
    code = SCRIPT.format(break_extension=break_extension)
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, env=env, cwd=str(tmp_path))
    return torch.load(path)


def expected():
    x = torch.arange(-500, 500, dtype=torch.float32) / 7
    with _backend.use("python"):
        out = F.dropout(x, 0.3, seed=42)
        xg = x.clone().requires_grad_()
        F.dropout(xg, 0.3, seed=42).sum().backward()
    return out, xg.grad


def test_forced_python(tmp_path):
    r = run(tmp_path, {"DROPOUT_EXT_FORCE_PYTHON": "1"})
    assert r["backends"] == ()
    assert r["warnings"] == []
    out, grad = expected()
    assert_same_bits(r["out"], out)
    assert_same_bits(r["grad"], grad)


def test_missing_extension_warns_once_and_falls_back(tmp_path):
    r = run(tmp_path, {"DROPOUT_EXT_FORCE_PYTHON": "0"}, break_extension=True)
    assert r["backends"] == ()
    assert len(r["warnings"]) == 1 and "pure-Python fallback" in r["warnings"][0]
    out, grad = expected()
    assert_same_bits(r["out"], out)
    assert_same_bits(r["grad"], grad)


def test_compiled_default(tmp_path):
    r = run(tmp_path, {"DROPOUT_EXT_FORCE_PYTHON": "0"})
    if HAS_COMPILED:
        assert r["backends"][0] == "cpu" and r["warnings"] == []
    out, grad = expected()
    assert_same_bits(r["out"], out)
    assert_same_bits(r["grad"], grad)


def test_library_suite_on_the_registered_fallback():
    """With DROPOUT_EXT_FORCE_PYTHON=1 the Python kernels serve torch.ops.dropout_ext: the
    library tests (schemas, opcheck, torch.compile) run against them in a fresh process."""
    env = dict(os.environ, DROPOUT_EXT_FORCE_PYTHON="1")
    env.pop("DROPOUT_EXT_REQUIRE_COMPILED", None)
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                           os.path.join(here, "test_library.py")], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout
