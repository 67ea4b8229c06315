"""Max unpooling in plain PyTorch: the oracle of the tests and the ``torch`` backend. Zeros, then each
value written at its index in its (image, channel) plane (``scatter_``); autograd differentiates it."""
from __future__ import annotations

import torch
from torch import Tensor
from torch._prims_common import suggest_memory_format

from fastseg.ops._checks import ArgumentError


def check_indices(indices: Tensor, output_size: list[int]) -> None:
    """ArgumentError for an index outside the ``output_size`` plane (also the Triton op's check). An empty
    plane is written nothing, and PyTorch checks no index then: neither does this."""
    plane = output_size[0] * output_size[1]
    if plane and indices.numel() and (indices.min() < 0 or indices.max() >= plane):
        bad = indices[(indices < 0) | (indices >= plane)][0].item()
        raise ArgumentError(f"max_unpool2d: indices must lie in [0, H_out * W_out) of the {output_size[0]} x "
                            f"{output_size[1]} output plane, got {bad}")


def max_unpool2d(input: Tensor, indices: Tensor, output_size: list[int]) -> Tensor:
    """``input``, ``indices``: ``[N, C, H, W]``; returns ``[N, C, *output_size]`` in the input's memory
    format. Raises ArgumentError for an index outside the output plane."""
    check_indices(indices, output_size)
    n, c = input.shape[:2]
    if output_size[0] * output_size[1] == 0:  # nothing is written; a zero gradient (scatter would refuse)
        out = torch.empty((n, c, *output_size), dtype=input.dtype, device=input.device,
                          memory_format=suggest_memory_format(input))
        return out.add_(input.sum() * 0)  # no element; in place: keeps PyTorch's strides, which `+` would not
    flat = indices.reshape(n, c, indices.shape[2] * indices.shape[3])
    out = input.new_zeros((n, c, output_size[0] * output_size[1])).scatter(2, flat, input.reshape(flat.shape))
    # PyTorch's output memory format: the input's (suggest_memory_format, as its kernels decide)
    return out.view(n, c, *output_size).contiguous(memory_format=suggest_memory_format(input))
