import os
import random
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



# ------------------------------------------------------------ options of the suite
# --quick: the tests marked quick (every op once per backend: compiled CPU, emulator,
# Python kernels, CUDA where present). --shuffle[=SEED]: a random order.


def pytest_addoption(parser):
    group = parser.getgroup("dropout_ext")
    group.addoption("--quick", action="store_true", default=False,
                    help="run the quick tier only: the tests marked quick (every op once per backend)")
    group.addoption("--shuffle", nargs="?", const="random", default=None, metavar="SEED",
                    help="run the tests in a random order: the files in a shuffled order and the tests of "
                         "each file shuffled (a file's module-scoped fixtures then run once); the seed is "
                         "printed, and --shuffle=SEED repeats that order")


def shuffle_seed(config):
    """The seed of --shuffle (drawn once per run when none is given), or None."""
    value = config.getoption("--shuffle")
    if value is None:
        return None
    if value == "random":
        if not hasattr(config, "_dropout_ext_shuffle_seed"):
            config._dropout_ext_shuffle_seed = random.SystemRandom().randrange(2**32)
        return config._dropout_ext_shuffle_seed
    return int(value)


def _on_gpu(item):
    params = getattr(getattr(item, "callspec", None), "params", {})
    return params.get("kernels") in ("cuda", "python-cuda") or params.get("device") == "cuda"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    for item in items:  # `-m cuda` selects what runs on a GPU (bench/gpu_check.sh)
        if _on_gpu(item):
            item.add_marker(pytest.mark.cuda)
    if config.getoption("--quick"):
        keep = [item for item in items if item.get_closest_marker("quick") is not None]
        dropped = [item for item in items if item.get_closest_marker("quick") is None]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = keep
    seed = shuffle_seed(config)
    if seed is not None:
        rng = random.Random(seed)
        files = {}
        for item in items:
            files.setdefault(item.nodeid.split("::")[0], []).append(item)
        order = list(files)
        rng.shuffle(order)
        shuffled = []
        for name in order:
            group = files[name]
            rng.shuffle(group)
            shuffled += group
        items[:] = shuffled
    # the tests whose build warms in the background run last, when it is most likely done
    items.sort(key=lambda item: _warm_up(item) is not None)


def _warm_up(item):
    """The test's background build (its function's `warm` attribute), or None."""
    return getattr(getattr(item, "function", None), "warm", None)


def pytest_collection_finish(session):
    """Starts the background builds of the slow tests this run selected (testing.py:
    warm_in_background)."""
    if session.config.option.collectonly:
        return
    for item in session.items:
        warm = _warm_up(item)
        if warm is not None:
            warm()


def pytest_sessionfinish(session):
    testing.stop_warm()


def pytest_report_collectionfinish(config, start_path, items):
    seed = shuffle_seed(config)
    return ["dropout_ext: tests shuffled, --shuffle=%d repeats the order" % seed] if seed is not None else []


# ------------------------------------------------------- state a test must leave alone

# torch's intra-op threads for the suite: one by default, so that tests on a shared
# machine do not wait on each other's OpenMP barriers; the tests of threads and chunking
# (test_threads.py) set their own counts. DROPOUT_EXT_TEST_THREADS=N runs with N.
torch.set_num_threads(int(os.environ.get("DROPOUT_EXT_TEST_THREADS", "1")))


def _process_state():
    from dropout_ext import _backend

    return {
        "backend ops": _backend.OPS,
        "fast entry": _backend.FAST,
        "backward storage": dropout_ext.backward_storage(),
        "CPU ISA": _backend.cpu_isa(),
        "threads": torch.get_num_threads(),
        "deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
        "grad mode": torch.is_grad_enabled(),
    }


@pytest.fixture(autouse=True)
def _leaves_process_state_alone():
    """Every test must set up what it relies on and put back what it changes (backend,
    backward storage, CPU ISA, threads, deterministic mode): checked after each test, so
    that the suite passes in any order (--shuffle)."""
    before = _process_state()
    yield
    after = _process_state()
    changed = {k: (before[k], after[k]) for k in before if after[k] is not before[k] and after[k] != before[k]}
    if changed:
        from dropout_ext import _backend

        _backend.OPS, _backend.FAST = before["backend ops"], before["fast entry"]
        dropout_ext.set_backward_storage(before["backward storage"])
        _backend.cpu_isa(before["CPU ISA"])
        torch.set_num_threads(before["threads"])
        torch.use_deterministic_algorithms(before["deterministic algorithms"])
        torch.set_grad_enabled(before["grad mode"])
        pytest.fail("the test changed process-wide state and left it so: %s" % changed, pytrace=False)


@pytest.fixture(params=testing.kernel_params())
def kernels(request):
    """Runs the test on each set of kernels (testing.KERNELS: the Python kernels, every
    compiled CPU path, the emulator, CUDA); yields a testing.Kernels (name, device).
    Indirect parametrisation picks a subset: @pytest.mark.parametrize("kernels",
    testing.BACKEND_KERNELS, indirect=True)."""
    with testing.kernels_ctx(request.param) as k:
        yield k
