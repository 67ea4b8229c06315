"""Max unpooling in plain PyTorch: the oracle of the tests and the ``torch`` backend. Zeros, then each
value written at its index in its (image, channel) plane (``scatter_``); autograd differentiates it."""
from __future__ import annotations

import torch
from torch import Tensor
from torch._prims_common import suggest_memory_format


def max_unpool2d(input: Tensor, indices: Tensor, output_size: list[int]) -> Tensor:
    """``input``, ``indices``: ``[N, C, H, W]``; returns ``[N, C, *output_size]`` in the input's memory
    format. Raises ValueError for an index outside the output plane."""
    n, c = input.shape[:2]
    plane = output_size[0] * output_size[1]
    flat = indices.reshape(n, c, indices.shape[2] * indices.shape[3])
    if flat.numel() and (flat.min() < 0 or flat.max() >= plane):
        bad = flat[(flat < 0) | (flat >= plane)][0].item()
        raise ValueError(f"max_unpool2d: indices must lie in [0, H_out * W_out) of the {output_size[0]} x "
                         f"{output_size[1]} output plane, got {bad}")
    out = input.new_zeros((n, c, plane)).scatter(2, flat, input.reshape(flat.shape))
    # PyTorch's output memory format: the input's (suggest_memory_format, as its kernels decide)
    return out.view(n, c, *output_size).contiguous(memory_format=suggest_memory_format(input))
