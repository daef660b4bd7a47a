import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import testing  # noqa: E402


@pytest.fixture(params=testing.BACKENDS)
def backend(request):
    """Runs the test on each backend through the public API."""
    with testing.backend_ctx(request.param):
        yield request.param


@pytest.fixture(params=testing.CPU_ISAS or ["python"])
def cpu_isa(request):
    if request.param == "python":
        pytest.skip("compiled extension not built")
    with testing.cpu_isa_ctx(request.param):
        yield request.param


@pytest.fixture(params=testing.DEVICES)
def device(request):
    return request.param


@pytest.fixture(params=testing.DTYPES, ids=lambda d: str(d).split(".")[-1])
def dtype(request):
    return request.param
