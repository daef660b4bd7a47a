import os
import sys
import zlib

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402
import testing  # noqa: E402

import dropout_ext  # noqa: E402


def pytest_configure(config):
    """Fail at collection, loudly, rather than skip every compiled test in silence."""
    problem = testing.compiled_build_problem()
    if problem:
        raise pytest.UsageError("dropout_ext test suite: " + problem)


def pytest_report_header(config):
    return ["dropout_ext imported from %s; compiled backends %s; CPU ISAs %s; emulator %s; GPU %s" % (
        os.path.abspath(dropout_ext.__file__), dropout_ext.compiled_backends(), testing.CPU_ISAS or "none",
        ("yes" + (" (and the tunable CUDA launcher)" if testing.HAS_TUNABLE_CUDA else "")) if testing.HAS_EMULATOR
        else "no (%s)" % testing.NO_EMULATOR_REASON, "yes" if testing.HAS_GPU else "no")]


@pytest.fixture(autouse=True)
def _seeded(request):
    """Every test starts from a fixed torch RNG state (its own, from its node id), so
    unseeded randn / seed=None calls are the same on every run."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield


@pytest.fixture(params=testing.BACKENDS)
def backend(request):
    """Runs the test on each backend through the public API."""
    with testing.backend_ctx(request.param):
        yield request.param


@pytest.fixture(params=(testing.CPU_ISAS + ["cuda-emu"]) if testing.HAS_COMPILED else ["python"])
def cpu_isa(request):
    """Each compiled CPU path, and "cuda-emu" (the emulated CUDA kernels; skipped, with the
    reason, when the testing module is not built)."""
    if request.param == "python":
        pytest.skip(testing.NO_COMPILED_REASON)
    with testing.cpu_isa_ctx(request.param):
        yield request.param


@pytest.fixture(params=testing.DEVICES)
def device(request):
    return request.param


@pytest.fixture(params=testing.DTYPES, ids=lambda d: str(d).split(".")[-1])
def dtype(request):
    return request.param
