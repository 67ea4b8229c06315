"""RoIAlign: ``roi_align`` and ``RoIAlign``, as in ``torchvision.ops``, plus ``pool_mode="max"``.

Backends: native (csrc/cpu/roi_align_kernel.cpp, csrc/cuda/roi_align_kernel.cu), triton
(kernels/roi_align.py), torch (fastseg/reference/roi_align.py). Backward: the native ops
``fastseg::roi_align_backward`` / ``fastseg::multi_level_roi_align_backward``, deterministic
(bit-identical run to run, no atomics) on the CPU always and on CUDA when
``torch.use_deterministic_algorithms(True)`` is on.
"""
from __future__ import annotations

import numbers

import torch
from torch import Tensor, nn

from fastseg import _extension, backend
from fastseg.ops._autograd import graph_grads
from fastseg.reference.roi_align import multi_level_roi_align as _ref_multi_level, roi_align as _ref_roi_align


def _fail(op, msg):
    raise ValueError(f"{op}: {msg}")


def check_input(op: str, input, name: str = "input") -> None:
    if not isinstance(input, Tensor):
        _fail(op, f"{name} must be a torch.Tensor, got {type(input).__name__}")
    if input.dim() != 4:
        _fail(op, f"{name} must be a 4-D tensor [N, C, H, W], got shape {list(input.shape)}")
    if not input.is_floating_point():
        _fail(op, f"{name} must be a floating-point tensor, got {input.dtype}")


def convert_boxes(op: str, boxes, input: Tensor) -> Tensor:
    """``Tensor[K, 5]`` (batch index first) or a list of ``Tensor[L, 4]`` (one per image) -> ``[K, 5]``,
    checked: shape, dtype, device, batch indices within ``input``'s batch."""
    if isinstance(boxes, (list, tuple)):
        for i, b in enumerate(boxes):
            if not isinstance(b, Tensor):
                _fail(op, f"boxes[{i}] must be a torch.Tensor, got {type(b).__name__}")
            if b.dim() != 2 or b.shape[1] != 4:
                _fail(op, f"boxes[{i}] must be a 2-D tensor of shape [L, 4], got shape {list(b.shape)}")
            if not b.is_floating_point():
                _fail(op, f"boxes[{i}] must be a floating-point tensor, got {b.dtype}")
        if len(boxes) > input.shape[0]:
            _fail(op, f"boxes has {len(boxes)} entries (one per image) but input has only {input.shape[0]} images")
        if len(boxes) == 0:
            return input.new_zeros(0, 5)
        dtype = boxes[0].dtype
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i, dtype=dtype), b.to(dtype)], 1)
                          for i, b in enumerate(boxes)], 0)
    elif isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            _fail(op, "boxes must be a tensor of shape [K, 5] (batch index, x1, y1, x2, y2) or a list of "
                  f"[L, 4] tensors, got shape {list(boxes.shape)}")
        if not boxes.is_floating_point():
            _fail(op, f"boxes must be a floating-point tensor, got {boxes.dtype}")
        rois = boxes
        if rois.numel() and rois.device.type == "cpu":  # a check on CUDA would cost a host sync
            idx = rois[:, 0]
            bad = (idx < 0) | (idx >= input.shape[0]) | torch.isnan(idx)
            if bool(bad.any()):
                k = int(bad.nonzero()[0, 0])
                _fail(op, f"boxes[{k}, 0] is batch index {rois[k, 0].item()}, out of range for a batch of "
                      f"{input.shape[0]} images")
    else:
        _fail(op, f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}")
    if rois.device != input.device:
        _fail(op, f"boxes must be on the input's device ({input.device}), got {rois.device}")
    return rois


def check_output_size(op: str, output_size) -> tuple[int, int]:
    if isinstance(output_size, numbers.Integral) and not isinstance(output_size, bool):
        size = (int(output_size), int(output_size))
    elif (isinstance(output_size, (list, tuple)) and len(output_size) == 2
          and all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in output_size)):
        size = (int(output_size[0]), int(output_size[1]))
    else:
        _fail(op, f"output_size must be an int or a pair of ints, got {output_size!r}")
    if size[0] <= 0 or size[1] <= 0:
        _fail(op, f"output_size must be positive, got {output_size!r}")
    return size


def check_scalar(op: str, name: str, value, integral=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if integral else numbers.Real):
        _fail(op, f"{name} must be {'an int' if integral else 'a number'}, got {value!r}")
    return int(value) if integral else float(value)


def check_pool_mode(op: str, pool_mode) -> bool:
    if pool_mode not in ("avg", "max"):
        _fail(op, f"pool_mode must be 'avg' or 'max', got {pool_mode!r}")
    return pool_mode == "max"


# --- backends -------------------------------------------------------------------------------------

def _native(input, rois, spatial_scale, ph, pw, sampling_ratio, aligned, max_mode):
    return torch.ops.fastseg.roi_align(input, rois, spatial_scale, ph, pw, sampling_ratio, aligned, max_mode)


def _triton(input, rois, spatial_scale, ph, pw, sampling_ratio, aligned, max_mode):
    from fastseg.kernels import roi_align as triton_roi_align  # imports triton: only when asked for

    return triton_roi_align.roi_align(input, rois, spatial_scale, ph, pw, sampling_ratio, aligned, max_mode)


ROI_ALIGN_IMPLS = backend.register("roi_align", {"native": _native, "triton": _triton, "torch": _ref_roi_align})


def roi_align(input: Tensor, boxes, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1,
              aligned: bool = False, *, pool_mode: str = "avg") -> Tensor:
    """RoIAlign (Mask R-CNN), like ``torchvision.ops.roi_align``.

    Args:
        input: ``[N, C, H, W]`` features (fp16, bf16, fp32, fp64; NCHW or channels_last).
        boxes: ``Tensor[K, 5]`` rows ``(batch index, x1, y1, x2, y2)``, or a list of ``Tensor[L, 4]``
            boxes, one tensor per image, in image coordinates.
        output_size: ``int`` or ``(height, width)`` of the pooled output.
        spatial_scale: scale from image to feature-map coordinates (1/stride).
        sampling_ratio: bilinear samples per bin and axis; ``<= 0``: ``ceil(roi_size / output_size)``.
        aligned: shift boxes by -0.5 pixel (the corrected, pixel-centred alignment).
        pool_mode: ``"avg"`` (torchvision) or ``"max"`` (the max of the bin's samples, as mmcv).

    Returns:
        ``[K, C, output_size[0], output_size[1]]``, the input's dtype.

    Example:
        >>> x = torch.arange(16.).reshape(1, 1, 4, 4)
        >>> fastseg.ops.roi_align(x, torch.tensor([[0., .5, .5, 2.5, 2.5]]), 1, aligned=True)
        tensor([[[[5.]]]])
    """
    op = "roi_align"
    check_input(op, input)
    rois = convert_boxes(op, boxes, input)
    ph, pw = check_output_size(op, output_size)
    spatial_scale = check_scalar(op, "spatial_scale", spatial_scale)
    sampling_ratio = check_scalar(op, "sampling_ratio", sampling_ratio, integral=True)
    max_mode = check_pool_mode(op, pool_mode)
    _, impl = backend.select(op, input.device, ROI_ALIGN_IMPLS)
    return impl(input, rois, spatial_scale, ph, pw, sampling_ratio, bool(aligned), max_mode)


class RoIAlign(nn.Module):
    """``torchvision.ops.RoIAlign``: :func:`roi_align` as a module."""

    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int, aligned: bool = False, *,
                 pool_mode: str = "avg"):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.pool_mode = pool_mode

    def forward(self, input: Tensor, rois) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned,
                         pool_mode=self.pool_mode)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, pool_mode={self.pool_mode!r})")


torch.fx.wrap("roi_align")  # under torch.fx, forward's call is one node (fastseg/ops/__init__.py)


# --- registration of the native ops: fake kernels and autograd --------------------------------------

def output_like(features, rois: Tensor, pooled_height: int, pooled_width: int) -> Tensor:
    """An empty tensor with the layout the kernels give the output: channels-last from the CUDA kernel
    when every map is channels-last (its threads then run channel-fastest), else contiguous."""
    f0 = features[0]
    cl = f0.device.type == "cuda" and all(
        f.is_contiguous(memory_format=torch.channels_last) and not f.is_contiguous() for f in features)
    return torch.empty((rois.shape[0], f0.shape[1], pooled_height, pooled_width), dtype=f0.dtype, device=f0.device,
                       memory_format=torch.channels_last if cl else torch.contiguous_format)


def grad_like(input: Tensor) -> Tensor:
    """An empty tensor with the layout the kernels give the gradient of `input`: channels-last when the
    input is, else contiguous."""
    cl = input.is_contiguous(memory_format=torch.channels_last) and not input.is_contiguous()
    return torch.empty(input.shape, dtype=input.dtype, device=input.device,
                       memory_format=torch.channels_last if cl else torch.contiguous_format)


if _extension.loaded():

    @torch.library.register_fake("fastseg::roi_align")
    def _roi_align_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned,
                        max_mode=False):
        torch._check(input.dim() == 4, lambda: "roi_align: input must be [N, C, H, W]")
        torch._check(rois.dim() == 2 and rois.shape[1] == 5, lambda: "roi_align: rois must be [K, 5]")
        return output_like([input], rois, pooled_height, pooled_width)

    @torch.library.register_fake("fastseg::roi_align_backward")
    def _roi_align_backward_fake(grad, input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio,
                                 aligned, max_mode, deterministic):
        return grad_like(input)

    def _setup(ctx, inputs, output):
        input, rois, spatial_scale, ph, pw, sampling_ratio, aligned, max_mode = inputs
        ctx.save_for_backward(input, rois)
        ctx.args = (spatial_scale, ph, pw, sampling_ratio, aligned, max_mode)

    def _backward(ctx, grad):
        input, rois = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiable gradients (graph_grads)
            (grad_input,) = graph_grads(lambda t: _ref_roi_align(t, rois, *ctx.args), (input,), (True,), grad)
            return grad_input, None, None, None, None, None, None, None
        grad_input = None
        if ctx.needs_input_grad[0]:
            grad_input = torch.ops.fastseg.roi_align_backward(
                grad, input, rois, *ctx.args, torch.are_deterministic_algorithms_enabled())
        return grad_input, None, None, None, None, None, None, None

    torch.library.register_autograd("fastseg::roi_align", _backward, setup_context=_setup)
