"""What this fastseg install can run: ``fastseg.info()`` and ``python -m fastseg info``."""
from __future__ import annotations

import os

import torch

from fastseg import _extension, backend


def _registered(op: str, key: str) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"fastseg::{op}", key)
    except RuntimeError:  # the op's schema is not registered at all
        return False


def info() -> dict:
    """A dict describing the extension, its kernels, Triton, the GPU and what ``auto`` picks."""
    from fastseg import __version__

    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    ops = [op for op, impls in backend.OPS.items() if "native" in impls]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return {
        "fastseg": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "extension": {
            "loaded": _extension.loaded(),
            "error": _extension.error,
            "path": getattr(_extension._C, "__file__", None),
            "cpu_kernels": {op: _registered(op, "CPU") for op in ops},
            "cuda_kernels": {op: _registered(op, "CUDA") for op in ops},
            "built_with_cuda": _extension.with_cuda(),
            "cuda_arch_list": _extension.cuda_arch_list(),
        },
        "triton": {
            "version": triton_version,
            "interpreting": backend.triton_interpreting(),
        },
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "backend": backend.current_backend(),
        "backends": {
            dev: {b: backend.unavailable_reason(b, torch.device(dev)) or "available"
                  for b in backend.BACKENDS if b != "auto"}
            for dev in devices
        },
        "auto": {dev: {op: backend.auto_choice(op, dev, impls) for op, impls in backend.OPS.items()}
                 for dev in devices},
        "threads": torch.get_num_threads(),
        "env": {k: v for k, v in os.environ.items() if k.startswith(("FASTSEG_", "TRITON_INTERPRET"))},
    }


def format_info(d: dict | None = None, indent: int = 0) -> str:
    d = info() if d is None else d
    lines = []
    for key, value in d.items():
        if isinstance(value, dict):
            lines.append(" " * indent + f"{key}:")
            lines.append(format_info(value, indent + 2) if value else " " * (indent + 2) + "(none)")
        else:
            lines.append(" " * indent + f"{key}: {value}")
    return "\n".join(lines)
