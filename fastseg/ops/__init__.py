"""fastseg's operators: drop-in replacements for ``torchvision.ops`` (same signatures, same results)."""
from fastseg.ops.nms import batched_nms, nms
from fastseg.ops.poolers import MultiScaleRoIAlign
from fastseg.ops.roi_align import RoIAlign, roi_align
from fastseg.ops.roi_pool import RoIPool, roi_pool

__all__ = ["nms", "batched_nms", "roi_align", "RoIAlign", "MultiScaleRoIAlign", "roi_pool", "RoIPool"]
from fastseg.ops.sigmoid_focal_loss import sigmoid_focal_loss, sigmoid_focal_loss_with_labels
from fastseg.ops.soft_nms import batched_soft_nms, soft_nms
__all__ = ["nms", "batched_nms", "sigmoid_focal_loss", "sigmoid_focal_loss_with_labels", "soft_nms",
           "batched_soft_nms"]
