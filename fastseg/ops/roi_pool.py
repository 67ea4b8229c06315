"""RoIPool: ``roi_pool`` and ``RoIPool``, as in ``torchvision.ops``.

Backends: native (csrc/cpu/roi_pool_kernel.cpp, csrc/cuda/roi_pool_kernel.cu), triton
(kernels/roi_pool.py), torch (fastseg/reference/roi_pool.py). The backward adds each bin's gradient to
its argmax; deterministic on the CPU always, on CUDA when ``torch.use_deterministic_algorithms(True)``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fastseg import _extension, backend
from fastseg.ops._autograd import graph_grads
from fastseg.ops.roi_align import check_input, check_output_size, check_scalar, convert_boxes, grad_like
from fastseg.reference.roi_pool import roi_pool as _ref_roi_pool


def _native(input, rois, spatial_scale, ph, pw):
    return torch.ops.fastseg.roi_pool(input, rois, spatial_scale, ph, pw)[0]


def _triton(input, rois, spatial_scale, ph, pw):
    from fastseg.kernels import roi_pool as triton_roi_pool  # imports triton: only when asked for

    return triton_roi_pool.roi_pool(input, rois, spatial_scale, ph, pw)


ROI_POOL_IMPLS = backend.register("roi_pool", {"native": _native, "triton": _triton, "torch": _ref_roi_pool})


def roi_pool(input: Tensor, boxes, output_size, spatial_scale: float = 1.0) -> Tensor:
    """RoI max pooling (Fast R-CNN), like ``torchvision.ops.roi_pool``.

    Args:
        input: ``[N, C, H, W]`` features.
        boxes: ``Tensor[K, 5]`` rows ``(batch index, x1, y1, x2, y2)`` or a list of ``Tensor[L, 4]``.
        output_size: ``int`` or ``(height, width)``.
        spatial_scale: scale from image to feature-map coordinates.

    Returns:
        ``[K, C, output_size[0], output_size[1]]``: the max of each bin (0 for an empty bin).

    Example:
        >>> x = torch.arange(16.).reshape(1, 1, 4, 4)
        >>> fastseg.ops.roi_pool(x, torch.tensor([[0., 0., 0., 3., 3.]]), 2)
        tensor([[[[ 5.,  7.],
                  [13., 15.]]]])
    """
    op = "roi_pool"
    check_input(op, input)
    rois = convert_boxes(op, boxes, input)
    ph, pw = check_output_size(op, output_size)
    spatial_scale = check_scalar(op, "spatial_scale", spatial_scale)
    _, impl = backend.select(op, input.device, ROI_POOL_IMPLS)
    return impl(input, rois, spatial_scale, ph, pw)


class RoIPool(nn.Module):
    """``torchvision.ops.RoIPool``: :func:`roi_pool` as a module."""

    def __init__(self, output_size, spatial_scale: float):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale})"


torch.fx.wrap("roi_pool")  # under torch.fx, forward's call is one node (fastseg/ops/__init__.py)


if _extension.loaded():

    @torch.library.register_fake("fastseg::roi_pool")
    def _roi_pool_fake(input, rois, spatial_scale, pooled_height, pooled_width):
        torch._check(input.dim() == 4, lambda: "roi_pool: input must be [N, C, H, W]")
        torch._check(rois.dim() == 2 and rois.shape[1] == 5, lambda: "roi_pool: rois must be [K, 5]")
        shape = (rois.shape[0], input.shape[1], pooled_height, pooled_width)
        return input.new_empty(shape), input.new_empty(shape, dtype=torch.int32)

    @torch.library.register_fake("fastseg::roi_pool_backward")
    def _roi_pool_backward_fake(grad, input, rois, argmax, deterministic):
        return grad_like(input)

    def _setup(ctx, inputs, output):
        input, rois, *args = inputs
        ctx.save_for_backward(input, rois, output[1])
        ctx.mark_non_differentiable(output[1])
        ctx.args = args

    def _backward(ctx, grad, grad_argmax):
        input, rois, argmax = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiable gradients (graph_grads)
            (g,) = graph_grads(lambda t: _ref_roi_pool(t, rois, *ctx.args), (input,), (True,), grad)
            return g, None, None, None, None
        g = torch.ops.fastseg.roi_pool_backward(grad, input, rois, argmax, torch.are_deterministic_algorithms_enabled())
        return g, None, None, None, None

    torch.library.register_autograd("fastseg::roi_pool", _backward, setup_context=_setup)
