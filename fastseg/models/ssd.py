"""SSD (Liu et al., "SSD: Single Shot MultiBox Detector", 2016).

A ResNet's C3, C4, C5 plus ``len(extra_channels)`` extra stride-2 blocks (1x1 reduce, 3x3 stride 2) give
six feature maps. Map k of m carries default boxes of scale s_k = s_min + (s_max - s_min) k / (m - 1)
(fractions of the image) with aspect ratios 1, 2, 1/2 (and 3, 1/3 on the middle maps) plus an extra
ratio-1 box of scale sqrt(s_k s_{k+1}). A 3x3 conv per map predicts C+1 class scores (0 = background)
and 4 box offsets per default box (BoxCoder weights 10, 10, 5, 5: the paper's variances 0.1 / 0.2).

Matching: each ground truth takes its best default box, then every default box with IoU >= 0.5 takes its
best ground truth. Loss: softmax cross-entropy over positives and the hardest negatives (3 negatives per
positive, by loss), plus smooth-L1 on positive offsets, both divided by the number of positives. The
hard-negative mining is a sort and a rank comparison on the device: no host sync, no per-image loop of
data-dependent sizes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fastseg.models._common import check_targets, clip_boxes, nms_postprocess, prepare_images
from fastseg.models._ops import BoxCoder, box_iou, decode_boxes, encode_boxes
from fastseg.models.backbone import ResNetBackbone
from fastseg.nn.layers import ConvNormAct, Normalize


def default_boxes(feature_sizes, image_size, min_scale, max_scale, aspect_ratios, device=None) -> torch.Tensor:
    """SSD default boxes, xyxy pixels, ordered map by map, location-major (row, column), then box."""
    m = len(feature_sizes)
    scales = [min_scale + (max_scale - min_scale) * k / max(1, m - 1) for k in range(m)] + [1.0]
    h, w = image_size
    out = []
    for k, (fh, fw) in enumerate(feature_sizes):
        s, s_next = scales[k], scales[k + 1]
        wh = [(s, s), (math.sqrt(s * s_next),) * 2]
        for ar in aspect_ratios[k]:
            r = math.sqrt(ar)
            wh += [(s * r, s / r), (s / r, s * r)]
        wh = torch.tensor(wh, dtype=torch.float32, device=device)                     # [A, 2] (w, h)
        cy = (torch.arange(fh, dtype=torch.float32, device=device) + 0.5) / fh
        cx = (torch.arange(fw, dtype=torch.float32, device=device) + 0.5) / fw
        cy, cx = torch.meshgrid(cy, cx, indexing="ij")
        c = torch.stack([cx, cy], -1).reshape(-1, 1, 2)                               # [HW, 1, 2]
        boxes = torch.cat([c - wh / 2, c + wh / 2], -1).clamp(0, 1).reshape(-1, 4)    # [HW*A, 4]
        out.append(boxes * torch.tensor([w, h, w, h], dtype=torch.float32, device=device))
    return torch.cat(out)


class SSD(nn.Module):
    def __init__(self, num_classes: int, depth: int = 18, weights: str | None = None, backbone_norm: str = "bn",
                 extra_channels=(256, 256, 128), min_scale: float = 0.2, max_scale: float = 0.9,
                 aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)), fg_iou: float = 0.5,
                 neg_pos_ratio: float = 3.0, score_thresh: float = 0.01, nms_thresh: float = 0.45,
                 detections_per_img: int = 100, topk_candidates: int = 400):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        n_maps = 3 + len(extra_channels)
        if len(aspect_ratios) != n_maps:
            raise ValueError(f"aspect_ratios needs one entry per feature map ({n_maps}), got {len(aspect_ratios)}")
        self.num_classes = num_classes
        self.normalize = Normalize()
        self.backbone = ResNetBackbone(depth, weights, return_levels=(3, 4, 5), norm=backbone_norm)
        chans = list(self.backbone.out_channels)
        self.extras = nn.ModuleList()
        cin = chans[-1]
        for c in extra_channels:
            self.extras.append(nn.Sequential(ConvNormAct(cin, c // 2, 1), ConvNormAct(c // 2, c, 3, stride=2)))
            chans.append(c)
            cin = c
        self.aspect_ratios = tuple(tuple(a) for a in aspect_ratios)
        n_anchor = [2 + 2 * len(a) for a in self.aspect_ratios]
        self.cls_heads = nn.ModuleList(nn.Conv2d(c, a * (num_classes + 1), 3, padding=1) for c, a in zip(chans, n_anchor))
        self.box_heads = nn.ModuleList(nn.Conv2d(c, a * 4, 3, padding=1) for c, a in zip(chans, n_anchor))
        for m in list(self.cls_heads) + list(self.box_heads):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
        self.min_scale, self.max_scale = min_scale, max_scale
        self.box_coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
        self.fg_iou, self.neg_pos_ratio = fg_iou, neg_pos_ratio
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img, self.topk_candidates = detections_per_img, topk_candidates
        self._db_cache = {}

    def _default_boxes(self, feature_sizes, image_size, device):
        key = (tuple(feature_sizes), tuple(image_size), str(device))
        if key not in self._db_cache:  # a pure function of the shapes: compute once per shape
            self._db_cache = {key: default_boxes(feature_sizes, image_size, self.min_scale, self.max_scale,
                                                 self.aspect_ratios, device)}
        return self._db_cache[key]

    def forward(self, images, targets=None):
        x, sizes = prepare_images(images, 1)
        feats = self.backbone(self.normalize(x))
        f = feats[-1]
        for e in self.extras:
            f = e(f)
            feats.append(f)
        n, c1 = x.shape[0], self.num_classes + 1
        cls = torch.cat([h(f).permute(0, 2, 3, 1).reshape(n, -1, c1) for h, f in zip(self.cls_heads, feats)], 1)
        box = torch.cat([h(f).permute(0, 2, 3, 1).reshape(n, -1, 4) for h, f in zip(self.box_heads, feats)], 1)
        dboxes = self._default_boxes([tuple(f.shape[-2:]) for f in feats], tuple(x.shape[-2:]), x.device)
        if self.training:
            check_targets(targets, n)
            return self.loss(cls.float(), box.float(), dboxes, targets)
        return self.postprocess(cls.float(), box.float(), dboxes, sizes)

    def match(self, gt, dboxes):
        d = dboxes.shape[0]
        if gt.shape[0] == 0:
            return torch.zeros(d, dtype=torch.long, device=dboxes.device), torch.zeros(d, dtype=torch.bool, device=dboxes.device)
        iou = box_iou(gt.float(), dboxes)                       # [G, D]
        best, idx = iou.max(0)
        # every ground truth keeps its best default box, whatever the IoU (scatter, no sync)
        best_d = iou.argmax(1)
        g = torch.arange(gt.shape[0], device=gt.device)
        idx = idx.index_put((best_d,), g)
        best = best.index_put((best_d,), torch.full_like(best_d, 2, dtype=best.dtype))
        return idx, best >= self.fg_iou

    def loss(self, cls, box, dboxes, targets):
        n, d, _ = cls.shape
        labels, box_t = [], []
        for t in targets:
            gt = t["boxes"].to(dboxes.device)
            idx, pos = self.match(gt, dboxes)
            if gt.shape[0]:
                labels.append(t["labels"].to(dboxes.device)[idx] * pos)
                box_t.append(encode_boxes(self.box_coder, gt[idx].float(), dboxes))
            else:
                labels.append(torch.zeros(d, dtype=torch.long, device=dboxes.device))
                box_t.append(torch.zeros((d, 4), device=dboxes.device))
        labels, box_t = torch.stack(labels), torch.stack(box_t)
        pos = labels > 0
        num_pos = pos.sum(1, keepdim=True)                                          # [N, 1]
        ce = F.cross_entropy(cls.reshape(-1, cls.shape[-1]), labels.reshape(-1), reduction="none").view(n, d)
        # hard-negative mining: rank the negatives by loss, keep the top neg_pos_ratio x num_pos per image
        neg_loss = ce.detach().masked_fill(pos, -float("inf"))
        order = neg_loss.argsort(1, descending=True)
        rank = order.argsort(1)
        num_neg = (self.neg_pos_ratio * num_pos).clamp(max=d - 1).to(rank.dtype)
        neg = rank < num_neg
        total_pos = num_pos.sum().clamp(min=1).float()
        cls_loss = (ce * (pos | neg)).sum() / total_pos
        loc = F.smooth_l1_loss(box, box_t, reduction="none").sum(-1)
        return {"classification": cls_loss, "box_regression": (loc * pos).sum() / total_pos}

    @torch.no_grad()
    def postprocess(self, cls, box, dboxes, sizes):
        probs = cls.softmax(-1)[..., 1:]                                             # [N, D, C]
        out = []
        c = self.num_classes
        for i in range(cls.shape[0]):
            s = probs[i].flatten()
            k = min(self.topk_candidates, s.numel())
            scores, idx = s.topk(k)
            di, lab = idx // c, idx % c + 1
            b = clip_boxes(decode_boxes(self.box_coder, box[i, di], dboxes[di]), sizes[i])
            out.append(nms_postprocess(b, scores, lab, self.score_thresh, self.nms_thresh, self.detections_per_img))
        return out
