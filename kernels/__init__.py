"""Triton kernels of fastseg, one file per op (e.g. ``kernels.nms``)."""
