"""Anchors: ``AnchorGenerator``, a drop-in for torchvision's
``torchvision.models.detection.anchor_utils.AnchorGenerator``, and the tensor-level ``grid_anchors`` /
``anchors_for`` for code without an ``ImageList``.

Backends of ``grid_anchors``: native (csrc/cpu/anchors_kernel.cpp, csrc/cuda/anchors_kernel.cu: every
pyramid level in one kernel launch), triton (kernels/anchors.py), torch (fastseg/reference/anchors.py).
All give torchvision's anchors bit for bit, in its order.

Why ``AnchorGenerator.forward`` is fast: the anchors depend only on (grid sizes, image size, dtype,
device, cell anchors), which repeat from batch to batch, so the module keeps the concatenated anchors
of the last few such keys and hands out one independent copy per image: a copy-on-write clone on the
CPU (no memcpy until somebody writes), an asynchronous device copy on CUDA (no host sync). A caller
who writes into the returned anchors changes only its copy. torchvision recomputes them with ~10 small
ops per level on every call.
"""
from __future__ import annotations

import collections
import numbers
from typing import Sequence

import torch
from torch import Tensor, nn

from fastseg import _extension, backend, reference
from fastseg.reference.anchors import cell_anchors as _cell_anchors


class AnchorConfigError(ValueError, AssertionError):
    """Feature maps and sizes/aspect ratios disagree. A ValueError, and an AssertionError as well
    because torchvision's ``torch._assert`` raises one for the same mistake."""


def _native_grid_anchors(cells, grid_sizes, strides):
    return torch.ops.fastseg.grid_anchors(cells, grid_sizes, strides)


def _triton_grid_anchors(cells, grid_sizes, strides):
    from fastseg.kernels import anchors as triton_anchors  # imports triton: only when asked for

    return triton_anchors.grid_anchors(cells, grid_sizes, strides)


GRID_ANCHORS_IMPLS = backend.register("grid_anchors", {
    "native": _native_grid_anchors,
    "triton": _triton_grid_anchors,
    "torch": reference.grid_anchors,
})


def _int_pairs(name: str, values, levels: int) -> list[int]:
    """[(a, b), ...] (or torch.Size pairs) of `levels` pairs of ints -> flat [a0, b0, a1, b1, ...]."""
    flat = []
    try:
        pairs = list(values)
    except TypeError:
        raise ValueError(f"grid_anchors: {name} must be a sequence of (int, int) pairs, got {values!r}") from None
    if len(pairs) != levels:
        raise ValueError(f"grid_anchors: {name} must hold one pair per level ({levels}), got {len(pairs)}")
    for p in pairs:
        if isinstance(p, Tensor):
            p = p.tolist()
        try:
            a, b = p
        except (TypeError, ValueError):
            raise ValueError(f"grid_anchors: every entry of {name} must be an (int, int) pair, got {p!r}") from None
        for v in (a, b):
            if isinstance(v, Tensor) and v.numel() == 1:
                v = v.item()
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise ValueError(f"grid_anchors: {name} must hold ints, got {v!r}")
            flat.append(int(v))
    return flat


def grid_anchors(cell_anchors: Sequence[Tensor], grid_sizes, strides) -> Tensor:
    """Anchors of every pyramid level, concatenated (torchvision's ``grid_anchors`` + ``torch.cat``).

    Args:
        cell_anchors: per level, ``[A_l, 4]`` zero-centred anchors (same dtype and device; the output
            has theirs), e.g. ``AnchorGenerator(...).cell_anchors``.
        grid_sizes: per level, ``(H_l, W_l)`` of the feature map.
        strides: per level, ``(stride_h, stride_w)`` in pixels (torchvision: ``image_h // H_l``,
            ``image_w // W_l``).

    Returns:
        ``[sum_l H_l * W_l * A_l, 4]`` anchors ``(x1, y1, x2, y2)``: level by level, then row, column,
        cell anchor.
    """
    if isinstance(cell_anchors, Tensor) or not isinstance(cell_anchors, (list, tuple)):
        raise ValueError(f"grid_anchors: cell_anchors must be a list of [A, 4] tensors, got {type(cell_anchors).__name__}")
    levels = len(cell_anchors)
    if levels == 0:
        raise ValueError("grid_anchors: cell_anchors must hold one tensor per level, got an empty list")
    for i, c in enumerate(cell_anchors):
        if not isinstance(c, Tensor) or c.dim() != 2 or c.shape[1] != 4 or not c.is_floating_point():
            raise ValueError(f"grid_anchors: cell_anchors[{i}] must be a floating [A, 4] tensor, got "
                             f"{getattr(c, 'dtype', type(c).__name__)} of shape {list(getattr(c, 'shape', []))}")
        if c.dtype != cell_anchors[0].dtype or c.device != cell_anchors[0].device:
            raise ValueError(f"grid_anchors: all cell_anchors must share dtype and device, got {c.dtype} on {c.device} "
                             f"at level {i} and {cell_anchors[0].dtype} on {cell_anchors[0].device} at level 0")
    gs = _int_pairs("grid_sizes", grid_sizes, levels)
    st = _int_pairs("strides", strides, levels)
    if any(v < 0 for v in gs):
        raise ValueError(f"grid_anchors: grid sizes must be >= 0, got {grid_sizes!r}")
    _, impl = backend.select("grid_anchors", cell_anchors[0].device, GRID_ANCHORS_IMPLS)
    return impl(list(cell_anchors), gs, st)


def anchors_for(image_size, grid_sizes, sizes=((128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),),
                dtype: torch.dtype = torch.float32, device="cpu") -> Tensor:
    """Anchors of one ``image_size = (H, W)`` (padded batch size) and its feature maps' ``grid_sizes``,
    as torchvision's ``AnchorGenerator(sizes, aspect_ratios)`` gives for each image: ``[sum H*W*A, 4]``."""
    gen = AnchorGenerator(sizes, aspect_ratios)
    return gen.anchors(image_size, grid_sizes, dtype, device)  # the temporary module's cache: ours


def _fresh_copy(t: Tensor) -> Tensor:
    """An independent copy of `t`. On the CPU a copy-on-write clone (``torch._lazy_clone``): PyTorch
    shares the storage until either side is written through a mutable access, which then copies, so
    readers (box coding, matching) never pay for the 2.9 MB memcpy per image and writers get their
    own memory. On CUDA a plain clone: materialising a copy-on-write CUDA storage is a blocking
    cudaMemcpy, while clone is an asynchronous device copy (no host sync)."""
    if t.device.type == "cpu" and _HAS_LAZY_CLONE and not torch.compiler.is_compiling():
        return torch._lazy_clone(t)
    return t.clone()


_HAS_LAZY_CLONE = hasattr(torch, "_lazy_clone")


class AnchorGenerator(nn.Module):
    """Anchors for a set of feature maps and image sizes: same constructor, attributes
    (``sizes``, ``aspect_ratios``, ``cell_anchors``) and ``forward(image_list, feature_maps)`` as
    torchvision's, same anchors in the same order, one fresh tensor per image.

    Example:
        >>> gen = fastseg.ops.AnchorGenerator(((32,), (64,)), ((0.5, 1.0, 2.0),) * 2)
        >>> [a.shape for a in gen(image_list, [torch.zeros(2, 8, 100, 152), torch.zeros(2, 8, 50, 76)])]
        [torch.Size([56962, 4]), torch.Size([56962, 4])]
    """

    __annotations__ = {"cell_anchors": list[torch.Tensor]}

    # Distinct (shapes, dtype, device) keys kept: a multi-scale training run cycles through a few.
    CACHE_SIZE = 8

    def __init__(self, sizes=((128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),)):
        super().__init__()
        if not isinstance(sizes[0], (list, tuple)):
            sizes = tuple((s,) for s in sizes)
        if not isinstance(aspect_ratios[0], (list, tuple)):
            aspect_ratios = (aspect_ratios,) * len(sizes)
        self.sizes = sizes
        self.aspect_ratios = aspect_ratios
        self.cell_anchors = [self.generate_anchors(s, a) for s, a in zip(sizes, aspect_ratios)]
        self._cache: collections.OrderedDict = collections.OrderedDict()

    def generate_anchors(self, scales, aspect_ratios, dtype: torch.dtype = torch.float32,
                         device: torch.device = torch.device("cpu")) -> Tensor:
        return _cell_anchors(scales, aspect_ratios, dtype, device)

    def set_cell_anchors(self, dtype: torch.dtype, device: torch.device):
        self.cell_anchors = [c.to(dtype=dtype, device=device) for c in self.cell_anchors]

    def num_anchors_per_location(self) -> list[int]:
        return [len(s) * len(a) for s, a in zip(self.sizes, self.aspect_ratios)]

    def grid_anchors(self, grid_sizes, strides) -> list[Tensor]:
        """torchvision's per-level form: a list of ``[H*W*A, 4]`` tensors (strides may be tensors)."""
        self._check_levels(len(grid_sizes), len(strides))
        all_levels = grid_anchors(self.cell_anchors, grid_sizes, strides)
        counts = [int(g[0]) * int(g[1]) * c.shape[0] for g, c in zip(grid_sizes, self.cell_anchors)]
        return list(all_levels.split(counts))

    def _check_levels(self, n_grids: int, n_strides: int):
        if not (n_grids == n_strides == len(self.cell_anchors)):
            raise AnchorConfigError(
                "AnchorGenerator: there must be one feature map per entry of sizes / aspect_ratios: got "
                f"{n_grids} feature maps for {len(self.cell_anchors)} sizes / aspect ratio sets")

    def anchors(self, image_size, grid_sizes, dtype: torch.dtype, device) -> Tensor:
        """The concatenated anchors of one image (cached: do not write into the result; ``forward``
        hands out copies)."""
        device = torch.device(device)
        grid_sizes = [(int(g[0]), int(g[1])) for g in grid_sizes]
        self._check_levels(len(grid_sizes), len(grid_sizes))
        for g in grid_sizes:
            if g[0] <= 0 or g[1] <= 0:
                raise ValueError(f"AnchorGenerator: feature maps must have a non-empty grid, got {grid_sizes}")
        strides = [(int(image_size[0]) // g[0], int(image_size[1]) // g[1]) for g in grid_sizes]
        self.set_cell_anchors(dtype, device)
        if torch.compiler.is_compiling():
            return grid_anchors(self.cell_anchors, grid_sizes, strides)
        # The cell anchors are part of the key by identity and version: replacing or editing them in
        # place (as torchvision allows) gives new anchors. The key holds them, so ids are not reused.
        key = (tuple(grid_sizes), tuple(strides), dtype, device,
               tuple((c, c._version) for c in self.cell_anchors), backend.current_backend())
        key_hash = (key[0], key[1], dtype, device, tuple((id(c), v) for c, v in key[4]), key[5])
        hit = self._cache.get(key_hash)
        if hit is not None:
            self._cache.move_to_end(key_hash)
            return hit[1]
        out = grid_anchors(self.cell_anchors, grid_sizes, strides)
        self._cache[key_hash] = (key, out)
        while len(self._cache) > self.CACHE_SIZE:
            self._cache.popitem(last=False)
        return out

    def forward(self, image_list, feature_maps: list[Tensor]) -> list[Tensor]:
        if not isinstance(feature_maps, (list, tuple)) or len(feature_maps) == 0:
            raise ValueError(f"AnchorGenerator: feature_maps must be a non-empty list of tensors, got {feature_maps!r}")
        grid_sizes = [fm.shape[-2:] for fm in feature_maps]
        image_size = image_list.tensors.shape[-2:]
        base = self.anchors(image_size, grid_sizes, feature_maps[0].dtype, feature_maps[0].device)
        # One copy per image: the cache stays intact whatever the caller does with its anchors.
        return [_fresh_copy(base) for _ in range(len(image_list.image_sizes))]


if _extension.loaded():

    @torch.library.register_fake("fastseg::grid_anchors")
    def _grid_anchors_fake(cell_anchors, grid_sizes, strides):
        total = sum(grid_sizes[2 * i] * grid_sizes[2 * i + 1] * c.shape[0] for i, c in enumerate(cell_anchors))
        return cell_anchors[0].new_empty((total, 4))
