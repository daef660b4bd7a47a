"""Shared parameters and helpers: every test module draws its backend, device, dtype and
layout products from here."""
import contextlib

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
HAS_TUNABLE_CUDA = HAS_EMULATOR and torch._C._dispatch_has_kernel_for_dispatch_key("dropout_ext_testing::dropout",
                                                                                    "CUDA")
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
    """The arithmetic dtype of SPEC section 2: float32 for the 16-bit types."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def signed64(v):
    """An unsigned 64-bit word as the signed int64 the rng tensors hold."""
    v = int(v) % 2**64
    return v - 2**64 if v >= 2**63 else v


# ------------------------------------------------------------------ expected masks
# Expected masks come from tests/oracle.py (an independent Philox4x32-10 and SPEC mask),
# never from dropout_ext._reference.


def oracle_mask(shape, p, key, base=0, device="cpu"):
    """The SPEC mask of `shape` for (key, base) (bool tensor)."""
    return torch.from_numpy(oracle.keep_mask(tuple(shape), p, key, base)).to(device)


def keep_mask(shape, p, seed, device="cpu"):
    """The SPEC mask of `shape` at `seed=` (key = seed, base = 0), from the oracle."""
    return oracle_mask(shape, p, seed, 0, device)


def expected_factor(keep, p, dtype, scale_train=True):
    """keep * 1/(1 - p) (or keep * 1) in the accumulation dtype of `dtype`."""
    acc = acc_dtype(dtype)
    scale = 1.0 / (1.0 - p) if scale_train and p < 1.0 else 1.0
    return torch.where(keep, torch.tensor(scale, dtype=acc), torch.tensor(0.0, dtype=acc))


def expected_dropout(x, keep, p, scale_train=True):
    """SPEC section 2: x * m * scale in the accumulation dtype, rounded once; `keep` is
    the mask of x's logical shape, or of a prefix of it (channel-wise, per-sample)."""
    factor = expected_factor(keep, p, x.dtype, scale_train)
    factor = factor.reshape(tuple(keep.shape) + (1,) * (x.dim() - keep.dim()))
    return (x.to(factor.dtype) * factor).to(x.dtype)


# ------------------------------------------------------- the generator's (key, base)


def expected_rng_pair(generator=None):
    """(key, base) as unsigned ints that a `seed=None` / `generator=` call on a CPU input
    draws from `generator` (None: torch's default CPU generator), advancing it as that
    call does. The one place that states the draw rule: change it here when it changes."""
    g = torch.default_generator if generator is None else generator
    words = torch.randint(-(2**63), 2**63 - 1, (2,), dtype=torch.int64, generator=g)
    key, base = (int(w) % 2**64 for w in words)
    return key, base


def peek_rng_pair(generator=None):
    """expected_rng_pair without advancing the generator."""
    g = torch.default_generator if generator is None else generator
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


__all__ = [n for n in dir() if not n.startswith("_")] + ["dropout_ext"]
