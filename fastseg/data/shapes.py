"""The embedded dataset: synthetic images of squares, circles and triangles.

Every image is a pure function of ``(seed, index)``: the same pair always draws the same image, on any
machine and in any worker process, so no data ever has to be downloaded or stored. Shapes get a random
colour, size and position, and later shapes may cover earlier ones; each instance mask holds only the
*visible* part of its shape, and its box is the tight box of that visible mask.

Classes: 0 is background, 1 square, 2 circle, 3 triangle.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

CLASSES = ("background", "square", "circle", "triangle")


def _size_hw(img_size) -> tuple[int, int]:
    if isinstance(img_size, int):
        return img_size, img_size
    h, w = (int(v) for v in img_size)
    return h, w


def _shape_mask(kind: int, cy: float, cx: float, r: float, angle: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Full (unoccluded) mask of one shape of half-size ``r`` centred at (cy, cx)."""
    if kind == 1:  # axis-aligned square: its box is the shape's extent, the easy case for box regression
        return (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
    if kind == 2:
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    # equilateral triangle inscribed in the circle of radius r, rotated by `angle`: inside = on the inner
    # side of all three edges (half-plane tests), so any orientation is one vectorised expression
    pts = [(cy - r * np.cos(angle + k * 2 * np.pi / 3), cx + r * np.sin(angle + k * 2 * np.pi / 3)) for k in range(3)]
    inside = np.ones_like(yy, dtype=bool)
    for k in range(3):
        (y0, x0), (y1, x1) = pts[k], pts[(k + 1) % 3]
        # sign of the cross product against the centroid's sign: same side as the centre
        side = (x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0)
        centre_side = (x1 - x0) * (cy - y0) - (y1 - y0) * (cx - x0)
        inside &= side * np.sign(centre_side) >= 0
    return inside


def make_shapes_sample(seed: int, index: int, img_size=128, min_objects: int = 1, max_objects: int = 4,
                       min_size: float = 0.12, max_size: float = 0.45, min_visible: float = 0.35):
    """Draw image ``index`` of the set ``seed``.

    Returns ``(image uint8 [H,W,3], boxes float32 [K,4] xyxy, labels int64 [K], masks uint8 [K,H,W],
    semantic int64 [H,W])``. ``min_size``/``max_size`` are the shape's diameter as a fraction of the
    shorter image side; an instance whose visible area falls under ``min_visible`` of its drawn area
    (mostly hidden by later shapes) is dropped from the targets — and from the image, so no
    unlabelled object remains.
    """
    h, w = _size_hw(img_size)
    if h < 8 or w < 8:
        raise ValueError(f"img_size must be at least 8x8, got {h}x{w}")
    # SeedSequence mixes (seed, index) into independent streams: neighbouring indices are uncorrelated
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index) & 0xFFFFFFFF]))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    bg = rng.uniform(0, 255, size=3)
    image = np.empty((h, w, 3), dtype=np.float32)
    image[:] = bg
    image += rng.normal(0, 6, size=(h, w, 3))  # mild noise: the background is not a single colour
    side = min(h, w)
    n = int(rng.integers(min_objects, max_objects + 1))
    shapes = []
    for _ in range(n):
        kind = int(rng.integers(1, 4))
        r = float(rng.uniform(min_size, max_size)) * side / 2
        cy = float(rng.uniform(r, h - r)) if h > 2 * r else h / 2
        cx = float(rng.uniform(r, w - r)) if w > 2 * r else w / 2
        angle = float(rng.uniform(0, 2 * np.pi))
        # a colour far enough from the background that every shape is visible
        while True:
            colour = rng.uniform(0, 255, size=3)
            if np.abs(colour - bg).sum() > 120:
                break
        shapes.append((kind, _shape_mask(kind, cy, cx, r, angle, yy, xx), colour))
    # painter's order: later shapes on top; visible part of shape i = its mask minus every later mask
    covered = np.zeros((h, w), dtype=bool)
    visible = [None] * n
    for i in range(n - 1, -1, -1):
        full = shapes[i][1]
        visible[i] = full & ~covered
        covered |= full
    keep = [i for i in range(n) if shapes[i][1].sum() > 0 and visible[i].sum() >= min_visible * shapes[i][1].sum()]
    semantic = np.zeros((h, w), dtype=np.int64)
    for i in keep:  # painting only the kept shapes (in order) keeps image and targets consistent
        kind, full, colour = shapes[i]
        image[full] = colour
        semantic[full] = kind
    # recompute the visible parts among kept shapes only
    covered[:] = False
    masks, boxes, labels = [], [], []
    for i in reversed(keep):
        vis = shapes[i][1] & ~covered
        covered |= shapes[i][1]
        ys, xs = np.nonzero(vis)
        if len(ys) == 0:
            continue
        masks.append(vis)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        labels.append(shapes[i][0])
    masks, boxes, labels = masks[::-1], boxes[::-1], labels[::-1]
    image = np.clip(image, 0, 255).astype(np.uint8)
    masks = np.stack(masks).astype(np.uint8) if masks else np.zeros((0, h, w), dtype=np.uint8)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64)
    return image, boxes, labels, masks, semantic


class ShapesDataset(Dataset):
    """``length`` synthetic images of size ``img_size`` (int or (H, W)), deterministic from ``seed``.

    Items are ``(image float32 [3,H,W] in [0,1], target)`` with the torchvision detection keys
    ``boxes`` (float32 [K,4] xyxy, pixels), ``labels`` (int64 [K], 1..3), ``masks`` (uint8 [K,H,W]),
    plus ``semantic`` (int64 [H,W], 0 = background) and ``image_id`` (the index).
    """

    classes = CLASSES
    num_classes = len(CLASSES) - 1  # object classes, background excluded

    def __init__(self, length: int = 1000, img_size=128, seed: int = 0, transforms=None, **shape_kwargs):
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        self.length = int(length)
        self.img_size = _size_hw(img_size)
        self.seed = int(seed)
        self.transforms = transforms
        self.shape_kwargs = shape_kwargs

    def __len__(self) -> int:
        return self.length

    def raw(self, index: int) -> tuple[torch.Tensor, dict]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for ShapesDataset of length {self.length}")
        image, boxes, labels, masks, semantic = make_shapes_sample(self.seed, index, self.img_size, **self.shape_kwargs)
        img = torch.from_numpy(image).permute(2, 0, 1).float().div_(255)
        target = {
            "boxes": torch.from_numpy(boxes),
            "labels": torch.from_numpy(labels),
            "masks": torch.from_numpy(masks),
            "semantic": torch.from_numpy(semantic),
            "image_id": int(index),
        }
        return img, target

    def __getitem__(self, key):
        # key may be (index, augmentation seed): see fastseg.data.transforms.seeded_key
        index, aug_seed = key if isinstance(key, tuple) else (key, None)
        img, target = self.raw(int(index))
        if self.transforms is not None:
            g = torch.Generator().manual_seed(int(aug_seed if aug_seed is not None else index))
            img, target = self.transforms(img, target, g)
        return img, target
