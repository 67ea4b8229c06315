"""Layers with no configuration (drop-in nn.Modules built on fastseg.ops)."""
