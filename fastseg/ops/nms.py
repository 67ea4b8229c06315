"""Non-maximum suppression: ``nms`` and ``batched_nms``, as in ``torchvision.ops``.

Backends: native (csrc/cpu/nms_kernel.cpp, csrc/cuda/nms_kernel.cu), triton (kernels/nms.py), torch
(fastseg/reference/nms.py). All return the same indices in the same order.
"""
import math
import numbers

import torch
from torch import Tensor

from fastseg import _extension, backend, reference


def _native_nms(boxes, scores, iou_threshold):
    return torch.ops.fastseg.nms(boxes, scores, iou_threshold)


def _native_batched_nms(boxes, scores, idxs, iou_threshold):
    return torch.ops.fastseg.batched_nms(boxes, scores, idxs, iou_threshold)


def _triton_nms(boxes, scores, iou_threshold):
    from fastseg.kernels import nms as triton_nms  # imports triton: only when asked for

    return triton_nms.nms(boxes, scores, iou_threshold)


def _triton_batched_nms(boxes, scores, idxs, iou_threshold):
    from fastseg.kernels import nms as triton_nms

    return triton_nms.batched_nms(boxes, scores, idxs, iou_threshold)


NMS_IMPLS = backend.register("nms", {"native": _native_nms, "triton": _triton_nms, "torch": reference.nms})
BATCHED_NMS_IMPLS = backend.register("batched_nms", {
    "native": _native_batched_nms,
    "triton": _triton_batched_nms,
    "torch": reference.batched_nms,
})


def check_boxes_and_scores(op: str, boxes, scores, idxs=None) -> None:
    """The tensor checks shared by every NMS-like op (nms, batched_nms, soft_nms...)."""
    def fail(msg):
        raise ValueError(f"{op}: {msg}")

    if not isinstance(boxes, Tensor):
        fail(f"boxes must be a torch.Tensor, got {type(boxes).__name__}")
    if not isinstance(scores, Tensor):
        fail(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        fail(f"boxes must be a 2-D tensor of shape [N, 4], got shape {list(boxes.shape)}")
    if scores.dim() != 1:
        fail(f"scores must be a 1-D tensor of shape [N], got shape {list(scores.shape)}")
    if boxes.shape[0] != scores.shape[0]:
        fail(f"boxes and scores must have the same length, got {boxes.shape[0]} boxes and {scores.shape[0]} scores")
    if not boxes.is_floating_point():
        fail(f"boxes must be a floating-point tensor, got {boxes.dtype}")
    if not scores.is_floating_point():
        fail(f"scores must be a floating-point tensor, got {scores.dtype}")
    if boxes.device != scores.device:
        fail(f"boxes and scores must be on the same device, got {boxes.device} and {scores.device}")
    if idxs is not None:
        if not isinstance(idxs, Tensor):
            fail(f"idxs must be a torch.Tensor, got {type(idxs).__name__}")
        if idxs.dim() != 1 or idxs.shape[0] != boxes.shape[0]:
            fail(f"idxs must be a 1-D tensor with one class index per box ({boxes.shape[0]}), got shape {list(idxs.shape)}")
        if idxs.is_floating_point() or idxs.is_complex():
            fail(f"idxs must be an integer tensor, got {idxs.dtype}")
        if idxs.device != boxes.device:
            fail(f"idxs must be on the same device as boxes, got {idxs.device} and {boxes.device}")


def _check(op: str, boxes, scores, iou_threshold, idxs=None) -> float:
    def fail(msg):
        raise ValueError(f"{op}: {msg}")

    check_boxes_and_scores(op, boxes, scores, idxs)
    if isinstance(iou_threshold, Tensor) and iou_threshold.numel() == 1:
        iou_threshold = iou_threshold.item()
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, numbers.Real):
        fail(f"iou_threshold must be a number, got {iou_threshold!r}")
    iou_threshold = float(iou_threshold)
    if math.isnan(iou_threshold) or iou_threshold < 0:
        fail(f"iou_threshold must be a number >= 0, got {iou_threshold}")
    return iou_threshold


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression, like ``torchvision.ops.nms``.

    Args:
        boxes: ``[N, 4]`` boxes ``(x1, y1, x2, y2)``, any floating dtype.
        scores: ``[N]`` scores, floating.
        iou_threshold: boxes overlapping a kept, higher-scored box with IoU > this are discarded.

    Returns:
        int64 indices of the kept boxes, by decreasing score (ties: lower index first).

    Example:
        >>> boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [20., 20., 30., 30.]])
        >>> fastseg.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
        tensor([0, 2])
    """
    iou_threshold = _check("nms", boxes, scores, iou_threshold)
    _, impl = backend.select("nms", boxes.device, NMS_IMPLS)
    return impl(boxes, scores, iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each category, like ``torchvision.ops.batched_nms``: a box only suppresses boxes with
    the same ``idxs`` value. One pass over all classes on every backend (no coordinate-offset trick).

    Returns:
        int64 indices of the kept boxes, by decreasing score (ties: lower index first).

    Example:
        >>> boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.]])
        >>> fastseg.ops.batched_nms(boxes, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), 0.5)
        tensor([0, 1])
    """
    iou_threshold = _check("batched_nms", boxes, scores, iou_threshold, idxs)
    _, impl = backend.select("batched_nms", boxes.device, BATCHED_NMS_IMPLS)
    return impl(boxes, scores, idxs, iou_threshold)


if _extension.loaded():

    @torch.library.register_fake("fastseg::nms")
    def _nms_fake(boxes, scores, iou_threshold):
        torch._check(boxes.dim() == 2 and boxes.shape[1] == 4, lambda: "nms: boxes must be [N, 4]")
        torch._check(scores.dim() == 1 and scores.shape[0] == boxes.shape[0], lambda: "nms: scores must be [N]")
        kept = torch.library.get_ctx().new_dynamic_size()
        return boxes.new_empty((kept,), dtype=torch.long)

    @torch.library.register_fake("fastseg::batched_nms")
    def _batched_nms_fake(boxes, scores, idxs, iou_threshold):
        torch._check(boxes.dim() == 2 and boxes.shape[1] == 4, lambda: "batched_nms: boxes must be [N, 4]")
        torch._check(scores.dim() == 1 and scores.shape[0] == boxes.shape[0], lambda: "batched_nms: scores must be [N]")
        torch._check(idxs.dim() == 1 and idxs.shape[0] == boxes.shape[0], lambda: "batched_nms: idxs must be [N]")
        kept = torch.library.get_ctx().new_dynamic_size()
        return boxes.new_empty((kept,), dtype=torch.long)
