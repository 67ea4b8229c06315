"""Box coding of torchvision's ``BoxCoder``, the definition.

decode (weights ``(wx, wy, ww, wh)``, clip ``c``), for a reference box ``(x1, y1, x2, y2)`` and codes
``(dx, dy, dw, dh)``::

    w = x2 - x1;  cx = x1 + 0.5 w                  (h, cy alike)
    pcx = dx / wx * w + cx;  pw = exp(min(dw / ww, c)) * w
    out = (pcx - 0.5 pw, pcy - 0.5 ph, pcx + 0.5 pw, pcy + 0.5 ph)

encode is its inverse: ``(wx (gcx - cx) / w, wy (gcy - cy) / h, ww log(gw / w), wh log(gh / h))``.
Each op is an op on tensors of the input dtype, in torchvision's order (so fp16 rounds after each op).
"""
from __future__ import annotations

import torch
from torch import Tensor


def box_decode(rel_codes: Tensor, boxes: Tensor, weights, bbox_xform_clip: float, image_size=None) -> Tensor:
    """``[N, 4K]`` decoded boxes (torchvision's decode_single); clipped to ``image_size = (h, w)`` if given."""
    boxes = boxes.to(rel_codes.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = rel_codes[:, 0::4] / wx
    dy = rel_codes[:, 1::4] / wy
    dw = torch.clamp(rel_codes[:, 2::4] / ww, max=bbox_xform_clip)
    dh = torch.clamp(rel_codes[:, 3::4] / wh, max=bbox_xform_clip)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]
    half = torch.tensor(0.5, dtype=rel_codes.dtype, device=rel_codes.device)
    c_to_c_w = half * pred_w
    c_to_c_h = half * pred_h
    out = torch.stack(
        (pred_ctr_x - c_to_c_w, pred_ctr_y - c_to_c_h, pred_ctr_x + c_to_c_w, pred_ctr_y + c_to_c_h), dim=2
    ).flatten(1)
    if image_size is not None:
        out = clip_to_image(out, image_size)
    return out


def clip_to_image(boxes: Tensor, image_size) -> Tensor:
    """``clip_boxes_to_image`` on ``[..., 4k]`` boxes: x to ``[0, w]``, y to ``[0, h]``."""
    height, width = image_size
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def box_encode(reference_boxes: Tensor, proposals: Tensor, weights) -> Tensor:
    """``[N, 4]`` regression targets of ``reference_boxes`` against ``proposals`` (encode_single)."""
    w = torch.as_tensor(weights, dtype=reference_boxes.dtype, device=reference_boxes.device)
    ex_widths = proposals[:, 2:3] - proposals[:, 0:1]
    ex_heights = proposals[:, 3:4] - proposals[:, 1:2]
    ex_ctr_x = proposals[:, 0:1] + 0.5 * ex_widths
    ex_ctr_y = proposals[:, 1:2] + 0.5 * ex_heights
    gt_widths = reference_boxes[:, 2:3] - reference_boxes[:, 0:1]
    gt_heights = reference_boxes[:, 3:4] - reference_boxes[:, 1:2]
    gt_ctr_x = reference_boxes[:, 0:1] + 0.5 * gt_widths
    gt_ctr_y = reference_boxes[:, 1:2] + 0.5 * gt_heights
    dx = w[0] * (gt_ctr_x - ex_ctr_x) / ex_widths
    dy = w[1] * (gt_ctr_y - ex_ctr_y) / ex_heights
    dw = w[2] * torch.log(gt_widths / ex_widths)
    dh = w[3] * torch.log(gt_heights / ex_heights)
    return torch.cat((dx, dy, dw, dh), dim=1)
