"""Shared parameters and helpers: every test module draws its backend, device, dtype and
layout products from here."""
import contextlib
import math

import oracle
import pytest
import torch

import dropout_ext
from dropout_ext import _backend

HAS_COMPILED = _backend.compiled_ops() is not None
HAS_CUDA_KERNELS = HAS_COMPILED and torch._C._dispatch_has_kernel_for_dispatch_key("dropout_ext::dropout", "CUDA")
HAS_GPU = torch.cuda.is_available()

NO_COMPILED_REASON = "compiled ops not loaded: %s" % (
    "DROPOUT_EXT_FORCE_PYTHON=1" if _backend.FORCE_PYTHON else "extension not built or not loadable (%s)" % (_backend.load_error,))
requires_compiled = pytest.mark.skipif(not HAS_COMPILED, reason=NO_COMPILED_REASON)
requires_gpu = pytest.mark.skipif(not (HAS_GPU and HAS_CUDA_KERNELS), reason="needs a CUDA GPU and a CUDA build")

BACKENDS = ["compiled", "python"] if HAS_COMPILED else ["python"]
DEVICES = ["cpu"] + (["cuda"] if HAS_GPU and HAS_CUDA_KERNELS else [])
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
CPU_ISAS = _backend.cpu_isas_supported()
# The testing module of a development build (dropout_ext._testing, DROPOUT_EXT_TESTING=1 at
# build time): torch.ops.dropout_ext_testing, the compiled ops again with the CUDA kernels
# run on the host by an emulator (csrc/testing/cuda_emulation.cpp) as their CPU kernels,
# and, with DROPOUT_EXT_TESTING=cuda, a CUDA launcher whose flat-kernel configuration
# set_cuda_tuning switches.
HAS_EMULATOR = HAS_COMPILED and _backend.testing_ops() is not None
NO_EMULATOR_REASON = ("the testing module dropout_ext._testing is not loaded (a build with DROPOUT_EXT_TESTING=1 "
                      "has it): %s" % (_backend.testing_load_error,))
requires_emulator = pytest.mark.skipif(not HAS_EMULATOR, reason=NO_EMULATOR_REASON)
HAS_TUNABLE_CUDA = HAS_EMULATOR and _backend.testing_has_cuda()
# The compiled CPU paths, plus "cuda-emu": the CUDA kernels run on the host by the emulator
# (cpu_isa_ctx runs the API on the testing namespace), so that tests that go over every
# path check the CUDA kernels' arithmetic too, GPU or not. Without the testing module the
# loops over CPU_PATHS leave it out; the cpu_isa fixture (conftest.py) and
# test_cuda_emulation.py skip it with NO_EMULATOR_REASON.
CPU_PATHS = CPU_ISAS + (["cuda-emu"] if HAS_EMULATOR else [])

# Shapes: empty, 0-dim, numel not a multiple of 4, 8 or 64, and large odd sizes.
SHAPES = [(0,), (2, 0, 3), (), (1,), (3,), (7,), (13, 5), (64,), (65,), (4, 33, 3), (1000, 37), (100003,)]


def _contiguous(shape, dtype, device):
    return torch.randn(shape, dtype=dtype, device=device)


def _transposed(shape, dtype, device):
    return torch.randn(shape[::-1], dtype=dtype, device=device).permute(*reversed(range(len(shape))))


def _sliced(shape, dtype, device):
    big = torch.randn([2 * s + 1 for s in shape], dtype=dtype, device=device)
    return big[tuple(slice(1, None, 2) for _ in shape)]


def _expanded(shape, dtype, device):
    return torch.randn((1,) + tuple(shape[1:]), dtype=dtype, device=device).expand(shape)


def _channels_last(shape, dtype, device):
    return torch.randn(shape, dtype=dtype, device=device).to(memory_format=torch.channels_last)


# layout name -> maker(shape, dtype, device); `make` adapts shapes a layout cannot take.
LAYOUTS = {
    "contiguous": _contiguous,
    "transposed": _transposed,
    "sliced": _sliced,
    "expanded": _expanded,
    "channels_last": _channels_last,
}


def make(layout, shape, dtype=torch.float32, device="cpu"):
    if layout == "channels_last" and len(shape) != 4:
        shape = (2, 3, 5, 7)
    if layout in ("transposed", "sliced", "expanded") and len(shape) < 2:
        shape = (3,) + tuple(shape) if len(shape) else (3, 5)
    return LAYOUTS[layout](shape, dtype, device)


def int_view(t):
    """The tensor's bits as integers (contiguous copy)."""
    t = t.detach().contiguous()
    return t.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()])


def assert_same_bits(a, b):
    """Bit-for-bit equality; NaNs must match in position (their payload may differ)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    na, nb = torch.isnan(a).reshape(-1).cpu(), torch.isnan(b).reshape(-1).cpu()
    assert torch.equal(na, nb), "NaN positions differ"
    ia, ib = int_view(a).reshape(-1).cpu(), int_view(b).reshape(-1).cpu()
    if na.any():
        ia, ib = ia.masked_fill(na, 0), ib.masked_fill(na, 0)
    if not torch.equal(ia, ib):
        bad = (ia != ib).nonzero()[:5].flatten().tolist()
        raise AssertionError("tensors differ in %d of %d elements, first at %s" % (int((ia != ib).sum()), ia.numel(), bad))


def acc_dtype(dtype):
    """The arithmetic dtype (docs/design.md, section 1): float32 for the 16-bit types."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def signed64(v):
    """An unsigned 64-bit word as the signed int64 the rng tensors hold."""
    v = int(v) % 2**64
    return v - 2**64 if v >= 2**63 else v


# ------------------------------------------------------------------ expected masks
# Expected masks come from tests/oracle.py (an independent Philox4x32-10 and mask),
# never from dropout_ext._reference.


def oracle_mask(shape, p, key, base=0, device="cpu"):
    """The contract's mask of `shape` for (key, base) (bool tensor)."""
    return torch.from_numpy(oracle.keep_mask(tuple(shape), p, key, base)).to(device)


def keep_mask(shape, p, seed, device="cpu"):
    """The mask of `shape` at `seed=` (key = seed, base = 0), from the oracle."""
    return oracle_mask(shape, p, seed, 0, device)


def expected_factor(keep, p, dtype, scale_train=True):
    """keep * 1/(1 - p) (or keep * 1) in the accumulation dtype of `dtype`."""
    acc = acc_dtype(dtype)
    scale = 1.0 / (1.0 - p) if scale_train and p < 1.0 else 1.0
    return torch.where(keep, torch.tensor(scale, dtype=acc), torch.tensor(0.0, dtype=acc))


def expected_dropout(x, keep, p, scale_train=True):
    """x * m * scale in the accumulation dtype, rounded once (docs/design.md, section 1); `keep` is
    the mask of x's logical shape, or of a prefix of it (channel-wise, per-sample)."""
    factor = expected_factor(keep, p, x.dtype, scale_train)
    factor = factor.reshape(tuple(keep.shape) + (1,) * (x.dim() - keep.dim()))
    return (x.to(factor.dtype) * factor).to(x.dtype)


# ------------------------------------------------------- the generator's (key, base)


def _default_generator(generator, device):
    if generator is not None:
        return generator
    if torch.device(device).type == "cuda":
        return torch.cuda.default_generators[torch.device(device).index or torch.cuda.current_device()]
    return torch.default_generator


def expected_rng_pair(generator=None, device="cpu"):
    """(key, base) as unsigned ints that a `seed=None` / `generator=` call on an input on
    `device` draws from `generator` (None: that device's default generator), advancing it
    as that call does. The one place that states the draw rule (docs/design.md, section 1):
    on the CPU two words as torch.randint(-2**63, 2**63 - 1) draws them; on CUDA the Philox
    state's (seed, offset with the top bit set), the offset advanced by 4."""
    g = _default_generator(generator, device)
    if g.device.type == "cuda":
        offset = g.get_offset()
        g.set_offset(offset + 4)
        return g.initial_seed() % 2**64, (offset ^ (1 << 63)) % 2**64
    words = torch.randint(-(2**63), 2**63 - 1, (2,), dtype=torch.int64, generator=g)
    key, base = (int(w) % 2**64 for w in words)
    return key, base


def peek_rng_pair(generator=None, device="cpu"):
    """expected_rng_pair without advancing the generator."""
    g = _default_generator(generator, device)
    state = g.get_state()
    try:
        return expected_rng_pair(g)
    finally:
        g.set_state(state)


def clone_generator(g):
    """A new generator in g's state: backends fed clones must draw the same masks."""
    c = torch.Generator(device=g.device)
    c.set_state(g.get_state())
    return c


# ------------------------------------------------------------ raw-op adapters
# The one place that calls the raw op schemas with an explicit (key, base): port these
# when the schemas change.


def raw_dropout(x, key, base, p, scale_train=True):
    """Dropout of x with explicit (key, base) on the active backend (element-wise)."""
    rng = torch.tensor([signed64(key), signed64(base)], dtype=torch.int64)
    save = 1 if x.requires_grad and torch.is_grad_enabled() else 0  # a gradient needs the mask kept
    return _backend.ops().dropout(x, rng, None, p, 0 if scale_train else 1, x.dim(), save)[0]


def raw_dropout_bits(x, key, base, p):
    """The bit-packed keep mask the active backend saves for backward (bit i % 8 of byte
    i // 8 is element i's keep)."""
    rng = torch.tensor([signed64(key), signed64(base)], dtype=torch.int64)
    return _backend.ops().dropout(x, rng, None, p, 0, x.dim(), 1)[1]


# ------------------------------------------------ is the build the one imported?


def compiled_build_problem():
    """Why the suite must not run (a message), or None. It must not run when the
    compiled ops are not loaded although a build exists next to the imported package,
    in the source tree or in site-packages (a silent fallback would skip every
    compiled test), or when DROPOUT_EXT_REQUIRE_COMPILED=1 asks for them."""
    import glob
    import os
    import site
    import sysconfig

    imported = os.path.abspath(dropout_ext.__file__)
    require = os.environ.get("DROPOUT_EXT_REQUIRE_COMPILED", "").strip().lower() not in ("", "0", "false", "no")
    if _backend.compiled_ops() is not None:
        if require and not HAS_EMULATOR:  # the emulator's tests would be skipped
            return ("DROPOUT_EXT_REQUIRE_COMPILED=1 but %s; dropout_ext was imported from %s"
                    % (NO_EMULATOR_REASON, imported))
        return None
    why = "the compiled ops are not loaded (%s)" % (
        "DROPOUT_EXT_FORCE_PYTHON=1" if _backend.FORCE_PYTHON else "load error: %s" % (_backend.load_error,))
    if require:
        return "DROPOUT_EXT_REQUIRE_COMPILED=1 but %s; dropout_ext was imported from %s" % (why, imported)
    if _backend.FORCE_PYTHON:
        return None  # the fallback was asked for
    source_tree = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dropout_ext")
    dirs = {os.path.dirname(imported), source_tree}
    for sp in list(site.getsitepackages()) + [site.getusersitepackages(), sysconfig.get_paths()["purelib"],
                                              sysconfig.get_paths()["platlib"]]:
        dirs.add(os.path.join(sp, "dropout_ext"))
    builds = {f for d in dirs for f in glob.glob(os.path.join(d, "_C*.so")) + glob.glob(os.path.join(d, "_C*.pyd"))}
    try:  # an installed distribution that lists a build
        import importlib.metadata

        dist = importlib.metadata.distribution("dropout_ext")
        builds |= {str(dist.locate_file(f)) for f in dist.files or () if f.name.startswith("_C")
                   and f.name.endswith((".so", ".pyd")) and os.path.exists(str(dist.locate_file(f)))}
    except importlib.metadata.PackageNotFoundError:
        pass
    builds = sorted(builds)
    if builds:
        return ("a compiled build exists (%s) but %s; dropout_ext was imported from %s. Run the tests "
                "against the package that holds the build (e.g. an editable install, or PYTHONPATH), "
                "or set DROPOUT_EXT_FORCE_PYTHON=1 to test the fallback on purpose."
                % (", ".join(builds), why, imported))
    return None


@contextlib.contextmanager
def _switched(get, set_, value):
    """Run the body with a process-wide setting switched to `value`, then restore it."""
    old = get()
    set_(value)
    try:
        yield
    finally:
        set_(old)


def storage_ctx(mode):
    """Backward keeps `mode` ("seed" or "bits") inside the block."""
    return _switched(dropout_ext.backward_storage, dropout_ext.set_backward_storage, mode)


_emulating = False  # inside cpu_isa_ctx("cuda-emu")


@contextlib.contextmanager
def cpu_isa_ctx(isa):
    """The CPU kernels run on `isa` inside the block. "cuda-emu": the API runs on the
    testing namespace, whose CPU kernels are the emulated CUDA kernels (the product's ISA
    switch is left alone), and backend_ctx("compiled") inside the block keeps it there;
    skips the test when the testing module is not built."""
    global _emulating
    if isa != "cuda-emu":
        with _switched(_backend.cpu_isa, _backend.cpu_isa, isa):
            yield
        return
    if not HAS_EMULATOR:
        pytest.skip(NO_EMULATOR_REASON)
    old = _emulating
    _emulating = True
    try:
        with _backend.use("emulator"):
            yield
    finally:
        _emulating = old


def backend_ctx(name):
    """The API on backend `name` ("compiled", "python" or "emulator") inside the block;
    "compiled" inside cpu_isa_ctx("cuda-emu") is the emulator."""
    return _backend.use("emulator" if name == "compiled" and _emulating else name)


# ------------------------------------------------------- the kernels a test runs on
# Every set of kernels the API can run on, by name: "python" (the Python kernels called
# directly), each compiled CPU path of CPU_PATHS (a SIMD ISA, or "cuda-emu": the CUDA
# kernels emulated on the host), and with a GPU "cuda" (the CUDA kernels) and
# "python-cuda" (the Python kernels on CUDA tensors). The `kernels` fixture (conftest.py)
# runs a test on each; BACKEND_KERNELS is one per backend and device (the compiled CPU
# kernels on the default ISA), what --quick runs.

EMULATOR = "cuda-emu"
DEFAULT_ISA = _backend.cpu_isa() if HAS_COMPILED else None
_GPU_KERNELS = ["cuda", "python-cuda"] if HAS_GPU and HAS_CUDA_KERNELS else []
# "cuda-emu" is listed wherever the compiled kernels are: its tests skip, with the reason,
# when the testing module is not built
KERNELS = ["python"] + (list(CPU_ISAS) + [EMULATOR] if HAS_COMPILED else []) + _GPU_KERNELS
BACKEND_KERNELS = ["python"] + ([DEFAULT_ISA, EMULATOR] if HAS_COMPILED else []) + _GPU_KERNELS[:1]


class Kernels:
    """The kernels a test runs on: `name` (an entry of KERNELS) and the device of its
    tensors."""

    def __init__(self, name):
        self.name = name
        self.device = "cuda" if name.endswith("cuda") else "cpu"
        self.compiled = name not in ("python", "python-cuda")

    def __repr__(self):
        return "Kernels(%s)" % self.name


@contextlib.contextmanager
def kernels_ctx(name):
    """The public API runs on the kernels `name` inside the block (a test that needs the
    emulator is skipped, with the reason, where it is not built)."""
    k = Kernels(name)
    if name in ("python", "python-cuda"):
        with _backend.use("python"):
            yield k
    elif name == "cuda":
        with _backend.use("compiled"):
            yield k
    else:  # a CPU ISA, or the emulator (cpu_isa_ctx skips the test where it is not built)
        with _backend.use("compiled"), cpu_isa_ctx(name):
            yield k


def kernels_available(name):
    """Whether kernels_ctx(name) runs (the emulator only where it is built)."""
    return name != EMULATOR or HAS_EMULATOR


def kernel_params(names=None):
    """pytest params for the `kernels` fixture (indirect parametrisation picks a subset)."""
    return list(KERNELS if names is None else names)


@contextlib.contextmanager
def threads_ctx(n):
    """torch's intra-op thread count is `n` inside the block."""
    with _switched(torch.get_num_threads, torch.set_num_threads, n):
        yield


def manual_seed(seed):
    """torch.manual_seed for every device (the CPU and, when present, every GPU)."""
    torch.manual_seed(seed)


# ------------------------------------------------------------------ the family of ops
# Every public op once, as the tests call it: op(x, residual, bias, **kw), with its p, the
# kind of its arithmetic ("inverted", "vanilla", "alpha"), the leading dims of x that
# index its mask (`lead(x.dim())`) and the input ranks it takes without a warning.
# expected_output / expected_grads give the result the contract (docs/design.md,
# section 1) prescribes for a mask from the oracle: an independent expectation for any
# backend, device and layout of any operand.

SELU_ALPHA = 1.7580993408473766  # SELU's scale * alpha: alpha dropout's negative saturation


class FamilyOp:
    def __init__(self, name, p, kind, lead, dims, residual=False, bias=False, inplace=True):
        self.name, self.p, self.kind, self._lead, self.dims = name, p, kind, lead, dims
        self.residual, self.bias, self.inplace = residual, bias, inplace

    def __repr__(self):
        return self.name

    def lead(self, dim):
        return self._lead(dim)

    def takes(self, dim):
        return self.dims(dim)

    def with_p(self, p):
        op = FamilyOp(self.name, p, self.kind, self._lead, self.dims, self.residual, self.bias, self.inplace)
        return op

    def __call__(self, x, r=None, b=None, **kw):
        from dropout_ext import functional as F

        p, name = self.p, self.name
        kw.setdefault("training", True)
        if name == "dropout":
            return F.dropout(x, p, **kw)
        if name == "vanilla":
            return F.dropout(x, p, scale_train=False, **kw)
        if name in ("alpha_dropout", "feature_alpha_dropout", "dropout1d", "dropout2d", "dropout3d", "drop_path"):
            return getattr(F, name)(x, p, **kw)
        if name == "dropout_add":
            return F.dropout_add(x, r, p, **kw)
        return F.bias_dropout_add(x, b, r, p, **kw)

    def operands(self, x, seed=99):
        """A residual (x's shape) and a bias (x's last dim) for x, from a fixed seed (None
        where the op takes none)."""
        g = torch.Generator().manual_seed(seed)
        r = torch.randn(tuple(x.shape), generator=g).to(x.dtype).to(x.device) if self.residual else None
        b = torch.randn(x.shape[-1], generator=g).to(x.dtype).to(x.device) if self.bias else None
        return r, b


def _every(d):
    return True


FAMILY = [
    FamilyOp("dropout", 0.4, "inverted", lambda d: d, _every),
    FamilyOp("vanilla", 0.4, "vanilla", lambda d: d, _every),
    FamilyOp("alpha_dropout", 0.3, "alpha", lambda d: d, _every),
    FamilyOp("feature_alpha_dropout", 0.3, "alpha", lambda d: 2, lambda d: d >= 2),
    FamilyOp("dropout1d", 0.5, "inverted", lambda d: 2 if d == 3 else 1, lambda d: d in (2, 3)),
    FamilyOp("dropout2d", 0.5, "inverted", lambda d: 2, lambda d: d == 4),
    FamilyOp("dropout3d", 0.5, "inverted", lambda d: 2 if d == 5 else 1, lambda d: d in (4, 5)),
    FamilyOp("drop_path", 0.5, "inverted", lambda d: 1, lambda d: d >= 1, inplace=False),
    FamilyOp("dropout_add", 0.4, "inverted", lambda d: d, _every, residual=True, inplace=False),
    FamilyOp("bias_dropout_add", 0.4, "inverted", lambda d: d, lambda d: d >= 1, residual=True, bias=True,
             inplace=False),
]
FAMILY_BY_NAME = {op.name: op for op in FAMILY}


def family(dim, names=None):
    """The ops of FAMILY that take an input of `dim` dims (those of `names` only, if given)."""
    return [op for op in FAMILY if op.takes(dim) and (names is None or op.name in names)]


def _scale(op, p):
    if p >= 1.0:
        return 0.0
    if op.kind == "inverted":
        return 1.0 / (1.0 - p)
    if op.kind == "vanilla":
        return 1.0
    return 1.0 / math.sqrt((SELU_ALPHA * SELU_ALPHA * p + 1) * (1 - p))


def _factor(op, x, keep):
    """keep * scale in x's accumulation dtype, shaped to broadcast over x."""
    acc = acc_dtype(x.dtype)
    keep = keep.to(x.device).reshape(tuple(keep.shape) + (1,) * (x.dim() - keep.dim()))
    scale = torch.tensor(_scale(op, op.p), dtype=acc, device=x.device)
    return keep, torch.where(keep, scale, torch.zeros((), dtype=acc, device=x.device))


def op_mask(op, shape, key, base=0):
    """The oracle's keep mask of `op` for an input of `shape`: the mask of shape[:lead]."""
    return oracle_mask(tuple(shape)[:op.lead(len(shape))], op.p, key, base)


def expected_output(op, x, r, b, keep):
    """The output the contract gives for the keep mask `keep` (of x.shape[:lead]): x * f
    (+ the alpha shift), r + x * f, r + (x + b) * f, each step in the accumulation dtype
    (float32 for the 16-bit types) and one rounding at the end. Any layout of x, r and b:
    only their logical values are read."""
    acc = acc_dtype(x.dtype)
    if op.kind == "alpha" and op.p >= 1.0:
        return x * 0.0
    k, f = _factor(op, x, keep)
    v = x.to(acc)
    if b is not None:
        v = v + b.to(acc)
    v = v * f
    if r is not None:
        v = r.to(acc) + v
    if op.kind == "alpha":
        a = _scale(op, op.p)
        alpha_a = torch.tensor(SELU_ALPHA * a, dtype=acc, device=x.device)
        alpha_a_p = torch.tensor(SELU_ALPHA * a * op.p, dtype=acc, device=x.device)
        v = v + torch.where(k, alpha_a_p, -alpha_a + alpha_a_p)  # ATen's (m - 1) * alpha * a + alpha * a * p
    return v.to(x.dtype)


def expected_input_grad(op, x, g, keep):
    """The input's gradient for the output gradient g: g * keep * scale, rounded once."""
    _, f = _factor(op, x, keep)
    return (g.to(f.dtype) * f).to(g.dtype)


# ------------------------------------------------------------ builds kept between runs


def build_cache_dir(name, *inputs):
    """A folder for a build the tests make (the JIT build, the AddressSanitizer build) that
    serves every run with the same inputs: its name holds a hash of `inputs` (sources,
    flags, torch, interpreter), so a change of any of them gets a fresh folder. Under
    DROPOUT_EXT_TEST_CACHE if set, else the temp dir; the tests lock it while they use it."""
    import hashlib
    import os
    import sys
    import tempfile

    h = hashlib.sha1()
    for item in (sys.executable, sys.version, torch.__version__) + inputs:
        h.update(repr(item).encode() + b"\0")
    root = os.environ.get("DROPOUT_EXT_TEST_CACHE") or os.path.join(tempfile.gettempdir(), "dropout_ext_test_cache")
    path = os.path.join(root, "%s-%s" % (name, h.hexdigest()[:16]))
    os.makedirs(path, exist_ok=True)
    return path


def source_digest(*paths):
    """The contents of the files under `paths` (files or folders), as one hash."""
    import hashlib
    import os

    h = hashlib.sha1()
    for top in paths:
        files = [top] if os.path.isfile(top) else sorted(
            os.path.join(d, f) for d, _, fs in os.walk(top) for f in fs if "__pycache__" not in d
            and not f.endswith((".so", ".pyd", ".pyc")))
        for f in files:
            h.update(os.path.relpath(f, top).encode() + b"\0")
            with open(f, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


@contextlib.contextmanager
def locked(path):
    """An exclusive lock on the folder `path` (another run of the suite waits)."""
    import fcntl
    import os

    with open(os.path.join(path, ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# A slow test's build (AddressSanitizer, JIT) started in the background when the test is
# collected, so that it compiles on a core the suite leaves idle (the tests run on one
# thread) instead of in the test's own time. A test names its warm-up function in its
# `warm` attribute (conftest.py starts it), and calls wait_warm(name) before it repeats the
# build, which then finds it done. DROPOUT_EXT_TEST_WARM=0 turns this off.
_WARMING = {}


def warm_in_background(name, argv, **popen_kw):
    """Runs argv in the background at low priority, once per session under `name`."""
    import os
    import subprocess

    if name in _WARMING or os.environ.get("DROPOUT_EXT_TEST_WARM", "1") == "0":
        return
    _WARMING[name] = subprocess.Popen(["nice", "-n", "10", *argv], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True, **popen_kw)


def wait_warm(name):
    """Waits for the warm-up `name`, if one was started (its result is not used: the test
    repeats the step, which finds the build done, or makes it and reports why)."""
    proc = _WARMING.get(name)
    if proc is not None:
        proc.wait()


def stop_warm():
    """Stops the warm-ups still running (a run that ends before their tests)."""
    import os
    import signal

    for proc in _WARMING.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
    _WARMING.clear()


def torch_error(fn):
    """(exception type, message) that fn() raises, or None: how a test compares its error with torch's."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - whatever torch raises
        return type(e), str(e)
    return None


__all__ = [n for n in dir() if not n.startswith("_")] + ["dropout_ext"]
