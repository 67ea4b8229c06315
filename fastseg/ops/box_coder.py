"""Box coding: ``BoxCoder``, a drop-in for torchvision's ``torchvision.models.detection._utils.BoxCoder``
(same ``encode`` / ``decode`` / ``encode_single`` / ``decode_single``, the exp clip included), plus a
fused ``decode_and_clip`` (decode + ``clip_boxes_to_image`` in one pass).

Backends of ``box_decode`` / ``box_encode``: native (csrc/cpu/box_coder_kernel.cpp,
csrc/cuda/box_coder_kernel.cu: one fused pass, parallel over boxes), triton (kernels/box_coder.py),
torch (fastseg/reference/box_coder.py). torchvision runs ~20 elementwise ops over strided views.

Autograd: the fused kernels have no backward; when an input requires grad (training losses on decoded
boxes), the differentiable torch reference runs instead (same values).
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from fastseg import _extension, backend, reference


def _native_box_decode(rel_codes, boxes, weights, clip, image_size):
    return torch.ops.fastseg.box_decode(rel_codes, boxes, weights, clip, image_size)


def _native_box_encode(reference_boxes, proposals, weights):
    return torch.ops.fastseg.box_encode(reference_boxes, proposals, weights)


def _triton_box_decode(rel_codes, boxes, weights, clip, image_size):
    from fastseg.kernels import box_coder as triton_box_coder

    return triton_box_coder.box_decode(rel_codes, boxes, weights, clip, image_size)


def _triton_box_encode(reference_boxes, proposals, weights):
    from fastseg.kernels import box_coder as triton_box_coder

    return triton_box_coder.box_encode(reference_boxes, proposals, weights)


BOX_DECODE_IMPLS = backend.register("box_decode", {
    "native": _native_box_decode, "triton": _triton_box_decode, "torch": reference.box_decode})
BOX_ENCODE_IMPLS = backend.register("box_encode", {
    "native": _native_box_encode, "triton": _triton_box_encode, "torch": reference.box_encode})


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _check_boxes(op: str, name: str, t, n: int | None = None, floating: bool = True):
    if not isinstance(t, Tensor):
        raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2 or t.shape[1] != 4:
        raise ValueError(f"{op}: {name} must have shape [N, 4], got {list(t.shape)}")
    if t.is_complex() or (floating and not t.is_floating_point()):
        raise ValueError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
    if n is not None and t.shape[0] != n:
        raise ValueError(f"{op}: {name} must have {n} rows (one per reference box), got {t.shape[0]}")


def _image_size(op: str, image_size) -> list[int]:
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: image_size must be (height, width), got {image_size!r}") from None
    return [h, w]


def box_decode(rel_codes: Tensor, boxes: Tensor, weights, bbox_xform_clip: float, image_size=None) -> Tensor:
    """``BoxCoder.decode_single`` as a function: ``[N, 4K]`` codes against ``[N, 4]`` boxes -> ``[N, 4K]``
    boxes (``boxes`` is converted to the codes' dtype); clipped to ``image_size = (h, w)`` if given."""
    op = "box_decode"
    if not isinstance(rel_codes, Tensor):
        raise ValueError(f"{op}: rel_codes must be a torch.Tensor, got {type(rel_codes).__name__}")
    _check_boxes(op, "boxes", boxes, floating=False)  # converted to the codes' dtype, as torchvision
    if not rel_codes.is_floating_point():
        raise ValueError(f"{op}: rel_codes must be a floating-point tensor, got {rel_codes.dtype}")
    if rel_codes.dim() != 2 or rel_codes.shape[0] != boxes.shape[0] or rel_codes.shape[1] % 4 != 0:
        raise ValueError(f"{op}: rel_codes must have shape [N, 4 * K] with N = {boxes.shape[0]} boxes, "
                         f"got {list(rel_codes.shape)}")
    if rel_codes.device != boxes.device:
        raise ValueError(f"{op}: rel_codes and boxes must be on the same device, got {rel_codes.device} and {boxes.device}")
    weights = [float(w) for w in weights]
    if len(weights) != 4:
        raise ValueError(f"{op}: weights must hold 4 numbers, got {len(weights)}")
    clip = float(bbox_xform_clip)
    size = None if image_size is None else _image_size(op, image_size)
    boxes = boxes.to(rel_codes.dtype)
    if _needs_grad(rel_codes, boxes):
        return reference.box_decode(rel_codes, boxes, weights, clip, size)
    _, impl = backend.select(op, rel_codes.device, BOX_DECODE_IMPLS)
    return impl(rel_codes, boxes, weights, clip, size)


def box_encode(reference_boxes: Tensor, proposals: Tensor, weights) -> Tensor:
    """``BoxCoder.encode_single`` as a function: ``[N, 4]`` targets (dtype of ``reference_boxes``)."""
    op = "box_encode"
    _check_boxes(op, "reference_boxes", reference_boxes)
    _check_boxes(op, "proposals", proposals, reference_boxes.shape[0])
    if proposals.device != reference_boxes.device:
        raise ValueError(f"{op}: reference_boxes and proposals must be on the same device, got "
                         f"{reference_boxes.device} and {proposals.device}")
    weights = [float(w) for w in weights]
    if len(weights) != 4:
        raise ValueError(f"{op}: weights must hold 4 numbers, got {len(weights)}")
    if _needs_grad(reference_boxes, proposals) or proposals.dtype != reference_boxes.dtype:
        # Mixed dtypes: torchvision's type promotion op by op; the reference reproduces it.
        return reference.box_encode(reference_boxes, proposals, weights)
    _, impl = backend.select(op, reference_boxes.device, BOX_ENCODE_IMPLS)
    return impl(reference_boxes, proposals, weights)


class BoxCoder:
    """Encodes boxes as regression targets and decodes them back (torchvision's ``BoxCoder``).

    Example:
        >>> coder = fastseg.ops.BoxCoder((1.0, 1.0, 1.0, 1.0))
        >>> anchors = torch.tensor([[0., 0., 10., 10.]])
        >>> coder.decode(torch.zeros(1, 4), [anchors])
        tensor([[[ 0.,  0., 10., 10.]]])
    """

    def __init__(self, weights: tuple[float, float, float, float], bbox_xform_clip: float = math.log(1000.0 / 16)) -> None:
        self.weights = weights
        self.bbox_xform_clip = bbox_xform_clip

    def encode(self, reference_boxes: list[Tensor], proposals: list[Tensor]) -> tuple[Tensor, ...]:
        boxes_per_image = [len(b) for b in reference_boxes]
        reference_boxes = reference_boxes[0] if len(reference_boxes) == 1 else torch.cat(reference_boxes, dim=0)
        proposals = proposals[0] if len(proposals) == 1 else torch.cat(proposals, dim=0)
        return self.encode_single(reference_boxes, proposals).split(boxes_per_image, 0)

    def encode_single(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        return box_encode(reference_boxes, proposals, self.weights)

    def _concat(self, rel_codes, boxes):
        if not isinstance(boxes, (list, tuple)):
            raise CoderArgError(f"BoxCoder.decode: boxes must be a list or tuple of [N_i, 4] tensors, got {type(boxes).__name__}")
        if not isinstance(rel_codes, Tensor):
            raise CoderArgError(f"BoxCoder.decode: rel_codes must be a torch.Tensor, got {type(rel_codes).__name__}")
        if len(boxes) == 0:
            raise ValueError("BoxCoder.decode: boxes must hold at least one tensor, got an empty list")
        box_sum = sum(int(b.size(0)) for b in boxes)
        concat = boxes[0] if len(boxes) == 1 else torch.cat(boxes, dim=0)
        if box_sum > 0:
            if rel_codes.numel() % (4 * box_sum) != 0:
                raise ValueError(f"BoxCoder.decode: rel_codes must hold 4 * K codes per box ({box_sum} boxes), "
                                 f"got shape {list(rel_codes.shape)}")
            rel_codes = rel_codes.reshape(box_sum, -1)
        return rel_codes, concat, box_sum

    def decode(self, rel_codes: Tensor, boxes: list[Tensor]) -> Tensor:
        rel_codes, concat, box_sum = self._concat(rel_codes, boxes)
        pred = self.decode_single(rel_codes, concat)
        return pred.reshape(box_sum, -1, 4) if box_sum > 0 else pred

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        return box_decode(rel_codes, boxes, self.weights, self.bbox_xform_clip)

    def decode_and_clip(self, rel_codes: Tensor, boxes, image_size) -> Tensor:
        """``clip_boxes_to_image(decode(rel_codes, boxes), image_size)`` in one pass. ``boxes``: a list
        (result shaped as ``decode``'s, ``[N, K, 4]``) or one ``[N, 4]`` tensor (shaped as
        ``decode_single``'s, ``[N, 4K]``); ``image_size = (height, width)``."""
        if isinstance(boxes, Tensor):
            return box_decode(rel_codes, boxes, self.weights, self.bbox_xform_clip, image_size)
        rel_codes, concat, box_sum = self._concat(rel_codes, boxes)
        pred = box_decode(rel_codes, concat, self.weights, self.bbox_xform_clip, image_size)
        return pred.reshape(box_sum, -1, 4) if box_sum > 0 else pred


class CoderArgError(ValueError, AssertionError):
    """A wrong argument type for BoxCoder.decode: a ValueError, and an AssertionError as torchvision's
    ``torch._assert`` raises for the same mistake."""


if _extension.loaded():

    @torch.library.register_fake("fastseg::box_decode")
    def _box_decode_fake(rel_codes, boxes, weights, bbox_xform_clip, image_size=None):
        torch._check(boxes.dim() == 2 and boxes.shape[1] == 4, lambda: "box_decode: boxes must be [N, 4]")
        torch._check(rel_codes.dim() == 2 and rel_codes.shape[0] == boxes.shape[0], lambda: "box_decode: rel_codes must be [N, 4K]")
        return torch.empty_like(rel_codes, memory_format=torch.contiguous_format)

    @torch.library.register_fake("fastseg::box_encode")
    def _box_encode_fake(reference_boxes, proposals, weights):
        torch._check(reference_boxes.dim() == 2 and reference_boxes.shape[1] == 4, lambda: "box_encode: [N, 4]")
        return torch.empty_like(reference_boxes, memory_format=torch.contiguous_format)
