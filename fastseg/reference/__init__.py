"""Pure-PyTorch references: written for clarity, not speed. They are the oracle of every test and the
``torch`` backend."""
from fastseg.reference.conv_transpose2d import conv_transpose2d
from fastseg.reference.nms import batched_nms, nms

__all__ = ["nms", "batched_nms", "conv_transpose2d"]
