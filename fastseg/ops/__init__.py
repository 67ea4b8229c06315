"""fastseg's operators: drop-in replacements for ``torchvision.ops`` (same signatures, same results)."""
import torch.fx

from fastseg.ops.anchors import AnchorGenerator, anchors_for, grid_anchors
from fastseg.ops._checks import ArgumentError
from fastseg.ops.box_coder import BoxCoder, box_decode, box_encode
from fastseg.ops.boxes import (
    box_area, box_convert, box_iou, clip_boxes_to_image, complete_box_iou, distance_box_iou,
    generalized_box_iou, remove_small_boxes)
from fastseg.ops.conv_transpose2d import conv_transpose2d
from fastseg.ops.max_unpool2d import MaxUnpool2d, max_unpool2d
from fastseg.ops.memory import empty_cache
from fastseg.ops.nms import batched_nms, nms
from fastseg.ops.poolers import MultiScaleRoIAlign
from fastseg.ops.roi_align import RoIAlign, roi_align
from fastseg.ops.roi_pool import RoIPool, roi_pool
from fastseg.ops.sigmoid_focal_loss import sigmoid_focal_loss, sigmoid_focal_loss_with_labels
from fastseg.ops.soft_nms import batched_soft_nms, soft_nms

__all__ = [
    "nms", "batched_nms", "soft_nms", "batched_soft_nms",
    "roi_align", "RoIAlign", "roi_pool", "RoIPool", "MultiScaleRoIAlign",
    "AnchorGenerator", "grid_anchors", "anchors_for", "BoxCoder", "box_decode", "box_encode",
    "box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou", "box_area",
    "clip_boxes_to_image", "remove_small_boxes", "box_convert",
    "sigmoid_focal_loss", "sigmoid_focal_loss_with_labels",
    "conv_transpose2d", "max_unpool2d", "MaxUnpool2d", "empty_cache", "ArgumentError",
]

# torch.fx.symbolic_trace records `fastseg.ops.<op>(...)` on traced values as one call_function node, as
# torchvision's ops are recorded, instead of tracing into argument checks that need real tensors. (The
# modules' forwards reach their op through the wraps in the ops' own files.) No cost outside a trace.
for _op in __all__:
    if _op[0].islower():  # the functions; the classes are modules (traced into) and ArgumentError
        torch.fx.wrap(_op)
del _op
