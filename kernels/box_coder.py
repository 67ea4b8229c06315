r"""Box coding (torchvision's ``BoxCoder.decode_single`` / ``encode_single``) in Triton.

Maths (per reference box ``(x1, y1, x2, y2)`` and codes ``(dx, dy, dw, dh)``, weights ``w``)::

    width = x2 - x1;  ctr_x = x1 + 0.5 width                      (y alike)
    pcx = (dx / wx) * width + ctr_x;  pw = exp(min(dw / ww, clip)) * width
    out = (pcx - 0.5 pw, pcy - 0.5 ph, pcx + 0.5 pw, pcy + 0.5 ph)      [clamped to the image]

Every op is rounded to the tensor dtype T, as PyTorch's op-by-op evaluation does (``_r``). ``/ w`` is a
division on CPU tensors (the interpreter) and a multiplication by the reciprocal on the GPU, as
PyTorch's own kernels do on each device. One program per ``BLOCK`` (box, class) rows.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from fastseg.kernels._interpreter import cast

__all__ = ["box_decode", "box_encode"]

BLOCK = 256


@triton.jit
def _r(x, T: tl.constexpr, ROUND: tl.constexpr):
    # The value an intermediate tensor of dtype T holds.
    if ROUND:
        return cast(x, T).to(tl.float32)
    else:
        return x


@triton.jit
def _load4(ptr, i, mask, other_hi, ACC: tl.constexpr):
    """Row i of an [N, 4] tensor in type ACC; masked lanes read (0, 0, other_hi, other_hi)."""
    a = tl.load(ptr + 4 * i + 0, mask=mask, other=0.0).to(ACC)
    b = tl.load(ptr + 4 * i + 1, mask=mask, other=0.0).to(ACC)
    c = tl.load(ptr + 4 * i + 2, mask=mask, other=other_hi).to(ACC)
    d = tl.load(ptr + 4 * i + 3, mask=mask, other=other_hi).to(ACC)
    return a, b, c, d


@triton.jit
def _store4(ptr, i, mask, a, b, c, d, T: tl.constexpr):
    tl.store(ptr + 4 * i + 0, cast(a, T), mask=mask)
    tl.store(ptr + 4 * i + 1, cast(b, T), mask=mask)
    tl.store(ptr + 4 * i + 2, cast(c, T), mask=mask)
    tl.store(ptr + 4 * i + 3, cast(d, T), mask=mask)


@triton.jit
def _size_center(x1, y1, x2, y2, T: tl.constexpr, ROUND: tl.constexpr):
    """Width, height and centre of boxes, rounded as torchvision's op-by-op evaluation rounds them."""
    w = _r(x2 - x1, T, ROUND)
    h = _r(y2 - y1, T, ROUND)
    return w, h, _r(x1 + _r(0.5 * w, T, ROUND), T, ROUND), _r(y1 + _r(0.5 * h, T, ROUND), T, ROUND)


@triton.jit
def _box_decode_kernel(codes_ptr, boxes_ptr, out_ptr, rows, k, params_ptr,
                       T: tl.constexpr, ACC: tl.constexpr, ROUND: tl.constexpr, RECIP: tl.constexpr, CLIP: tl.constexpr,
                       BLOCK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = r < rows
    b = r // k
    # Scalars from a tensor of the compute dtype: Triton passes Python floats as fp32, which would
    # round fp64 weights and clip bounds.
    w0 = tl.load(params_ptr + 0)
    w1 = tl.load(params_ptr + 1)
    w2 = tl.load(params_ptr + 2)
    w3 = tl.load(params_ptr + 3)
    clip = tl.load(params_ptr + 4)
    clip_w = tl.load(params_ptr + 5)
    clip_h = tl.load(params_ptr + 6)
    c0, c1, c2, c3 = _load4(codes_ptr, r, mask, 0.0, ACC)
    bx1, by1, bx2, by2 = _load4(boxes_ptr, b, mask, 0.0, ACC)
    width, height, ctr_x, ctr_y = _size_center(bx1, by1, bx2, by2, T, ROUND)
    if RECIP:
        dx = _r(c0 * w0, T, ROUND)
        dy = _r(c1 * w1, T, ROUND)
        dw = _r(c2 * w2, T, ROUND)
        dh = _r(c3 * w3, T, ROUND)
    else:
        dx = _r(c0 / w0, T, ROUND)
        dy = _r(c1 / w1, T, ROUND)
        dw = _r(c2 / w2, T, ROUND)
        dh = _r(c3 / w3, T, ROUND)
    dw = tl.where(clip < dw, clip, dw)
    dh = tl.where(clip < dh, clip, dh)
    pcx = _r(_r(dx * width, T, ROUND) + ctr_x, T, ROUND)
    pcy = _r(_r(dy * height, T, ROUND) + ctr_y, T, ROUND)
    pw = _r(_r(tl.exp(dw), T, ROUND) * width, T, ROUND)
    ph = _r(_r(tl.exp(dh), T, ROUND) * height, T, ROUND)
    cw = _r(0.5 * pw, T, ROUND)
    ch = _r(0.5 * ph, T, ROUND)
    x1 = pcx - cw
    y1 = pcy - ch
    x2 = pcx + cw
    y2 = pcy + ch
    if CLIP:
        x1 = tl.where(x1 < 0.0, 0.0, x1)
        x2 = tl.where(x2 < 0.0, 0.0, x2)
        y1 = tl.where(y1 < 0.0, 0.0, y1)
        y2 = tl.where(y2 < 0.0, 0.0, y2)
        x1 = tl.where(clip_w < x1, clip_w, x1)
        x2 = tl.where(clip_w < x2, clip_w, x2)
        y1 = tl.where(clip_h < y1, clip_h, y1)
        y2 = tl.where(clip_h < y2, clip_h, y2)
    _store4(out_ptr, r, mask, x1, y1, x2, y2, T)


@triton.jit
def _box_encode_kernel(ref_ptr, prop_ptr, out_ptr, n, params_ptr, T: tl.constexpr, ACC: tl.constexpr,
                       ROUND: tl.constexpr,
                       IS_FP64: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    w0 = tl.load(params_ptr + 0)
    w1 = tl.load(params_ptr + 1)
    w2 = tl.load(params_ptr + 2)
    w3 = tl.load(params_ptr + 3)
    px1, py1, px2, py2 = _load4(prop_ptr, i, mask, 1.0, ACC)  # masked lanes: a unit box (no 0 / 0)
    gx1, gy1, gx2, gy2 = _load4(ref_ptr, i, mask, 1.0, ACC)
    ex_w, ex_h, ex_cx, ex_cy = _size_center(px1, py1, px2, py2, T, ROUND)
    gt_w, gt_h, gt_cx, gt_cy = _size_center(gx1, gy1, gx2, gy2, T, ROUND)
    if IS_FP64:
        dx = (w0 * (gt_cx - ex_cx)) / ex_w
        dy = (w1 * (gt_cy - ex_cy)) / ex_h
        dw = w2 * tl.log(gt_w / ex_w)
        dh = w3 * tl.log(gt_h / ex_h)
    else:
        dx = tl.math.div_rn(_r(w0 * _r(gt_cx - ex_cx, T, ROUND), T, ROUND), ex_w)
        dy = tl.math.div_rn(_r(w1 * _r(gt_cy - ex_cy, T, ROUND), T, ROUND), ex_h)
        dw = w2 * _r(tl.log(_r(tl.math.div_rn(gt_w, ex_w), T, ROUND)), T, ROUND)
        dh = w3 * _r(tl.log(_r(tl.math.div_rn(gt_h, ex_h), T, ROUND)), T, ROUND)
    _store4(out_ptr, i, mask, dx, dy, dw, dh, T)


_TL = {torch.float32: tl.float32, torch.float64: tl.float64, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def _params(values, like: torch.Tensor) -> torch.Tensor:
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return torch.tensor(values, dtype=dtype).to(like.device, non_blocking=True)


def _acc(t: torch.Tensor):
    return tl.float64 if t.dtype == torch.float64 else tl.float32


def _dtype(t: torch.Tensor):
    if t.dtype not in _TL:
        raise ValueError(f"fastseg_triton box coder: unsupported dtype {t.dtype}")
    return _TL[t.dtype], t.dtype in (torch.float16, torch.bfloat16)


@torch.library.custom_op("fastseg_triton::box_decode", mutates_args=())
def _box_decode_op(rel_codes: torch.Tensor, boxes: torch.Tensor, weights: list[float], bbox_xform_clip: float,
                   image_size: list[int] | None = None) -> torch.Tensor:
    if boxes.dim() != 2 or boxes.shape[1] != 4 or rel_codes.dim() != 2 or rel_codes.shape[0] != boxes.shape[0] \
            or rel_codes.shape[1] % 4 != 0 or boxes.dtype != rel_codes.dtype or len(weights) != 4:
        raise ValueError(f"box_decode: rel_codes [N, 4K] and boxes [N, 4] of one dtype and 4 weights expected, got "
                         f"{list(rel_codes.shape)} {rel_codes.dtype}, {list(boxes.shape)} {boxes.dtype}, {len(weights)} weights")
    codes, b = rel_codes.contiguous(), boxes.contiguous()
    out = torch.empty_like(codes)
    k = codes.shape[1] // 4
    rows = codes.shape[0] * k
    if rows == 0:
        return out
    T, round_ = _dtype(codes)
    recip = codes.device.type == "cuda"
    if recip:  # 1 / w in the opmath type, as PyTorch's CUDA division by a scalar computes it
        acc = torch.float64 if codes.dtype == torch.float64 else torch.float32
        w = [float(torch.tensor(1.0, dtype=acc) / torch.tensor(x, dtype=acc)) for x in weights]
    else:
        w = list(weights)
    # PyTorch's clamp rounds its scalar bounds to the tensor dtype.
    to_t = lambda v: float(torch.tensor(v, dtype=torch.float64).to(codes.dtype))  # noqa: E731
    clip = to_t(bbox_xform_clip)
    ch, cw = (to_t(image_size[0]), to_t(image_size[1])) if image_size is not None else (0.0, 0.0)
    _box_decode_kernel[(triton.cdiv(rows, BLOCK),)](
        codes, b, out, rows, k, _params(w + [clip, cw, ch], codes), T=T, ACC=_acc(codes), ROUND=round_, RECIP=recip, CLIP=image_size is not None,
        BLOCK=BLOCK, enable_fp_fusion=False)
    return out


@_box_decode_op.register_fake
def _box_decode_fake(rel_codes, boxes, weights, bbox_xform_clip, image_size=None):
    return torch.empty_like(rel_codes, memory_format=torch.contiguous_format)


@torch.library.custom_op("fastseg_triton::box_encode", mutates_args=())
def _box_encode_op(reference_boxes: torch.Tensor, proposals: torch.Tensor, weights: list[float]) -> torch.Tensor:
    if reference_boxes.dim() != 2 or reference_boxes.shape[1] != 4 or proposals.shape != reference_boxes.shape \
            or proposals.dtype != reference_boxes.dtype or len(weights) != 4:
        raise ValueError("box_encode: reference_boxes and proposals must be [N, 4] of one dtype, with 4 weights")
    ref, prop = reference_boxes.contiguous(), proposals.contiguous()
    out = torch.empty_like(ref)
    n = ref.shape[0]
    if n == 0:
        return out
    T, round_ = _dtype(ref)
    w = [float(torch.tensor(x, dtype=torch.float64).to(ref.dtype)) for x in weights]  # a T tensor in torchvision
    _box_encode_kernel[(triton.cdiv(n, BLOCK),)](
        ref, prop, out, n, _params(w, ref), T=T, ACC=_acc(ref), ROUND=round_, IS_FP64=ref.dtype == torch.float64, BLOCK=BLOCK,
        enable_fp_fusion=False)
    return out


@_box_encode_op.register_fake
def _box_encode_fake(reference_boxes, proposals, weights):
    return torch.empty_like(reference_boxes, memory_format=torch.contiguous_format)


def box_decode(rel_codes, boxes, weights, bbox_xform_clip, image_size=None):
    return torch.ops.fastseg_triton.box_decode(rel_codes, boxes, [float(x) for x in weights], float(bbox_xform_clip),
                                               None if image_size is None else [int(v) for v in image_size])


def box_encode(reference_boxes, proposals, weights):
    return torch.ops.fastseg_triton.box_encode(reference_boxes, proposals, [float(x) for x in weights])
