"""Anchors of a feature pyramid, the definition (torchvision's AnchorGenerator.grid_anchors).

For level ``l`` with grid ``(H, W)``, strides ``(s_h, s_w)`` and cell anchors ``c[a]`` (zero-centred
``(x1, y1, x2, y2)``, already rounded), the anchors are, for ``y`` in ``0..H-1``, ``x`` in ``0..W-1``,
``a`` in ``0..A-1`` in that order::

    (x * s_w + c[a, 0], y * s_h + c[a, 1], x * s_w + c[a, 2], y * s_h + c[a, 3])

with the shifts computed in int32 (as torchvision's ``arange(dtype=int32) * stride``) and added in the
cells' dtype. Levels are concatenated.
"""
from __future__ import annotations

import torch
from torch import Tensor


def cell_anchors(scales, aspect_ratios, dtype=torch.float32, device="cpu") -> Tensor:
    """Zero-centred anchors ``[len(ratios) * len(scales), 4]`` of one level, rounded (torchvision)."""
    scales = torch.as_tensor(scales, dtype=dtype, device=device)
    aspect_ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
    h_ratios = torch.sqrt(aspect_ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (h_ratios[:, None] * scales[None, :]).view(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


def grid_anchors(cell_anchors: list[Tensor], grid_sizes: list[int], strides: list[int]) -> Tensor:
    """Anchors of all levels, concatenated: ``[sum_l H_l * W_l * A_l, 4]`` (flat ``grid_sizes`` and
    ``strides``: ``[h0, w0, h1, w1, ...]``)."""
    out = []
    for level, cells in enumerate(cell_anchors):
        h, w = grid_sizes[2 * level], grid_sizes[2 * level + 1]
        s_h, s_w = strides[2 * level], strides[2 * level + 1]
        device = cells.device
        stride_w = torch.tensor(s_w, dtype=torch.int64, device=device)
        stride_h = torch.tensor(s_h, dtype=torch.int64, device=device)
        # int32 * 0-dim int64 tensor stays int32 (as in torchvision).
        shifts_x = torch.arange(0, w, dtype=torch.int32, device=device) * stride_w
        shifts_y = torch.arange(0, h, dtype=torch.int32, device=device) * stride_h
        shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
        out.append((shifts.view(-1, 1, 4) + cells.view(1, -1, 4)).reshape(-1, 4))
    return torch.cat(out)
