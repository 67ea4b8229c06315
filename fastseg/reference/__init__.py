"""Pure-PyTorch references: written for clarity, not speed. They are the oracle of every test and the
``torch`` backend."""
from fastseg.reference.nms import batched_nms, nms
from fastseg.reference.roi_align import multi_level_roi_align, roi_align
from fastseg.reference.roi_pool import roi_pool

__all__ = ["nms", "batched_nms", "roi_align", "multi_level_roi_align", "roi_pool"]
from fastseg.reference.sigmoid_focal_loss import sigmoid_focal_loss, sigmoid_focal_loss_with_labels
from fastseg.reference.soft_nms import batched_soft_nms, soft_nms
__all__ = ["nms", "batched_nms", "sigmoid_focal_loss", "sigmoid_focal_loss_with_labels", "soft_nms",
           "batched_soft_nms"]
