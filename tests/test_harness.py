"""The test suite's own guards: a run that would silently fall back to the Python kernels
(a build exists but was not imported, or DROPOUT_EXT_REQUIRE_COMPILED=1 without compiled
ops) stops at collection with a message naming the imported package."""
import importlib.machinery
import os
import shutil
import subprocess
import sys

import pytest

import dropout_ext

HERE = os.path.dirname(os.path.abspath(__file__))


def _tree(tmp_path, with_fake_build):
    """A copy of the package (Python files only) and of the suite's conftest/helpers with
    one trivial test; optionally an unloadable `_C` build next to the package."""
    pkg = tmp_path / "dropout_ext"
    pkg.mkdir()
    src = os.path.dirname(os.path.abspath(dropout_ext.__file__))
    for name in os.listdir(src):
        if name.endswith(".py"):
            shutil.copy(os.path.join(src, name), pkg / name)
    if with_fake_build:
        (pkg / ("_C" + importlib.machinery.EXTENSION_SUFFIXES[0])).write_bytes(b"")  # exists, does not load
    tests = tmp_path / "tests"
    tests.mkdir()
    for name in ("conftest.py", "testing.py", "oracle.py"):
        shutil.copy(os.path.join(HERE, name), tests / name)
    (tests / "test_trivial.py").write_text("def test_ok():\n    assert True\n")
    return tmp_path


def _pytest(root, **env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPOUT_EXT_")}
    env.update(PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1", **env_extra)
    return subprocess.run([sys.executable, "-m", "pytest", "tests/test_trivial.py", "-q", "-p", "no:cacheprovider"],
                          cwd=str(root), env=env, capture_output=True, text=True, timeout=300)


def test_build_present_but_not_imported_fails_at_collection(tmp_path):
    root = _tree(tmp_path, with_fake_build=True)
    proc = _pytest(root)
    out = proc.stdout + proc.stderr
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, out
    assert "a compiled build exists" in out and str(root / "dropout_ext" / "__init__.py") in out, out
    # asking for the fallback on purpose runs the suite
    proc = _pytest(root, DROPOUT_EXT_FORCE_PYTHON="1")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_require_compiled_fails_without_compiled_ops(tmp_path):
    root = _tree(tmp_path, with_fake_build=False)
    proc = _pytest(root, DROPOUT_EXT_REQUIRE_COMPILED="1", DROPOUT_EXT_FORCE_PYTHON="1")
    out = proc.stdout + proc.stderr
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, out
    assert "DROPOUT_EXT_REQUIRE_COMPILED=1" in out and str(root / "dropout_ext" / "__init__.py") in out, out
