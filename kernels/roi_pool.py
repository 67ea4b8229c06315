r"""RoIPool (Fast R-CNN max pooling) in Triton, forward and backward.

Maths (torchvision's integer arithmetic; csrc/roi_pool.h has the same steps)::

    start_w = round(x1 * s); end_w = round(x2 * s)          # round: halves away from zero
    roi_w = max(end_w - start_w + 1, 1);  bin_w = roi_w / PW   (the same along y)
    wstart = clip(floor(pw * bin_w) + start_w, 0, W);  wend = clip(ceil((pw + 1) * bin_w) + start_w, 0, W)
    out[k, c, ph, pw] = max over the bin's cells (starting from -FLT_MAX), 0 for an empty bin

``_fwd_kernel``: one program per (RoI, block of channels), all bins as a [bins, channels] tile, reading the
map through its strides; it also writes the argmax (``h * W + w``, -1 when no cell beat the start).
Backward: ``_bwd_atomic_kernel`` adds each bin's gradient at its argmax with ``atomic_add``; under
``torch.are_deterministic_algorithms_enabled()`` ``_bwd_det_kernel`` runs one program per (image,
block of channels) over all RoIs in index order with plain load/add/store: bit-identical run to run.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastseg import reference
from fastseg.ops._autograd import graph_grads

__all__ = ["roi_pool"]

BLOCK_C = 64  # channels per program (see kernels/roi_align.py); not tuned on a GPU yet
NUM_WARPS = 4
FLT_MAX = tl.constexpr(3.4028234663852886e38)  # a constexpr: GPU-compiled kernels read no other global


@triton.jit
def _round_half_away(v):
    t = v.to(tl.int64)  # truncation
    frac = v - t.to(v.dtype)
    up = tl.where(v > 0, 1, -1)
    return tl.where(tl.abs(frac) >= 0.5, t + up, t)


@triton.jit
def _bin(rois_ptr, k, scale, ph, pw, H, W, PH: tl.constexpr, PW: tl.constexpr, COMPUTE: tl.constexpr):
    r = rois_ptr + k * 5
    n = tl.load(r).to(COMPUTE).to(tl.int64)
    sw = _round_half_away(tl.load(r + 1).to(COMPUTE) * scale)
    sh = _round_half_away(tl.load(r + 2).to(COMPUTE) * scale)
    ew = _round_half_away(tl.load(r + 3).to(COMPUTE) * scale)
    eh = _round_half_away(tl.load(r + 4).to(COMPUTE) * scale)
    rw = tl.maximum(ew - sw + 1, 1)
    rh = tl.maximum(eh - sh + 1, 1)
    if COMPUTE == tl.float64:
        bin_h = rh.to(COMPUTE) / PH
        bin_w = rw.to(COMPUTE) / PW
    else:
        bin_h = tl.math.div_rn(rh.to(COMPUTE), tl.full((), PH, COMPUTE))
        bin_w = tl.math.div_rn(rw.to(COMPUTE), tl.full((), PW, COMPUTE))
    hs = tl.math.floor(tl.cast(ph, COMPUTE) * bin_h).to(tl.int64) + sh
    he = tl.math.ceil(tl.cast(ph + 1, COMPUTE) * bin_h).to(tl.int64) + sh
    ws = tl.math.floor(tl.cast(pw, COMPUTE) * bin_w).to(tl.int64) + sw
    we = tl.math.ceil(tl.cast(pw + 1, COMPUTE) * bin_w).to(tl.int64) + sw
    hs = tl.minimum(tl.maximum(hs, 0), H)
    he = tl.minimum(tl.maximum(he, 0), H)
    ws = tl.minimum(tl.maximum(ws, 0), W)
    we = tl.minimum(tl.maximum(we, 0), W)
    return n, hs, he, ws, we


@triton.jit
def _fwd_kernel(x_ptr, rois_ptr, out_ptr, arg_ptr, C, H, W, sn, sc, sh, sw, scale,
                PH: tl.constexpr, PW: tl.constexpr, IS_FP64: tl.constexpr, BLOCK_B: tl.constexpr,
                BLOCK_C: tl.constexpr):
    # One program per (RoI, block of channels), every bin at once ([BLOCK_B, BLOCK_C] tile): the loop
    # runs over the largest bin's extent, each bin reading its own cells (masked beyond its end).
    k = tl.program_id(0).to(tl.int64)
    cb = tl.program_id(1)
    COMPUTE: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    b = tl.arange(0, BLOCK_B)
    bmask = b < PH * PW
    n, hs, he, ws, we = _bin(rois_ptr, k, tl.cast(scale, COMPUTE), b // PW, b % PW, H, W, PH, PW, COMPUTE)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    tmask = bmask[:, None] & cmask[None, :]
    base = x_ptr + n * sn + c.to(tl.int64)[None, :] * sc
    empty = (he <= hs) | (we <= ws)
    best = tl.full((BLOCK_B, BLOCK_C), -FLT_MAX, COMPUTE)
    best = tl.where(empty[:, None], 0.0, best)
    arg = tl.full((BLOCK_B, BLOCK_C), -1, tl.int32)
    span_h = tl.max(tl.where(bmask, he - hs, 0))
    span_w = tl.max(tl.where(bmask, we - ws, 0))
    for dh in range(0, span_h):
        h = hs + dh
        for dw in range(0, span_w):
            w = ws + dw
            inside = bmask & (h < he) & (w < we)
            m = inside[:, None] & cmask[None, :]
            v = tl.load(base + (h * sh + w * sw)[:, None], mask=m, other=0.0).to(COMPUTE)
            take = m & (v > best)
            best = tl.where(take, v, best)
            arg = tl.where(take, (h * W + w).to(tl.int32)[:, None], arg)
    o = (k * C + c.to(tl.int64))[None, :] * (PH * PW) + b[:, None]
    tl.store(out_ptr + o, best.to(out_ptr.dtype.element_ty), mask=tmask)
    tl.store(arg_ptr + o, arg, mask=tmask)


@triton.jit
def _bwd_atomic_kernel(grad_ptr, arg_ptr, rois_ptr, acc_ptr, C, HW, BINS: tl.constexpr, COMPUTE: tl.constexpr,
                       BLOCK_C: tl.constexpr):
    k = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1)
    cb = tl.program_id(2)
    n = tl.load(rois_ptr + k * 5).to(COMPUTE).to(tl.int64)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    o = (k * C + c) * BINS + b
    g = tl.load(grad_ptr + o, mask=cmask, other=0.0).to(COMPUTE)
    a = tl.load(arg_ptr + o, mask=cmask, other=-1)
    ok = cmask & (a >= 0)
    tl.atomic_add(acc_ptr + (n * C + c) * HW + a, g, mask=ok)


@triton.jit
def _bwd_det_kernel(grad_ptr, arg_ptr, rois_ptr, acc_ptr, C, HW, K, BINS: tl.constexpr, COMPUTE: tl.constexpr,
                    BLOCK_C: tl.constexpr):
    img = tl.program_id(0).to(tl.int64)
    cb = tl.program_id(1)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    for k in range(0, K):
        n = tl.load(rois_ptr + k * 5).to(COMPUTE).to(tl.int64)
        if n == img:
            for b in range(0, BINS):
                o = (k * C + c) * BINS + b
                g = tl.load(grad_ptr + o, mask=cmask, other=0.0).to(COMPUTE)
                a = tl.load(arg_ptr + o, mask=cmask, other=-1)
                ok = cmask & (a >= 0)
                p = acc_ptr + (n * C + c) * HW + a
                tl.store(p, tl.load(p, mask=ok, other=0.0) + g, mask=ok)


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _grad_like(f):
    cl = f.is_contiguous(memory_format=torch.channels_last) and not f.is_contiguous()
    return torch.empty(f.shape, dtype=f.dtype, device=f.device,
                       memory_format=torch.channels_last if cl else torch.contiguous_format)


@torch.library.custom_op("fastseg_triton::roi_pool", mutates_args=())
def _roi_pool_op(input: torch.Tensor, rois: torch.Tensor, spatial_scale: float, pooled_height: int,
                 pooled_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    if input.dim() != 4 or rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"roi_pool: input must be [N, C, H, W] and rois [K, 5], got {list(input.shape)} and "
                         f"{list(rois.shape)}")
    N, C, H, W = input.shape
    K = rois.shape[0]
    out = torch.empty((K, C, pooled_height, pooled_width), dtype=input.dtype, device=input.device)
    arg = torch.empty((K, C, pooled_height, pooled_width), dtype=torch.int32, device=input.device)
    if K and C:
        ct = _compute_dtype(input.dtype)
        block_b = triton.next_power_of_2(pooled_height * pooled_width)
        block_c = max(1, min(triton.next_power_of_2(C), 4096 // block_b, BLOCK_C))
        grid = (K, triton.cdiv(C, block_c))
        _fwd_kernel[grid](input, rois.to(ct).contiguous(), out, arg, C, H, W, *input.stride(), spatial_scale,
                          PH=pooled_height, PW=pooled_width, IS_FP64=ct == torch.float64, BLOCK_B=block_b,
                          BLOCK_C=block_c, num_warps=NUM_WARPS)
    return out, arg


@_roi_pool_op.register_fake
def _(input, rois, spatial_scale, pooled_height, pooled_width):
    shape = (rois.shape[0], input.shape[1], pooled_height, pooled_width)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int32)


@torch.library.custom_op("fastseg_triton::roi_pool_backward", mutates_args=())
def _roi_pool_backward_op(grad: torch.Tensor, input: torch.Tensor, rois: torch.Tensor, argmax: torch.Tensor,
                          deterministic: bool) -> torch.Tensor:
    N, C, H, W = input.shape
    K = rois.shape[0]
    ct = _compute_dtype(input.dtype)
    acc = torch.zeros((N, C, H, W), dtype=ct, device=input.device)
    bins = grad.shape[2] * grad.shape[3]
    if K and C and bins:
        g, a, r = grad.contiguous(), argmax.contiguous(), rois.to(ct).contiguous()
        tl_ct = tl.float64 if ct == torch.float64 else tl.float32
        if deterministic:
            _bwd_det_kernel[(N, triton.cdiv(C, BLOCK_C))](g, a, r, acc, C, H * W, K, BINS=bins, COMPUTE=tl_ct,
                                                           BLOCK_C=BLOCK_C, num_warps=NUM_WARPS)
        else:
            _bwd_atomic_kernel[(K, bins, triton.cdiv(C, BLOCK_C))](g, a, r, acc, C, H * W, BINS=bins, COMPUTE=tl_ct,
                                                                    BLOCK_C=BLOCK_C, num_warps=NUM_WARPS)
    res = acc.to(input.dtype)
    cl = input.is_contiguous(memory_format=torch.channels_last) and not input.is_contiguous()
    return res.contiguous(memory_format=torch.channels_last) if cl else res


@_roi_pool_backward_op.register_fake
def _(grad, input, rois, argmax, deterministic):
    return _grad_like(input)


def _setup(ctx, inputs, output):
    input, rois, *args = inputs
    ctx.save_for_backward(input, rois, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.args = args


def _bwd(ctx, grad, grad_arg):
    input, rois, argmax = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: differentiable gradients (fastseg/ops/_autograd.py)
        (g,) = graph_grads(lambda t: reference.roi_pool(t, rois, *ctx.args), (input,), (True,), grad)
        return g, None, None, None, None
    g = _roi_pool_backward_op(grad, input, rois, argmax, torch.are_deterministic_algorithms_enabled())
    return g, None, None, None, None


_roi_pool_op.register_autograd(_bwd, setup_context=_setup)


def roi_pool(input, rois, spatial_scale, pooled_height, pooled_width):
    return _roi_pool_op(input, rois, spatial_scale, pooled_height, pooled_width)[0]
