"""fastseg's operators: drop-in replacements for ``torchvision.ops`` (same signatures, same results)."""
from fastseg.ops.conv_transpose2d import conv_transpose2d
from fastseg.ops.nms import batched_nms, nms

__all__ = ["nms", "batched_nms", "conv_transpose2d"]
