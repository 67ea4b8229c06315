"""Datasets, augmentations and loaders: the embedded synthetic shapes set, COCO json data."""
from fastseg.data.coco import CocoDetection, export_coco
from fastseg.data.loader import ResumableSampler, collate, make_loader, pad_images
from fastseg.data.shapes import ShapesDataset, make_shapes_sample
from fastseg.data.transforms import (Compose, RandomCrop, RandomHorizontalFlip, Resize, default_train_transforms,
                                     masks_to_boxes)


def build_dataset(spec: str, img_size=128, length: int | None = None, seed: int = 0, images_dir=None,
                  train: bool = False):
    """Dataset from a CLI spec: ``shapes`` (optionally ``shapes:N`` images) or ``coco:ANNOTATIONS.json``.

    Training sets get the default augmentations; COCO images are resized to ``img_size`` when given.
    """
    tf = default_train_transforms(img_size) if train else (Resize(img_size) if img_size else None)
    if spec == "shapes" or spec.startswith("shapes:"):
        n = int(spec.split(":", 1)[1]) if ":" in spec else (length or (4000 if train else 200))
        return ShapesDataset(n, img_size=img_size, seed=seed, transforms=tf if train else None)
    if spec.startswith("coco:"):
        return CocoDetection(spec[5:], images_dir=images_dir, transforms=tf)
    raise ValueError(f"data must be 'shapes', 'shapes:N' or 'coco:ANNOTATIONS.json', got {spec!r}")


__all__ = ["ShapesDataset", "make_shapes_sample", "CocoDetection", "export_coco", "collate", "make_loader",
           "pad_images", "ResumableSampler", "Compose", "RandomHorizontalFlip", "RandomCrop", "Resize",
           "default_train_transforms", "masks_to_boxes", "build_dataset"]
