"""Layers with no configuration (drop-in nn.Modules built on fastseg.ops)."""
from fastseg.nn import init
from fastseg.nn.conv import ConvTranspose2d
from fastseg.nn.layers import ConvNormAct, FeaturePyramidNetwork, Normalize
from fastseg.ops.max_unpool2d import MaxUnpool2d

__all__ = ["ConvTranspose2d", "MaxUnpool2d", "init", "ConvNormAct", "FeaturePyramidNetwork", "Normalize"]
