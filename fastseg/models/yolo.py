"""YOLO v1 (Redmon et al., "You Only Look Once", 2016).

The image is divided into an S x S grid; each cell predicts B boxes (x, y relative to the cell, w, h
relative to the image, and a confidence) and one set of C class probabilities. ResNet C5 -> 3x3 conv ->
pooled to S x S -> two fully connected layers (the paper's detection head; LeakyReLU 0.1), output
S x S x (5B + C). Sigmoids keep x, y, w, h and confidence in [0, 1] and a softmax makes the class
probabilities (the paper leaves them linear; bounding them keeps sqrt(w) defined and training stable).

The paper's sum-squared loss: for the predictor "responsible" for an object (of the B in the object's
cell, the one with the highest IoU with it), lambda_coord = 5 times the errors of x, y, sqrt(w), sqrt(h),
plus (C - IoU)^2; lambda_noobj = 0.5 times C^2 for every other predictor; and the squared error of the
class probabilities in cells holding an object. Summed, then divided by the batch size. Built without
host syncs (targets scattered on the device).

Detections: class-specific confidence (confidence x class probability), threshold, batched NMS.
"""
from __future__ import annotations

import torch
from torch import nn

from fastseg.models._common import check_targets, clip_boxes, nms_postprocess, prepare_images
from fastseg.models.backbone import ResNetBackbone
from fastseg.nn.layers import Normalize


def _paired_iou(a, b):
    """IoU of boxes a[..., 4] and b[..., 4] (xyxy), elementwise."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda x: (x[..., 2] - x[..., 0]).clamp(min=0) * (x[..., 3] - x[..., 1]).clamp(min=0)  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp(min=1e-9)


class YOLOv1(nn.Module):
    def __init__(self, num_classes: int, depth: int = 18, weights: str | None = None, backbone_norm: str = "bn",
                 grid: int = 7,
                 boxes_per_cell: int = 2, hidden: int = 1024, lambda_coord: float = 5.0, lambda_noobj: float = 0.5,
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.S, self.B = num_classes, grid, boxes_per_cell
        self.lambda_coord, self.lambda_noobj = lambda_coord, lambda_noobj
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img
        self.normalize = Normalize()
        self.backbone = ResNetBackbone(depth, weights, return_levels=(5,), norm=backbone_norm)
        c = self.backbone.out_channels[-1]
        self.conv = nn.Sequential(nn.Conv2d(c, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.LeakyReLU(0.1, True),
                                  nn.AdaptiveAvgPool2d(grid))
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(256 * grid * grid, hidden), nn.LeakyReLU(0.1, True),
                                nn.Linear(hidden, grid * grid * (5 * boxes_per_cell + num_classes)))

    def _predict(self, x):
        n, S, B, C = x.shape[0], self.S, self.B, self.num_classes
        y = self.fc(self.conv(self.backbone(self.normalize(x))[-1])).view(n, S, S, 5 * B + C).float()
        box = torch.sigmoid(y[..., : 5 * B].reshape(n, S, S, B, 5))  # x, y, w, h, conf
        cls = y[..., 5 * B:].softmax(-1)
        return box, cls

    def _to_xyxy(self, box, size):
        """(x, y in cell, w, h in image) -> image xyxy pixels, for [N,S,S,B,4+]."""
        S = self.S
        h, w = size
        ar = torch.arange(S, device=box.device, dtype=box.dtype)
        cx = (box[..., 0] + ar.view(1, 1, S, 1)) / S * w
        cy = (box[..., 1] + ar.view(1, S, 1, 1)) / S * h
        bw, bh = box[..., 2] * w, box[..., 3] * h
        return torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)

    def forward(self, images, targets=None):
        x, sizes = prepare_images(images, 1)
        box, cls = self._predict(x)
        if self.training:
            check_targets(targets, x.shape[0])
            return self.loss(box, cls, targets, tuple(x.shape[-2:]))
        return self.postprocess(box, cls, sizes, tuple(x.shape[-2:]))

    def _targets(self, targets, size, device):
        n, S, C = len(targets), self.S, self.num_classes
        h, w = size
        obj = torch.zeros((n, S * S), device=device)
        tbox = torch.zeros((n, S * S, 4), device=device)  # x, y in cell; w, h in image
        tcls = torch.zeros((n, S * S, C), device=device)
        for i, t in enumerate(targets):
            b = t["boxes"].to(device).float()
            if b.shape[0] == 0:
                continue
            cx, cy = (b[:, 0] + b[:, 2]) / 2 / w * S, (b[:, 1] + b[:, 3]) / 2 / h * S
            col, row = cx.long().clamp(0, S - 1), cy.long().clamp(0, S - 1)
            cell = row * S + col
            vals = torch.stack([cx - col, cy - row, (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h], -1)
            # one object per cell (the paper's limit): with several, the last written wins
            obj[i].index_put_((cell,), torch.ones_like(cx))
            tbox[i].index_put_((cell,), vals)
            onehot = torch.zeros((b.shape[0], C), device=device).scatter_(
                1, (t["labels"].to(device) - 1).clamp(0, C - 1)[:, None], 1.0)
            tcls[i].index_put_((cell,), onehot)
        return obj.view(n, S, S), tbox.view(n, S, S, 4), tcls.view(n, S, S, C)

    def loss(self, box, cls, targets, size):
        n = box.shape[0]
        obj, tbox, tcls = self._targets(targets, size, box.device)
        pred_xyxy = self._to_xyxy(box, size)                       # [N,S,S,B,4]
        tgt_xyxy = self._to_xyxy(tbox[..., None, :].expand_as(box[..., :4]), size)
        iou = _paired_iou(pred_xyxy, tgt_xyxy)                     # [N,S,S,B]
        best = iou.argmax(-1)
        resp = torch.zeros_like(iou).scatter_(-1, best[..., None], 1.0) * obj[..., None]  # responsible predictor
        t = tbox[..., None, :]
        coord = ((box[..., 0] - t[..., 0]) ** 2 + (box[..., 1] - t[..., 1]) ** 2
                 + (box[..., 2].clamp(min=1e-9).sqrt() - t[..., 2].sqrt()) ** 2
                 + (box[..., 3].clamp(min=1e-9).sqrt() - t[..., 3].sqrt()) ** 2)
        conf = box[..., 4]
        coord_loss = self.lambda_coord * (resp * coord).sum() / n
        obj_loss = (resp * (conf - iou.detach()) ** 2).sum() / n
        noobj_loss = self.lambda_noobj * ((1 - resp) * conf ** 2).sum() / n
        cls_loss = (obj[..., None] * (cls - tcls) ** 2).sum() / n
        return {"coord": coord_loss, "obj_conf": obj_loss, "noobj_conf": noobj_loss, "classification": cls_loss}

    @torch.no_grad()
    def postprocess(self, box, cls, sizes, padded):
        n, S, B, C = box.shape[0], self.S, self.B, self.num_classes
        xyxy = self._to_xyxy(box, padded)                                      # [N,S,S,B,4]
        scores = box[..., 4:5] * cls[..., None, :]                              # [N,S,S,B,C]
        labels = torch.arange(1, C + 1, device=box.device).expand(S, S, B, C)
        out = []
        for i in range(n):
            b = clip_boxes(xyxy[i][..., None, :].expand(S, S, B, C, 4).reshape(-1, 4), sizes[i])
            out.append(nms_postprocess(b, scores[i].reshape(-1), labels.reshape(-1), self.score_thresh,
                                       self.nms_thresh, self.detections_per_img))
        return out
