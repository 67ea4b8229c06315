"""Classification + localisation as regression (the lecture's first detector).

``BoxRegression``: one object per image. ResNet -> global average pool -> two linear heads: class
scores (softmax over the C classes) and the box as (cx, cy, w, h) normalised to the image, squashed by a
sigmoid. Loss: cross-entropy + ``box_weight`` x smooth-L1 on the normalised box. The target object of
an image with several is its largest one.

``MultiBoxRegression``: the fixed-N-objects variant. N output slots, each with C+1 class scores (0 = "no
object") and a box. Objects fill slots in decreasing area (a fixed, deterministic assignment); empty
slots are trained to say "no object". Losses are averaged per image, so gradients from DDP shards
average to the full-batch gradient exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastseg.models._common import check_targets, prepare_images
from fastseg.models.backbone import ResNetBackbone
from fastseg.nn.layers import Normalize


def _cxcywh_to_xyxy(b):
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def _xyxy_to_cxcywh(b):
    x0, y0, x1, y1 = b.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)


class _Base(nn.Module):
    def __init__(self, num_classes, depth, weights, slots, extra_class, backbone_norm="bn"):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.slots = num_classes, slots
        self.normalize = Normalize()
        self.backbone = ResNetBackbone(depth, weights, return_levels=(5,), norm=backbone_norm)
        c = self.backbone.out_channels[-1]
        self.cls = nn.Linear(c, slots * (num_classes + extra_class))
        self.box = nn.Linear(c, slots * 4)

    def _heads(self, x):
        f = self.backbone(self.normalize(x))[-1].mean((2, 3))
        n = x.shape[0]
        return self.cls(f).view(n, self.slots, -1), torch.sigmoid(self.box(f).view(n, self.slots, 4))

    @staticmethod
    def _norm_targets(t, size, device):
        h, w = size
        boxes = t["boxes"].to(device).float()
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        order = area.argsort(descending=True, stable=True)
        scale = torch.tensor([w, h, w, h], device=device, dtype=torch.float32)
        return _xyxy_to_cxcywh(boxes[order] / scale), t["labels"].to(device)[order]


class BoxRegression(_Base):
    def __init__(self, num_classes: int, depth: int = 18, weights: str | None = None, backbone_norm: str = "bn",
                 box_weight: float = 5.0):
        super().__init__(num_classes, depth, weights, 1, 0, backbone_norm)
        self.box_weight = box_weight

    def forward(self, images, targets=None):
        x, sizes = prepare_images(images, 1)
        logits, boxes = self._heads(x)
        logits, boxes = logits[:, 0], boxes[:, 0]
        n = x.shape[0]
        if self.training:
            check_targets(targets, n)
            tb = torch.zeros((n, 4), device=x.device)
            tl = torch.zeros((n,), dtype=torch.long, device=x.device)
            has = torch.zeros((n,), device=x.device)
            for i, t in enumerate(targets):
                if t["boxes"].shape[0]:
                    b, lab = self._norm_targets(t, sizes[i], x.device)
                    tb[i], tl[i], has[i] = b[0], lab[0] - 1, 1.0
            ce = F.cross_entropy(logits.float(), tl, reduction="none")
            bl = F.smooth_l1_loss(boxes.float(), tb, beta=0.1, reduction="none").sum(-1)
            # divide by the batch size (not by the number of images with objects): a per-image mean
            return {"classification": (ce * has).sum() / n, "box_regression": self.box_weight * (bl * has).sum() / n}
        probs = logits.float().softmax(-1)
        score, lab = probs.max(-1)
        out = []
        for i in range(n):
            h, w = sizes[i]
            b = _cxcywh_to_xyxy(boxes[i].float()) * torch.tensor([w, h, w, h], device=x.device)
            b = torch.stack([b[0].clamp(0, w), b[1].clamp(0, h), b[2].clamp(0, w), b[3].clamp(0, h)])
            out.append({"boxes": b[None], "scores": score[i:i + 1], "labels": lab[i:i + 1] + 1})
        return out


class MultiBoxRegression(_Base):
    def __init__(self, num_classes: int, depth: int = 18, weights: str | None = None, backbone_norm: str = "bn",
                 num_slots: int = 4,
                 box_weight: float = 5.0, score_thresh: float = 0.05):
        super().__init__(num_classes, depth, weights, num_slots, 1, backbone_norm)
        self.box_weight, self.score_thresh = box_weight, score_thresh

    def forward(self, images, targets=None):
        x, sizes = prepare_images(images, 1)
        logits, boxes = self._heads(x)
        n, s = x.shape[0], self.slots
        if self.training:
            check_targets(targets, n)
            tb = torch.zeros((n, s, 4), device=x.device)
            tl = torch.zeros((n, s), dtype=torch.long, device=x.device)  # 0 = no object
            for i, t in enumerate(targets):
                b, lab = self._norm_targets(t, sizes[i], x.device)
                k = min(s, b.shape[0])
                tb[i, :k], tl[i, :k] = b[:k], lab[:k]
            ce = F.cross_entropy(logits.float().flatten(0, 1), tl.flatten(), reduction="none").view(n, s)
            bl = F.smooth_l1_loss(boxes.float(), tb, beta=0.1, reduction="none").sum(-1) * (tl > 0)
            return {"classification": ce.sum() / n, "box_regression": self.box_weight * bl.sum() / n}
        probs = logits.float().softmax(-1)
        score, lab = probs[..., 1:].max(-1)
        out = []
        for i in range(n):
            h, w = sizes[i]
            b = _cxcywh_to_xyxy(boxes[i].float()) * torch.tensor([w, h, w, h], device=x.device)
            b = torch.stack([b[:, 0].clamp(0, w), b[:, 1].clamp(0, h), b[:, 2].clamp(0, w), b[:, 3].clamp(0, h)], -1)
            keep = score[i] > self.score_thresh
            keep = keep.nonzero()[:, 0]
            keep = keep[score[i][keep].argsort(descending=True)]  # best first, like the NMS-based models
            out.append({"boxes": b[keep], "scores": score[i][keep], "labels": lab[i][keep] + 1})
        return out
