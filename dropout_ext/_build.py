"""How the extension is compiled, shared by setup.py (prebuilt wheels) and `build()` (the
JIT build at first use): sources, compiler flags, and where the CUDA toolkit is; and the
testing module that development builds add (setup.py, DROPOUT_EXT_TESTING).

Kept free of package imports so setup.py can load it by path before the package exists.
"""
import glob
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "csrc")

RELEASE_ARCH_LIST = "8.0;8.6;8.9;9.0+PTX"  # Ampere, Ada, Hopper (+PTX for newer GPUs)

# -ffp-contract=off: `r + x * f` must round twice, as the Python reference does, on every
# backend; no -march: SIMD paths are chosen at run time (csrc/cpu/kernels_simd.cpp).
# -fopenmp: at::parallel_for is inline OpenMP code; without it the loop runs serially.
CXX_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fopenmp"]
LINK_FLAGS = ["-fopenmp"]
# --fmad=false for the same reason as -ffp-contract=off on the host.
NVCC_FLAGS = ["-O3", "--fmad=false", "-lineinfo", "--expt-relaxed-constexpr"]


def sources(cuda, root=HERE):
    """Source files of the product's module `_C`, relative to `root`'s parent when root is
    the package folder."""
    base = os.path.join(root, "csrc")
    files = [os.path.join(base, n) for n in ("ops.cpp", "autograd.cpp", "python.cpp")]
    files += sorted(glob.glob(os.path.join(base, "cpu", "*.cpp")))
    if cuda:
        files += sorted(glob.glob(os.path.join(base, "cuda", "*.cu")))
    return files


# The testing module `_testing` (csrc/testing/testing.h): the product's ops again under the
# op namespace dropout_ext_testing, their CPU kernels the CUDA kernels run by the emulator,
# plus development-only ops. Never in a wheel: setup.py builds it only when
# DROPOUT_EXT_TESTING is set (./dev.sh build, test and mutants set it; CI uses them).
TESTING_DEFINES = ["-DDX_NS=dropout_ext_testing"]


def testing_mode(value=None):
    """What DROPOUT_EXT_TESTING (or `value`) asks for: None (no testing module), "cpu"
    (the emulator: 1, cpu, yes, true, on) or "cuda" (also a CUDA launcher whose flat-kernel
    configuration `set_cuda_tuning` switches, for the GPU bench's sweep: compiling the CUDA
    kernels a second time costs minutes on a small machine, so only where asked for)."""
    v = (os.environ.get("DROPOUT_EXT_TESTING", "") if value is None else value).strip().lower()
    if v in ("", "0", "false", "off", "no"):
        return None
    if v in ("1", "cpu", "true", "on", "yes"):
        return "cpu"
    if v == "cuda":
        return "cuda"
    raise ValueError("DROPOUT_EXT_TESTING must be unset/0, 1 (or cpu) or cuda, got %r" % v)


def testing_sources(cuda, root=HERE):
    """Source files of the testing module (csrc/testing/), with its tunable CUDA launcher
    when `cuda`."""
    base = os.path.join(root, "csrc", "testing")
    files = sorted(glob.glob(os.path.join(base, "*.cpp")))
    if cuda:
        files += sorted(glob.glob(os.path.join(base, "*.cu")))
    return files


def find_cuda_home():
    """Toolkit root holding bin/nvcc and include/cuda_runtime.h, or None."""
    candidates = []
    if os.environ.get("CUDA_HOME"):
        candidates.append(os.environ["CUDA_HOME"])
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for root in candidates:
        if os.path.exists(os.path.join(root, "bin", "nvcc")) and os.path.exists(
            os.path.join(root, "include", "cuda_runtime.h")
        ):
            return root
    return None


def pip_cuda_dirs(torch_file):
    """include/ and lib/ folders of the pip CUDA packages next to torch (nvidia/cu13, ...).

    torch's CUDA headers include cusparse.h and cublas_v2.h, which a bare toolkit may
    not ship but these packages do."""
    site = os.path.dirname(os.path.dirname(torch_file))
    incs, libs = [], []
    for root in sorted(glob.glob(os.path.join(site, "nvidia", "*"))):
        if os.path.exists(os.path.join(root, "include", "cusparse.h")):
            incs.append(os.path.join(root, "include"))
            if os.path.isdir(os.path.join(root, "lib")):
                libs.append(os.path.join(root, "lib"))
    return incs, libs
