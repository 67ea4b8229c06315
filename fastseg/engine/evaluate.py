"""Evaluation: COCO box/mask mAP through pycocotools' COCOeval (the reference metric, not a home-made
mAP) and mIoU of semantic class maps.

``coco_evaluate(predictions, targets)`` returns, per task ("bbox", and "segm" when predictions carry
masks), COCO's twelve summary numbers under their usual names.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
import torch

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def _to_np(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def build_coco_gt(targets, image_sizes, num_classes: int, with_masks: bool):
    """In-memory COCO ground truth from a list of target dicts (image ids = list positions + 1)."""
    from pycocotools.coco import COCO

    images, anns = [], []
    aid = 1
    for i, (t, (h, w)) in enumerate(zip(targets, image_sizes)):
        images.append({"id": i + 1, "height": int(h), "width": int(w)})
        boxes = _to_np(t["boxes"]).reshape(-1, 4)
        labels = _to_np(t["labels"]).reshape(-1)
        masks = _to_np(t["masks"]) if with_masks else None
        for k in range(boxes.shape[0]):
            x0, y0, x1, y1 = (float(v) for v in boxes[k])
            a = {"id": aid, "image_id": i + 1, "category_id": int(labels[k]), "bbox": [x0, y0, x1 - x0, y1 - y0],
                 "iscrowd": 0}
            if masks is not None:
                a["segmentation"] = _rle(masks[k])
                a["area"] = float(masks[k].sum())
            else:
                a["area"] = (x1 - x0) * (y1 - y0)
            anns.append(a)
            aid += 1
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": c, "name": str(c)} for c in range(1, num_classes + 1)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _detections(predictions, with_masks: bool, mask_threshold: float = 0.5):
    dets = []
    for i, p in enumerate(predictions):
        boxes = _to_np(p["boxes"]).reshape(-1, 4).astype(np.float64)
        scores = _to_np(p["scores"]).reshape(-1)
        labels = _to_np(p["labels"]).reshape(-1)
        masks = _to_np(p["masks"]) if with_masks else None
        for k in range(boxes.shape[0]):
            x0, y0, x1, y1 = boxes[k]
            d = {"image_id": i + 1, "category_id": int(labels[k]), "score": float(scores[k]),
                 "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]}
            if masks is not None:
                m = masks[k]
                if m.ndim == 3:  # [1,H,W] soft masks as torchvision's Mask R-CNN returns them
                    m = m[0]
                d["segmentation"] = _rle(m >= mask_threshold if m.dtype.kind == "f" else m > 0)
            dets.append(d)
    return dets


def coco_evaluate(predictions, targets, image_sizes=None, num_classes: int | None = None,
                  iou_types=None) -> dict:
    """COCO mAP of ``predictions`` (list of dicts boxes xyxy/scores/labels[/masks]) against ``targets``
    (list of dicts boxes/labels[/masks]), one entry per image, in the same order.

    Returns ``{"bbox": {"AP": ..., "AP50": ..., ...}, "segm": {...}}`` with COCO's twelve numbers (-1
    where COCO reports -1: no ground truth in that area range). ``segm`` is computed when every
    prediction and target has masks (or when asked for in ``iou_types``).
    """
    from pycocotools.cocoeval import COCOeval

    if len(predictions) != len(targets):
        raise ValueError(f"predictions and targets must have the same length, got {len(predictions)} and {len(targets)}")
    if image_sizes is None:
        image_sizes = []
        for t in targets:
            if "masks" in t and _to_np(t["masks"]).ndim == 3:
                image_sizes.append(tuple(_to_np(t["masks"]).shape[-2:]))
            elif "size" in t:
                image_sizes.append(tuple(t["size"]))
            else:
                raise ValueError("image_sizes is required when targets have no masks")
    if num_classes is None:
        labels = [int(_to_np(t["labels"]).max()) for t in targets if len(_to_np(t["labels"]))]
        num_classes = max(labels, default=1)
    if iou_types is None:
        iou_types = ["bbox"]
        if predictions and all("masks" in p for p in predictions) and all("masks" in t for t in targets):
            iou_types.append("segm")
    results = {}
    for iou_type in iou_types:
        segm = iou_type == "segm"
        gt = build_coco_gt(targets, image_sizes, num_classes, with_masks=segm or all("masks" in t for t in targets))
        dets = _detections(predictions, with_masks=segm)
        if not dets:
            # COCO.loadRes refuses an empty list; no detections means zero precision and recall
            # wherever there is ground truth (and -1, as COCO says, where there is none)
            has_gt = len(gt.dataset["annotations"]) > 0
            results[iou_type] = {k: (0.0 if has_gt else -1.0) for k in STAT_NAMES}
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes(dets)
            ev = COCOeval(gt, dt, iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        results[iou_type] = {k: float(v) for k, v in zip(STAT_NAMES, ev.stats)}
    return results


def semantic_confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255):
    """[C,C] confusion matrix (rows: target class, columns: predicted) of two integer class maps."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    valid = target != ignore_index
    idx = target[valid] * num_classes + pred[valid].clamp(0, num_classes - 1)
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def mean_iou(preds, targets, num_classes: int, ignore_index: int = 255) -> dict:
    """mIoU over classes (background included as class 0) of semantic maps; a class absent from both
    predictions and targets is left out of the mean. Returns ``{"mIoU": float, "IoU": [per class]}``."""
    if isinstance(preds, torch.Tensor) and preds.dim() == 2:
        preds, targets = [preds], [targets]
    conf = torch.zeros((num_classes, num_classes), dtype=torch.int64)
    for p, t in zip(preds, targets):
        conf += semantic_confusion(p.cpu(), t.cpu(), num_classes, ignore_index)
    inter = conf.diag().double()
    union = conf.sum(0).double() + conf.sum(1).double() - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))
    present = ~torch.isnan(iou)
    miou = float(iou[present].mean()) if present.any() else float("nan")
    return {"mIoU": miou, "IoU": [float(v) for v in iou]}


@torch.no_grad()
def predict_dataset(model, dataset, device="cpu", batch_size: int = 8, num_workers: int = 0):
    """Run ``model`` (eval mode) over ``dataset``; returns (predictions, targets, image sizes) on CPU."""
    from fastseg.data.loader import make_loader

    was_training = model.training
    model.eval()
    loader = make_loader(dataset, batch_size, shuffle=False, num_workers=num_workers, drop_last=False)
    preds, targets, sizes = [], [], []
    for images, tgts in loader:
        images = images.to(device, non_blocking=True)
        out = model(images)
        for o, t in zip(out, tgts):
            preds.append({k: v.cpu() for k, v in o.items()})
            targets.append(t)
            sizes.append(tuple(images.shape[-2:]) if "masks" not in t else tuple(t["masks"].shape[-2:]))
    model.train(was_training)
    return preds, targets, sizes


def evaluate(model, dataset, device="cpu", batch_size: int = 8, num_classes: int | None = None) -> dict:
    """COCO box (and mask, if the model predicts masks) mAP of ``model`` on ``dataset``, plus semantic
    mIoU when the model returns a ``semantic`` map. Returns a flat-by-task dict."""
    preds, targets, sizes = predict_dataset(model, dataset, device, batch_size)
    num_classes = num_classes or getattr(dataset, "num_classes", None)
    results = coco_evaluate(preds, targets, sizes, num_classes=num_classes)
    if preds and all("semantic" in p for p in preds):
        results["semantic"] = mean_iou([p["semantic"] for p in preds], [t["semantic"] for t in targets],
                                       (num_classes or 1) + 1)
    return results
