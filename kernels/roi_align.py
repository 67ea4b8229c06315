r"""RoIAlign (single- and multi-level, average or max pooling) in Triton, forward and backward.

Maths
-----
For RoI ``k`` = ``(n, x1, y1, x2, y2)`` on level ``l`` (map ``[C, H, W]`` of image ``n``, scale ``s``),
``offset = 0.5`` if aligned else ``0``::

    start_w = x1 * s - offset;  roi_w = (x2 * s - offset) - start_w;  roi_w = max(roi_w, 1) if not aligned
    bin_w = roi_w / PW;  grid_w = sampling_ratio if sampling_ratio > 0 else ceil(roi_w / PW)
    x(pw, ix) = start_w + pw * bin_w + (ix + .5) * bin_w / grid_w            (the same along y)

A sample outside ``[-1, H] x [-1, W]`` is 0; the others are clamped to the map and interpolated
bilinearly with torchvision's weights ``w1 = hy*hx, w2 = hy*lx, w3 = ly*hx, w4 = ly*lx`` (csrc/roi_align.h
has the same steps). ``out[k, c, ph, pw]`` is the mean over the ``grid_h * grid_w`` samples of the bin
(divided by ``max(grid_h * grid_w, 1)``), or in max mode their maximum (0 for a bin without samples).
fp32 divisions use ``div_rn`` so that GPU results round as the C++ kernels do.

Kernels
-------
``_fwd_kernel``: one program per (RoI, block of channels), all bins as a [bins, channels] tile; reads the
maps through their strides (NCHW, channels_last or any view, no copy). Levels: the maps stay where
they are; a small ``meta`` table gives, per level, the element offset of its storage from the first
map's, its H, W and strides, so one launch serves every level.

``_bwd_atomic_kernel`` (the default): same tiles; adds ``grad * w / count`` to the four corners of every
sample with ``atomic_add`` into a flat fp32/fp64 accumulator holding every level's gradient
channels-last.

``_bwd_det_kernel`` (``torch.are_deterministic_algorithms_enabled()``): one program per (image, block of
channels) walks all RoIs in index order with plain load/add/store; a program owns its channels of its
image, so no two programs touch one element and every element sums its terms in a fixed order:
bit-identical run to run, no atomics, no memory beyond the gradient. (Less parallel: N * C / BLOCK_C
programs.)

The ops are ``torch.library.custom_op`` s ``fastseg_triton::roi_align`` / ``multi_level_roi_align``
with backward ops and ``register_autograd``; under ``TRITON_INTERPRET=1`` they run on CPU tensors.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastseg import reference
from fastseg.ops._autograd import graph_grads

__all__ = ["roi_align", "multi_level_roi_align"]

# Channels per program: a bin's 4 corners are 4 contiguous runs in channels_last maps. 64 keeps a
# 256-channel FPN map at 4 programs per bin. Not tuned on a GPU yet.
BLOCK_C = 64
NUM_WARPS = 4
# int64 entries per level in the meta table: offset, H, W, strides n, c, h, w, gradient offset, C (padded).
META = 16


@triton.jit
def _div(a, b, IS_FP64: tl.constexpr):
    if IS_FP64:
        return a / b
    else:
        return tl.math.div_rn(a, b)


@triton.jit
def _geometry(c1, c2, scale, pooled, sr, ALIGNED: tl.constexpr, IS_FP64: tl.constexpr):
    if ALIGNED:
        start = c1 * scale - 0.5
        size = (c2 * scale - 0.5) - start
    else:
        start = c1 * scale
        size = c2 * scale - start
        size = tl.where(size < 1.0, 1.0, size)
    bin_size = _div(size, pooled.to(size.dtype), IS_FP64)
    if sr > 0:
        grid = sr
    else:
        grid = tl.math.ceil(_div(size, pooled.to(size.dtype), IS_FP64)).to(tl.int32)
    grid = tl.where(grid < 0, 0, grid)
    return start, bin_size, grid


@triton.jit
def _axis(start, bin_size, grid, p, i, size, IS_FP64: tl.constexpr):
    """Bilinear taps of sample i of bin p along one axis: (lo, hi, lo_w, hi_w, valid)."""
    v = start + tl.cast(p, start.dtype) * bin_size + _div((tl.cast(i, start.dtype) + 0.5) * bin_size,
                                                     tl.cast(grid, start.dtype),
                                                     IS_FP64)
    valid = (v >= -1.0) & (v <= tl.cast(size, start.dtype))
    v = tl.where(v <= 0.0, 0.0, v)
    lo = v.to(tl.int32)
    edge = lo >= size - 1
    lo = tl.where(edge, size - 1, lo)
    hi = tl.where(edge, lo, lo + 1)
    v = tl.where(edge, lo.to(start.dtype), v)
    hi_w = v - lo.to(start.dtype)
    lo_w = 1.0 - hi_w
    lo = tl.where(valid, lo, 0)
    hi = tl.where(valid, hi, 0)
    return lo, hi, lo_w, hi_w, valid


@triton.jit
def _roi(rois_ptr, levels_ptr, meta_ptr, scales_ptr, k, HAS_LEVELS: tl.constexpr, COMPUTE: tl.constexpr):
    r = rois_ptr + k * 5
    n = tl.load(r).to(COMPUTE).to(tl.int64)
    x1 = tl.load(r + 1).to(COMPUTE)
    y1 = tl.load(r + 2).to(COMPUTE)
    x2 = tl.load(r + 3).to(COMPUTE)
    y2 = tl.load(r + 4).to(COMPUTE)
    if HAS_LEVELS:
        lvl = tl.load(levels_ptr + k)
    else:
        lvl = tl.zeros((), tl.int64)
    m = meta_ptr + lvl * 16
    scale = tl.load(scales_ptr + lvl).to(COMPUTE)
    return n, x1, y1, x2, y2, scale, m


@triton.jit
def _level(m):
    return (m, tl.load(m + 0), tl.load(m + 1).to(tl.int32), tl.load(m + 2).to(tl.int32), tl.load(m + 3),
            tl.load(m + 4), tl.load(m + 5), tl.load(m + 6))


@triton.jit
def _tile_samples(x_ptr, off, n, sn, sc, sh, sw, H, W, c, cmask, bmask, sy, bh, gh, sx, bw, gw, ph, pw, iy, ix,
                  IS_FP64: tl.constexpr):
    """Sample (iy, ix) of every bin (vectors ph, pw) for channels c: its value [BLOCK_B, BLOCK_C], its
    four corner cell indices and weights [BLOCK_B], and whether it lies in the map."""
    COMPUTE: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    ylo, yhi, ylw, yhw, yv = _axis(sy, bh, gh, ph, iy, H, IS_FP64)
    xlo, xhi, xlw, xhw, xv = _axis(sx, bw, gw, pw, ix, W, IS_FP64)
    base = x_ptr + off + n * sn + c.to(tl.int64)[None, :] * sc
    m = bmask[:, None] & cmask[None, :]
    v1 = tl.load(base + (ylo * sh + xlo * sw)[:, None], mask=m, other=0.0).to(COMPUTE)
    v2 = tl.load(base + (ylo * sh + xhi * sw)[:, None], mask=m, other=0.0).to(COMPUTE)
    v3 = tl.load(base + (yhi * sh + xlo * sw)[:, None], mask=m, other=0.0).to(COMPUTE)
    v4 = tl.load(base + (yhi * sh + xhi * sw)[:, None], mask=m, other=0.0).to(COMPUTE)
    w1 = ylw * xlw
    w2 = ylw * xhw
    w3 = yhw * xlw
    w4 = yhw * xhw
    val = w1[:, None] * v1 + w2[:, None] * v2 + w3[:, None] * v3 + w4[:, None] * v4
    ok = yv & xv
    val = tl.where(ok[:, None], val, 0.0)
    return val, ok, ylo, yhi, xlo, xhi, w1, w2, w3, w4


@triton.jit
def _fwd_kernel(x_ptr, rois_ptr, levels_ptr, meta_ptr, scales_ptr, out_ptr, C, SR,
                PH: tl.constexpr, PW: tl.constexpr, ALIGNED: tl.constexpr, MAX_MODE: tl.constexpr,
                HAS_LEVELS: tl.constexpr, IS_FP64: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
    # One program per (RoI, block of channels), all bins of the RoI at once: a [BLOCK_B, BLOCK_C] tile.
    k = tl.program_id(0).to(tl.int64)
    cb = tl.program_id(1)
    COMPUTE: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    n, x1, y1, x2, y2, scale, mp = _roi(rois_ptr, levels_ptr, meta_ptr, scales_ptr, k, HAS_LEVELS, COMPUTE)
    m, off, H, W, sn, sc, sh, sw = _level(mp)
    b = tl.arange(0, BLOCK_B)
    bmask = b < PH * PW
    ph = b // PW
    pw = b % PW
    sy, bh, gh = _geometry(y1, y2, scale, tl.full((), PH, tl.int32), SR, ALIGNED, IS_FP64)
    sx, bw, gw = _geometry(x1, x2, scale, tl.full((), PW, tl.int32), SR, ALIGNED, IS_FP64)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    if MAX_MODE:
        acc = tl.full((BLOCK_B, BLOCK_C), float("-inf"), COMPUTE)
    else:
        acc = tl.zeros((BLOCK_B, BLOCK_C), COMPUTE)
    for iy in range(0, gh):
        for ix in range(0, gw):
            val, ok, ylo, yhi, xlo, xhi, w1, w2, w3, w4 = _tile_samples(
                x_ptr, off, n, sn, sc, sh, sw, H, W, c, cmask, bmask, sy, bh, gh, sx, bw, gw, ph, pw, iy, ix,
                IS_FP64)
            if MAX_MODE:
                acc = tl.where(val > acc, val, acc)
            else:
                acc += val
    if MAX_MODE:
        out = tl.where(gh * gw > 0, acc, 0.0)
    else:
        cnt = tl.maximum(gh * gw, 1)
        out = _div(acc, cnt.to(COMPUTE), IS_FP64)
    o = (k * C + c.to(tl.int64))[None, :] * (PH * PW) + b[:, None]
    tl.store(out_ptr + o, out.to(out_ptr.dtype.element_ty), mask=bmask[:, None] & cmask[None, :])


@triton.jit
def _bin_backward(x_ptr, acc_ptr, m, n, c, cmask, g, sy, bh, gh, sx, bw, gw, ph, pw,
                  MAX_MODE: tl.constexpr, ATOMIC: tl.constexpr, IS_FP64: tl.constexpr,
                  BLOCK_C: tl.constexpr):
    """Adds the gradient of one bin (channels c) to the channels-last accumulator."""
    COMPUTE: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    off = tl.load(m + 0)
    H = tl.load(m + 1).to(tl.int32)
    W = tl.load(m + 2).to(tl.int32)
    aoff = tl.load(m + 7)
    C = tl.load(m + 8)
    abase = acc_ptr + aoff + n * H * W * C + c
    if MAX_MODE:
        sn = tl.load(m + 3)
        sc = tl.load(m + 4)
        sh = tl.load(m + 5)
        sw = tl.load(m + 6)
        base = x_ptr + off + n * sn + c.to(tl.int64) * sc
        best = tl.full((BLOCK_C,), float("-inf"), COMPUTE)
        b1 = tl.full((BLOCK_C,), -1, tl.int64)
        b2 = tl.full((BLOCK_C,), -1, tl.int64)
        b3 = tl.full((BLOCK_C,), -1, tl.int64)
        b4 = tl.full((BLOCK_C,), -1, tl.int64)
        bw1 = tl.zeros((BLOCK_C,), COMPUTE)
        bw2 = tl.zeros((BLOCK_C,), COMPUTE)
        bw3 = tl.zeros((BLOCK_C,), COMPUTE)
        bw4 = tl.zeros((BLOCK_C,), COMPUTE)
        for iy in range(0, gh):
            ylo, yhi, ylw, yhw, yv = _axis(sy, bh, gh, ph, iy, H, IS_FP64)
            for ix in range(0, gw):
                xlo, xhi, xlw, xhw, xv = _axis(sx, bw, gw, pw, ix, W, IS_FP64)
                v1 = tl.load(base + ylo * sh + xlo * sw, mask=cmask, other=0.0).to(COMPUTE)
                v2 = tl.load(base + ylo * sh + xhi * sw, mask=cmask, other=0.0).to(COMPUTE)
                v3 = tl.load(base + yhi * sh + xlo * sw, mask=cmask, other=0.0).to(COMPUTE)
                v4 = tl.load(base + yhi * sh + xhi * sw, mask=cmask, other=0.0).to(COMPUTE)
                val = ylw * xlw * v1 + ylw * xhw * v2 + yhw * xlw * v3 + yhw * xhw * v4
                ok = yv & xv
                val = tl.where(ok, val, 0.0)
                take = val > best
                best = tl.where(take, val, best)
                # A winning sample outside the map has no inputs: index -1, nothing to add.
                b1 = tl.where(take, tl.where(ok, (ylo * W + xlo).to(tl.int64), -1), b1)
                b2 = tl.where(take, tl.where(ok, (ylo * W + xhi).to(tl.int64), -1), b2)
                b3 = tl.where(take, tl.where(ok, (yhi * W + xlo).to(tl.int64), -1), b3)
                b4 = tl.where(take, tl.where(ok, (yhi * W + xhi).to(tl.int64), -1), b4)
                bw1 = tl.where(take, ylw * xlw, bw1)
                bw2 = tl.where(take, ylw * xhw, bw2)
                bw3 = tl.where(take, yhw * xlw, bw3)
                bw4 = tl.where(take, yhw * xhw, bw4)
        ok = cmask & (b1 >= 0)
        _add(abase + b1 * C, g * bw1, ok, ATOMIC)
        _add(abase + b2 * C, g * bw2, ok, ATOMIC)
        _add(abase + b3 * C, g * bw3, ok, ATOMIC)
        _add(abase + b4 * C, g * bw4, ok, ATOMIC)
    else:
        cnt = tl.maximum(gh * gw, 1).to(COMPUTE)
        for iy in range(0, gh):
            ylo, yhi, ylw, yhw, yv = _axis(sy, bh, gh, ph, iy, H, IS_FP64)
            for ix in range(0, gw):
                xlo, xhi, xlw, xhw, xv = _axis(sx, bw, gw, pw, ix, W, IS_FP64)
                ok = tl.where(yv & xv, cmask, False)
                _add(abase + (ylo * W + xlo).to(tl.int64) * C, _div(g * (ylw * xlw), cnt, IS_FP64), ok, ATOMIC)
                _add(abase + (ylo * W + xhi).to(tl.int64) * C, _div(g * (ylw * xhw), cnt, IS_FP64), ok, ATOMIC)
                _add(abase + (yhi * W + xlo).to(tl.int64) * C, _div(g * (yhw * xlw), cnt, IS_FP64), ok, ATOMIC)
                _add(abase + (yhi * W + xhi).to(tl.int64) * C, _div(g * (yhw * xhw), cnt, IS_FP64), ok, ATOMIC)


@triton.jit
def _add(ptr, val, mask, ATOMIC: tl.constexpr):
    if ATOMIC:
        tl.atomic_add(ptr, val, mask=mask)
    else:
        tl.store(ptr, tl.load(ptr, mask=mask, other=0.0) + val, mask=mask)


@triton.jit
def _bwd_atomic_kernel(grad_ptr, gs_k, gs_c, x_ptr, rois_ptr, levels_ptr, meta_ptr, scales_ptr, acc_ptr, C, SR,
                       PH: tl.constexpr, PW: tl.constexpr, ALIGNED: tl.constexpr, MAX_MODE: tl.constexpr,
                       HAS_LEVELS: tl.constexpr, IS_FP64: tl.constexpr, BLOCK_B: tl.constexpr,
                       BLOCK_C: tl.constexpr):
    # Same tiles as the forward; atomics absorb bins (and RoIs) that share a corner.
    k = tl.program_id(0).to(tl.int64)
    cb = tl.program_id(1)
    COMPUTE: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    n, x1, y1, x2, y2, scale, mp = _roi(rois_ptr, levels_ptr, meta_ptr, scales_ptr, k, HAS_LEVELS, COMPUTE)
    m, off, H, W, sn, sc, sh, sw = _level(mp)
    aoff = tl.load(m + 7)
    b = tl.arange(0, BLOCK_B)
    bmask = b < PH * PW
    ph = b // PW
    pw = b % PW
    sy, bh, gh = _geometry(y1, y2, scale, tl.full((), PH, tl.int32), SR, ALIGNED, IS_FP64)
    sx, bw, gw = _geometry(x1, x2, scale, tl.full((), PW, tl.int32), SR, ALIGNED, IS_FP64)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    tmask = bmask[:, None] & cmask[None, :]
    g = tl.load(grad_ptr + k * gs_k + c.to(tl.int64)[None, :] * gs_c + b[:, None], mask=tmask, other=0.0).to(COMPUTE)
    abase = acc_ptr + aoff + n * H * W * C + c[None, :]
    if MAX_MODE:
        best = tl.full((BLOCK_B, BLOCK_C), float("-inf"), COMPUTE)
        i1 = tl.full((BLOCK_B, BLOCK_C), -1, tl.int64)
        i2 = tl.full((BLOCK_B, BLOCK_C), -1, tl.int64)
        i3 = tl.full((BLOCK_B, BLOCK_C), -1, tl.int64)
        i4 = tl.full((BLOCK_B, BLOCK_C), -1, tl.int64)
        bw1 = tl.zeros((BLOCK_B, BLOCK_C), COMPUTE)
        bw2 = tl.zeros((BLOCK_B, BLOCK_C), COMPUTE)
        bw3 = tl.zeros((BLOCK_B, BLOCK_C), COMPUTE)
        bw4 = tl.zeros((BLOCK_B, BLOCK_C), COMPUTE)
        for iy in range(0, gh):
            for ix in range(0, gw):
                val, ok, ylo, yhi, xlo, xhi, w1, w2, w3, w4 = _tile_samples(
                    x_ptr, off, n, sn, sc, sh, sw, H, W, c, cmask, bmask, sy, bh, gh, sx, bw, gw, ph, pw, iy, ix,
                    IS_FP64)
                take = val > best
                best = tl.where(take, val, best)
                # A winning sample outside the map has no inputs: index -1, nothing to add.
                i1 = tl.where(take, tl.where(ok, ylo * W + xlo, -1).to(tl.int64)[:, None], i1)
                i2 = tl.where(take, tl.where(ok, ylo * W + xhi, -1).to(tl.int64)[:, None], i2)
                i3 = tl.where(take, tl.where(ok, yhi * W + xlo, -1).to(tl.int64)[:, None], i3)
                i4 = tl.where(take, tl.where(ok, yhi * W + xhi, -1).to(tl.int64)[:, None], i4)
                bw1 = tl.where(take, w1[:, None], bw1)
                bw2 = tl.where(take, w2[:, None], bw2)
                bw3 = tl.where(take, w3[:, None], bw3)
                bw4 = tl.where(take, w4[:, None], bw4)
        ok = tmask & (i1 >= 0)
        tl.atomic_add(abase + i1 * C, g * bw1, mask=ok)
        tl.atomic_add(abase + i2 * C, g * bw2, mask=ok)
        tl.atomic_add(abase + i3 * C, g * bw3, mask=ok)
        tl.atomic_add(abase + i4 * C, g * bw4, mask=ok)
    else:
        cnt = tl.maximum(gh * gw, 1).to(COMPUTE)
        for iy in range(0, gh):
            ylo, yhi, ylw, yhw, yv = _axis(sy, bh, gh, ph, iy, H, IS_FP64)
            for ix in range(0, gw):
                xlo, xhi, xlw, xhw, xv = _axis(sx, bw, gw, pw, ix, W, IS_FP64)
                ok = tmask & (yv & xv)[:, None]
                tl.atomic_add(abase + ((ylo * W + xlo).to(tl.int64) * C)[:, None],
                              _div(g * (ylw * xlw)[:, None], cnt, IS_FP64), mask=ok)
                tl.atomic_add(abase + ((ylo * W + xhi).to(tl.int64) * C)[:, None],
                              _div(g * (ylw * xhw)[:, None], cnt, IS_FP64), mask=ok)
                tl.atomic_add(abase + ((yhi * W + xlo).to(tl.int64) * C)[:, None],
                              _div(g * (yhw * xlw)[:, None], cnt, IS_FP64), mask=ok)
                tl.atomic_add(abase + ((yhi * W + xhi).to(tl.int64) * C)[:, None],
                              _div(g * (yhw * xhw)[:, None], cnt, IS_FP64), mask=ok)


@triton.jit
def _bwd_det_kernel(grad_ptr, gs_k, gs_c, x_ptr, rois_ptr, levels_ptr, meta_ptr, scales_ptr, acc_ptr, C, SR, K,
                    PH: tl.constexpr, PW: tl.constexpr, ALIGNED: tl.constexpr, MAX_MODE: tl.constexpr,
                    HAS_LEVELS: tl.constexpr, IS_FP64: tl.constexpr, BLOCK_C: tl.constexpr):
    img = tl.program_id(0).to(tl.int64)
    cb = tl.program_id(1)
    COMPUTE: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    for k in range(0, K):
        n, x1, y1, x2, y2, scale, m = _roi(rois_ptr, levels_ptr, meta_ptr, scales_ptr, k, HAS_LEVELS, COMPUTE)
        if n == img:
            sy, bh, gh = _geometry(y1, y2, scale, tl.full((), PH, tl.int32), SR, ALIGNED, IS_FP64)
            sx, bw, gw = _geometry(x1, x2, scale, tl.full((), PW, tl.int32), SR, ALIGNED, IS_FP64)
            for b in range(0, PH * PW):
                g = tl.load(grad_ptr + k * gs_k + c.to(tl.int64) * gs_c + b, mask=cmask, other=0.0).to(COMPUTE)
                _bin_backward(x_ptr, acc_ptr, m, n, c, cmask, g, sy, bh, gh, sx, bw, gw, b // PW, b % PW,
                              MAX_MODE, False, IS_FP64, BLOCK_C)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------
def _blocks(bins, C):
    """Tile [BLOCK_B bins, BLOCK_C channels]: every bin of the RoI, and channels up to 4096 elements."""
    block_b = triton.next_power_of_2(bins)
    block_c = max(1, min(triton.next_power_of_2(C), 4096 // block_b, BLOCK_C))
    return block_b, block_c


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _meta(features):
    """Per level: element offset of its storage from the first map's, H, W, strides (n, c, h, w), offset
    of its channels-last gradient in the flat accumulator, C."""
    f0 = features[0]
    item = f0.element_size()
    rows, acc_off = [], 0
    for f in features:
        delta = f.data_ptr() - f0.data_ptr()
        if delta % item:
            raise RuntimeError("roi_align (triton): feature maps must be aligned to their element size")
        rows.append([delta // item, f.shape[2], f.shape[3], *f.stride(), acc_off, f.shape[1]] + [0] * 7)
        acc_off += f.numel()
    return torch.tensor(rows, dtype=torch.int64, device=f0.device), acc_off


def _check(op, features, rois, levels):
    if not all(f.is_cuda or f.device.type == "cpu" for f in features):
        raise RuntimeError(f"{op} (triton): CUDA tensors, or CPU tensors under TRITON_INTERPRET=1")
    f0 = features[0]
    for f in features:
        if f.dim() != 4 or f.dtype != f0.dtype or f.device != f0.device or f.shape[:2] != f0.shape[:2]:
            raise ValueError(f"{op}: all feature maps must be [N, C, H, W] with the same N, C, dtype and device")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"{op}: rois must be [K, 5], got shape {list(rois.shape)}")


def _forward(features, rois, levels, scales, ph, pw, sampling_ratio, aligned, max_mode):
    f0 = features[0]
    K, C = rois.shape[0], f0.shape[1]
    out = torch.empty((K, C, ph, pw), dtype=f0.dtype, device=f0.device)
    if K == 0 or C == 0:
        return out
    meta, _ = _meta(features)
    rois_c = rois.to(_compute_dtype(f0.dtype)).contiguous()
    lv = levels.to(torch.int64).contiguous() if levels is not None else rois_c  # unused when no levels
    sc = torch.tensor(scales, dtype=torch.float64, device=f0.device)
    block_b, block_c = _blocks(ph * pw, C)
    grid = (K, triton.cdiv(C, block_c))
    _fwd_kernel[grid](f0, rois_c, lv, meta, sc, out, C, sampling_ratio, PH=ph, PW=pw, ALIGNED=aligned,
                      MAX_MODE=max_mode, HAS_LEVELS=levels is not None, IS_FP64=f0.dtype == torch.float64,
                      BLOCK_B=block_b, BLOCK_C=block_c, num_warps=NUM_WARPS)
    return out


def _backward(grad, features, rois, levels, scales, ph, pw, sampling_ratio, aligned, max_mode, deterministic):
    f0 = features[0]
    K, C = rois.shape[0], f0.shape[1]
    ct = _compute_dtype(f0.dtype)
    meta, total = _meta(features)
    acc = torch.zeros(total, dtype=ct, device=f0.device)
    if K > 0 and C > 0:
        rois_c = rois.to(ct).contiguous()
        lv = levels.to(torch.int64).contiguous() if levels is not None else rois_c
        sc = torch.tensor(scales, dtype=torch.float64, device=f0.device)
        g = grad.contiguous()
        common = dict(PH=ph, PW=pw, ALIGNED=aligned, MAX_MODE=max_mode, HAS_LEVELS=levels is not None,
                      IS_FP64=f0.dtype == torch.float64, BLOCK_C=BLOCK_C, num_warps=NUM_WARPS)
        if deterministic:
            grid = (f0.shape[0], triton.cdiv(C, BLOCK_C))
            _bwd_det_kernel[grid](g, g.stride(0), g.stride(1), f0, rois_c, lv, meta, sc, acc, C, sampling_ratio, K,
                                  **common)
        else:
            block_b, block_c = _blocks(ph * pw, C)
            common.update(BLOCK_C=block_c)
            _bwd_atomic_kernel[(K, triton.cdiv(C, block_c))](g, g.stride(0), g.stride(1), f0, rois_c, lv, meta, sc,
                                                            acc, C, sampling_ratio, BLOCK_B=block_b, **common)
    grads, start = [], 0
    for f in features:
        N, _, H, W = f.shape
        a = acc[start:start + f.numel()].view(N, H, W, C).permute(0, 3, 1, 2)
        start += f.numel()
        cl = f.is_contiguous(memory_format=torch.channels_last) and not f.is_contiguous()
        # a copy: the levels share one accumulator, and outputs may not alias each other
        grads.append(a.to(dtype=f.dtype, copy=True,
                          memory_format=torch.channels_last if cl else torch.contiguous_format))
    return grads


# --------------------------------------------------------------------------------------------
# Registration: custom ops with fake kernels and autograd
# --------------------------------------------------------------------------------------------
def _grad_like(f):
    cl = f.is_contiguous(memory_format=torch.channels_last) and not f.is_contiguous()
    return torch.empty(f.shape, dtype=f.dtype, device=f.device,
                       memory_format=torch.channels_last if cl else torch.contiguous_format)


@torch.library.custom_op("fastseg_triton::roi_align", mutates_args=())
def _roi_align_op(input: torch.Tensor, rois: torch.Tensor, spatial_scale: float, pooled_height: int,
                  pooled_width: int, sampling_ratio: int, aligned: bool, max_mode: bool) -> torch.Tensor:
    _check("roi_align", [input], rois, None)
    return _forward([input], rois, None, [spatial_scale], pooled_height, pooled_width, sampling_ratio, aligned,
                    max_mode)


@_roi_align_op.register_fake
def _(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, max_mode):
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


@torch.library.custom_op("fastseg_triton::roi_align_backward", mutates_args=())
def _roi_align_backward_op(grad: torch.Tensor, input: torch.Tensor, rois: torch.Tensor, spatial_scale: float,
                           pooled_height: int, pooled_width: int, sampling_ratio: int, aligned: bool,
                           max_mode: bool, deterministic: bool) -> torch.Tensor:
    return _backward(grad, [input], rois, None, [spatial_scale], pooled_height, pooled_width, sampling_ratio,
                     aligned, max_mode, deterministic)[0]


@_roi_align_backward_op.register_fake
def _(grad, input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, max_mode,
      deterministic):
    return _grad_like(input)


def _setup(ctx, inputs, output):
    input, rois, *args = inputs
    ctx.save_for_backward(input, rois)
    ctx.args = args


def _bwd(ctx, grad):
    input, rois = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: differentiable gradients (fastseg/ops/_autograd.py)
        (g,) = graph_grads(lambda t: reference.roi_align(t, rois, *ctx.args), (input,), (True,), grad)
        return g, None, None, None, None, None, None, None
    g = _roi_align_backward_op(grad, input, rois, *ctx.args, torch.are_deterministic_algorithms_enabled())
    return g, None, None, None, None, None, None, None


_roi_align_op.register_autograd(_bwd, setup_context=_setup)


@torch.library.custom_op("fastseg_triton::multi_level_roi_align", mutates_args=())
def _ml_op(features: list[torch.Tensor], rois: torch.Tensor, levels: torch.Tensor, spatial_scales: list[float],
           pooled_height: int, pooled_width: int, sampling_ratio: int, aligned: bool) -> torch.Tensor:
    _check("multi_level_roi_align", features, rois, levels)
    return _forward(features, rois, levels, spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned,
                    False)


@_ml_op.register_fake
def _(features, rois, levels, spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned):
    return features[0].new_empty((rois.shape[0], features[0].shape[1], pooled_height, pooled_width))


@torch.library.custom_op("fastseg_triton::multi_level_roi_align_backward", mutates_args=())
def _ml_backward_op(grad: torch.Tensor, features: list[torch.Tensor], rois: torch.Tensor, levels: torch.Tensor,
                    spatial_scales: list[float], pooled_height: int, pooled_width: int, sampling_ratio: int,
                    aligned: bool, deterministic: bool) -> list[torch.Tensor]:
    return _backward(grad, features, rois, levels, spatial_scales, pooled_height, pooled_width, sampling_ratio,
                     aligned, False, deterministic)


@_ml_backward_op.register_fake
def _(grad, features, rois, levels, spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned,
      deterministic):
    return [_grad_like(f) for f in features]


def _ml_setup(ctx, inputs, output):
    features, rois, levels, *args = inputs
    ctx.save_for_backward(rois, levels, *features)
    ctx.args = args


def _ml_bwd(ctx, grad):
    rois, levels, *features = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: differentiable gradients (fastseg/ops/_autograd.py)
        grads = graph_grads(lambda *fs: reference.multi_level_roi_align(list(fs), rois, levels, *ctx.args), features,
                            [True] * len(features), grad)
        return grads, None, None, None, None, None, None, None
    grads = _ml_backward_op(grad, features, rois, levels, *ctx.args, torch.are_deterministic_algorithms_enabled())
    return list(grads), None, None, None, None, None, None, None


_ml_op.register_autograd(_ml_bwd, setup_context=_ml_setup)


def roi_align(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, max_mode=False):
    return _roi_align_op(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, max_mode)


def multi_level_roi_align(features, rois, levels, spatial_scales, pooled_height, pooled_width, sampling_ratio,
                          aligned):
    return _ml_op(list(features), rois, levels, list(spatial_scales), pooled_height, pooled_width, sampling_ratio,
                  aligned)
