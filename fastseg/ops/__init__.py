"""fastseg's operators: drop-in replacements for ``torchvision.ops`` (same signatures, same results)."""
from fastseg.ops.nms import batched_nms, nms
from fastseg.ops.sigmoid_focal_loss import sigmoid_focal_loss, sigmoid_focal_loss_with_labels
from fastseg.ops.soft_nms import batched_soft_nms, soft_nms

__all__ = ["nms", "batched_nms", "sigmoid_focal_loss", "sigmoid_focal_loss_with_labels", "soft_nms",
           "batched_soft_nms"]
