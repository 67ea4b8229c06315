"""Pairwise IoUs and box helpers, as in ``torchvision.ops``: ``box_iou``, ``generalized_box_iou``,
``distance_box_iou``, ``complete_box_iou``, ``box_area``, ``clip_boxes_to_image``,
``remove_small_boxes``, ``box_convert``.

Backends of the four pairwise ops: native (csrc/cpu/box_iou_kernel.cpp, csrc/cuda/box_iou_kernel.cu:
one pass writing the [N, M] matrix, no [N, M, 2] intermediates), triton (kernels/box_iou.py), torch
(fastseg/reference/boxes.py). fp16/bf16 boxes are computed in fp32 (no overflow of areas) and the
result is fp32, as torchvision's; fp64 stays fp64. Batched boxes ``[..., N, 4]`` / ``[..., M, 4]``
broadcast their leading dimensions like torchvision's.

The helpers are single elementwise passes already in PyTorch and run as such on every backend.

Autograd: the pairwise kernels have no backward; when an input requires grad (GIoU/DIoU losses), the
differentiable torch reference runs instead (same values).
"""
from __future__ import annotations

import numbers

import torch
from torch import Tensor

from fastseg import _extension, backend, reference


def _native(op):
    def run(boxes1, boxes2, *eps):
        return getattr(torch.ops.fastseg, op)(boxes1, boxes2, *eps)

    return run


def _triton(op):
    def run(boxes1, boxes2, *eps):
        from fastseg.kernels import box_iou as triton_box_iou  # imports triton: only when asked for

        return getattr(triton_box_iou, op)(boxes1, boxes2, *eps)

    return run


def _torch(op):
    ref = getattr(reference, op)

    def run(boxes1, boxes2, *eps):
        return ref(boxes1, boxes2, *eps)

    return run


PAIRWISE_OPS = ("box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou")
PAIRWISE_IMPLS = {
    op: backend.register(op, {"native": _native(op), "triton": _triton(op), "torch": _torch(op)})
    for op in PAIRWISE_OPS
}


def _prepare(op: str, boxes1, boxes2):
    """Validates; returns (boxes1, boxes2) as [N, 4]/[M, 4] or [B, N, 4]/[B, M, 4] of one floating
    dtype, and the leading (broadcast) shape to restore, or None."""
    for name, b in (("boxes1", boxes1), ("boxes2", boxes2)):
        if not isinstance(b, Tensor):
            raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(b).__name__}")
        if b.dim() < 2 or b.shape[-1] != 4:
            raise ValueError(f"{op}: {name} must have shape [..., N, 4], got {list(b.shape)}")
        if b.is_complex() or b.dtype == torch.bool:
            raise ValueError(f"{op}: {name} must be a real tensor, got {b.dtype}")
    if boxes1.device != boxes2.device:
        raise ValueError(f"{op}: boxes1 and boxes2 must be on the same device, got {boxes1.device} and {boxes2.device}")
    dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32  # torchvision's int boxes give a float32 IoU through true division
    boxes1, boxes2 = boxes1.to(dtype), boxes2.to(dtype)
    if boxes1.dim() == 2 and boxes2.dim() == 2:
        return boxes1, boxes2, None
    try:
        lead = torch.broadcast_shapes(boxes1.shape[:-2], boxes2.shape[:-2])
    except RuntimeError:
        raise ValueError(f"{op}: the leading dimensions of boxes1 {list(boxes1.shape)} and boxes2 "
                         f"{list(boxes2.shape)} do not broadcast") from None
    n, m = boxes1.shape[-2], boxes2.shape[-2]
    b1 = boxes1.expand(*lead, n, 4).reshape(-1, n, 4)
    b2 = boxes2.expand(*lead, m, 4).reshape(-1, m, 4)
    return b1, b2, lead


def _pairwise(op: str, boxes1, boxes2, *eps):
    if eps:
        e = eps[0]
        if isinstance(e, bool) or not isinstance(e, numbers.Real):
            raise ValueError(f"{op}: eps must be a number, got {e!r}")
        eps = (float(e),)
    b1, b2, lead = _prepare(op, boxes1, boxes2)
    if torch.is_grad_enabled() and (b1.requires_grad or b2.requires_grad):
        out = getattr(reference, op)(b1, b2, *eps)
    else:
        _, impl = backend.select(op, b1.device, PAIRWISE_IMPLS[op])
        out = impl(b1, b2, *eps)
    return out if lead is None else out.reshape(*lead, out.shape[-2], out.shape[-1])


def box_iou(boxes1: Tensor, boxes2: Tensor, fmt: str = "xyxy") -> Tensor:
    """Pairwise IoU ``[..., N, M]`` of boxes ``[..., N, 4]`` and ``[..., M, 4]`` (torchvision's ``box_iou``).

    Example:
        >>> fastseg.ops.box_iou(torch.tensor([[0., 0., 2., 2.]]), torch.tensor([[1., 0., 3., 2.]]))
        tensor([[0.3333]])
    """
    if fmt != "xyxy":
        if fmt not in ("xywh", "cxcywh"):
            raise ValueError(f"box_iou: fmt must be one of 'xyxy', 'xywh', 'cxcywh', got {fmt!r}")
        # torchvision computes the corners of xywh / cxcywh boxes inside its IoU; converting first
        # gives the same corners.
        boxes1, boxes2 = box_convert(boxes1, fmt, "xyxy"), box_convert(boxes2, fmt, "xyxy")
    return _pairwise("box_iou", boxes1, boxes2)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalised IoU ``[..., N, M]`` (torchvision's ``generalized_box_iou``)."""
    return _pairwise("generalized_box_iou", boxes1, boxes2)


def distance_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise distance IoU ``[..., N, M]`` (torchvision's ``distance_box_iou``)."""
    return _pairwise("distance_box_iou", boxes1, boxes2, eps)


def complete_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise complete IoU ``[..., N, M]`` (torchvision's ``complete_box_iou``)."""
    return _pairwise("complete_box_iou", boxes1, boxes2, eps)


def _check_boxes(op: str, boxes):
    if not isinstance(boxes, Tensor):
        raise ValueError(f"{op}: boxes must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.dim() < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"{op}: boxes must have shape [..., 4], got {list(boxes.shape)}")


def box_area(boxes: Tensor, fmt: str = "xyxy") -> Tensor:
    """Areas ``[...]`` of boxes ``[..., 4]``; fp16/bf16 are computed (and returned) in fp32."""
    _check_boxes("box_area", boxes)
    if fmt == "xyxy":
        return reference.box_area(boxes)
    if fmt in ("xywh", "cxcywh"):
        b = reference.boxes._upcast(boxes)
        return b[..., 2] * b[..., 3]
    raise ValueError(f"box_area: fmt must be one of 'xyxy', 'xywh', 'cxcywh', got {fmt!r}")


def clip_boxes_to_image(boxes: Tensor, size) -> Tensor:
    """Boxes ``[..., 4]`` clipped to an image of ``size = (height, width)``."""
    _check_boxes("clip_boxes_to_image", boxes)
    try:
        height, width = size
    except (TypeError, ValueError):
        raise ValueError(f"clip_boxes_to_image: size must be (height, width), got {size!r}") from None
    return reference.clip_boxes_to_image(boxes, (height, width))


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """int64 indices of the boxes whose both sides are >= ``min_size``."""
    _check_boxes("remove_small_boxes", boxes)
    return reference.remove_small_boxes(boxes, min_size)


_FORMATS = ("xyxy", "xywh", "cxcywh")
_ROTATED = ("xywhr", "cxcywhr", "xyxyxyxy")


def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Converts boxes ``[..., 4]`` between 'xyxy', 'xywh' and 'cxcywh' (torchvision's op order); the
    rotated formats are handed to torchvision."""
    if in_fmt in _ROTATED or out_fmt in _ROTATED:
        import torchvision  # rotated boxes: torchvision's own conversion

        return torchvision.ops.box_convert(boxes, in_fmt, out_fmt)
    if in_fmt not in _FORMATS or out_fmt not in _FORMATS:
        raise ValueError(f"box_convert: in_fmt and out_fmt must be one of {_FORMATS + _ROTATED}, got {in_fmt!r} and {out_fmt!r}")
    _check_boxes("box_convert", boxes)
    return reference.box_convert(boxes, in_fmt, out_fmt)


if _extension.loaded():

    def _make_fake(op):
        def fake(boxes1, boxes2, *eps):
            torch._check(boxes1.dim() == boxes2.dim() and boxes1.dim() in (2, 3), lambda: f"{op}: bad shapes")
            dtype = torch.float64 if boxes1.dtype == torch.float64 else torch.float32
            shape = (boxes1.shape[0], boxes2.shape[0]) if boxes1.dim() == 2 else (boxes1.shape[0], boxes1.shape[1], boxes2.shape[1])
            return boxes1.new_empty(shape, dtype=dtype)

        return fake

    for _op in PAIRWISE_OPS:
        torch.library.register_fake(f"fastseg::{_op}")(_make_fake(_op))
