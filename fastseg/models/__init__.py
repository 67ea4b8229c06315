"""The bundled architectures and their registry: ``build(name, num_classes, **kw)``, ``available()``.

Every model takes images in [0, 1] (a [N,3,H,W] tensor or a list of [3,H,W]) and follows torchvision's
detection protocol: ``model(images, targets)`` in train mode returns a dict of losses, ``model(images)``
in eval mode returns one dict per image with ``boxes`` (xyxy), ``scores`` and ``labels`` (1..C).
"""
from __future__ import annotations

import importlib

# name -> (module, class, description)
_REGISTRY = {
    "boxreg": ("fastseg.models.boxreg", "BoxRegression", "classification + localisation: one object, box regression"),
    "boxreg_n": ("fastseg.models.boxreg", "MultiBoxRegression", "classification + localisation of a fixed number N of objects"),
    "yolov1": ("fastseg.models.yolo", "YOLOv1", "YOLO v1: SxS grid, B boxes per cell with confidence, class probabilities"),
    "ssd": ("fastseg.models.ssd", "SSD", "SSD: default boxes over several feature maps, hard-negative mining 3:1"),
    "retinanet": ("fastseg.models.retinanet", "RetinaNet", "RetinaNet: FPN P3-P7, 9 anchors, focal loss, batched NMS"),
}


def available() -> list[str]:
    return list(_REGISTRY)


def describe(name: str) -> str:
    return _REGISTRY[name][2]


def get_class(name: str):
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available())}")
    mod, cls, _ = _REGISTRY[name]
    return getattr(importlib.import_module(mod), cls)


def build(name: str, num_classes: int, **kw):
    """Build architecture ``name`` for ``num_classes`` object classes (background excluded)."""
    return get_class(name)(num_classes=num_classes, **kw)


__all__ = ["build", "available", "describe", "get_class"]
