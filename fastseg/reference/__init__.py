"""Pure-PyTorch references: written for clarity, not speed. They are the oracle of every test and the
``torch`` backend."""
from fastseg.reference.nms import batched_nms, nms
from fastseg.reference.roi_align import multi_level_roi_align, roi_align
from fastseg.reference.roi_pool import roi_pool

__all__ = ["nms", "batched_nms", "roi_align", "multi_level_roi_align", "roi_pool"]
