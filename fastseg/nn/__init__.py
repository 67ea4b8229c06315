"""Layers with no configuration (drop-in nn.Modules built on fastseg.ops)."""
from fastseg.nn.layers import ConvNormAct, FeaturePyramidNetwork, Normalize  # noqa: F401
