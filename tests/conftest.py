"""Test set-up: Triton runs on the CPU through its interpreter unless told otherwise (the GPU run sets
TRITON_INTERPRET=0), and must be told before triton is first imported."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import fastseg  # noqa: E402
from fastseg import backend  # noqa: E402

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU on this machine"))]
BACKENDS = ["native", "triton", "torch"]


def require_backend(name: str, device: str):
    """Skip only where a backend legitimately cannot run here (Triton's interpreter switched off on a
    GPU run); a native or torch backend that cannot run fails the test instead."""
    reason = backend.unavailable_reason(name, torch.device(device))
    if reason is None:
        return
    if name == "triton" and device == "cpu" and not backend.triton_interpreting():
        pytest.skip(f"triton on CPU tensors: {reason}")
    pytest.fail(f"backend {name!r} should run on {device} here but cannot: {reason}")


@pytest.fixture(params=BACKENDS)
def backend_name(request):
    return request.param


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def call(backend_name, fn, *args):
    with fastseg.use_backend(backend_name):
        return fn(*args)
