"""Layers with no configuration (drop-in nn.Modules built on fastseg.ops)."""
from fastseg.nn import init
from fastseg.nn.conv import ConvTranspose2d

__all__ = ["ConvTranspose2d", "init"]
from fastseg.nn.layers import ConvNormAct, FeaturePyramidNetwork, Normalize  # noqa: F401
