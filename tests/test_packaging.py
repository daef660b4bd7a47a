"""The package as users install and meet it: one op namespace defined from one set of
schemas, served by the compiled kernels or (DROPOUT_EXT_FORCE_PYTHON=1, or when the
extension cannot be loaded, with one warning) by the Python kernels, checked with opcheck
and torch.compile in both cases; the JIT build of the shipped sources
(DROPOUT_EXT_JIT=1); the suite's guard against testing a fallback by accident; the
examples, the README's quickstart and the benches (quick mode)."""
import importlib.machinery
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from testing import (DEVICES, FAMILY, HAS_COMPILED, HAS_EMULATOR, assert_same_bits, build_cache_dir, expected_dropout,
                     expected_input_grad, expected_output, keep_mask, locked, op_mask, requires_compiled,
                     source_digest, wait_warm, warm_in_background)

import dropout_ext
import testing
from dropout_ext import _backend, _ops
from dropout_ext import functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PACKAGE = os.path.dirname(os.path.abspath(dropout_ext.__file__))


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPOUT_EXT_")}
    env.update(extra)
    return env


# ------------------------------------------------------------- the op namespace


@pytest.mark.quick
def test_schemas_are_defined_once_from_python():
    for name, schema in _ops.SCHEMAS.items():
        assert str(getattr(torch.ops.dropout_ext, name).default._schema) == "dropout_ext::" + schema
    assert not hasattr(torch.ops.dropout_ext_py, "dropout")  # no second namespace


@requires_compiled
def test_compiled_kernels_serve_the_op_names():
    for name in _ops.SCHEMAS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key("dropout_ext::" + name, "CPU")
        if name not in ("dropout_", "dropout_add_norm_backward"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key("dropout_ext::" + name, "Autograd")


@pytest.mark.quick
def test_the_kernels_that_serve_the_op_names():
    """Whatever serves torch.ops.dropout_ext (the compiled kernels, or the Python ones
    when forced): the contract's values and gradient; compiled_backends() says which."""
    if _backend.FORCE_PYTHON:
        assert dropout_ext.compiled_backends() == () and _backend.load_error is None  # no warning was given
    else:
        assert HAS_COMPILED and dropout_ext.compiled_backends()[0] == "cpu" and _backend.load_error is None
    x = torch.randn(6, 70, requires_grad=True)
    out, bits = torch.ops.dropout_ext.dropout(x, torch.tensor([77, 5]), None, 0.3, 0, 2, 1)
    keep = testing.oracle_mask(x.shape, 0.3, 77, 5)
    assert_same_bits(out, expected_dropout(x.detach(), keep, 0.3))
    (g,) = torch.autograd.grad(out.sum(), x)
    assert_same_bits(g, expected_dropout(torch.ones(6, 70), keep, 0.3))


def test_compiled_backends_reports_active_backend():
    if _backend.compiled_ops() is not None:
        with _backend.use("compiled"):
            assert dropout_ext.compiled_backends()[0] == "cpu"
    with _backend.use("python"):
        assert dropout_ext.compiled_backends() == ()


def _samples(device, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 12, generator=g).to(dtype).to(device).requires_grad_()
    r = torch.randn(5, 12, generator=g).to(dtype).to(device).requires_grad_()
    b = torch.randn(12, generator=g).to(dtype).to(device).requires_grad_()
    bits = torch.randint(0, 256, ((60 + 7) // 8,), dtype=torch.uint8, generator=g).to(device)
    samples = {name: [] for name in _ops.SCHEMAS}
    for rng in [torch.tensor([123, 4])] + ([torch.tensor([123, 4], device=device)] if device != "cpu" else []):
        samples["dropout"] += [(x.detach(), rng, None, 0.3, 0, 2, 0), (x, rng, None, 0.3, 1, 2, 1),
                               (x, rng, None, 0.5, 0, 1, 1), (x, rng, None, 0.3, 2, 2, 2),
                               (x, rng, None, 0.3, 0, 2, 1, [10, 24], [5, 12]),
                               (x.detach(), rng, None, 0.3, 1, 2, 0, [10, 24], [5, 12])]
        samples["dropout_"] += [(x.detach().clone(), rng, None, 0.3, 0, 2), (x.detach().clone(), rng, None, 0.3, 2, 1)]
        samples["dropout_backward"] += [(x, bits, 0.3, 0, 2), (x, rng, 0.3, 0, 2),
                                        (x, rng, 0.3, 2, 1, None, None, [1, 5])]
        samples["dropout_add"] += [(x.detach(), r.detach(), rng, None, 0.2, 0), (x, r, rng, None, 0.2, 1)]
        samples["bias_dropout_add"] += [(x.detach(), b.detach(), r.detach(), rng, None, 0.2, 0),
                                        (x, b, r, rng, None, 0.2, 2)]
        w = (b.detach() + 1).requires_grad_()
        samples["dropout_add_norm"] += [(x.detach(), r.detach(), None, None, None, rng, None, 0.2, 1e-5, False, False, 0),
                                        (x, r, w, b, b, rng, None, 0.2, 1e-5, False, False, 1),
                                        (x, None, w, None, None, rng, None, 0.3, 1e-6, True, True, 2),
                                        (x, r, w, b, None, rng, None, 0.2, 1e-5, False, False, 1, [10, 12], [5, 0])]
        out, h, mean, rstd, _ = torch.ops.dropout_ext.dropout_add_norm(x.detach(), r.detach(), w.detach(), None, None,
                                                                       rng, None, 0.2, 1e-5, False, False, 0)
        g = torch.randn_like(out)
        samples["dropout_add_norm_backward"] += [(g, None, h, w.detach(), b.detach(), mean, rstd, bits, 0.2, False, True),
                                                 (g, g, h, None, None, mean, rstd, rng, 0.2, False, False)]
    return samples


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(_ops.SCHEMAS))
@pytest.mark.parametrize("ns", ["dropout_ext"] + (["dropout_ext_testing"] if HAS_EMULATOR else []))
def test_opcheck(ns, name, device):
    """torch.library.opcheck on the ops that serve the names (the Python kernels' in the
    forced-Python run below) and on the testing module's (the emulated CUDA kernels), with
    (key, base) on the CPU and on the input's device."""
    ops = torch.ops.dropout_ext if ns == "dropout_ext" else _backend.testing_ops()
    for args in _samples(device)[name]:
        torch.library.opcheck(getattr(ops, name).default, args)


def test_registered_python_kernels_in_a_fresh_process():
    """DROPOUT_EXT_FORCE_PYTHON=1: the Python kernels serve torch.ops.dropout_ext (no
    warning); the namespace's tests (schemas, the contract's values, opcheck,
    torch.compile) run against them in a fresh process."""
    tests = [os.path.join(HERE, "test_packaging.py::" + t) for t in (
        "test_schemas_are_defined_once_from_python", "test_the_kernels_that_serve_the_op_names", "test_opcheck")]
    tests.append(os.path.join(HERE, "test_transforms.py::test_torch_compile_fullgraph_matches_eager_with_seed"))
    tests.append(os.path.join(HERE, "test_norm.py::test_torch_compile_fullgraph"))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                          env=_env(DROPOUT_EXT_FORCE_PYTHON="1"), capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= 8 and " failed" not in proc.stdout, proc.stdout[-2000:]


# ---------------------------------------------- without the extension, and the JIT build

CHECK = r"""
import sys
# an editable install's import hook would find the source tree's _C for dropout_ext._C
sys.meta_path[:] = [f for f in sys.meta_path if "dropout_ext" not in getattr(f, "__module__", "")]
import warnings, torch
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import dropout_ext
    from dropout_ext import _backend, functional as F
    x = torch.arange(-500, 500, dtype=torch.float32).reshape(40, 25).t() / 7
    out = F.dropout(x, 0.3, seed=42)
    xg = x.clone().requires_grad_()
    F.dropout2d(xg.reshape(5, 5, 40, 1), 0.5, seed=2).sum().backward()
assert dropout_ext.__file__.startswith(sys.argv[1]), dropout_ext.__file__
same = True
if dropout_ext.compiled_backends():
    for fn in (lambda: F.dropout(x, 0.3, seed=5), lambda: F.dropout(x, 0.3), lambda: F.dropout2d(x.reshape(5, 5, 40), 0.5, seed=2)):
        torch.manual_seed(1); a = fn()
        with _backend.use("python"):
            torch.manual_seed(1); b = fn()
        same &= torch.equal(a, b)
    same &= _backend.FAST is not None
torch.save({"out": out, "grad": xg.grad, "backends": dropout_ext.compiled_backends(), "same": same,
            "warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]}, sys.argv[2])
"""


def _package_copy(name="package"):
    """The package's Python files and sources, as a wheel for another torch would leave
    them once its extension fails to load: no _C. The folder is kept between runs while
    the sources and build settings are the same (so is the JIT build made from it); the
    Python files are copied afresh each time."""
    root = build_cache_dir(name, source_digest(os.path.join(PACKAGE, "csrc")),
                           source_digest(os.path.join(PACKAGE, "_build.py")))
    pkg = os.path.join(root, "dropout_ext")
    with locked(root):
        if not os.path.isdir(os.path.join(pkg, "csrc")):
            shutil.rmtree(pkg, ignore_errors=True)
            shutil.copytree(os.path.join(PACKAGE, "csrc"), os.path.join(pkg, "csrc"),
                            ignore=shutil.ignore_patterns("__pycache__"))
        for name in os.listdir(pkg):
            if name.endswith(".py"):
                os.remove(os.path.join(pkg, name))
        for name in os.listdir(PACKAGE):
            if name.endswith((".py", ".typed")):
                shutil.copy2(os.path.join(PACKAGE, name), os.path.join(pkg, name))
            elif os.path.isfile(os.path.join(PACKAGE, name, "__init__.py")):  # a subpackage
                shutil.rmtree(os.path.join(pkg, name), ignore_errors=True)
                shutil.copytree(os.path.join(PACKAGE, name), os.path.join(pkg, name),
                                ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _copy_env(root, **env):
    return _env(PYTHONPATH=root, TORCH_EXTENSIONS_DIR=os.path.join(root, "ext"), DROPOUT_EXT_CUDA="0",
                MAX_JOBS=os.environ.get("MAX_JOBS", "2"), PYTHONDONTWRITEBYTECODE="1", **env)


def _run_copy(tmp_path, name="package", **env):
    """CHECK run on a copy of the package (_package_copy(name)) with `env`; the JIT build
    has a copy of its own, so that the other tests never wait for its lock."""
    root = _package_copy(name)
    result = str(tmp_path / "result.pt")
    full_env = _copy_env(root, **env)
    with locked(root):
        proc = subprocess.run([sys.executable, "-c", CHECK, root, result], cwd=str(tmp_path), env=full_env,
                              capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = torch.load(result)
    x = torch.arange(-500, 500, dtype=torch.float32).reshape(40, 25).t() / 7
    assert_same_bits(r["out"], expected_dropout(x, keep_mask(x.shape, 0.3, 42), 0.3))
    channel = FAMILY[5].with_p(0.5)  # dropout2d
    assert_same_bits(r["grad"], expected_input_grad(channel, x.reshape(5, 5, 40, 1), torch.ones(5, 5, 40, 1),
                                                    op_mask(channel, (5, 5, 40, 1), 2)).reshape(25, 40))
    return r, root


def test_missing_extension_warns_once_and_falls_back(tmp_path):
    """A package whose extension is missing (or built for another torch): one warning,
    which says how to compile; the Python kernels serve every op, with the contract's
    values."""
    r, _ = _run_copy(tmp_path)
    assert r["backends"] == ()
    assert len(r["warnings"]) == 1 and "pure-Python fallback" in r["warnings"][0], r["warnings"]
    assert "dropout_ext.build()" in r["warnings"][0] and "DROPOUT_EXT_JIT=1" in r["warnings"][0]


@pytest.mark.slow
def test_jit_build_at_import_compiles_the_cpu_sources(tmp_path):
    """DROPOUT_EXT_JIT=1: the shipped CPU sources are compiled at import
    (torch.utils.cpp_extension.load, into TORCH_EXTENSIONS_DIR; kept between runs while
    the sources are the same: a fresh build takes minutes), no warning, and the compiled
    kernels give the Python kernels' bits."""
    if shutil.which("ninja") is None and not importlib.util.find_spec("ninja"):
        pytest.skip("the JIT build needs ninja")
    wait_warm("jit")
    r, root = _run_copy(tmp_path, "package-jit", DROPOUT_EXT_JIT="1")
    assert r["backends"] == ("cpu",), r
    assert r["warnings"] == [] and r["same"], r
    assert os.listdir(os.path.join(root, "ext")), "nothing was built in the extension folder"


def _warm_jit():
    """The JIT build in the background (the test's own run under the copy's lock)."""
    if shutil.which("flock") and (shutil.which("ninja") or importlib.util.find_spec("ninja")):
        root = _package_copy("package-jit")
        warm_in_background("jit", ["flock", os.path.join(root, ".lock"), sys.executable, "-c", CHECK, root,
                                   os.path.join(root, "warm.pt")], cwd=root, env=_copy_env(root, DROPOUT_EXT_JIT="1"))


test_jit_build_at_import_compiles_the_cpu_sources.warm = _warm_jit


# ------------------------------------------------------------- the suite's own guard


def _tree(tmp_path, with_fake_build):
    """A copy of the package (Python files only) and of the suite's conftest/helpers with
    one trivial test; optionally an unloadable `_C` build next to the package."""
    pkg = tmp_path / "dropout_ext"
    pkg.mkdir()
    for name in os.listdir(PACKAGE):
        if name.endswith(".py"):
            shutil.copy(os.path.join(PACKAGE, name), pkg / name)
        elif os.path.isfile(os.path.join(PACKAGE, name, "__init__.py")):  # a subpackage
            shutil.copytree(os.path.join(PACKAGE, name), pkg / name, ignore=shutil.ignore_patterns("__pycache__"))
    if with_fake_build:
        (pkg / ("_C" + importlib.machinery.EXTENSION_SUFFIXES[0])).write_bytes(b"")  # exists, does not load
    tests = tmp_path / "tests"
    tests.mkdir()
    for name in ("conftest.py", "testing.py", "oracle.py"):
        shutil.copy(os.path.join(HERE, name), tests / name)
    (tests / "test_trivial.py").write_text("def test_ok():\n    assert True\n")
    return tmp_path


def test_build_present_but_not_imported_fails_at_collection(tmp_path):
    """A run that would silently fall back to the Python kernels (a build exists next to
    the imported package but does not load) stops at collection, naming the package."""
    root = _tree(tmp_path, with_fake_build=True)
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests/test_trivial.py", "-q", "-p", "no:cacheprovider"],
                          cwd=str(root), env=_env(PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1"),
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, out
    assert "a compiled build exists" in out and str(root / "dropout_ext" / "__init__.py") in out, out


def test_guard_lets_a_forced_fallback_run_and_stops_a_required_build(monkeypatch, tmp_path):
    """The guard's other answers: DROPOUT_EXT_FORCE_PYTHON=1 runs the suite on the
    fallback on purpose (even with a build present); DROPOUT_EXT_REQUIRE_COMPILED=1
    without compiled ops stops it."""
    monkeypatch.setattr(_backend, "compiled_ops", lambda: None)
    monkeypatch.setattr(_backend, "FORCE_PYTHON", True)
    monkeypatch.delenv("DROPOUT_EXT_REQUIRE_COMPILED", raising=False)
    assert testing.compiled_build_problem() is None
    monkeypatch.setenv("DROPOUT_EXT_REQUIRE_COMPILED", "1")
    problem = testing.compiled_build_problem()
    assert problem and "DROPOUT_EXT_REQUIRE_COMPILED=1" in problem and dropout_ext.__file__ in problem, problem
    monkeypatch.setattr(_backend, "FORCE_PYTHON", False)
    monkeypatch.delenv("DROPOUT_EXT_REQUIRE_COMPILED")
    fake = _tree(tmp_path, with_fake_build=True) / "dropout_ext"
    monkeypatch.setattr(dropout_ext, "__file__", str(fake / "__init__.py"))
    problem = testing.compiled_build_problem()
    assert problem and "a compiled build exists" in problem and str(fake) in problem, problem


# ------------------------------------------------------------------------- examples

sys.path.insert(0, os.path.join(ROOT, "examples"))


def test_mlp_vanilla_and_inverted_reach_the_same_accuracy():
    import mlp_vanilla_vs_inverted as ex

    results = ex.main()
    inverted, vanilla = results.values()
    assert inverted > 0.6 and vanilla > 0.6  # far above the 0.25 of chance (4 classes)
    assert abs(inverted - vanilla) < 0.03


def test_transformer_block_fused_equals_unfused(capsys):
    import transformer_block as ex

    ex.main()  # asserts bit-identical outputs and gradients itself, and says so
    assert "fused == unfused: outputs and all gradients bit-identical" in capsys.readouterr().out
    torch.manual_seed(1)
    fused, plain = ex.Block(fused=True), ex.Block(fused=False)
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(2, 8, 128)
    assert_same_bits(fused(x), plain(x))


def test_readme_example_runs(capsys):
    import math

    with open(os.path.join(ROOT, "README.md")) as f:
        code = re.search(r"```python\n(.*?)```", f.read(), re.S).group(1)
    ns = {}
    exec(compile(code, "README.md", "exec"), ns)
    printed = capsys.readouterr().out.splitlines()
    # what its comments claim
    assert printed == ["Dropout(p=0.1, inplace=False)", str(dropout_ext.compiled_backends())]
    x, y = ns["x"], ns["y"]  # y: the vanilla call, x * m
    assert torch.all((y == x) | (y == 0))
    n = x.numel()  # dropped fraction of Bernoulli(0.1): sigma = sqrt(0.1 * 0.9 / n) = 1.5e-4
    assert abs((y == 0).float().mean().item() - 0.1) < 5 * math.sqrt(0.09 / n)
    h, out = ns["h"], ns["out"]  # out: drop_path, whole samples kept (scaled) or zeroed
    kept = (out != 0).flatten(1).any(1)
    assert_same_bits(out, expected_dropout(h, kept, 0.1))
    assert isinstance(ns["model"][1], torch.nn.Dropout)


BENCHES = [
    ("bench_cpu.py", ["--quick", "--no-plot"], "cpu.json", "ours/x*2"),
    # the GPU bench's own code, run on the CPU so that it is exercised without a GPU
    ("bench_gpu.py", ["--device", "cpu", "--sizes", "14", "--reps", "2"], "gpu.json", "backward alone, dense grad"),
]

RUN_BENCHES = r"""
import runpy, sys
out, benches = sys.argv[1], sys.argv[2:]
for spec in benches:
    script, *args = spec.split("\x1f")
    print("=== %s" % script, flush=True)
    sys.argv = [script, *args, "--out", out]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        if e.code not in (None, 0):
            raise
"""


def test_bench_smoke(tmp_path):
    """The benches in quick mode, in one process: each writes its results and prints its
    tables."""
    specs = ["\x1f".join([os.path.join(ROOT, "bench", script)] + args) for script, args, _, _ in BENCHES]
    proc = subprocess.run([sys.executable, "-c", RUN_BENCHES, str(tmp_path), *specs], capture_output=True, text=True,
                          timeout=600, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    sections = proc.stdout.split("=== ")[1:]
    assert len(sections) == len(BENCHES), proc.stdout[-2000:]
    for (script, _, produced, column), text in zip(BENCHES, sections):
        assert os.path.exists(tmp_path / produced), script
        assert column in text, (script, text[-1000:])
