"""Helpers shared by the detection models: input batching, matching, post-processing."""
from __future__ import annotations

import torch

from fastseg.data.loader import pad_images
from fastseg.models._ops import batched_nms


def prepare_images(images, size_divisible: int = 32):
    """A [N,3,H,W] tensor or a list of [3,H,W] images -> (padded batch, list of original (H, W))."""
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [N,3,H,W] or a list of [3,H,W], got shape {tuple(images.shape)}")
        sizes = [tuple(images.shape[-2:])] * images.shape[0]
        h, w = images.shape[-2:]
        ph, pw = -h % size_divisible, -w % size_divisible
        if ph or pw:
            images = torch.nn.functional.pad(images, (0, pw, 0, ph))
        return images, sizes
    images = list(images)
    for i, im in enumerate(images):
        if im.dim() != 3 or im.shape[0] != 3:
            raise ValueError(f"images[{i}] must be [3,H,W], got shape {tuple(im.shape)}")
    return pad_images(images, size_divisible), [tuple(im.shape[-2:]) for im in images]


def check_targets(targets, n: int):
    if targets is None:
        raise ValueError("targets are required in training mode (model.train()); call model.eval() to predict")
    if len(targets) != n:
        raise ValueError(f"got {len(targets)} targets for {n} images")
    for i, t in enumerate(targets):
        b = t.get("boxes")
        if b is None or b.dim() != 2 or b.shape[-1] != 4:
            raise ValueError(f"targets[{i}]['boxes'] must be [K,4], got {None if b is None else tuple(b.shape)}")
        if t.get("labels") is None or t["labels"].shape[0] != b.shape[0]:
            raise ValueError(f"targets[{i}]['labels'] must have one label per box")


def clip_boxes(boxes: torch.Tensor, size) -> torch.Tensor:
    h, w = size
    x = boxes[..., 0::2].clamp(0, w)
    y = boxes[..., 1::2].clamp(0, h)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], -1)


def nms_postprocess(boxes, scores, labels, score_thresh: float, nms_thresh: float, max_det: int, min_size: float = 1e-2):
    """Score threshold, drop tiny boxes, per-class NMS (fastseg.ops.batched_nms), keep the best ``max_det``."""
    keep = (scores > score_thresh) & ((boxes[:, 2] - boxes[:, 0]) > min_size) & ((boxes[:, 3] - boxes[:, 1]) > min_size)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = batched_nms(boxes.float(), scores.float(), labels, nms_thresh)[:max_det]
    return {"boxes": boxes[keep].float(), "scores": scores[keep].float(), "labels": labels[keep].long()}


def empty_detections(device):
    return {"boxes": torch.zeros((0, 4), device=device), "scores": torch.zeros((0,), device=device),
            "labels": torch.zeros((0,), dtype=torch.int64, device=device)}
