"""Build dropout_ext: the C++ CPU kernels always, the CUDA kernels when possible.

Environment switches:
  DROPOUT_EXT_CUDA=1|0      force the CUDA build on (fail if impossible) or off;
                            unset: build CUDA when torch is a CUDA build and nvcc exists.
  DROPOUT_EXT_TESTING=1|cuda  development builds: also build the testing module
                            dropout_ext._testing (csrc/testing/: the CUDA kernels run on the
                            host by an emulator, for the tests); `cuda` adds its tunable CUDA
                            launcher (the GPU bench's sweep). Unset for wheels.
  TORCH_CUDA_ARCH_LIST      CUDA architectures (default: the release list below).
  CUDA_HOME                 toolkit root; found from `nvcc` on PATH when unset.
  MAX_JOBS                  parallel compile jobs (ninja).
"""
import importlib.util
import os
import sys
import sysconfig

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Sources, flags and the CUDA toolkit search, shared with dropout_ext.build() (JIT).
build_cfg = _load("dropout_ext_build", os.path.join(HERE, "dropout_ext", "_build.py"))

# CUDA_HOME must be set before torch.utils.cpp_extension is imported: it reads it once.
_cuda_home = build_cfg.find_cuda_home()
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


def _make(name, sources, defines, use_cuda, cxx, link):
    include_dirs = [build_cfg.CSRC]
    if not use_cuda:
        return CppExtension(name, sources, include_dirs=include_dirs,
                            extra_compile_args={"cxx": cxx + defines}, extra_link_args=link)
    incs, libs = build_cfg.pip_cuda_dirs(torch.__file__)
    nvcc = list(build_cfg.NVCC_FLAGS)
    defines = defines + ["-DDROPOUT_EXT_WITH_CUDA"]
    return CUDAExtension(name, sources, include_dirs=include_dirs + incs,
                         library_dirs=libs, extra_link_args=link,
                         extra_compile_args={"cxx": cxx + defines, "nvcc": nvcc + defines})


def extensions():
    cxx = list(build_cfg.CXX_FLAGS)
    link = list(build_cfg.LINK_FLAGS)
    sanitize = os.environ.get("DROPOUT_EXT_SANITIZE")  # e.g. "address" (tools/asan_check.sh)
    if sanitize:
        # -O1 -g1: what AddressSanitizer needs (its checks, line numbers), in half the compile time of -O3 -g
        cxx += ["-fsanitize=" + sanitize, "-fno-omit-frame-pointer", "-O1", "-g1"]
        link += ["-fsanitize=" + sanitize]
    use_cuda, why = want_cuda()
    try:
        testing = build_cfg.testing_mode()
    except ValueError as e:
        sys.exit("setup.py: %s" % e)
    if testing == "cuda" and not use_cuda:
        sys.exit("setup.py: DROPOUT_EXT_TESTING=cuda but the CUDA build is %s" % why)
    config = {
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "cuda": why,
        "testing module": {None: "off (DROPOUT_EXT_TESTING unset)",
                           "cpu": "on: emulator (DROPOUT_EXT_TESTING=%s)" % os.environ.get("DROPOUT_EXT_TESTING"),
                           "cuda": "on: emulator and tunable CUDA launcher (DROPOUT_EXT_TESTING=cuda)"}[testing],
        "cxx flags": " ".join(cxx),
        "sanitizer": sanitize or "off",
    }
    if use_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", build_cfg.RELEASE_ARCH_LIST)
        config.update({
            "CUDA_HOME": _cuda_home,
            "TORCH_CUDA_ARCH_LIST": os.environ["TORCH_CUDA_ARCH_LIST"],
            "extra CUDA include dirs": ", ".join(build_cfg.pip_cuda_dirs(torch.__file__)[0]) or "none",
            "nvcc flags": " ".join(build_cfg.NVCC_FLAGS),
        })
    sources = [os.path.relpath(f, HERE) for f in build_cfg.sources(use_cuda)]
    exts = [_make("dropout_ext._C", sources, [], use_cuda, cxx, link)]
    config["sources"] = ", ".join(sources)
    if testing:
        testing_sources = [os.path.relpath(f, HERE) for f in build_cfg.testing_sources(testing == "cuda")]
        exts.append(_make("dropout_ext._testing", testing_sources, build_cfg.TESTING_DEFINES, testing == "cuda",
                          cxx, link))
        config["testing sources"] = ", ".join(testing_sources)
    config["MAX_JOBS"] = os.environ.get("MAX_JOBS", "(ninja default)")
    print("dropout_ext build configuration:")
    for k, v in config.items():
        print("  %-24s %s" % (k, v))
    return exts


class BuildExt(BuildExtension):
    """An editable install (`pip install -e .`) builds in a fresh temporary folder each time:
    the objects go to the folder a regular build uses instead, so that a rebuild after a
    change compiles only what changed, and a wheel built after an editable install (or the
    other way round) reuses the objects whose compile command is the same (ninja compares
    commands)."""

    def finalize_options(self):
        super().finalize_options()
        if getattr(self, "editable_mode", False):
            self.build_temp = os.path.join(HERE, "build", "temp.%s-%s" % (sysconfig.get_platform(),
                                                                          sys.implementation.cache_tag))


def version():
    """The version, written once in dropout_ext/_version.py."""
    return _load("dropout_ext_version", os.path.join(HERE, "dropout_ext", "_version.py")).__version__


setup(
    name="dropout_ext",
    version=version(),
    description="Fast, reproducible, memory-light dropout kernels for PyTorch (CPU and CUDA)",
    packages=find_packages(include=["dropout_ext", "dropout_ext.*"]),
    # The C++/CUDA sources ship with the package: dropout_ext.build() compiles them at
    # first use when the prebuilt extension does not match the installed torch.
    # The testing module's sources (csrc/testing/) are not: the JIT build is the product's.
    package_data={"dropout_ext": ["py.typed", "csrc/*.h", "csrc/*.cpp", "csrc/cpu/*.h", "csrc/cpu/*.cpp",
                                  "csrc/cpu/*.inc", "csrc/cuda/*.h", "csrc/cuda/*.cu", "csrc/cuda/*.cuh"]},
    license="BSD-3-Clause",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExt.with_options(use_ninja=True)},
    python_requires=">=3.10",
    install_requires=["torch"],
)
