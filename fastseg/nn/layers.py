"""Configuration-free layers shared by the models: input normalisation, conv-norm-act, FPN."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, for images in [0, 1] (the datasets' convention)."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        return (x - self.mean) / self.std


def norm_layer(kind: str | None, channels: int) -> nn.Module:
    if kind in (None, "none"):
        return nn.Identity()
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(min(32, channels // 4) if channels >= 8 else 1, channels)
    raise ValueError(f"norm must be None, 'bn' or 'gn', got {kind!r}")


class ConvNormAct(nn.Sequential):
    def __init__(self, cin, cout, k=3, stride=1, norm: str | None = "bn", act: bool = True):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=norm in (None, "none")), norm_layer(norm, cout)]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class FeaturePyramidNetwork(nn.Module):
    """FPN (Lin et al. 2017): 1x1 lateral convs, top-down nearest-neighbour upsampling and sum, 3x3
    output convs. ``extra="p6p7"`` adds RetinaNet's P6 (3x3 stride-2 conv on C5) and P7 (ReLU + 3x3
    stride-2 conv on P6). Input: list of feature maps, finest first; output: list, finest first."""

    def __init__(self, in_channels: list[int], out_channels: int = 256, extra: str | None = None):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        self.extra = extra
        if extra == "p6p7":
            self.p6 = nn.Conv2d(in_channels[-1], out_channels, 3, stride=2, padding=1)
            self.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        elif extra is not None:
            raise ValueError(f"extra must be None or 'p6p7', got {extra!r}")
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        x = self.lateral[-1](feats[-1])
        outs = [self.output[-1](x)]
        for i in range(len(feats) - 2, -1, -1):
            lat = self.lateral[i](feats[i])
            x = lat + F.interpolate(x, size=lat.shape[-2:], mode="nearest")
            outs.insert(0, self.output[i](x))
        if self.extra == "p6p7":
            p6 = self.p6(feats[-1])
            outs += [p6, self.p7(F.relu(p6))]
        return outs
