"""COCO-format data: a reader (images + instances json, polygon or RLE masks) and an exporter that
writes any detection dataset (e.g. the synthetic shapes) as PNG images + a COCO json.

Masks go through ``pycocotools.mask`` (the reference implementation of COCO's RLE and polygons).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset


def _coco_mask():
    try:
        from pycocotools import mask as mask_utils
    except ImportError as e:  # pragma: no cover - dependency declared in pyproject
        raise ImportError("COCO data needs pycocotools: pip install pycocotools") from e
    return mask_utils


def _read_image(path: Path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255)


def ann_to_mask(segmentation, h: int, w: int) -> np.ndarray:
    """Decode one annotation's ``segmentation`` (polygon list, uncompressed or compressed RLE) to [H,W] uint8."""
    mask_utils = _coco_mask()
    if isinstance(segmentation, list):  # polygons: merge the parts of one object
        rles = mask_utils.frPyObjects(segmentation, h, w)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation["counts"], list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, h, w)
    else:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    return mask_utils.decode(rle).astype(np.uint8)


class CocoDetection(Dataset):
    """A COCO instances json as a detection dataset with the same items as ``ShapesDataset``.

    Image ``file_name`` entries resolve against ``images_dir`` (default: the json's folder). Category
    ids map to contiguous labels 1..C in increasing id order (``label_to_cat_id`` maps back, for
    evaluation and export). Crowd annotations are left out of the training targets.
    """

    def __init__(self, ann_file, images_dir=None, transforms=None):
        self.ann_file = Path(ann_file)
        if not self.ann_file.is_file():
            raise FileNotFoundError(f"COCO annotations file not found: {self.ann_file}")
        self.images_dir = Path(images_dir) if images_dir is not None else self.ann_file.parent
        with open(self.ann_file) as f:
            data = json.load(f)
        self.images = sorted(data["images"], key=lambda im: im["id"])
        cats = sorted(data.get("categories", []), key=lambda c: c["id"])
        self.cat_ids = [c["id"] for c in cats]
        self.classes = ("background",) + tuple(c.get("name", str(c["id"])) for c in cats)
        self.num_classes = len(cats)
        self.cat_id_to_label = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}
        self.label_to_cat_id = {v: k for k, v in self.cat_id_to_label.items()}
        self.anns = {im["id"]: [] for im in self.images}
        for a in data.get("annotations", []):
            if a["image_id"] in self.anns:
                self.anns[a["image_id"]].append(a)
        self.transforms = transforms

    def __len__(self):
        return len(self.images)

    def raw(self, index: int):
        info = self.images[index]
        img = _read_image(self.images_dir / info["file_name"])
        h, w = img.shape[-2:]
        boxes, labels, masks = [], [], []
        for a in self.anns[info["id"]]:
            if a.get("iscrowd", 0):
                continue
            x, y, bw, bh = a["bbox"]
            if bw <= 0 or bh <= 0:
                continue
            boxes.append([x, y, x + bw, y + bh])
            labels.append(self.cat_id_to_label[a["category_id"]])
            seg = a.get("segmentation")
            if seg:
                masks.append(ann_to_mask(seg, h, w))
            else:  # box-only annotation: the box is the best mask we have
                m = np.zeros((h, w), dtype=np.uint8)
                m[int(y): int(np.ceil(y + bh)), int(x): int(np.ceil(x + bw))] = 1
                masks.append(m)
        masks_t = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, h, w), dtype=torch.uint8)
        labels_t = torch.tensor(labels, dtype=torch.int64)
        semantic = torch.zeros((h, w), dtype=torch.int64)
        for m, lab in zip(masks_t, labels_t):  # later annotations on top, as in the exporter
            semantic[m.bool()] = lab
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": labels_t,
            "masks": masks_t,
            "semantic": semantic,
            "image_id": int(info["id"]),
        }
        return img, target

    def __getitem__(self, key):
        index, aug_seed = key if isinstance(key, tuple) else (key, None)
        img, target = self.raw(int(index))
        if self.transforms is not None:
            g = torch.Generator().manual_seed(int(aug_seed if aug_seed is not None else index))
            img, target = self.transforms(img, target, g)
        return img, target


def mask_to_rle(mask: np.ndarray) -> dict:
    """Compressed RLE of one [H,W] mask, with ``counts`` as str so it can go into json."""
    mask_utils = _coco_mask()
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def export_coco(dataset, out_dir, ann_name: str = "annotations.json", classes=None) -> Path:
    """Write ``dataset`` (items ``(image [3,H,W] in [0,1], target)``) as ``out_dir/images/*.png`` plus a
    COCO instances json with boxes (xywh), RLE masks and areas. Returns the json's path. Category ids
    equal the labels (1..C)."""
    from PIL import Image

    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    classes = classes or getattr(dataset, "classes", None)
    images, anns = [], []
    ann_id = 1
    max_label = 0
    for idx in range(len(dataset)):
        img, t = dataset[idx]
        h, w = img.shape[-2:]
        image_id = idx + 1  # COCO ids start at 1 by convention (0 is falsy in many tools)
        name = f"images/{idx:06d}.png"
        arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(arr).save(out_dir / name)
        images.append({"id": image_id, "file_name": name, "height": int(h), "width": int(w)})
        for k in range(t["boxes"].shape[0]):
            x0, y0, x1, y1 = (float(v) for v in t["boxes"][k])
            label = int(t["labels"][k])
            max_label = max(max_label, label)
            ann = {"id": ann_id, "image_id": image_id, "category_id": label,
                   "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0}
            if "masks" in t:
                m = t["masks"][k].numpy()
                ann["segmentation"] = mask_to_rle(m)
                ann["area"] = float(m.sum())
            else:
                ann["area"] = (x1 - x0) * (y1 - y0)
            anns.append(ann)
            ann_id += 1
    n_cls = len(classes) - 1 if classes else max_label
    cats = [{"id": c, "name": classes[c] if classes else str(c)} for c in range(1, n_cls + 1)]
    path = out_dir / ann_name
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    os.replace(tmp, path)
    return path
