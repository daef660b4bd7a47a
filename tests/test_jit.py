"""The JIT route (issue 13): a package whose prebuilt extension is missing warns once and
serves every op from the Python fallback; with DROPOUT_EXT_JIT=1 it compiles the shipped
CPU sources at import (torch.utils.cpp_extension.load into a temporary build folder) and
switches to the compiled kernels, which give the Python backend's results."""
import os
import shutil
import subprocess
import sys

import pytest

import dropout_ext

PACKAGE = os.path.dirname(os.path.abspath(dropout_ext.__file__))


def _copy_without_extension(dest):
    """The package's Python files and sources, as a wheel for another torch would leave
    them once its extension fails to load: no _C."""
    pkg = os.path.join(dest, "dropout_ext")
    shutil.copytree(PACKAGE, pkg, ignore=shutil.ignore_patterns("_C*.so", "__pycache__"))
    return dest


CHECK = r"""
import sys
# an editable install's import hook would find the source tree's _C for dropout_ext._C
sys.meta_path[:] = [f for f in sys.meta_path if "dropout_ext" not in getattr(f, "__module__", "")]
import warnings, torch
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import dropout_ext
from dropout_ext import _backend, functional as F
assert dropout_ext.__file__.startswith(sys.argv[1]), dropout_ext.__file__
print("BACKENDS", dropout_ext.compiled_backends())
print("WARNINGS", [str(w.message)[:2000] for w in caught if issubclass(w.category, RuntimeWarning)])
x = torch.randn(40, 33).t()
ok = True
if dropout_ext.compiled_backends():
    for fn in (lambda: F.dropout(x, 0.3, seed=5), lambda: F.dropout(x, 0.3), lambda: F.dropout2d(x.reshape(3, 11, 40), 0.5, seed=2)):
        torch.manual_seed(1); a = fn()
        with _backend.use("python"):
            torch.manual_seed(1); b = fn()
        ok &= torch.equal(a, b)
    ok &= _backend.FAST is not None
print("SAME", ok)
"""


def _run(tmp_path, **env):
    full_env = dict(os.environ, PYTHONPATH=str(tmp_path), TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"),
                    DROPOUT_EXT_CUDA="0", MAX_JOBS=os.environ.get("MAX_JOBS", "2"), **env)
    full_env.pop("DROPOUT_EXT_FORCE_PYTHON", None)
    full_env.pop("DROPOUT_EXT_REQUIRE_COMPILED", None)
    proc = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path)], cwd=str(tmp_path), env=full_env,
                          capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_missing_extension_warns_and_falls_back(tmp_path):
    out = _run(_copy_path(tmp_path))
    assert "BACKENDS ()" in out
    assert "dropout_ext.build()" in out and "DROPOUT_EXT_JIT=1" in out


@pytest.mark.slow
def test_jit_build_at_import_compiles_the_cpu_sources(tmp_path):
    out = _run(_copy_path(tmp_path), DROPOUT_EXT_JIT="1")
    assert "BACKENDS ('cpu',)" in out, out
    assert "SAME True" in out, out
    assert os.listdir(tmp_path / "ext"), "nothing was built in the temporary extension folder"


def _copy_path(tmp_path):
    _copy_without_extension(str(tmp_path))
    return tmp_path
