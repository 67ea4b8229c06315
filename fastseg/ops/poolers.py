"""``MultiScaleRoIAlign``: a drop-in for ``torchvision.ops.MultiScaleRoIAlign`` (same constructor, same
forward, same level mapping) whose forward and backward pool every pyramid level in ONE kernel launch
(``fastseg::multi_level_roi_align``) instead of a Python loop of one ``roi_align`` per level.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from fastseg import _extension, backend
from fastseg.ops._autograd import graph_grads
from fastseg.ops.roi_align import check_output_size, grad_like, output_like, roi_align
from fastseg.reference.roi_align import multi_level_roi_align as _ref_multi_level, roi_align as _ref_roi_align


class LevelMapper:
    """FPN's level of a box (Feature Pyramid Networks, eq. 1): ``floor(k0 + log2(sqrt(area) / s0))``
    clamped to ``[k_min, k_max]``, returned minus ``k_min``; torchvision's formula and arithmetic."""

    def __init__(self, k_min: int, k_max: int, canonical_scale: int = 224, canonical_level: int = 4,
                 eps: float = 1e-6):
        self.k_min, self.k_max = k_min, k_max
        self.s0, self.lvl0, self.eps = canonical_scale, canonical_level, eps

    def __call__(self, boxlists: List[Tensor]) -> Tensor:
        s = torch.sqrt(torch.cat([(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) for b in boxlists]))
        target = torch.floor(self.lvl0 + torch.log2(s / self.s0) + torch.tensor(self.eps, dtype=s.dtype))
        target = torch.clamp(target, min=self.k_min, max=self.k_max)
        return (target.to(torch.int64) - self.k_min).to(torch.int64)


def _infer_scale(feature: Tensor, original_size: List[int]) -> float:
    # Power-of-two scale nearest to the size ratio, from the first dimension (as torchvision).
    approx = float(feature.shape[-2]) / float(original_size[0])
    return 2 ** float(torch.tensor(approx).log2().round())


def setup_scales(features: List[Tensor], image_shapes: List[Tuple[int, int]], canonical_scale: int,
                 canonical_level: int) -> Tuple[List[float], LevelMapper]:
    if not image_shapes:
        raise ValueError("MultiScaleRoIAlign: image_shapes must list the (height, width) of every image, got []")
    original = [max(s[0] for s in image_shapes), max(s[1] for s in image_shapes)]
    scales = [_infer_scale(f, original) for f in features]
    lvl_min = -math.log2(scales[0])
    lvl_max = -math.log2(scales[-1])
    return scales, LevelMapper(int(lvl_min), int(lvl_max), canonical_scale, canonical_level)


def _native(features, rois, levels, scales, ph, pw, sampling_ratio, aligned):
    return torch.ops.fastseg.multi_level_roi_align(features, rois, levels, scales, ph, pw, sampling_ratio, aligned)


def _triton(features, rois, levels, scales, ph, pw, sampling_ratio, aligned):
    from fastseg.kernels import roi_align as triton_roi_align

    return triton_roi_align.multi_level_roi_align(features, rois, levels, scales, ph, pw, sampling_ratio, aligned)


def _torch(features, rois, levels, scales, ph, pw, sampling_ratio, aligned):
    return _ref_multi_level(features, rois, levels, scales, ph, pw, sampling_ratio, aligned)


MULTI_LEVEL_ROI_ALIGN_IMPLS = backend.register(
    "multi_level_roi_align", {"native": _native, "triton": _triton, "torch": _torch})


def multi_level_roi_align(features: List[Tensor], rois: Tensor, levels: Tensor, spatial_scales: List[float],
                          output_size, sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """RoI ``k`` (a row ``(batch index, x1, y1, x2, y2)`` of ``rois``) pooled from
    ``features[levels[k]]`` at ``spatial_scales[levels[k]]``, all levels in one launch."""
    op = "multi_level_roi_align"
    if not features:
        raise ValueError(f"{op}: features must hold at least one feature map, got none")
    if len(spatial_scales) != len(features):
        raise ValueError(f"{op}: one spatial scale per feature map is needed, got {len(spatial_scales)} "
                         f"scales for {len(features)} maps")
    ph, pw = check_output_size(op, output_size)
    _, impl = backend.select(op, features[0].device, MULTI_LEVEL_ROI_ALIGN_IMPLS)
    return impl(list(features), rois, levels, [float(s) for s in spatial_scales], ph, pw, int(sampling_ratio),
                bool(aligned))


@torch.fx.wrap  # one node under torch.fx (the scales need the maps' real shapes), as torchvision's pooler
def pool_levels(features: List[Tensor], boxes: List[Tensor], image_shapes: List[Tuple[int, int]],
                names: List[str], output_size, sampling_ratio: int, canonical_scale: int,
                canonical_level: int) -> Tuple[Tensor, List[float], LevelMapper]:
    """MultiScaleRoIAlign's forward on its filtered maps: the pooled RoIs, the maps' scales, the mapper."""
    scales, map_levels = setup_scales(features, image_shapes, canonical_scale, canonical_level)
    boxes = list(boxes)
    if len(features) == 1:
        return roi_align(features[0], boxes, output_size, spatial_scale=scales[0],
                         sampling_ratio=sampling_ratio), scales, map_levels
    from fastseg.ops.roi_align import check_input, convert_boxes
    for i, f in enumerate(features):
        check_input("MultiScaleRoIAlign", f, f"x[{names[i] if i < len(names) else i}]")
    rois = convert_boxes("MultiScaleRoIAlign", boxes, features[0])
    levels = map_levels(boxes) if boxes else torch.zeros(0, dtype=torch.int64, device=rois.device)
    return multi_level_roi_align(features, rois, levels, scales, output_size, sampling_ratio), scales, map_levels


class MultiScaleRoIAlign(nn.Module):
    """Multi-scale RoIAlign pooling for FPN detectors, like ``torchvision.ops.MultiScaleRoIAlign``.

    Args:
        featmap_names: the keys of the feature maps to pool from (the others are ignored).
        output_size: ``int`` or ``(height, width)``.
        sampling_ratio: as in :func:`fastseg.ops.roi_align`.
        canonical_scale, canonical_level: the level mapping ``floor(canonical_level + log2(sqrt(area) /
            canonical_scale))``, clamped to the available levels.

    Example:
        >>> m = fastseg.ops.MultiScaleRoIAlign(["feat1", "feat3"], 3, 2)
        >>> x = {"feat1": torch.rand(1, 5, 64, 64), "feat3": torch.rand(1, 5, 16, 16)}
        >>> m(x, [torch.rand(6, 4) * 256], [(512, 512)]).shape
        torch.Size([6, 5, 3, 3])
    """

    __annotations__ = {"scales": Optional[List[float]], "map_levels": Optional[LevelMapper]}

    def __init__(self, featmap_names: List[str], output_size, sampling_ratio: int, *, canonical_scale: int = 224,
                 canonical_level: int = 4):
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.featmap_names = featmap_names
        self.sampling_ratio = sampling_ratio
        self.output_size = tuple(output_size)
        self.scales = None
        self.map_levels = None
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    def forward(self, x: Dict[str, Tensor], boxes: List[Tensor], image_shapes: List[Tuple[int, int]]) -> Tensor:
        x_filtered = [v for k, v in x.items() if k in self.featmap_names]
        if not x_filtered:
            raise ValueError(f"MultiScaleRoIAlign: none of the featmap_names {self.featmap_names} is a key of x "
                             f"(keys: {list(x)})")
        result = pool_levels(x_filtered, boxes, image_shapes, self.featmap_names, self.output_size,
                             self.sampling_ratio, self.canonical_scale, self.canonical_level)
        if isinstance(result, torch.fx.Proxy):  # a torch.fx trace: a node; the module keeps its real state
            return result[0]
        out, self.scales, self.map_levels = result
        return out

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(featmap_names={self.featmap_names}, "
                f"output_size={self.output_size}, sampling_ratio={self.sampling_ratio})")


if _extension.loaded():

    @torch.library.register_fake("fastseg::multi_level_roi_align")
    def _fake(features, rois, levels, spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned,
              max_mode=False):
        return output_like(features, rois, pooled_height, pooled_width)

    @torch.library.register_fake("fastseg::multi_level_roi_align_backward")
    def _backward_fake(grad, features, rois, levels, spatial_scales, pooled_height, pooled_width, sampling_ratio,
                       aligned, max_mode, deterministic):
        return [grad_like(f) for f in features]

    def _setup(ctx, inputs, output):
        features, rois, levels, scales, ph, pw, sampling_ratio, aligned, max_mode = inputs
        ctx.save_for_backward(rois, levels, *features)
        ctx.args = (scales, ph, pw, sampling_ratio, aligned, max_mode)

    def _backward(ctx, grad):
        rois, levels, *features = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiable gradients (graph_grads)
            grads = graph_grads(lambda *fs: _ref_multi_level(list(fs), rois, levels, *ctx.args), features,
                                [True] * len(features), grad)
            return grads, None, None, None, None, None, None, None, None
        grads = torch.ops.fastseg.multi_level_roi_align_backward(
            grad, features, rois, levels, *ctx.args, torch.are_deterministic_algorithms_enabled())
        return list(grads), None, None, None, None, None, None, None, None

    torch.library.register_autograd("fastseg::multi_level_roi_align", _backward, setup_context=_setup)
