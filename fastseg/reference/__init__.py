"""Pure-PyTorch references: written for clarity, not speed. They are the oracle of every test and the
``torch`` backend."""
from fastseg.reference import boxes
from fastseg.reference.anchors import grid_anchors
from fastseg.reference.box_coder import box_decode, box_encode
from fastseg.reference.boxes import (
    box_area, box_convert, box_iou, clip_boxes_to_image, complete_box_iou, distance_box_iou,
    generalized_box_iou, remove_small_boxes)
from fastseg.reference.conv_transpose2d import conv_transpose2d
from fastseg.reference.max_unpool2d import max_unpool2d
from fastseg.reference.nms import batched_nms, nms
from fastseg.reference.roi_align import multi_level_roi_align, roi_align
from fastseg.reference.roi_pool import roi_pool
from fastseg.reference.sigmoid_focal_loss import sigmoid_focal_loss, sigmoid_focal_loss_with_labels
from fastseg.reference.soft_nms import batched_soft_nms, soft_nms

__all__ = [
    "nms", "batched_nms", "soft_nms", "batched_soft_nms",
    "roi_align", "multi_level_roi_align", "roi_pool",
    "grid_anchors", "box_decode", "box_encode", "box_iou", "generalized_box_iou", "distance_box_iou",
    "complete_box_iou", "box_area", "clip_boxes_to_image", "remove_small_boxes", "box_convert", "boxes",
    "sigmoid_focal_loss", "sigmoid_focal_loss_with_labels",
    "conv_transpose2d", "max_unpool2d",
]
