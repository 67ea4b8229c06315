"""Builds fastseg and its one extension, fastseg._C.

The C++ CPU kernels are always built. The CUDA kernels are built when a CUDA toolkit and a CUDA build
of torch are present (no GPU is needed at build time), or when FASTSEG_FORCE_CUDA=1; FASTSEG_NO_CUDA=1
builds the CPU kernels only. TORCH_CUDA_ARCH_LIST overrides the default architectures (sm_80, sm_90).
FASTSEG_SKIP_EXT=1 installs the Python package alone: the Makefile then builds the extension in place
with `setup.py build_ext --inplace`, which ninja keeps incremental (pip builds in a fresh temp dir).
"""
import glob
import os
import re
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;9.0"


def find_cuda_home():
    """The toolkit that `nvcc` really runs.

    Torch guesses CUDA_HOME from the location of `nvcc`; where `nvcc` is a wrapper script (as on our
    CI machines) that guess is wrong and linking fails on -lcudart, so follow the wrapper.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return "/usr/local/cuda" if os.path.exists("/usr/local/cuda/bin/nvcc") else None
    real = os.path.realpath(nvcc)
    try:
        with open(real, "rb") as f:
            head = f.read(4096)
        if head.startswith(b"#!"):
            match = re.search(rb"(/\S+)/bin/nvcc", head)
            if match:
                return match.group(1).decode()
    except OSError:
        pass
    return os.path.dirname(os.path.dirname(real))


def want_cuda(torch):
    if os.environ.get("FASTSEG_NO_CUDA") == "1":
        return False
    if os.environ.get("FASTSEG_FORCE_CUDA") == "1":
        return True
    home = os.environ.get("CUDA_HOME")
    return torch.version.cuda is not None and home is not None and os.path.exists(
        os.path.join(home, "bin", "nvcc"))


def cuda_include_dirs():
    """Headers that ATen's CUDA headers include but a bare toolkit may lack (cusparse.h, cublas):
    the nvidia-* wheels installed with torch carry them."""
    dirs = []
    for site in sys.path:
        for inc in sorted(glob.glob(os.path.join(site, "nvidia", "*", "include"))):
            if os.path.exists(os.path.join(inc, "cusparse.h")) and inc not in dirs:
                dirs.append(inc)
    return dirs


def extensions():
    if os.environ.get("FASTSEG_SKIP_EXT") == "1":
        return []
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    # -ffp-contract=off: an FMA would change the rounding of IoUs that must match torchvision's bits.
    # -fopenmp: at::parallel_for is an inline `#pragma omp parallel` in ATen's headers; without the flag
    # every CPU kernel silently runs on one thread. libgomp.so.1 resolves to the copy torch has loaded.
    cxx = ["-O3", "-ffp-contract=off", "-fopenmp"]
    link = ["-fopenmp", "-ldl"]  # -ldl: dlopen (the Winograd route finds the BLAS sgemm at run time)
    macros = []
    include_dirs = [os.path.join(ROOT, "csrc")]
    depends = sorted(glob.glob("csrc/**/*.h", recursive=True))  # a header change rebuilds
    if want_cuda(torch):
        arch_list = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        macros += [
            ("FASTSEG_WITH_CUDA", None),
            ("FASTSEG_CUDA_ARCH_LIST", '"%s"' % arch_list),
            ("FASTSEG_CUDA_VERSION", '"%s"' % torch.version.cuda),
        ]
        nvcc = ["-O3", "--fmad=false", "-lineinfo", "--expt-relaxed-constexpr"]
        return [CUDAExtension("fastseg._C", sources, define_macros=macros, depends=depends,
                              include_dirs=include_dirs + cuda_include_dirs(),
                              extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=link)]
    return [CppExtension("fastseg._C", sources, define_macros=macros, depends=depends, include_dirs=include_dirs,
                         extra_compile_args={"cxx": cxx}, extra_link_args=link)]


def main():
    cuda_home = find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # before torch.utils.cpp_extension reads it
    from torch.utils.cpp_extension import BuildExtension

    setup(
        ext_modules=extensions(),
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )


if __name__ == "__main__":
    main()
