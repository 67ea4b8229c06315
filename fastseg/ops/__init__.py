"""fastseg's operators: drop-in replacements for ``torchvision.ops`` (same signatures, same results)."""
from fastseg.ops.nms import batched_nms, nms
from fastseg.ops.poolers import MultiScaleRoIAlign
from fastseg.ops.roi_align import RoIAlign, roi_align
from fastseg.ops.roi_pool import RoIPool, roi_pool

__all__ = ["nms", "batched_nms", "roi_align", "RoIAlign", "MultiScaleRoIAlign", "roi_pool", "RoIPool"]
