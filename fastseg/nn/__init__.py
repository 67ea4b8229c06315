"""Layers with no configuration (drop-in nn.Modules built on fastseg.ops)."""
from fastseg.nn import init
from fastseg.nn.conv import ConvTranspose2d
from fastseg.nn.layers import ConvNormAct, FeaturePyramidNetwork, Normalize

__all__ = ["ConvTranspose2d", "init", "ConvNormAct", "FeaturePyramidNetwork", "Normalize"]
