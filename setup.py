"""Build of ee_cuda._C: the CPU kernels always; the CUDA kernels when torch sees a GPU and a CUDA toolkit is
found, or when FORCE_CUDA=1 (torchvision's convention).

Environment:
  FORCE_CUDA=1      compile the CUDA sources even without a visible GPU (TORCH_CUDA_ARCH_LIST defaults
                    to "8.0;9.0" then); fails if no CUDA toolkit or no CUDA build of torch is found.
  FORCE_ONLY_CPU=1  skip the CUDA sources.
  CUDA_HOME         the toolkit root (its include/ has cuda_runtime.h).
  MAX_JOBS          parallel compile jobs (ninja).
The resolved configuration is printed at the start of the build; scripts/setup.sh prints it before building
(`import setup` has no side effect but importing torch).
"""
import glob
import os
import sys

import torch
from setuptools import setup
from torch.utils import cpp_extension


def _flag(name):
    return os.environ.get(name) == "1"


def _cuda_include_dirs():
    """The toolkit may lack the cuBLAS/cuSPARSE headers that ATen/cuda/CUDAContext.h includes; the pip
    packages torch depends on ship them under site-packages/nvidia/*/include."""
    dirs = []
    for root in sys.path:
        for inc in sorted(glob.glob(os.path.join(root, "nvidia", "*", "include"))):
            if inc not in dirs:
                dirs.append(inc)
    return dirs


def configuration():
    """What the build compiles: {"cuda", "why", "cuda_home", "arch_list", "sources"}. Sets TORCH_CUDA_ARCH_LIST
    to the default list when CUDA is forced without a GPU."""
    cuda_home = cpp_extension.CUDA_HOME
    toolkit = cuda_home is not None and os.path.exists(os.path.join(cuda_home, "include", "cuda_runtime.h"))
    torch_cuda = torch.version.cuda is not None
    gpu = torch.cuda.is_available()
    if _flag("FORCE_ONLY_CPU"):
        cuda, why = False, "FORCE_ONLY_CPU=1"
    elif _flag("FORCE_CUDA"):
        if not (torch_cuda and toolkit):
            raise RuntimeError(
                f"FORCE_CUDA=1 but torch.version.cuda={torch.version.cuda} and CUDA_HOME={cuda_home} "
                "(needs include/cuda_runtime.h): install a CUDA build of torch and set CUDA_HOME to the toolkit")
        cuda, why = True, "FORCE_CUDA=1"
    elif not gpu:
        # With a CUDA_HOME, importing cpp_extension has logged a warning that reads like an error: say what it is.
        warned = ", hence torch's 'No CUDA runtime is found' warning above" if cuda_home else ""
        cuda, why = False, f"torch sees no GPU{warned}; FORCE_CUDA=1 builds them anyway"
    else:
        cuda = toolkit
        why = "torch sees a GPU" if cuda else f"torch sees a GPU but CUDA_HOME={cuda_home} is no CUDA toolkit"
    arch_list = None
    if cuda:
        arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST")
        if not arch_list and not gpu:
            arch_list = os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        elif not arch_list:
            arch_list = "{}.{}".format(*torch.cuda.get_device_capability())
    sources = ["csrc/ee_cuda.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    if cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
    return {"cuda": cuda, "why": why, "cuda_home": cuda_home if cuda else None, "arch_list": arch_list,
            "sources": sources}


def describe(config):
    return ("ee_cuda build configuration:\n"
            f"  torch {torch.__version__} (CUDA {torch.version.cuda})\n"
            f"  CUDA kernels: {'yes' if config['cuda'] else 'no'} ({config['why']})\n"
            f"  CUDA_HOME: {config['cuda_home'] or '-'}\n"
            f"  TORCH_CUDA_ARCH_LIST: {config['arch_list'] or '-'}\n"
            f"  sources: {' '.join(config['sources'])}")


def _extensions(config):
    # The C++ standard comes from torch (C++17 or C++20 by version). No FMA contraction: the interpolation
    # must round as the reference does (see interpolate() in csrc/common/ee_math.h). No errno from the math
    # functions (never read), so that loops of std::sqrt vectorize. OpenMP: at::parallel_for is a header
    # template that starts threads only where _OPENMP is defined; the libgomp.so.1 torch has loaded serves
    # them, so torch.set_num_threads governs the kernels too.
    cxx = ["-O3", "-ffp-contract=off", "-fno-math-errno"]
    link = []
    if sys.platform.startswith("linux"):
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    define_macros = []
    include_dirs = [os.path.abspath("csrc")]
    if config["cuda"]:
        define_macros += [("EE_WITH_CUDA", None), ("EE_CUDA_ARCH_LIST", f'"{config["arch_list"]}"')]
        include_dirs += _cuda_include_dirs()
    ext = cpp_extension.CUDAExtension if config["cuda"] else cpp_extension.CppExtension
    return [ext("ee_cuda._C", config["sources"], include_dirs=include_dirs, define_macros=define_macros,
                extra_compile_args={"cxx": cxx, "nvcc": nvcc} if config["cuda"] else cxx, extra_link_args=link)]


if __name__ == "__main__":  # as setuptools' build backend runs it
    config = configuration()
    print(describe(config), flush=True)
    setup(ext_modules=_extensions(config), cmdclass={"build_ext": cpp_extension.BuildExtension})
