r"""Soft-NMS and class-aware batched soft-NMS in Triton (semantics: fastseg/reference/soft_nms.py).

Maths
-----
Greedy: keep the remaining box ``b`` of highest current score (ties: lower index), then for every
other remaining box ``r`` (batched: of ``b``'s class) multiply its score by

    gaussian: exp(-IoU(b, r)^2 / sigma)
    linear:   1 - IoU(b, r)   if IoU >= iou_threshold, else 1
    naive:    0               if IoU >= iou_threshold, else 1

and drop every remaining box whose score is not >= score_threshold. IoU uses torchvision's NMS
operations in the same order (``inter / ((area_b + area_r) - inter)``, IEEE division, no FMA).

Kernel
------
ONE program runs the whole loop (each pick depends on every earlier decay). Per step it walks the
boxes in chunks of ``CHUNK``: decays, drops, and folds the chunk's best survivor (max score, then
lowest index: chunks go in index order, so a strictly greater score is needed to replace the running
best) into the next pick; ``tl.debug_barrier()`` orders the scratch stores of one step before the
loads of the next. Scores and alive flags are scratch tensors in global memory. The kept indices, their
scores and the count are written on the device; the host reads the count once to size the outputs.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["soft_nms"]

# Boxes per chunk of the per-step pass (4 warps: 8 per thread). Not tuned on a GPU yet.
CHUNK = 1024
NUM_WARPS = 4


@triton.jit
def _soft_nms_kernel(boxes_ptr, scores_ptr, cls_ptr, params_ptr, work_ptr, alive_ptr, keep_ptr, kept_ptr, count_ptr,
                     n, iou_threshold, sigma, score_threshold,
                     METHOD: tl.constexpr, HAS_CLASSES: tl.constexpr, IS_FP64: tl.constexpr, CHUNK: tl.constexpr):
    if IS_FP64:  # Triton passes Python floats as fp32: fp64 reads its scalars from a tensor
        iou_threshold = tl.load(params_ptr + 0)
        sigma = tl.load(params_ptr + 1)
        score_threshold = tl.load(params_ptr + 2)
    ar = tl.arange(0, CHUNK)
    big = n + 1
    # Initial state (NaN scores dropped) and the first pick.
    best_s = tl.load(scores_ptr)  # any value of the right type; `found` says whether it means anything
    best_i = big
    for c0 in range(0, n, CHUNK):
        offs = c0 + ar
        m = offs < n
        s = tl.load(scores_ptr + offs, mask=m, other=0.0)
        ok = m & (s == s)
        tl.store(work_ptr + offs, s, mask=m)
        tl.store(alive_ptr + offs, ok.to(tl.int8), mask=m)
        cm = tl.max(tl.where(ok, s, -float("inf")), axis=0)
        ci = tl.min(tl.where(ok & (s == cm), offs, big), axis=0)
        better = (ci < big) & ((best_i == big) | (cm > best_s))
        best_s = tl.where(better, cm, best_s)
        best_i = tl.where(better, ci, best_i)
    tl.debug_barrier()
    k = 0
    while best_i < big:
        p = best_i
        tl.store(keep_ptr + k, p.to(tl.int64))
        tl.store(kept_ptr + k, best_s)
        k += 1
        px1 = tl.load(boxes_ptr + p * 4 + 0)
        py1 = tl.load(boxes_ptr + p * 4 + 1)
        px2 = tl.load(boxes_ptr + p * 4 + 2)
        py2 = tl.load(boxes_ptr + p * 4 + 3)
        parea = (px2 - px1) * (py2 - py1)
        if HAS_CLASSES:
            pc = tl.load(cls_ptr + p)
        best_i = big
        for c0 in range(0, n, CHUNK):
            offs = c0 + ar
            m = offs < n
            alive = (tl.load(alive_ptr + offs, mask=m, other=0) != 0) & (offs != p)
            s = tl.load(work_ptr + offs, mask=m, other=0.0)
            x1 = tl.load(boxes_ptr + offs * 4 + 0, mask=m, other=0.0)
            y1 = tl.load(boxes_ptr + offs * 4 + 1, mask=m, other=0.0)
            x2 = tl.load(boxes_ptr + offs * 4 + 2, mask=m, other=0.0)
            y2 = tl.load(boxes_ptr + offs * 4 + 3, mask=m, other=0.0)
            area = (x2 - x1) * (y2 - y1)
            xx1 = tl.where(px1 < x1, x1, px1)
            yy1 = tl.where(py1 < y1, y1, py1)
            xx2 = tl.where(x2 < px2, x2, px2)
            yy2 = tl.where(y2 < py2, y2, py2)
            dw = xx2 - xx1
            dh = yy2 - yy1
            w = tl.where(0.0 < dw, dw, 0.0)
            h = tl.where(0.0 < dh, dh, 0.0)
            inter = w * h
            union = (parea + area) - inter
            if IS_FP64:
                iou = inter / union
            else:
                iou = tl.math.div_rn(inter, union)
            if METHOD == 2:
                if IS_FP64:
                    weight = tl.exp(-(iou * iou) / sigma)
                else:
                    weight = tl.exp(tl.math.div_rn(-(iou * iou), sigma + tl.zeros_like(iou)))
            elif METHOD == 1:
                weight = tl.where(iou >= iou_threshold, 1.0 - iou, 1.0)
            else:
                weight = tl.where(iou >= iou_threshold, 0.0, 1.0)
            decay = alive
            if HAS_CLASSES:
                c = tl.load(cls_ptr + offs, mask=m, other=0)
                decay = decay & (c == pc)
            s = tl.where(decay, s * weight, s)
            alive = alive & (s >= score_threshold)
            tl.store(work_ptr + offs, s, mask=m)
            tl.store(alive_ptr + offs, alive.to(tl.int8), mask=m)
            cm = tl.max(tl.where(alive, s, -float("inf")), axis=0)
            ci = tl.min(tl.where(alive & (s == cm), offs, big), axis=0)
            better = (ci < big) & ((best_i == big) | (cm > best_s))
            best_s = tl.where(better, cm, best_s)
            best_i = tl.where(better, ci, best_i)
        tl.store(alive_ptr + p, 0)
        tl.debug_barrier()
    tl.store(count_ptr, k)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


@torch.library.custom_op("fastseg_triton::soft_nms", mutates_args=())
def _soft_nms_op(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor | None, iou_threshold: float,
                 sigma: float, score_threshold: float, method: int) -> tuple[torch.Tensor, torch.Tensor]:
    if boxes.dim() != 2 or boxes.shape[1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"soft_nms: boxes must be [N, 4] and scores [N], got {list(boxes.shape)} and {list(scores.shape)}")
    if method not in (0, 1, 2):
        raise ValueError(f"soft_nms: method must be 0 (naive), 1 (linear) or 2 (gaussian), got {method}")
    device = boxes.device
    if device.type == "cpu" and not _interpreting():
        raise RuntimeError("fastseg_triton soft_nms needs CUDA tensors (or TRITON_INTERPRET=1 set before triton is "
                           f"imported to run on the CPU); got boxes on {device}")
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=device), scores.new_empty(0)
    if n >= 2**31 - 2:
        raise ValueError(f"soft_nms: at most 2^31 - 3 boxes are supported by the Triton kernel, got {n}")
    fp64 = torch.float64 in (boxes.dtype, scores.dtype)
    ct = torch.float64 if fp64 else torch.float32
    b = boxes.to(ct).contiguous()
    s = scores.to(ct).contiguous()
    cls = idxs.to(torch.int64).contiguous() if idxs is not None else b
    params = torch.tensor([iou_threshold, sigma, score_threshold], dtype=torch.float64, device=device) if fp64 else b
    if not fp64:
        # The fp32 kernel compares in fp32: give it the thresholds already rounded to fp32 (as the C++
        # kernel and the reference do), so that Triton's own scalar conversion cannot differ (a tiny
        # threshold such as 2e-309 must become 0, not stay positive).
        iou_threshold, sigma, score_threshold = (float(torch.tensor(v, dtype=torch.float32))
                                                 for v in (iou_threshold, sigma, score_threshold))
    work = torch.empty(n, dtype=ct, device=device)
    alive = torch.empty(n, dtype=torch.int8, device=device)
    keep = torch.empty(n, dtype=torch.int64, device=device)
    kept = torch.empty(n, dtype=ct, device=device)
    count = torch.zeros(1, dtype=torch.int32, device=device)
    _soft_nms_kernel[(1,)](b, s, cls, params, work, alive, keep, kept, count, n, iou_threshold, sigma, score_threshold,
                           METHOD=method, HAS_CLASSES=idxs is not None, IS_FP64=fp64, CHUNK=CHUNK,
                           num_warps=NUM_WARPS, enable_fp_fusion=False)
    k = int(count.item())  # the one host sync: the output size
    return keep[:k].clone(), kept[:k].to(scores.dtype)


@_soft_nms_op.register_fake
def _soft_nms_fake(boxes, scores, idxs, iou_threshold, sigma, score_threshold, method):
    kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((kept,), dtype=torch.int64), scores.new_empty((kept,))


def soft_nms(boxes, scores, idxs, iou_threshold, sigma, score_threshold, method):
    return tuple(torch.ops.fastseg_triton.soft_nms(boxes, scores, idxs, float(iou_threshold), float(sigma),
                                                   float(score_threshold), int(method)))
