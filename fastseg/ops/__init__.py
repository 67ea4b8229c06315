"""fastseg's operators: drop-in replacements for ``torchvision.ops`` (same signatures, same results)."""
from fastseg.ops.nms import batched_nms, nms

__all__ = ["nms", "batched_nms"]
from fastseg.ops.anchors import AnchorGenerator, anchors_for, grid_anchors  # noqa: E402
from fastseg.ops.box_coder import BoxCoder, box_decode, box_encode  # noqa: E402
from fastseg.ops.boxes import (  # noqa: E402
    box_area, box_convert, box_iou, clip_boxes_to_image, complete_box_iou, distance_box_iou,
    generalized_box_iou, remove_small_boxes)

__all__ += ["AnchorGenerator", "grid_anchors", "anchors_for", "BoxCoder", "box_decode", "box_encode", "box_iou",
            "generalized_box_iou", "distance_box_iou", "complete_box_iou", "box_area", "clip_boxes_to_image",
            "remove_small_boxes", "box_convert"]
