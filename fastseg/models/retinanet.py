"""RetinaNet (Lin et al., "Focal Loss for Dense Object Detection", 2017).

ResNet + FPN P3-P7 (P6/P7 from C5 as in the paper), 9 anchors per location (3 scales x 3 aspect
ratios), class and box subnets of four 3x3 convs shared across levels, classification bias initialised
to the prior pi = 0.01, sigmoid focal loss (alpha 0.25, gamma 2) normalised by the number of foreground
anchors, smooth-L1 box loss on BoxCoder deltas, anchors matched at IoU >= 0.5 (foreground), < 0.4
(background), in between ignored, plus each ground truth's best anchors (as torchvision does, so small
objects always have a positive). Post-processing: top-1000 per level above 0.05, decode, batched NMS 0.5,
100 detections per image.

Hot paths go through fastseg.ops (via ``fastseg.models._ops``): AnchorGenerator, BoxCoder, box_iou,
sigmoid_focal_loss and batched_nms. Training computes losses for the whole batch with no host sync
(ignored anchors are masked, not indexed out).

Departure from the paper, on purpose: the heads use GroupNorm by default (``head_norm="gn"``, as in
torchvision's RetinaNet v2), which trains from random initialisation much faster; ``head_norm=None``
gives the paper's heads.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fastseg.models._common import check_targets, clip_boxes, nms_postprocess, prepare_images
from fastseg.models._ops import AnchorGenerator, BoxCoder, ImageList, box_iou, decode_boxes, encode_boxes, sigmoid_focal_loss
from fastseg.models.backbone import ResNetBackbone
from fastseg.nn.layers import FeaturePyramidNetwork, Normalize, norm_layer


class _Head(nn.Module):
    def __init__(self, channels, out_per_anchor, num_anchors, num_convs, norm, bias_init=0.0):
        super().__init__()
        layers = []
        for _ in range(num_convs):
            layers += [nn.Conv2d(channels, channels, 3, padding=1), norm_layer(norm, channels), nn.ReLU(inplace=True)]
        self.tower = nn.Sequential(*layers)
        self.out = nn.Conv2d(channels, out_per_anchor * num_anchors, 3, padding=1)
        self.k = out_per_anchor
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.constant_(m.bias, 0.0)
        nn.init.constant_(self.out.bias, bias_init)

    def forward(self, feats):
        outs = []
        for f in feats:
            y = self.out(self.tower(f))
            n, _, h, w = y.shape
            # (N, A*K, H, W) -> (N, H*W*A, K): the anchor order of AnchorGenerator (location-major)
            outs.append(y.view(n, -1, self.k, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, self.k))
        return outs


class RetinaNet(nn.Module):
    def __init__(self, num_classes: int, depth: int = 18, weights: str | None = None, backbone_norm: str = "bn",
                 fpn_channels: int = 256,
                 head_convs: int = 4, head_norm: str | None = "gn", anchor_sizes=(32, 64, 128, 256, 512),
                 scales=(1.0, 2 ** (1 / 3), 2 ** (2 / 3)), aspect_ratios=(0.5, 1.0, 2.0), fg_iou: float = 0.5,
                 bg_iou: float = 0.4, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 smooth_l1_beta: float = 1 / 9, prior: float = 0.01, score_thresh: float = 0.05,
                 nms_thresh: float = 0.5, detections_per_img: int = 100, topk_candidates: int = 1000):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.normalize = Normalize()
        self.backbone = ResNetBackbone(depth, weights, return_levels=(3, 4, 5), norm=backbone_norm)
        self.fpn = FeaturePyramidNetwork(self.backbone.out_channels, fpn_channels, extra="p6p7")
        sizes = tuple(tuple(s * k for k in scales) for s in anchor_sizes)
        self.anchor_generator = AnchorGenerator(sizes, (tuple(aspect_ratios),) * len(sizes))
        a = len(scales) * len(aspect_ratios)
        self.cls_head = _Head(fpn_channels, num_classes, a, head_convs, head_norm, -math.log((1 - prior) / prior))
        self.box_head = _Head(fpn_channels, 4, a, head_convs, head_norm)
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.fg_iou, self.bg_iou = fg_iou, bg_iou
        self.alpha, self.gamma, self.beta = focal_alpha, focal_gamma, smooth_l1_beta
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img, self.topk_candidates = detections_per_img, topk_candidates

    def _features(self, x):
        return self.fpn(self.backbone(self.normalize(x)))

    def forward(self, images, targets=None):
        x, sizes = prepare_images(images, 32)
        feats = self._features(x)
        cls = self.cls_head(feats)
        box = self.box_head(feats)
        # the batch is padded to one size, so every image has the same anchors
        anchors = self.anchor_generator(ImageList(x, [tuple(s) for s in sizes]), feats)[0]
        if self.training:
            check_targets(targets, x.shape[0])
            return self.loss(torch.cat(cls, 1), torch.cat(box, 1), anchors, targets)
        return self.postprocess(cls, box, anchors, sizes, [f.shape[-2] * f.shape[-1] for f in feats])

    def match(self, gt_boxes: torch.Tensor, anchors: torch.Tensor):
        """Per anchor: index of its ground truth, foreground and valid (not ignored) masks. No host sync."""
        n = anchors.shape[0]
        if gt_boxes.shape[0] == 0:
            z = torch.zeros(n, dtype=torch.bool, device=anchors.device)
            return torch.zeros(n, dtype=torch.long, device=anchors.device), z, ~z
        iou = box_iou(gt_boxes.float(), anchors.float())  # [G, A]
        best, idx = iou.max(0)
        fg = best >= self.fg_iou
        # low-quality matches: every ground truth keeps the anchors it overlaps most, even below fg_iou
        best_per_gt = iou.max(1, keepdim=True).values
        fg |= ((iou == best_per_gt) & (best_per_gt > 0)).any(0)
        valid = fg | (best < self.bg_iou)
        return idx, fg, valid

    def loss(self, cls_logits, box_reg, anchors, targets):
        n, a, k = cls_logits.shape
        cls_t, box_t, fgs, valids = [], [], [], []
        for t in targets:
            gt, labels = t["boxes"].to(anchors.device), t["labels"].to(anchors.device)
            idx, fg, valid = self.match(gt, anchors)
            onehot = torch.zeros((a, k), device=anchors.device, dtype=torch.float32)
            if gt.shape[0]:
                # labels are 1..C; a foreground anchor's one-hot row, all zero for background
                # scatter, not F.one_hot: one_hot validates its input with a host sync on some devices
                onehot.scatter_(1, (labels[idx] - 1).clamp(0, k - 1)[:, None], fg[:, None].float())
                box_t.append(encode_boxes(self.box_coder, gt[idx].float(), anchors.float()))
            else:
                box_t.append(torch.zeros((a, 4), device=anchors.device))
            cls_t.append(onehot)
            fgs.append(fg)
            valids.append(valid)
        cls_t, box_t = torch.stack(cls_t), torch.stack(box_t)
        fg, valid = torch.stack(fgs), torch.stack(valids)
        num_fg = fg.sum().clamp(min=1).float()
        fl = sigmoid_focal_loss(cls_logits.float(), cls_t, alpha=self.alpha, gamma=self.gamma, reduction="none")
        cls_loss = (fl * valid[..., None]).sum() / num_fg
        bl = F.smooth_l1_loss(box_reg.float(), box_t, beta=self.beta, reduction="none").sum(-1)
        box_loss = (bl * fg).sum() / num_fg
        return {"classification": cls_loss, "box_regression": box_loss}

    @torch.no_grad()
    def postprocess(self, cls, box, anchors, sizes, level_sizes):
        a_per_loc = cls[0].shape[1] // max(1, level_sizes[0])
        anchors_lv = anchors.split([s * a_per_loc for s in level_sizes])
        results = []
        for i in range(cls[0].shape[0]):
            all_b, all_s, all_l = [], [], []
            for lv in range(len(cls)):
                scores = torch.sigmoid(cls[lv][i].float()).flatten()
                k = min(self.topk_candidates, scores.numel())
                scores, idx = scores.topk(k)
                ai, lab = idx // self.num_classes, idx % self.num_classes + 1
                boxes = decode_boxes(self.box_coder, box[lv][i, ai].float(), anchors_lv[lv][ai].float())
                all_b.append(clip_boxes(boxes, sizes[i]))
                all_s.append(scores)
                all_l.append(lab)
            results.append(nms_postprocess(torch.cat(all_b), torch.cat(all_s), torch.cat(all_l), self.score_thresh,
                                           self.nms_thresh, self.detections_per_img))
        return results
