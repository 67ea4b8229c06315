r"""Pairwise IoUs (torchvision's ``box_iou``, ``generalized_box_iou``, ``distance_box_iou``,
``complete_box_iou``) in Triton.

Maths, for boxes ``a`` (row) and ``b`` (column), in fp32 (fp64 for fp64 boxes)::

    w = max(0, R(min(a.x2, b.x2) - max(a.x1, b.x1)))      h alike; R rounds to the input dtype
    inter = w h;  union = (area_a + area_b) - inter;  iou = inter / union
    GIoU = iou - (ew eh - union) / (ew eh)               ew, eh: enclosing box, as w, h
    DIoU = iou - ((acx - bcx)^2 + (acy - bcy)^2) / ((ew^2 + eh^2) + eps)
    CIoU = DIoU - alpha v,  v = 4/pi^2 (atan_a - atan_b)^2,  alpha = v / (((1 - iou) + v) + eps)

``R`` is the input dtype for IoU/GIoU (torchvision takes ``rb - lt`` before upcasting) and fp32 for
DIoU/CIoU (torchvision upcasts the boxes first); max/min propagate NaN like torch.maximum. Areas,
centres and ``atan(w / h)`` are per-box terms computed once with PyTorch (Triton has no portable atan),
so CIoU's atan is PyTorch's. One program per ``[BLOCK_N, BLOCK_M]`` tile of the output.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from fastseg.kernels._interpreter import cast

__all__ = ["box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou"]

BLOCK_N = 32
BLOCK_M = 64
_KINDS = {"box_iou": 0, "generalized_box_iou": 1, "distance_box_iou": 2, "complete_box_iou": 3}


@triton.jit
def _max(a, b):  # torch.maximum: NaN propagates
    return tl.where(a < b, b, tl.where(b == b, a, b))


@triton.jit
def _min(a, b):
    return tl.where(b < a, b, tl.where(b == b, a, b))


@triton.jit
def _div(a, b, IS_FP64: tl.constexpr):
    if IS_FP64:
        return a / b
    else:
        return tl.math.div_rn(a, b)  # plain fp32 '/' may be approximate on NVIDIA


@triton.jit
def _pairwise_kernel(b1_ptr, t1_ptr, b2_ptr, t2_ptr, out_ptr, n, m, params_ptr,
                     KIND: tl.constexpr, T: tl.constexpr, ROUND: tl.constexpr, IS_FP64: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    pid_b = tl.program_id(2).to(tl.int64)
    eps = tl.load(params_ptr + 0)  # from a tensor: Python floats would be passed as fp32
    c4pi2 = tl.load(params_ptr + 1)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < n
    cmask = cols < m
    ri = pid_b * n + rows
    ci = pid_b * m + cols
    # boxes: [*, 4] in the compute dtype; terms: [*, 4] = area, cx, cy, atan(w / h).
    ax1 = tl.load(b1_ptr + ri * 4 + 0, mask=rmask, other=0.0)[:, None]
    ay1 = tl.load(b1_ptr + ri * 4 + 1, mask=rmask, other=0.0)[:, None]
    ax2 = tl.load(b1_ptr + ri * 4 + 2, mask=rmask, other=0.0)[:, None]
    ay2 = tl.load(b1_ptr + ri * 4 + 3, mask=rmask, other=0.0)[:, None]
    a_area = tl.load(t1_ptr + ri * 4 + 0, mask=rmask, other=1.0)[:, None]
    bx1 = tl.load(b2_ptr + ci * 4 + 0, mask=cmask, other=0.0)[None, :]
    by1 = tl.load(b2_ptr + ci * 4 + 1, mask=cmask, other=0.0)[None, :]
    bx2 = tl.load(b2_ptr + ci * 4 + 2, mask=cmask, other=0.0)[None, :]
    by2 = tl.load(b2_ptr + ci * 4 + 3, mask=cmask, other=0.0)[None, :]
    b_area = tl.load(t2_ptr + ci * 4 + 0, mask=cmask, other=1.0)[None, :]
    dw = _min(ax2, bx2) - _max(ax1, bx1)
    dh = _min(ay2, by2) - _max(ay1, by1)
    if ROUND:
        dw = cast(dw, T).to(tl.float32)
        dh = cast(dh, T).to(tl.float32)
    w = tl.where(dw < 0.0, 0.0, dw)
    h = tl.where(dh < 0.0, 0.0, dh)
    inter = w * h
    union = (a_area + b_area) - inter
    res = _div(inter, union, IS_FP64)
    if KIND > 0:
        ew = _max(ax2, bx2) - _min(ax1, bx1)
        eh = _max(ay2, by2) - _min(ay1, by1)
        if ROUND:
            ew = cast(ew, T).to(tl.float32)
            eh = cast(eh, T).to(tl.float32)
        ew = tl.where(ew < 0.0, 0.0, ew)
        eh = tl.where(eh < 0.0, 0.0, eh)
        if KIND == 1:
            earea = ew * eh
            res = res - _div(earea - union, earea, IS_FP64)
        else:
            iou = res
            acx = tl.load(t1_ptr + ri * 4 + 1, mask=rmask, other=0.0)[:, None]
            acy = tl.load(t1_ptr + ri * 4 + 2, mask=rmask, other=0.0)[:, None]
            bcx = tl.load(t2_ptr + ci * 4 + 1, mask=cmask, other=0.0)[None, :]
            bcy = tl.load(t2_ptr + ci * 4 + 2, mask=cmask, other=0.0)[None, :]
            diag = ((ew * ew) + (eh * eh)) + eps
            dx = acx - bcx
            dy = acy - bcy
            res = iou - _div((dx * dx) + (dy * dy), diag, IS_FP64)
            if KIND == 3:
                aat = tl.load(t1_ptr + ri * 4 + 3, mask=rmask, other=0.0)[:, None]
                bat = tl.load(t2_ptr + ci * 4 + 3, mask=cmask, other=0.0)[None, :]
                d = aat - bat
                v = c4pi2 * (d * d)
                alpha = _div(v, ((1.0 - iou) + v) + eps, IS_FP64)
                res = res - alpha * v
    out = out_ptr + pid_b * n * m + rows[:, None] * m + cols[None, :]
    tl.store(out, res, mask=rmask[:, None] & cmask[None, :])


_TL = {torch.float32: tl.float32, torch.float64: tl.float64, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def _terms(b: torch.Tensor, with_atan: bool) -> torch.Tensor:
    """[B, K, 4] per-box terms: area, centre x, centre y, atan(w / h) (torchvision's expressions)."""
    x1, y1, x2, y2 = b.unbind(-1)
    at = torch.atan((x2 - x1) / (y2 - y1)) if with_atan else torch.zeros_like(x1)
    return torch.stack(((x2 - x1) * (y2 - y1), (x1 + x2) / 2, (y1 + y2) / 2, at), -1).contiguous()


def _run(op: str, boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float) -> torch.Tensor:
    if boxes1.dim() not in (2, 3) or boxes2.dim() != boxes1.dim() or boxes1.shape[-1] != 4 or boxes2.shape[-1] != 4 \
            or (boxes1.dim() == 3 and boxes1.shape[0] != boxes2.shape[0]):
        raise ValueError(f"{op}: boxes must be [N, 4] and [M, 4] (or [B, N, 4] and [B, M, 4]), got "
                         f"{list(boxes1.shape)} and {list(boxes2.shape)}")
    if boxes1.dtype != boxes2.dtype or boxes1.dtype not in _TL:
        raise ValueError(f"{op}: boxes must share one floating dtype, got {boxes1.dtype} and {boxes2.dtype}")
    batched = boxes1.dim() == 3
    b1 = boxes1 if batched else boxes1[None]
    b2 = boxes2 if batched else boxes2[None]
    kind = _KINDS[op]
    acc = torch.float64 if b1.dtype == torch.float64 else torch.float32
    out = torch.empty((b1.shape[0], b1.shape[1], b2.shape[1]), dtype=acc, device=b1.device)
    if out.numel() > 0:
        c1, c2 = b1.to(acc).contiguous(), b2.to(acc).contiguous()  # fp16/bf16 convert exactly
        t1, t2 = _terms(c1, kind == 3), _terms(c2, kind == 3)
        round_ = kind <= 1 and b1.dtype in (torch.float16, torch.bfloat16)
        grid = (triton.cdiv(b1.shape[1], BLOCK_N), triton.cdiv(b2.shape[1], BLOCK_M), b1.shape[0])
        _pairwise_kernel[grid](
            c1, t1, c2, t2, out, b1.shape[1], b2.shape[1],
            torch.tensor([eps, 4.0 / (math.pi ** 2)], dtype=acc).to(b1.device, non_blocking=True),
            KIND=kind, T=_TL[b1.dtype], ROUND=round_, IS_FP64=acc == torch.float64,
            BLOCK_N=BLOCK_N, BLOCK_M=BLOCK_M, enable_fp_fusion=False)
    return out if batched else out[0]


def _fake(boxes1, boxes2, eps=0.0):
    acc = torch.float64 if boxes1.dtype == torch.float64 else torch.float32
    shape = (boxes1.shape[0], boxes2.shape[0]) if boxes1.dim() == 2 else (boxes1.shape[0], boxes1.shape[1], boxes2.shape[1])
    return boxes1.new_empty(shape, dtype=acc)


@torch.library.custom_op("fastseg_triton::box_iou", mutates_args=())
def _box_iou_op(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    return _run("box_iou", boxes1, boxes2, 0.0)


@torch.library.custom_op("fastseg_triton::generalized_box_iou", mutates_args=())
def _giou_op(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    return _run("generalized_box_iou", boxes1, boxes2, 0.0)


@torch.library.custom_op("fastseg_triton::distance_box_iou", mutates_args=())
def _diou_op(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float) -> torch.Tensor:
    return _run("distance_box_iou", boxes1, boxes2, eps)


@torch.library.custom_op("fastseg_triton::complete_box_iou", mutates_args=())
def _ciou_op(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float) -> torch.Tensor:
    return _run("complete_box_iou", boxes1, boxes2, eps)


for _op in (_box_iou_op, _giou_op, _diou_op, _ciou_op):
    _op.register_fake(_fake)


def box_iou(boxes1, boxes2):
    return torch.ops.fastseg_triton.box_iou(boxes1, boxes2)


def generalized_box_iou(boxes1, boxes2):
    return torch.ops.fastseg_triton.generalized_box_iou(boxes1, boxes2)


def distance_box_iou(boxes1, boxes2, eps=1e-7):
    return torch.ops.fastseg_triton.distance_box_iou(boxes1, boxes2, float(eps))


def complete_box_iou(boxes1, boxes2, eps=1e-7):
    return torch.ops.fastseg_triton.complete_box_iou(boxes1, boxes2, float(eps))
