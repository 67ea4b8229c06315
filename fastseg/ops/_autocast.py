"""Autocast for fastseg's ops: each op follows the cast policy that ``torch.autocast`` applies to the
torch op it mirrors, so that swapping one for the other inside an autocast region changes nothing.

Without this, a drop-in layer broke mixed-precision training: ``torch.nn.ConvTranspose2d`` under
autocast casts its bf16 input and fp32 weight to the autocast dtype, fastseg's saw mixed dtypes and
raised. Policies (PyTorch's lists in aten/src/ATen/autocast_mode.cpp):

- ``lower_precision`` (conv_transpose2d, on every device): floating-point tensors other than fp64 go to
  the autocast dtype.
- ``fp32_on_cpu`` (max_unpool2d): to fp32 under CPU autocast; CUDA autocast leaves it alone.

The op then runs with autocast off, as PyTorch's own autocast kernels do, so that the ATen calls inside
a kernel are not cast a second time.
"""
from __future__ import annotations

import torch
from torch import Tensor


def target_dtype(device_type: str, policy: str) -> torch.dtype | None:
    """The dtype autocast gives an op of `policy` on `device_type` now, or None to leave it as it is."""
    if not torch.is_autocast_enabled(device_type):
        return None
    if policy == "lower_precision":
        return torch.get_autocast_dtype(device_type)
    if policy == "fp32_on_cpu":
        return torch.float32 if device_type == "cpu" else None
    raise ValueError(f"unknown autocast policy {policy!r}")


def cast(dtype: torch.dtype, *tensors):
    """Autocast's cast: floating-point tensors other than fp64 to `dtype`; anything else unchanged."""
    return tuple(t.to(dtype) if isinstance(t, Tensor) and t.is_floating_point() and t.dtype != torch.float64
                 else t for t in tensors)


def off(device_type: str) -> torch.autocast:
    """Autocast off on `device_type`, as inside PyTorch's own autocast kernels."""
    return torch.autocast(device_type, enabled=False)
