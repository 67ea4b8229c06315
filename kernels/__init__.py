"""Triton kernels of fastseg, one file per op (e.g. ``kernels.nms``); ``kernels.aot`` compiles them for a
GPU on a machine without one; ``kernels._interpreter`` holds their branches for the CPU interpreter."""
