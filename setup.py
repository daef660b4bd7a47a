"""Build dropout_ext: the C++ CPU kernels always, the CUDA kernels when possible.

Environment switches:
  DROPOUT_EXT_CUDA=1|0      force the CUDA build on (fail if impossible) or off;
                            unset: build CUDA when torch is a CUDA build and nvcc exists.
  TORCH_CUDA_ARCH_LIST      CUDA architectures (default: the release list below).
  CUDA_HOME                 toolkit root; found from `nvcc` on PATH when unset.
  MAX_JOBS                  parallel compile jobs (ninja).
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

RELEASE_ARCH_LIST = "8.0;8.6;8.9;9.0+PTX"  # Ampere, Ada, Hopper (+PTX for newer GPUs)


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


def pip_cuda_dirs():
    """include/ and lib/ folders of the pip CUDA packages next to torch (nvidia/cu13, ...).

    torch's CUDA headers include cusparse.h and cublas_v2.h, which a bare toolkit may
    not ship but these packages do."""
    import torch

    site = os.path.dirname(os.path.dirname(torch.__file__))
    incs, libs = [], []
    for root in sorted(glob.glob(os.path.join(site, "nvidia", "*"))):
        if os.path.exists(os.path.join(root, "include", "cusparse.h")):
            incs.append(os.path.join(root, "include"))
            if os.path.isdir(os.path.join(root, "lib")):
                libs.append(os.path.join(root, "lib"))
    return incs, libs


# CUDA_HOME must be set before torch.utils.cpp_extension is imported: it reads it once.
_cuda_home = find_cuda_home()
if _cuda_home and not os.environ.get("CUDA_HOME"):
    os.environ["CUDA_HOME"] = _cuda_home

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def want_cuda():
    force = os.environ.get("DROPOUT_EXT_CUDA", "").strip().lower()
    possible = torch.version.cuda is not None and _cuda_home is not None
    if force in ("0", "false", "off", "no"):
        return False, "off (DROPOUT_EXT_CUDA=0)"
    if force in ("1", "true", "on", "yes"):
        if not possible:
            sys.exit(
                "setup.py: DROPOUT_EXT_CUDA=1 but "
                + ("torch is not a CUDA build" if torch.version.cuda is None else "nvcc/CUDA_HOME not found")
            )
        return True, "on (DROPOUT_EXT_CUDA=1)"
    if torch.version.cuda is None:
        return False, "off (torch %s is not a CUDA build)" % torch.__version__
    if _cuda_home is None:
        return False, "off (nvcc not found)"
    return True, "on (CUDA torch and nvcc found)"


def extension():
    here = os.path.dirname(os.path.abspath(__file__))
    sources = ["csrc/dropout.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    # -ffp-contract=off: `r + x * f` must round twice, as the Python reference does, on
    # every backend; no -march: SIMD paths are chosen at run time (csrc/cpu/kernels_simd.cpp).
    # -fopenmp: at::parallel_for is inline OpenMP code; without it the loop runs serially.
    cxx = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fopenmp"]
    link = ["-fopenmp"]
    sanitize = os.environ.get("DROPOUT_EXT_SANITIZE")  # e.g. "address" (tools/asan_check.sh)
    if sanitize:
        cxx += ["-fsanitize=" + sanitize, "-fno-omit-frame-pointer", "-g"]
        link += ["-fsanitize=" + sanitize]
    use_cuda, why = want_cuda()
    config = {
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "cuda": why,
        "cxx flags": " ".join(cxx),
        "sanitizer": sanitize or "off",
    }
    include_dirs = [os.path.join(here, "csrc")]
    if not use_cuda:
        ext = CppExtension("dropout_ext._C", sources, include_dirs=include_dirs,
                           extra_compile_args={"cxx": cxx}, extra_link_args=link)
    else:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", RELEASE_ARCH_LIST)
        incs, libs = pip_cuda_dirs()
        # --fmad=false for the same reason as -ffp-contract=off on the host.
        nvcc = ["-O3", "--fmad=false", "-lineinfo", "--expt-relaxed-constexpr"]
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        ext = CUDAExtension("dropout_ext._C", sources, include_dirs=include_dirs + incs,
                            library_dirs=libs, extra_link_args=link,
                            extra_compile_args={"cxx": cxx + ["-DDROPOUT_EXT_WITH_CUDA"],
                                                "nvcc": nvcc + ["-DDROPOUT_EXT_WITH_CUDA"]})
        config.update({
            "CUDA_HOME": _cuda_home,
            "TORCH_CUDA_ARCH_LIST": os.environ["TORCH_CUDA_ARCH_LIST"],
            "extra CUDA include dirs": ", ".join(incs) or "none",
            "nvcc flags": " ".join(nvcc),
        })
    config["sources"] = ", ".join(sources)
    config["MAX_JOBS"] = os.environ.get("MAX_JOBS", "(ninja default)")
    print("dropout_ext build configuration:")
    for k, v in config.items():
        print("  %-24s %s" % (k, v))
    return ext


setup(
    name="dropout_ext",
    version="0.1.0",
    description="Fast, reproducible, memory-light dropout kernels for PyTorch (CPU and CUDA)",
    packages=find_packages(include=["dropout_ext", "dropout_ext.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.10",
    install_requires=["torch"],
)
