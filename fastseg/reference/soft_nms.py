"""Soft-NMS (Bodla et al. 2017, "Improving Object Detection With One Line of Code"), the definition.

Greedy, like NMS, but overlapping boxes have their scores decayed instead of being removed:

    remaining = all boxes (boxes with a NaN score are dropped: they cannot be ranked)
    while remaining is not empty:
        b = the remaining box of highest current score (ties: lower index first)
        keep b, with its current score; remove it from remaining
        for every remaining box r (batched: of b's class only):
            iou = IoU(b, r)
            gaussian: score[r] *= exp(-iou^2 / sigma)                 (every r; no threshold)
            linear:   score[r] *= (1 - iou)      if iou >= iou_threshold
            naive:    score[r]  = 0              if iou >= iou_threshold   (hard NMS, mmcv's method 0)
        for every remaining box r (all classes):
            if not score[r] >= score_threshold: remove r               (so NaN scores go too)

This is mmcv's ``soft_nms`` (``mmcv/ops/csrc/pytorch/cpu/nms.cpp``, the loop of the original paper's
code), including its quirks: the threshold on the IoU is ``>=``, the gaussian ignores it, and the
first box picked is kept whatever its score (only decayed scores are compared with score_threshold,
and every other box is compared at least once). Two choices differ from mmcv: IoU uses torchvision's
convention (no "+1" in widths: ``offset=0``), computed with the operations of torchvision's NMS; and
among equal current scores the lower index is picked (mmcv's choice depends on its internal swaps).

The output is ``(keep, scores)``: the indices of the kept boxes in the order they were picked (their
decayed scores are non-increasing, since every weight is in [0, 1]) and those decayed scores, in the
dtype of ``scores``. Arithmetic is fp64 for fp64 scores and boxes, else fp32.
"""
import torch
from torch import Tensor

from fastseg.reference.nms import pairwise_iou

METHODS = ("gaussian", "linear", "naive")


def _compute_dtype(boxes: Tensor, scores: Tensor) -> torch.dtype:
    return torch.float64 if torch.float64 in (boxes.dtype, scores.dtype) else torch.float32


def _soft_nms(boxes, scores, idxs, iou_threshold, sigma, score_threshold, method):
    ct = _compute_dtype(boxes, scores)
    b = boxes.to(ct)
    s = scores.to(ct).clone()
    n = len(s)
    remaining = ~torch.isnan(s)
    keep, kept_scores = [], []
    while bool(remaining.any()):
        candidates = torch.nonzero(remaining).flatten()  # ascending index
        # argmax returns the first maximum: the lower index among equal scores
        i = int(candidates[torch.argmax(s[candidates])])
        keep.append(i)
        kept_scores.append(s[i].clone())
        remaining[i] = False
        decayed = remaining.clone()
        if idxs is not None:
            decayed &= idxs == idxs[i]
        j = torch.nonzero(decayed).flatten()
        if len(j):
            iou = pairwise_iou(b[i], b[j])
            if method == "gaussian":
                weight = torch.exp(-(iou * iou) / sigma)
            elif method == "linear":
                weight = torch.where(iou >= iou_threshold, 1 - iou, torch.ones_like(iou))
            else:
                weight = torch.where(iou >= iou_threshold, torch.zeros_like(iou), torch.ones_like(iou))
            s[j] = s[j] * weight
        # every remaining box (of any class) is compared after each step; a NaN score is dropped too
        remaining &= s >= score_threshold
    device = boxes.device
    keep_t = torch.tensor(keep, dtype=torch.long, device=device)
    scores_t = torch.stack(kept_scores) if kept_scores else torch.empty(0, dtype=ct, device=device)
    return keep_t, scores_t.to(scores.dtype)


def soft_nms(boxes: Tensor, scores: Tensor, iou_threshold: float = 0.3, sigma: float = 0.5,
             score_threshold: float = 0.001, method: str = "gaussian") -> tuple[Tensor, Tensor]:
    """(kept indices int64, their decayed scores), in the order picked; see the module docstring."""
    return _soft_nms(boxes, scores, None, iou_threshold, sigma, score_threshold, method)


def batched_soft_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float = 0.3, sigma: float = 0.5,
                     score_threshold: float = 0.001, method: str = "gaussian") -> tuple[Tensor, Tensor]:
    """Soft-NMS where a box only decays boxes of its own class ``idxs[i]``; one greedy pass over all
    classes, so the output is ordered by decayed score across classes (ties: lower index first)."""
    return _soft_nms(boxes, scores, idxs, iou_threshold, sigma, score_threshold, method)

