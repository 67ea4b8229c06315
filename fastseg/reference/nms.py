"""Greedy non-maximum suppression, the definition.

Boxes are visited by decreasing score (ties: lower index first). A box is kept unless a kept box
visited before it overlaps it with IoU > iou_threshold; ``batched_nms`` does this per class.

IoU is computed exactly as torchvision's CPU kernel does (same operations in the same order), in fp64
for fp64 boxes and in fp32 otherwise (fp16/bf16 convert exactly), and compared with the threshold in
fp64, so the kept indices are bit-for-bit torchvision's.
"""
import torch
from torch import Tensor


def _max(a: Tensor, b: Tensor) -> Tensor:
    return torch.where(a < b, b, a)  # std::max(a, b), NaN behaviour included


def _min(a: Tensor, b: Tensor) -> Tensor:
    return torch.where(b < a, b, a)  # std::min(a, b)


def pairwise_iou(box: Tensor, boxes: Tensor) -> Tensor:
    """IoU of one box [4] (the kept one) with boxes [M, 4], in their dtype."""
    x1, y1, x2, y2 = boxes.unbind(1)
    area = (x2 - x1) * (y2 - y1)
    a_area = (box[2] - box[0]) * (box[3] - box[1])
    zero = boxes.new_zeros(())
    w = _max(zero, _min(box[2], x2) - _max(box[0], x1))
    h = _max(zero, _min(box[3], y2) - _max(box[1], y1))
    inter = w * h
    return inter / (a_area + area - inter)


def _compute_dtype(boxes: Tensor) -> torch.dtype:
    return torch.float64 if boxes.dtype == torch.float64 else torch.float32


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices (int64) of the boxes kept by greedy NMS, by decreasing score."""
    order = torch.sort(scores, stable=True, descending=True).indices
    sorted_boxes = boxes.to(_compute_dtype(boxes))[order]
    alive = torch.ones(len(order), dtype=torch.bool, device=boxes.device)
    kept = []
    for i in range(len(order)):
        if not alive[i]:
            continue
        kept.append(i)
        iou = pairwise_iou(sorted_boxes[i], sorted_boxes[i + 1:])
        alive[i + 1:] &= ~(iou.double() > iou_threshold)
    return order[torch.tensor(kept, dtype=torch.long, device=boxes.device)]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each class ``idxs[i]``; kept indices by decreasing score, ties lower index first."""
    kept = [torch.nonzero(idxs == c).flatten() for c in torch.unique(idxs)]
    kept = [members[nms(boxes[members], scores[members], iou_threshold)] for members in kept]
    kept = torch.cat(kept) if kept else torch.empty(0, dtype=torch.long, device=boxes.device)
    kept = torch.sort(kept).values
    return kept[torch.sort(scores[kept], stable=True, descending=True).indices]
