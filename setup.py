"""Build of ee_cuda._C: the CPU kernels always, the CUDA kernels when torch has CUDA and nvcc is found.

Environment:
  FORCE_CUDA=1      compile the CUDA sources even without a visible GPU (TORCH_CUDA_ARCH_LIST defaults
                    to "8.0;9.0" then); fails if no CUDA toolkit is found.
  FORCE_ONLY_CPU=1  skip the CUDA sources.
  CUDA_HOME         the toolkit root (its include/ has cuda_runtime.h).
  MAX_JOBS          parallel compile jobs (ninja).
The resolved configuration is printed at the start of the build.
"""
import glob
import os
import sys

import torch
from setuptools import setup
from torch.utils import cpp_extension


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _cuda_include_dirs():
    """The toolkit may lack the cuBLAS/cuSPARSE headers that ATen/cuda/CUDAContext.h includes; the pip
    packages torch depends on ship them under site-packages/nvidia/*/include."""
    dirs = []
    for root in sys.path:
        for inc in sorted(glob.glob(os.path.join(root, "nvidia", "*", "include"))):
            if inc not in dirs:
                dirs.append(inc)
    return dirs


def _configuration():
    force_cuda, only_cpu = _flag("FORCE_CUDA"), _flag("FORCE_ONLY_CPU")
    cuda_home = cpp_extension.CUDA_HOME
    toolkit = cuda_home is not None and os.path.exists(os.path.join(cuda_home, "include", "cuda_runtime.h"))
    torch_cuda = torch.version.cuda is not None
    if only_cpu:
        with_cuda, why = False, "FORCE_ONLY_CPU=1"
    elif force_cuda:
        if not (torch_cuda and toolkit):
            raise RuntimeError(
                f"FORCE_CUDA=1 but torch.version.cuda={torch.version.cuda} and CUDA_HOME={cuda_home} "
                "(needs include/cuda_runtime.h): install a CUDA build of torch and set CUDA_HOME to the toolkit")
        with_cuda, why = True, "FORCE_CUDA=1"
    else:
        with_cuda = torch_cuda and toolkit and torch.cuda.is_available()
        why = "GPU and toolkit found" if with_cuda else "no GPU visible or no toolkit (set FORCE_CUDA=1 to build anyway)"
    arch_list = None
    if with_cuda:
        arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST")
        if not arch_list and not torch.cuda.is_available():
            arch_list = "8.0;9.0"
        if arch_list:
            os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
        else:
            cap = torch.cuda.get_device_capability()
            arch_list = f"{cap[0]}.{cap[1]}"
    return with_cuda, why, cuda_home, arch_list


def _extensions():
    with_cuda, why, cuda_home, arch_list = _configuration()
    sources = ["csrc/ee_cuda.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    # The C++ standard comes from torch (C++17 or C++20 by version). No FMA contraction: the interpolation
    # must round as the reference does (see interpolate() in csrc/common/ee_math.h). No errno from the math
    # functions (never read), so that loops of std::sqrt vectorize.
    cxx = ["-O3", "-ffp-contract=off", "-fno-math-errno"]
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    define_macros = []
    include_dirs = [os.path.abspath("csrc")]
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        define_macros += [("EE_WITH_CUDA", None), ("EE_CUDA_ARCH_LIST", f'"{arch_list}"')]
        include_dirs += _cuda_include_dirs()
    print("ee_cuda build configuration:\n"
          f"  torch {torch.__version__} (CUDA {torch.version.cuda})\n"
          f"  CUDA kernels: {'yes' if with_cuda else 'no'} ({why})\n"
          f"  CUDA_HOME: {cuda_home}\n"
          f"  TORCH_CUDA_ARCH_LIST: {arch_list}\n"
          f"  sources: {', '.join(sources)}", flush=True)
    ext = cpp_extension.CUDAExtension if with_cuda else cpp_extension.CppExtension
    return [ext("ee_cuda._C", sources, include_dirs=include_dirs, define_macros=define_macros,
                extra_compile_args={"cxx": cxx, "nvcc": nvcc} if with_cuda else cxx)]


setup(ext_modules=_extensions(), cmdclass={"build_ext": cpp_extension.BuildExtension})
