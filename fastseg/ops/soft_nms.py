"""Soft-NMS (Bodla et al. 2017) as mmcv implements it, and a class-aware batched form; on the CPU and GPU.

Backends: native (csrc/cpu/soft_nms_kernel.cpp, csrc/cuda/soft_nms_kernel.cu), triton
(kernels/soft_nms.py), torch (fastseg/reference/soft_nms.py, the definition). All return the same
indices in the same order; the decayed scores agree to rounding.
"""

import torch
from torch import Tensor

from fastseg import _extension, backend, reference
from fastseg.ops._checks import number
from fastseg.ops.nms import check_boxes_and_scores

METHOD_CODES = {"naive": 0, "hard": 0, "linear": 1, "gaussian": 2}


def _native(boxes, scores, iou_threshold, sigma, score_threshold, method):
    return tuple(torch.ops.fastseg.soft_nms(boxes, scores, iou_threshold, sigma, score_threshold, METHOD_CODES[method]))


def _native_batched(boxes, scores, idxs, iou_threshold, sigma, score_threshold, method):
    return tuple(torch.ops.fastseg.batched_soft_nms(boxes, scores, idxs, iou_threshold, sigma, score_threshold,
                                                    METHOD_CODES[method]))


def _triton(boxes, scores, iou_threshold, sigma, score_threshold, method):
    from fastseg.kernels import soft_nms as k  # imports triton: only when asked for

    return k.soft_nms(boxes, scores, None, iou_threshold, sigma, score_threshold, METHOD_CODES[method])


def _triton_batched(boxes, scores, idxs, iou_threshold, sigma, score_threshold, method):
    from fastseg.kernels import soft_nms as k

    return k.soft_nms(boxes, scores, idxs, iou_threshold, sigma, score_threshold, METHOD_CODES[method])


def _ref(boxes, scores, iou_threshold, sigma, score_threshold, method):
    return reference.soft_nms(boxes, scores, iou_threshold, sigma, score_threshold, _canonical(method))


def _ref_batched(boxes, scores, idxs, iou_threshold, sigma, score_threshold, method):
    return reference.batched_soft_nms(boxes, scores, idxs, iou_threshold, sigma, score_threshold, _canonical(method))


def _canonical(method):
    return "naive" if method == "hard" else method


SOFT_NMS_IMPLS = backend.register("soft_nms", {"native": _native, "triton": _triton, "torch": _ref})
BATCHED_SOFT_NMS_IMPLS = backend.register("batched_soft_nms", {
    "native": _native_batched, "triton": _triton_batched, "torch": _ref_batched})


def _check(op, boxes, scores, iou_threshold, sigma, score_threshold, method, idxs=None):
    def fail(msg):
        raise ValueError(f"{op}: {msg}")

    check_boxes_and_scores(op, boxes, scores, idxs)
    iou_threshold = number(op, "iou_threshold", iou_threshold)
    if iou_threshold < 0:
        fail(f"iou_threshold must be a number >= 0, got {iou_threshold}")
    sigma = number(op, "sigma", sigma)
    score_threshold = number(op, "score_threshold", score_threshold)
    if method not in METHOD_CODES:
        fail(f"method must be one of 'gaussian', 'linear', 'naive' (or 'hard'), got {method!r}")
    if METHOD_CODES[method] == 2 and not sigma > 0:
        fail(f"sigma must be > 0 for the gaussian method, got {sigma}")
    return iou_threshold, sigma, score_threshold


def soft_nms(boxes: Tensor, scores: Tensor, iou_threshold: float = 0.3, sigma: float = 0.5,
             score_threshold: float = 0.001, method: str = "gaussian") -> tuple[Tensor, Tensor]:
    """Soft-NMS: overlapping boxes have their scores decayed instead of being removed.

    Args:
        boxes: ``[N, 4]`` boxes ``(x1, y1, x2, y2)``, floating. IoU as torchvision's (no "+1").
        scores: ``[N]`` scores, floating.
        iou_threshold: "linear" and "naive" decay a box only when its IoU with the kept box is >= this;
            "gaussian" ignores it (mmcv's rules).
        sigma: the gaussian's width: weight ``exp(-IoU^2 / sigma)``.
        score_threshold: a box is dropped once its decayed score is below this (the first box picked
            is always kept, as in mmcv).
        method: "gaussian" (default), "linear" (weight ``1 - IoU``), or "naive"/"hard" (weight 0: hard
            NMS with a ``>=`` threshold).

    Returns:
        ``(keep, decayed_scores)``: int64 indices in the order picked (decreasing decayed score, ties:
        lower index first) and their decayed scores in the dtype of ``scores``, as mmcv's
        ``soft_nms`` orders its ``inds`` and ``dets[:, 4]``.

    Example:
        >>> boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [20., 20., 30., 30.]])
        >>> fastseg.ops.soft_nms(boxes, torch.tensor([0.9, 0.8, 0.7]))
        (tensor([0, 2, 1]), tensor([0.9000, 0.7000, 0.3167]))
    """
    args = _check("soft_nms", boxes, scores, iou_threshold, sigma, score_threshold, method)
    _, impl = backend.select("soft_nms", boxes.device, SOFT_NMS_IMPLS)
    return impl(boxes, scores, *args, method)


def batched_soft_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float = 0.3, sigma: float = 0.5,
                     score_threshold: float = 0.001, method: str = "gaussian") -> tuple[Tensor, Tensor]:
    """Soft-NMS within each class ``idxs[i]`` (a box decays only boxes of its class), all classes in one
    pass: the output is ordered by decayed score across classes (ties: lower index first), as mmcv's
    ``batched_nms`` with a soft-NMS config orders it."""
    args = _check("batched_soft_nms", boxes, scores, iou_threshold, sigma, score_threshold, method, idxs)
    _, impl = backend.select("batched_soft_nms", boxes.device, BATCHED_SOFT_NMS_IMPLS)
    return impl(boxes, scores, idxs, *args, method)


# hasattr: an extension built before this op existed must not break `import fastseg`.
if _extension.loaded() and hasattr(torch.ops.fastseg, "soft_nms"):

    @torch.library.register_fake("fastseg::soft_nms")
    def _soft_nms_fake(boxes, scores, iou_threshold, sigma, score_threshold, method):
        torch._check(boxes.dim() == 2 and boxes.shape[1] == 4, lambda: "soft_nms: boxes must be [N, 4]")
        torch._check(scores.dim() == 1 and scores.shape[0] == boxes.shape[0], lambda: "soft_nms: scores must be [N]")
        kept = torch.library.get_ctx().new_dynamic_size()
        return boxes.new_empty((kept,), dtype=torch.long), scores.new_empty((kept,))

    @torch.library.register_fake("fastseg::batched_soft_nms")
    def _batched_soft_nms_fake(boxes, scores, idxs, iou_threshold, sigma, score_threshold, method):
        torch._check(boxes.dim() == 2 and boxes.shape[1] == 4, lambda: "batched_soft_nms: boxes must be [N, 4]")
        torch._check(scores.dim() == 1 and scores.shape[0] == boxes.shape[0],
                     lambda: "batched_soft_nms: scores must be [N]")
        kept = torch.library.get_ctx().new_dynamic_size()
        return boxes.new_empty((kept,), dtype=torch.long), scores.new_empty((kept,))
