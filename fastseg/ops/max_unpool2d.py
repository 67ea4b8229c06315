"""Max unpooling (DeconvNet's "switches"), as ``torch.nn.functional.max_unpool2d``.

Backends: native (csrc/cpu/max_unpool2d_kernel.cpp, csrc/cuda/max_unpool2d_kernel.cu; autograd in
csrc/max_unpool2d_autograd.cpp), triton (kernels/max_unpool2d.py), torch
(fastseg/reference/max_unpool2d.py). Differentiable in ``input``: the gradient of each value is the
output gradient at its index (a gather, as in PyTorch).
"""
from __future__ import annotations

import numbers
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._prims_common import suggest_memory_format

from fastseg import _extension, backend, reference
from fastseg.ops import _autocast
from fastseg.ops._checks import ArgumentError, int_pair


def _native(input, indices, output_size):
    return torch.ops.fastseg.max_unpool2d(input, indices, output_size)


def _triton(input, indices, output_size):
    from fastseg.kernels import max_unpool2d as triton_impl  # imports triton: only when asked for

    return triton_impl.max_unpool2d(input, indices, output_size)


MAX_UNPOOL2D_IMPLS = backend.register("max_unpool2d", {"native": _native, "triton": _triton,
                                                       "torch": reference.max_unpool2d})


def output_size_of(input_hw, kernel_size, stride=None, padding=0, output_size=None) -> list[int]:
    """The output height and width of ``F.max_unpool2d`` (same rule and range check)."""
    kernel = int_pair("max_unpool2d", "kernel_size", kernel_size, 1)
    stride = kernel if stride is None else int_pair("max_unpool2d", "stride", stride, 1)
    padding = int_pair("max_unpool2d", "padding", padding, 0)
    default = [(n - 1) * s + k - 2 * p for n, s, k, p in zip(input_hw, stride, kernel, padding)]
    if output_size is None:
        if min(default) < 0:
            raise ArgumentError(f"max_unpool2d: the output size would be {default}: padding is too large")
        return default
    size = list(output_size)
    if len(size) == 4:
        size = size[2:]
    if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in size):
        raise ArgumentError(f"max_unpool2d: output_size must be (H_out, W_out) or (N, C, H_out, W_out), "
                            f"got {output_size!r}")
    if min(size) < 0:
        raise ArgumentError(f"max_unpool2d: output_size must be >= 0, got {output_size!r}")
    for d in range(2):
        if not default[d] - stride[d] < size[d] < default[d] + stride[d]:
            raise ArgumentError(f"max_unpool2d: output_size {size} must lie strictly between {default[d] - stride[d]} "
                                f"and {default[d] + stride[d]} in dimension {d} (the default is {default})")
    return [int(v) for v in size]


def unpool_grad(grad: Tensor, indices: Tensor) -> Tensor:
    """Gradient of max unpooling with respect to its input: grad at each value's index."""
    n, c, h, w = indices.shape
    if grad.shape[2] * grad.shape[3] == 0:  # an empty output plane received no value
        return grad.new_zeros(indices.shape)
    return grad.reshape(n, c, grad.shape[2] * grad.shape[3]).gather(2, indices.reshape(n, c, h * w)).view(n, c, h, w)


def max_unpool2d(input: Tensor, indices: Tensor, kernel_size, stride=None, padding=0,
                 output_size=None) -> Tensor:
    """Max unpooling, like ``torch.nn.functional.max_unpool2d`` (same arguments, same result and memory
    format): zeros of the output size with each value of ``input`` at its index in its plane.

    Args:
        input: ``[N, C, H, W]`` or ``[C, H, W]`` (the pooled values).
        indices: int64, the shape of ``input``: flat positions ``h * W_out + w`` in the output plane, as
            returned by ``max_pool2d(..., return_indices=True)``.
        kernel_size, stride (default ``kernel_size``), padding: the pooling's, to compute the output size.
        output_size: ``(H_out, W_out)`` (or with ``N, C`` in front) to pick among the sizes that pool to
            ``input``'s.

    Where two indices of a plane coincide (overlapping pooling windows), the later value (in h, w order)
    wins for NCHW CPU tensors, as in PyTorch; otherwise either may (as in PyTorch; max pooling's
    switches only repeat an index with the same value). An index outside the output raises.

    Example:
        >>> x = torch.tensor([[[[1., 2., 3., 4.], [5., 6., 7., 8.]]]])
        >>> pooled, idx = torch.nn.functional.max_pool2d(x, 2, return_indices=True)
        >>> fastseg.ops.max_unpool2d(pooled, idx, 2)
        tensor([[[[0., 0., 0., 0.],
                  [0., 6., 0., 8.]]]])
    """
    def fail(msg):
        raise ArgumentError(f"max_unpool2d: {msg}")

    if torch._C._is_any_autocast_enabled() and isinstance(input, Tensor):
        dtype = _autocast.target_dtype(input.device.type, "fp32_on_cpu")
        if dtype is not None:  # as torch.autocast treats F.max_unpool2d
            with _autocast.off(input.device.type):
                return max_unpool2d(*_autocast.cast(dtype, input), indices, kernel_size, stride, padding, output_size)
    if not isinstance(input, Tensor):
        fail(f"input must be a torch.Tensor, got {type(input).__name__}")
    if not isinstance(indices, Tensor):
        fail(f"indices must be a torch.Tensor, got {type(indices).__name__}")
    if input.dim() not in (3, 4):
        fail(f"input must be a 3-D [C, H, W] or 4-D [N, C, H, W] tensor, got shape {list(input.shape)}")
    if indices.shape != input.shape:
        fail(f"indices must have the shape of input {list(input.shape)}, got {list(indices.shape)}")
    if indices.dtype != torch.int64:
        fail(f"indices must be int64, got {indices.dtype}")
    if indices.device != input.device:
        fail(f"indices must be on the device of input ({input.device}), got {indices.device}")
    if not input.is_floating_point():
        fail(f"input must be a floating-point tensor, got {input.dtype}")
    size = output_size_of(input.shape[-2:], kernel_size, stride, padding, output_size)
    _, impl = backend.select("max_unpool2d", input.device, MAX_UNPOOL2D_IMPLS)
    if input.dim() == 3:
        return impl(input.unsqueeze(0), indices.unsqueeze(0), size).squeeze(0)
    return impl(input, indices, size)


def _pair_list(v: Union[int, Tuple[int, int]]) -> List[int]:
    """nn.MaxUnpool2d's size attributes (typed int or pair, stored as pairs) as TorchScript lists."""
    if isinstance(v, int):
        return [v, v]
    return [v[0], v[1]]


class MaxUnpool2d(nn.MaxUnpool2d):
    """``torch.nn.MaxUnpool2d`` (same constructor and attributes) running :func:`max_unpool2d`.
    ``torch.jit.script`` compiles it too, onto the native op (the extension must be built)."""

    def forward(self, input: Tensor, indices: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles only this branch: the registered op, 4-D
            size = F._unpool_output_size(input, _pair_list(self.kernel_size), _pair_list(self.stride),
                                         _pair_list(self.padding), output_size)  # F.max_unpool2d's own rule
            if input.dim() == 3:
                return torch.ops.fastseg.max_unpool2d(input.unsqueeze(0), indices.unsqueeze(0), size).squeeze(0)
            return torch.ops.fastseg.max_unpool2d(input, indices, size)
        return max_unpool2d(input, indices, self.kernel_size, self.stride, self.padding, output_size)


torch.fx.wrap("max_unpool2d")  # under torch.fx, forward's call is one node (fastseg/ops/__init__.py)


if _extension.loaded():

    @torch.library.register_fake("fastseg::max_unpool2d")
    def _fake(input, indices, output_size):
        torch._check(input.dim() == 4, lambda: "max_unpool2d: input must be [N, C, H, W]")
        return input.new_empty((input.shape[0], input.shape[1], *output_size)).contiguous(
            memory_format=suggest_memory_format(input))

    @torch.library.register_fake("fastseg::max_unpool2d_backward")
    def _fake_backward(grad_output, indices):
        return grad_output.new_empty(indices.shape).contiguous(memory_format=suggest_memory_format(indices))
