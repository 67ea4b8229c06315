"""RoIAlign in plain PyTorch: the oracle of the tests and the ``torch`` backend.

Written for clarity: one RoI at a time, in torchvision's arithmetic (csrc/roi_align.h has the same
steps in C++). Autograd differentiates it (through the gathers), so it is also the oracle of the
backward.
"""
from __future__ import annotations

import torch
from torch import Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16 are computed in fp32, fp64 in fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def axis_samples(c1: Tensor, c2: Tensor, scale: float, pooled: int, sampling_ratio: int, aligned: bool,
                 size: int):
    """The sample coordinates of one RoI along one axis, as bilinear taps.

    Returns ``(lo, hi, lo_w, hi_w, valid, grid)``, each tensor of ``pooled * grid`` entries ordered
    by (bin, sub-sample). Every step is a 0-d or 1-d tensor operation in the compute dtype, so each
    rounds like torchvision's C++.
    """
    dt = c1.dtype
    offset = torch.tensor(0.5 if aligned else 0.0, dtype=dt)
    s = torch.tensor(scale, dtype=dt)
    start = c1 * s - offset
    extent = (c2 * s - offset) - start
    if not aligned:
        extent = torch.clamp(extent, min=1.0)  # std::max(extent, 1)
    bin_size = extent / pooled
    grid = sampling_ratio if sampling_ratio > 0 else int(torch.ceil(extent / pooled).item())
    grid = max(grid, 0)  # a negative extent (aligned, x2 < x1) samples nothing
    p = torch.arange(pooled, dtype=dt).repeat_interleave(grid)
    i = torch.arange(grid, dtype=dt).repeat(pooled)
    v = start + p * bin_size + (i + 0.5) * bin_size / grid
    valid = (v >= -1.0) & (v <= size)
    v = torch.where(v <= 0, torch.zeros_like(v), v)
    lo = v.to(torch.int64)  # truncation, v >= 0 here
    at_edge = lo >= size - 1
    lo = torch.where(at_edge, torch.full_like(lo, size - 1), lo)
    hi = torch.where(at_edge, lo, lo + 1)
    v = torch.where(at_edge, lo.to(dt), v)
    hi_w = v - lo.to(dt)
    lo_w = 1.0 - hi_w
    lo = torch.where(valid, lo, torch.zeros_like(lo)).clamp(max=max(size - 1, 0))
    hi = torch.where(valid, hi, torch.zeros_like(hi)).clamp(max=max(size - 1, 0))
    return lo, hi, lo_w, hi_w, valid, grid


def roi_align_single(feature: Tensor, box: Tensor, scale: float, pooled_height: int, pooled_width: int,
                     sampling_ratio: int, aligned: bool, max_mode: bool = False) -> Tensor:
    """RoIAlign of one roi ``(batch index, x1, y1, x2, y2)`` (compute dtype) on one map ``[C, H, W]``:
    ``[C, ph, pw]``."""
    C, H, W = feature.shape
    ylo, yhi, ylw, yhw, yv, gh = axis_samples(box[2], box[4], scale, pooled_height, sampling_ratio, aligned, H)
    xlo, xhi, xlw, xhw, xv, gw = axis_samples(box[1], box[3], scale, pooled_width, sampling_ratio, aligned, W)
    if H == 0 or W == 0 or gh == 0 or gw == 0:
        return feature.new_zeros(C, pooled_height, pooled_width)
    # The four taps of every sample (rows: y samples, columns: x samples), torchvision's weights
    # w1 = hy*hx, w2 = hy*lx, w3 = ly*hx, w4 = ly*lx and its sum order.
    f = feature
    v1 = f[:, ylo][:, :, xlo]
    v2 = f[:, ylo][:, :, xhi]
    v3 = f[:, yhi][:, :, xlo]
    v4 = f[:, yhi][:, :, xhi]
    w1 = ylw[:, None] * xlw[None, :]
    w2 = ylw[:, None] * xhw[None, :]
    w3 = yhw[:, None] * xlw[None, :]
    w4 = yhw[:, None] * xhw[None, :]
    val = w1 * v1 + w2 * v2 + w3 * v3 + w4 * v4
    val = torch.where(yv[:, None] & xv[None, :], val, torch.zeros_like(val))  # outside the map: 0
    val = val.reshape(C, pooled_height, gh, pooled_width, gw)
    if max_mode:
        return val.amax(dim=(2, 4))
    return val.sum(dim=(2, 4)) / max(gh * gw, 1)


def multi_level_roi_align(features: list[Tensor], rois: Tensor, levels: Tensor | None, scales: list[float],
                          pooled_height: int, pooled_width: int, sampling_ratio: int, aligned: bool,
                          max_mode: bool = False) -> Tensor:
    """RoI k pooled from ``features[levels[k]]`` at ``scales[levels[k]]``; ``levels=None``: all from level 0."""
    f0 = features[0]
    ct = compute_dtype(f0.dtype)
    K = rois.shape[0]
    out = []
    r = rois.to(ct)
    for k in range(K):
        lv = int(levels[k]) if levels is not None else 0
        n = int(r[k, 0].item())  # truncation, as torchvision's int cast
        out.append(roi_align_single(features[lv][n].to(ct), r[k], scales[lv], pooled_height, pooled_width,
                                    sampling_ratio, aligned, max_mode))
    res = torch.stack(out) if out else f0.new_zeros(0, f0.shape[1], pooled_height, pooled_width, dtype=ct)
    return (res + connect(features)).to(f0.dtype)


def connect(tensors: list[Tensor]) -> Tensor:
    """An exact 0 that depends on every tensor (a sum over none of its elements), so that a map no RoI
    reads still gets a gradient of zeros, as from torchvision, rather than None."""
    return torch.stack([t.flatten()[:0].sum().to(torch.float64) for t in tensors]).sum().to(
        compute_dtype(tensors[0].dtype))


def roi_align(input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int,
              sampling_ratio: int, aligned: bool, max_mode: bool = False) -> Tensor:
    """torchvision's ``roi_align`` on ``rois [K, 5]`` (batch index, x1, y1, x2, y2)."""
    return multi_level_roi_align([input], rois, None, [spatial_scale], pooled_height, pooled_width,
                                 sampling_ratio, aligned, max_mode)
