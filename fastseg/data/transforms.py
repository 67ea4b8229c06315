"""Augmentations that move boxes, instance masks and the semantic map together with the image.

Every transform is ``t(image [3,H,W] float, target dict, generator) -> (image, target)``: randomness
comes only from the ``torch.Generator`` it is given, so a sample's augmentation is a pure function of
its seed (what makes training resumable step for step, in any number of worker processes).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _rand(g: torch.Generator | None) -> float:
    return float(torch.rand((), generator=g))


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, target, g=None):
        for t in self.transforms:
            image, target = t(image, target, g)
        return image, target


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image, target, g=None):
        if _rand(g) >= self.p:
            return image, target
        w = image.shape[-1]
        target = dict(target)
        image = image.flip(-1)
        if "boxes" in target:
            b = target["boxes"]
            target["boxes"] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=1)
        for k in ("masks", "semantic"):
            if k in target:
                target[k] = target[k].flip(-1)
        return image, target


class Resize:
    """Resize to ``size`` = (H, W) or int (square). Image bilinear, masks nearest, boxes scaled."""

    def __init__(self, size):
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, image, target, g=None):
        h, w = image.shape[-2:]
        nh, nw = self.size
        if (h, w) == (nh, nw):
            return image, target
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
        target = dict(target)
        if "boxes" in target:
            scale = torch.tensor([nw / w, nh / h, nw / w, nh / h], dtype=target["boxes"].dtype)
            target["boxes"] = target["boxes"] * scale
        if "masks" in target:
            m = target["masks"]
            target["masks"] = F.interpolate(m[None].float(), size=(nh, nw), mode="nearest")[0].to(m.dtype) if m.numel() \
                else m.new_zeros((m.shape[0], nh, nw))
        if "semantic" in target:
            s = target["semantic"]
            target["semantic"] = F.interpolate(s[None, None].float(), size=(nh, nw), mode="nearest")[0, 0].to(s.dtype)
        return image, target


class RandomCrop:
    """Crop a random window covering ``scale`` (min, max) of each side; the result keeps the crop size
    (follow with ``Resize`` for a fixed size). Boxes are clipped to the window and an instance is
    dropped when less than ``min_area_frac`` of its box area stays inside (or its mask becomes empty)."""

    def __init__(self, scale=(0.6, 1.0), min_area_frac: float = 0.3, p: float = 1.0):
        self.scale = scale
        self.min_area_frac = min_area_frac
        self.p = p

    def __call__(self, image, target, g=None):
        if _rand(g) >= self.p:
            return image, target
        h, w = image.shape[-2:]
        s = self.scale[0] + (self.scale[1] - self.scale[0]) * _rand(g)
        ch, cw = max(1, round(h * s)), max(1, round(w * s))
        y0 = int(_rand(g) * (h - ch + 1))
        x0 = int(_rand(g) * (w - cw + 1))
        y0, x0 = min(y0, h - ch), min(x0, w - cw)
        image = image[:, y0:y0 + ch, x0:x0 + cw]
        target = dict(target)
        keep = None
        if "boxes" in target:
            b = target["boxes"]
            area = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
            nb = b - torch.tensor([x0, y0, x0, y0], dtype=b.dtype)
            nb[:, 0::2] = nb[:, 0::2].clamp(0, cw)
            nb[:, 1::2] = nb[:, 1::2].clamp(0, ch)
            narea = (nb[:, 2] - nb[:, 0]) * (nb[:, 3] - nb[:, 1])
            keep = (narea > 0) & (narea >= self.min_area_frac * area)
            target["boxes"] = nb
        if "masks" in target:
            target["masks"] = target["masks"][:, y0:y0 + ch, x0:x0 + cw]
            if target["masks"].shape[0]:
                nonempty = target["masks"].flatten(1).bool().any(1)
                keep = nonempty if keep is None else keep & nonempty
        if "semantic" in target:
            target["semantic"] = target["semantic"][y0:y0 + ch, x0:x0 + cw]
        if keep is not None:
            for k in ("boxes", "labels", "masks", "area", "iscrowd"):
                if k in target:
                    target[k] = target[k][keep]
            if "masks" in target and "boxes" in target and target["masks"].shape[0]:
                # tighten clipped boxes to what of the mask is left in the window
                target["boxes"] = masks_to_boxes(target["masks"]).to(target["boxes"].dtype)
        return image, target


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight xyxy boxes (pixel edges, so a one-pixel mask has width 1) of non-empty [K,H,W] masks."""
    if masks.shape[0] == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    m = masks.bool()
    rows, cols = m.any(2), m.any(1)
    h, w = m.shape[-2:]
    ar_h = torch.arange(h, device=m.device)
    ar_w = torch.arange(w, device=m.device)
    y0 = torch.where(rows, ar_h, h).min(1).values
    y1 = torch.where(rows, ar_h, -1).max(1).values + 1
    x0 = torch.where(cols, ar_w, w).min(1).values
    x1 = torch.where(cols, ar_w, -1).max(1).values + 1
    return torch.stack([x0, y0, x1, y1], 1).float()


def default_train_transforms(img_size):
    """Flip + mild random crop + resize back to ``img_size``: what ``fastseg train`` uses."""
    return Compose([RandomHorizontalFlip(0.5), RandomCrop((0.7, 1.0), p=0.5), Resize(img_size)])
