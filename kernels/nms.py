r"""Greedy non-maximum suppression (NMS) and class-aware batched NMS in Triton.

Maths
-----
Boxes are ``(x1, y1, x2, y2)``. Rank the boxes by decreasing score, ties by lower index
(``torch.sort(scores, stable=True, descending=True)``); call the ranked boxes ``b_0 .. b_{N-1}``.
Greedy NMS keeps ``b_j`` unless some *kept* ``b_i`` with ``i < j`` (and, for ``batched_nms``,
the same class ``idxs``) has ``IoU(b_i, b_j) > iou_threshold``.

IoU is evaluated in exactly the order of torchvision's CPU kernel, so that results are
bit-identical (compute type: fp64 for fp64 boxes, fp32 otherwise; fp16/bf16 are upcast)::

    area  = (x2 - x1) * (y2 - y1)
    xx1 = a.x1 < b.x1 ? b.x1 : a.x1          # std::max(a, b)
    yy1 = a.y1 < b.y1 ? b.y1 : a.y1
    xx2 = b.x2 < a.x2 ? b.x2 : a.x2          # std::min(a, b)
    yy2 = b.y2 < a.y2 ? b.y2 : a.y2
    w = 0 < xx2 - xx1 ? xx2 - xx1 : 0         # std::max(0, .)
    h = 0 < yy2 - yy1 ? yy2 - yy1 : 0
    inter = w * h
    iou   = inter / ((area_a + area_b) - inter)   # IEEE round-to-nearest division, no FMA

torchvision compares ``iou > thr`` with ``thr`` a double. For an fp32 ``iou`` this equals
``iou > t`` with ``t`` the largest float32 ``<= thr``: if ``iou > t`` then ``iou`` is at least
the next float32 after ``t``, which is ``> thr``; the converse is immediate since ``t <= thr``.

Bitmask
-------
Split the ranked boxes into blocks of ``BLOCK = 64``; ``W = ceil(N / 64)`` words per row.
``mask[i, c]`` (int64) has bit ``k`` set iff ``j = 64 c + k`` satisfies ``j > i``,
``IoU(b_i, b_j) > thr`` (and same class). Only words with ``c >= block(i)`` are ever read.
Kernel ``_nms_mask_kernel`` runs one program per (row block, column block) tile and packs the
``[64, 64]`` boolean tile into 64 words with ``sum(where(cond, 1 << k, 0))``: the summands are
distinct powers of two, so the sum has no carries and equals the bitwise OR (bit 63 included,
int64 wrap-around gives the two's-complement word).

batched_nms sorts by score and then, stably, by class, so each class is a contiguous run of
the ranked order and keeps the score order inside it. For row block ``b`` let ``last[b]`` be the
word holding the end of the class run of its last row; no row of block ``b`` has a same-class
box beyond that word, so the tiles ``c > last[b]`` are skipped (never written, never read).
For plain nms ``last[b] = W - 1``.

Reduction
---------
``removed`` is a vector of ``W`` words (bit ``j`` set = ``b_j`` suppressed). The single program
of ``_nms_reduce_kernel`` walks the row blocks in order. In block ``b`` only the diagonal words
``mask[i, b]`` decide which rows of the block survive, so a 64-step sequential walk over one
word suffices: ``cur = removed[b]``; for ``r`` in ``0..63``: if bit ``r`` of ``cur`` is clear
(row kept) then ``cur |= mask[64 b + r, b]``. Bit ``r`` is final when row ``r`` is visited
because ``mask`` is strictly upper triangular. The kept rows of the block are then ORed into
the rest of ``removed`` at once, vectorised over ``[64 rows, CHUNK words]`` tiles::

    removed[w] |= OR_{kept i in block b} mask[i, w]        for b < w <= last[b]

The mask never leaves the device. Kept indices are ``nonzero(keep)`` mapped through the sort
permutation (for batched_nms first back to the score order, so the output is ordered by
decreasing score, ties lower index first).

The ops are ``torch.library.custom_op`` s ``fastseg_triton::nms`` and
``fastseg_triton::batched_nms`` with fake kernels (data-dependent output length), so they pass
``torch.library.opcheck``, also under ``TRITON_INTERPRET=1`` on CPU tensors.
"""

from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl

__all__ = ["nms", "batched_nms"]

# 64 boxes per block: one int64 word per (row, column block); halves the words and the
# reduction steps against 32-bit words, and the interpreter handles int64 shifts/sums exactly.
BLOCK = 64
# Words ORed per step of the vectorised part of the reduction ([BLOCK, CHUNK] int64 tile,
# 16 values per thread at 4 warps). Not tuned on a GPU yet.
CHUNK = 32
MASK_NUM_WARPS = 4
REDUCE_NUM_WARPS = 4


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------
@triton.jit
def _bit_or(a, b):
    return a | b


@triton.jit
def _nms_mask_kernel(
    boxes_ptr,  # [N, 4] ranked boxes, fp32 or fp64, contiguous
    cls_ptr,  # [N] ranked classes (int64), read only when HAS_CLASSES
    thr_ptr,  # [1] threshold in the compute type (fp32: rounded down)
    last_ptr,  # [W] last column word that row block b may touch
    mask_ptr,  # [N, W] int64 output words
    N,
    W,
    BLOCK: tl.constexpr,
    HAS_CLASSES: tl.constexpr,
    IS_FP64: tl.constexpr,
):
    rb = tl.program_id(0)
    cb = tl.program_id(1)
    last = tl.load(last_ptr + rb)
    if (cb >= rb) & (cb <= last):
        offs = tl.arange(0, BLOCK)
        rows = rb * BLOCK + offs
        cols = cb * BLOCK + offs
        rmask = rows < N
        cmask = cols < N
        rows64 = rows.to(tl.int64)
        cols64 = cols.to(tl.int64)

        ax1 = tl.load(boxes_ptr + rows64 * 4 + 0, mask=rmask, other=0.0)
        ay1 = tl.load(boxes_ptr + rows64 * 4 + 1, mask=rmask, other=0.0)
        ax2 = tl.load(boxes_ptr + rows64 * 4 + 2, mask=rmask, other=0.0)
        ay2 = tl.load(boxes_ptr + rows64 * 4 + 3, mask=rmask, other=0.0)
        bx1 = tl.load(boxes_ptr + cols64 * 4 + 0, mask=cmask, other=0.0)
        by1 = tl.load(boxes_ptr + cols64 * 4 + 1, mask=cmask, other=0.0)
        bx2 = tl.load(boxes_ptr + cols64 * 4 + 2, mask=cmask, other=0.0)
        by2 = tl.load(boxes_ptr + cols64 * 4 + 3, mask=cmask, other=0.0)
        thr = tl.load(thr_ptr)

        area_a = (ax2 - ax1) * (ay2 - ay1)
        area_b = (bx2 - bx1) * (by2 - by1)

        # a = row (higher ranked, the kept box), b = column; std::max / std::min semantics.
        ax1 = ax1[:, None]
        ay1 = ay1[:, None]
        ax2 = ax2[:, None]
        ay2 = ay2[:, None]
        bx1 = bx1[None, :]
        by1 = by1[None, :]
        bx2 = bx2[None, :]
        by2 = by2[None, :]
        xx1 = tl.where(ax1 < bx1, bx1, ax1)
        yy1 = tl.where(ay1 < by1, by1, ay1)
        xx2 = tl.where(bx2 < ax2, bx2, ax2)
        yy2 = tl.where(by2 < ay2, by2, ay2)
        dw = xx2 - xx1
        dh = yy2 - yy1
        w = tl.where(0.0 < dw, dw, 0.0)
        h = tl.where(0.0 < dh, dh, 0.0)
        inter = w * h
        union = (area_a[:, None] + area_b[None, :]) - inter
        if IS_FP64:
            iou = inter / union  # fp64 division is IEEE round-to-nearest
        else:
            iou = tl.math.div_rn(inter, union)  # plain fp32 '/' may be approximate on NVIDIA

        cond = (iou > thr) & (cols[None, :] > rows[:, None]) & cmask[None, :]
        if HAS_CLASSES:
            ca = tl.load(cls_ptr + rows64, mask=rmask, other=0)
            cc = tl.load(cls_ptr + cols64, mask=cmask, other=0)
            cond = cond & (ca[:, None] == cc[None, :])

        one = tl.full([BLOCK], 1, tl.int64)
        bits = one << offs.to(tl.int64)
        words = tl.sum(tl.where(cond, bits[None, :], 0), axis=1)
        tl.store(mask_ptr + rows64 * W + cb, words, mask=rmask)


@triton.jit
def _nms_reduce_kernel(
    mask_ptr,  # [N, W] int64 words from _nms_mask_kernel
    last_ptr,  # [W] last column word per row block
    removed_ptr,  # [W] int64 scratch, zero-initialised
    keep_ptr,  # [N] int8 output: 1 = kept (ranked order)
    N,
    W,
    BLOCK: tl.constexpr,
    CHUNK: tl.constexpr,
):
    offs = tl.arange(0, BLOCK)
    offs64 = offs.to(tl.int64)
    offs_w = tl.arange(0, CHUNK)
    for b in range(0, W):
        rows = b * BLOCK + offs
        rmask = rows < N
        rows64 = rows.to(tl.int64)
        # Sequential greedy walk inside the block on one word.
        cur = tl.load(removed_ptr + b)
        diag = tl.load(mask_ptr + rows64 * W + b, mask=rmask, other=0)
        for r in range(0, BLOCK):
            d = tl.sum(tl.where(offs == r, diag, 0), axis=0)
            is_removed = (cur >> r) & 1
            cur = tl.where(is_removed == 0, cur | d, cur)
        kept = (((cur >> offs64) & 1) == 0) & rmask
        tl.store(keep_ptr + rows64, kept.to(tl.int8), mask=rmask)
        # Vectorised: OR the kept rows' words into the later words of `removed`.
        last = tl.load(last_ptr + b)
        for w0 in range(b + 1, last + 1, CHUNK):
            words = w0 + offs_w
            wmask = words <= last
            m = tl.load(
                mask_ptr + rows64[:, None] * W + words[None, :],
                mask=kept[:, None] & wmask[None, :],
                other=0,
            )
            acc = tl.reduce(m, 0, _bit_or)
            old = tl.load(removed_ptr + words, mask=wmask, other=0)
            tl.store(removed_ptr + words, old | acc, mask=wmask)
        # Make this block's stores to `removed` visible before the next block reads them.
        tl.debug_barrier()


# --------------------------------------------------------------------------------------------
# Launcher
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=256)
def _round_down_to_f32(x: float) -> float:
    """Largest float32 <= x (x itself for inf/nan); exact replacement of a double threshold."""
    if math.isnan(x) or math.isinf(x):
        return x
    t = torch.tensor(x, dtype=torch.float64).to(torch.float32)  # nearest (may overflow to inf)
    if float(t) > x:
        t = torch.nextafter(t, torch.tensor(-math.inf, dtype=torch.float32))
    return float(t)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def _check_inputs(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor | None, op: str):
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{op}: boxes must have shape [N, 4], got {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        raise ValueError(f"{op}: boxes must be a floating-point tensor, got {boxes.dtype}")
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"{op}: scores must have shape [N] with N = boxes.shape[0] = {boxes.shape[0]}, "
            f"got {tuple(scores.shape)}"
        )
    if not scores.is_floating_point():
        raise ValueError(f"{op}: scores must be a floating-point tensor, got {scores.dtype}")
    if scores.device != boxes.device:
        raise ValueError(f"{op}: scores is on {scores.device} but boxes is on {boxes.device}")
    if idxs is not None:
        if idxs.dim() != 1 or idxs.shape[0] != boxes.shape[0]:
            raise ValueError(
                f"{op}: idxs must have shape [N] with N = boxes.shape[0] = {boxes.shape[0]}, "
                f"got {tuple(idxs.shape)}"
            )
        if idxs.is_floating_point() or idxs.is_complex():
            raise ValueError(f"{op}: idxs must be an integer tensor, got {idxs.dtype}")
        if idxs.device != boxes.device:
            raise ValueError(f"{op}: idxs is on {idxs.device} but boxes is on {boxes.device}")


def _keep_flags(
    boxes_sorted: torch.Tensor, cls_sorted: torch.Tensor | None, iou_threshold: float
) -> torch.Tensor:
    """int8 keep flags of the ranked boxes (ranked order), from the two Triton kernels."""
    device = boxes_sorted.device
    if device.type == "cpu" and not _interpreting():
        raise RuntimeError(
            "fastseg_triton NMS needs CUDA tensors (or TRITON_INTERPRET=1 set before triton is "
            f"imported to run on the CPU); got boxes on {device}"
        )
    is_fp64 = boxes_sorted.dtype == torch.float64
    compute = torch.float64 if is_fp64 else torch.float32
    boxes_sorted = boxes_sorted.to(compute).contiguous()
    n = boxes_sorted.shape[0]
    n_words = triton.cdiv(n, BLOCK)

    thr = float(iou_threshold) if is_fp64 else _round_down_to_f32(float(iou_threshold))
    thr_t = torch.full((1,), thr, dtype=compute, device=device)

    if cls_sorted is None:
        last = torch.full((n_words,), n_words - 1, dtype=torch.int64, device=device)
        cls_arg = boxes_sorted  # unused (HAS_CLASSES=False)
    else:
        cls_arg = cls_sorted.to(torch.int64).contiguous()
        last_row = torch.clamp(
            torch.arange(1, n_words + 1, device=device, dtype=torch.int64) * BLOCK, max=n
        ) - 1
        run_end = torch.searchsorted(cls_arg, cls_arg[last_row], right=True)
        last = torch.div(run_end - 1, BLOCK, rounding_mode="floor")

    mask = torch.empty((n, n_words), dtype=torch.int64, device=device)
    removed = torch.zeros((n_words,), dtype=torch.int64, device=device)
    keep = torch.empty((n,), dtype=torch.int8, device=device)

    _nms_mask_kernel[(n_words, n_words)](
        boxes_sorted, cls_arg, thr_t, last, mask, n, n_words,
        BLOCK=BLOCK, HAS_CLASSES=cls_sorted is not None, IS_FP64=is_fp64,
        num_warps=MASK_NUM_WARPS,
        enable_fp_fusion=False,  # an FMA in (area_a + area_b) - w * h changes the rounding
    )
    _nms_reduce_kernel[(1,)](
        mask, last, removed, keep, n, n_words,
        BLOCK=BLOCK, CHUNK=CHUNK, num_warps=REDUCE_NUM_WARPS,
    )
    return keep


# --------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------
@torch.library.custom_op("fastseg_triton::nms", mutates_args=())
def _nms_op(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    _check_inputs(boxes, scores, None, "nms")
    if boxes.shape[0] == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, stable=True, descending=True).indices
    keep = _keep_flags(boxes[order], None, iou_threshold)
    return order[torch.nonzero(keep).squeeze(1)]


@_nms_op.register_fake
def _nms_fake(boxes, scores, iou_threshold):
    _check_inputs(boxes, scores, None, "nms")
    n_kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((n_kept,), dtype=torch.int64)


@torch.library.custom_op("fastseg_triton::batched_nms", mutates_args=())
def _batched_nms_op(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    _check_inputs(boxes, scores, idxs, "batched_nms")
    if boxes.shape[0] == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    by_score = torch.sort(scores, stable=True, descending=True).indices
    by_class = torch.sort(idxs[by_score], stable=True).indices  # positions in by_score
    perm = by_score[by_class]
    keep_perm = _keep_flags(boxes[perm], idxs[perm], iou_threshold)
    keep_score = torch.empty_like(keep_perm)
    keep_score[by_class] = keep_perm  # back to the global score order
    return by_score[torch.nonzero(keep_score).squeeze(1)]


@_batched_nms_op.register_fake
def _batched_nms_fake(boxes, scores, idxs, iou_threshold):
    _check_inputs(boxes, scores, idxs, "batched_nms")
    n_kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((n_kept,), dtype=torch.int64)


# --------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------
def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS, same result as ``torchvision.ops.nms`` (int64 indices, decreasing score)."""
    return torch.ops.fastseg_triton.nms(boxes, scores, float(iou_threshold))


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Per-class greedy NMS, same result as ``torchvision.ops.batched_nms``."""
    return torch.ops.fastseg_triton.batched_nms(boxes, scores, idxs, float(iou_threshold))
