"""Loads fastseg._C, the C++/CUDA extension, once. Importing fastseg never fails because of it: without
the extension, fastseg warns once and the `native` backend reports itself unavailable."""
import os
import warnings

import torch  # noqa: F401  (loads libc10/libtorch, which fastseg._C links against)

_C = None
error = None  # why the extension is not available, or None

if os.environ.get("FASTSEG_NO_EXTENSION") == "1":
    error = "disabled by FASTSEG_NO_EXTENSION=1"
else:
    try:
        from fastseg import _C  # noqa: F811  (its static initialisers register torch.ops.fastseg.*)
    except (ImportError, OSError) as exc:  # not built, or built against another torch
        error = f"{type(exc).__name__}: {exc}"

if error is not None and os.environ.get("FASTSEG_NO_EXTENSION") != "1":
    warnings.warn(
        f"fastseg: the C++/CUDA extension fastseg._C could not be loaded ({error}); the 'native' "
        "backend is unavailable and ops fall back to Triton or the PyTorch reference. Build it with "
        "`make build` (or `pip install -e .`).",
        RuntimeWarning,
        stacklevel=2,
    )


def loaded() -> bool:
    return _C is not None


def with_cuda() -> bool:
    """Whether the extension was built with its CUDA kernels."""
    return _C is not None and bool(_C.with_cuda)


def cuda_arch_list() -> str:
    return _C.cuda_arch_list if with_cuda() else ""
