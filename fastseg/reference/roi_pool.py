"""RoIPool (Fast R-CNN max pooling) in plain PyTorch: the oracle of the tests and the ``torch``
backend. One RoI and one bin at a time, in torchvision's integer arithmetic (csrc/roi_pool.h has the
same steps in C++); autograd differentiates it (the gradient goes to each bin's argmax)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from fastseg.reference.roi_align import compute_dtype, connect


def round_half_away(v: Tensor) -> int:
    """std::round of a 0-d tensor: halves away from zero (torch.round rounds them to even)."""
    t = torch.trunc(v)
    frac = (v - t).abs().item()  # exact: v - trunc(v) is representable
    r = int(t.item())
    if frac >= 0.5:
        r += 1 if v.item() > 0 else -1
    return r


def roi_pool_bins(box: Tensor, scale: float, pooled_height: int, pooled_width: int, H: int, W: int):
    """The cells ``(hstart, hend, wstart, wend)`` of every bin of one roi (batch index, x1, y1, x2, y2)."""
    s = torch.tensor(scale, dtype=box.dtype)
    sw, sh = round_half_away(box[1] * s), round_half_away(box[2] * s)
    ew, eh = round_half_away(box[3] * s), round_half_away(box[4] * s)
    rw, rh = max(ew - sw + 1, 1), max(eh - sh + 1, 1)
    bin_h = torch.tensor(rh, dtype=box.dtype) / pooled_height
    bin_w = torch.tensor(rw, dtype=box.dtype) / pooled_width
    clip = lambda v, hi: min(max(v, 0), hi)  # noqa: E731
    bins = []
    for ph in range(pooled_height):
        for pw in range(pooled_width):
            hs = math.floor((ph * bin_h).item())
            he = math.ceil(((ph + 1) * bin_h).item())
            ws = math.floor((pw * bin_w).item())
            we = math.ceil(((pw + 1) * bin_w).item())
            bins.append((clip(hs + sh, H), clip(he + sh, H), clip(ws + sw, W), clip(we + sw, W)))
    return bins


def roi_pool(input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int) -> Tensor:
    """torchvision's ``roi_pool`` on ``rois [K, 5]``: the max of each bin (0 for an empty bin)."""
    N, C, H, W = input.shape
    ct = compute_dtype(input.dtype)
    r = rois.to(ct)
    out = []
    for k in range(r.shape[0]):
        n = int(r[k, 0].item())
        x = input[n].to(ct)
        vals = []
        for hs, he, ws, we in roi_pool_bins(r[k], spatial_scale, pooled_height, pooled_width, H, W):
            if he <= hs or we <= ws:
                vals.append(x.new_zeros(C))
                continue
            region = x[:, hs:he, ws:we].reshape(C, -1)
            # torchvision starts from -FLT_MAX: a bin of -inf values pools to -FLT_MAX
            vals.append(torch.clamp(region.amax(dim=1), min=-torch.finfo(torch.float32).max))
        out.append(torch.stack(vals, 1).reshape(C, pooled_height, pooled_width))
    res = torch.stack(out) if out else input.new_zeros(0, C, pooled_height, pooled_width, dtype=ct)
    return (res + connect([input])).to(input.dtype)
