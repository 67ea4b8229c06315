"""The extension was built as promised: CPU kernels always; CUDA kernels whenever the build machine has
nvcc and a CUDA build of torch (no GPU needed), and then registered for every op."""
import os
import shutil

import pytest
import torch

from fastseg import _extension, backend

# Every public op with a native implementation has a C++ schema fastseg::<op> of the same name.
OPS = sorted(op for op, impls in backend.OPS.items() if "native" in impls)


def has_kernel(op, key):
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"fastseg::{op}", key)


def test_extension_loaded():
    assert _extension.loaded(), _extension.error


def test_every_op_family_is_registered():
    assert {"nms", "batched_nms"} <= set(OPS) and len(OPS) >= 2


@pytest.mark.parametrize("op", OPS)
def test_cpu_kernels_registered(op):
    assert has_kernel(op, "CPU")


def test_cuda_kernels_built_where_a_toolkit_exists():
    toolkit = shutil.which("nvcc") or os.environ.get("CUDA_HOME")
    if os.environ.get("FASTSEG_NO_CUDA") == "1" or torch.version.cuda is None or not toolkit:
        pytest.skip("no CUDA toolkit or CPU-only torch: a CPU-only build is expected")
    assert _extension.with_cuda(), "nvcc and a CUDA torch are here, yet fastseg._C has no CUDA kernels"


@pytest.mark.parametrize("op", OPS)
def test_cuda_kernels_registered_when_built(op):
    if not _extension.with_cuda():
        pytest.skip("fastseg._C was built without CUDA")
    assert has_kernel(op, "CUDA")
    arch = _extension.cuda_arch_list()
    assert arch, "arch list missing"
    if "TORCH_CUDA_ARCH_LIST" not in os.environ:
        assert "8.0" in arch and "9.0" in arch


def test_cpu_kernels_are_built_with_openmp():
    """at::parallel_for is an OpenMP pragma inlined from ATen's headers: an extension compiled without
    -fopenmp runs every CPU kernel on one thread, silently. Built with it, the library calls libgomp's
    GOMP_parallel (and shares torch's libgomp, so torch.set_num_threads applies)."""
    import fastseg._C as ext

    with open(ext.__file__, "rb") as f:
        assert b"GOMP_parallel" in f.read()
    gomp = {line.split()[-1] for line in open("/proc/self/maps") if "libgomp" in line}
    assert len({os.path.realpath(p) for p in gomp}) <= 1, f"two OpenMP runtimes loaded: {gomp}"
