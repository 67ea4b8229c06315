"""ResNet backbones from torchvision's definitions: random init, or weights from a local file.

Never downloads anything: ``weights`` is a path to a state dict (a torchvision ResNet checkpoint, or
any dict whose keys match after stripping a ``backbone.``/``body.``/``module.`` prefix).
"""
from __future__ import annotations

import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

_CHANNELS = {18: (64, 128, 256, 512), 34: (64, 128, 256, 512), 50: (256, 512, 1024, 2048),
             101: (256, 512, 1024, 2048)}


class ResNetBackbone(nn.Module):
    """Returns the feature maps C2..C5 (strides 4, 8, 16, 32) named by ``return_levels``."""

    def __init__(self, depth: int = 18, weights: str | None = None, return_levels=(3, 4, 5), norm: str = "bn"):
        super().__init__()
        if depth not in _CHANNELS:
            raise ValueError(f"ResNet depth must be one of {sorted(_CHANNELS)}, got {depth}")
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None, norm_layer=_norm_layer(norm))
        if weights:
            load_weights(net, weights)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.return_levels = tuple(return_levels)
        self.out_channels = [_CHANNELS[depth][lvl - 2] for lvl in self.return_levels]

    def forward(self, x) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for lvl, layer in zip((2, 3, 4, 5), (self.layer1, self.layer2, self.layer3, self.layer4)):
            x = layer(x)
            if lvl in self.return_levels:
                outs.append(x)
            if lvl >= max(self.return_levels):
                break
        return outs


def _norm_layer(norm: str):
    """"bn": BatchNorm (train from scratch); "frozen": BatchNorm with fixed statistics and affine (for
    loaded weights and small batches, and batch-size independent: DDP shards give the full batch's
    gradient); "gn": GroupNorm(32)."""
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "frozen":
        return FrozenBatchNorm2d
    if norm == "gn":
        return lambda c: nn.GroupNorm(32, c)
    raise ValueError(f"backbone norm must be 'bn', 'frozen' or 'gn', got {norm!r}")


def load_weights(net: nn.Module, path: str):
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    clean = {}
    for k, v in state.items():
        for prefix in ("module.", "backbone.body.", "backbone.", "body."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        clean[k] = v
    own = net.state_dict()
    usable = {k: v for k, v in clean.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"no tensor of {path} matches the ResNet's parameters")
    net.load_state_dict(usable, strict=False)
