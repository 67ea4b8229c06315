r"""Anchors of a feature pyramid (torchvision's ``AnchorGenerator.grid_anchors``) in Triton.

Maths
-----
Output row ``r`` of level ``l`` (rows of a level start at ``start[l]``) is anchor ``a`` of cell
``(y, x)``: ``r - start[l] = (y * W_l + x) * A_l + a``. Coordinate ``c`` (x1, y1, x2, y2) is::

    shift = int32(x * stride_w)  for c even,   int32(y * stride_h)  for c odd    (wrapping, as int32)
    out   = T(float(T(shift)) + float(cell[l][a, c]))                              (T = output dtype)

exactly torchvision's ``arange(int32) * stride + base_anchors``: bit-identical to it.

One launch covers every level: each program handles ``BLOCK`` output coordinates and finds their
level with a static loop over the (few) levels. The per-level table (``start``, ``W``, ``A``, strides,
offset of the level's cells) is a small int64 tensor and the cells are concatenated (``torch.cat``: one
extra tiny launch; the CUDA C++ kernel passes them by value instead).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["grid_anchors"]

BLOCK = 1024  # output coordinates per program (4 per anchor)
META = 6  # int64 fields per level: start, width, per_cell, stride_h, stride_w, cell_offset


@triton.jit
def _grid_anchors_kernel(cells_ptr, meta_ptr, out_ptr, coords, LEVELS: tl.constexpr, BLOCK: tl.constexpr,
                         IS_FP64: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < coords
    anchor = offs // 4
    c = offs % 4
    start = tl.zeros([BLOCK], dtype=tl.int64)
    width = tl.full([BLOCK], 1, dtype=tl.int64)
    per_cell = tl.full([BLOCK], 1, dtype=tl.int64)
    s_h = tl.zeros([BLOCK], dtype=tl.int64)
    s_w = tl.zeros([BLOCK], dtype=tl.int64)
    cell_off = tl.zeros([BLOCK], dtype=tl.int64)
    for lvl in tl.static_range(LEVELS):  # the last level whose start <= anchor
        st = tl.load(meta_ptr + lvl * 6 + 0)
        sel = anchor >= st
        start = tl.where(sel, st, start)
        width = tl.where(sel, tl.load(meta_ptr + lvl * 6 + 1), width)
        per_cell = tl.where(sel, tl.load(meta_ptr + lvl * 6 + 2), per_cell)
        s_h = tl.where(sel, tl.load(meta_ptr + lvl * 6 + 3), s_h)
        s_w = tl.where(sel, tl.load(meta_ptr + lvl * 6 + 4), s_w)
        cell_off = tl.where(sel, tl.load(meta_ptr + lvl * 6 + 5), cell_off)
    local = anchor - start
    a = local % per_cell
    loc = local // per_cell
    x = loc % width
    y = loc // width
    # int32 products, wrapping like torchvision's int32 arange * stride.
    shift = tl.where((c % 2) == 1, y.to(tl.int32) * s_h.to(tl.int32), x.to(tl.int32) * s_w.to(tl.int32))
    cell = tl.load(cells_ptr + (cell_off + a) * 4 + c, mask=mask, other=0.0)
    if IS_FP64:
        val = shift.to(tl.float64) + cell
    else:
        sh = shift.to(tl.float32).to(cell.dtype).to(tl.float32)  # int32 -> T, as PyTorch's promotion
        val = sh + cell.to(tl.float32)
    tl.store(out_ptr + offs, val.to(out_ptr.dtype.element_ty), mask=mask)


def _check(cells, grid_sizes, strides):
    if len(cells) == 0 or len(grid_sizes) != 2 * len(cells) or len(strides) != 2 * len(cells):
        raise ValueError(f"grid_anchors: need one (h, w) grid size and stride pair per level ({len(cells)}), "
                         f"got {len(grid_sizes)} and {len(strides)} ints")
    for i, c in enumerate(cells):
        if c.dim() != 2 or c.shape[1] != 4 or not c.is_floating_point():
            raise ValueError(f"grid_anchors: cell_anchors[{i}] must be a floating [A, 4] tensor, got {c.dtype} {list(c.shape)}")
        if c.dtype != cells[0].dtype or c.device != cells[0].device:
            raise ValueError("grid_anchors: all cell_anchors must share dtype and device")


@torch.library.custom_op("fastseg_triton::grid_anchors", mutates_args=())
def _grid_anchors_op(cell_anchors: list[torch.Tensor], grid_sizes: list[int], strides: list[int]) -> torch.Tensor:
    _check(cell_anchors, grid_sizes, strides)
    levels = len(cell_anchors)
    meta, start, off = [], 0, 0
    for lvl, c in enumerate(cell_anchors):
        h, w = grid_sizes[2 * lvl], grid_sizes[2 * lvl + 1]
        meta += [start, max(w, 1), max(c.shape[0], 1), strides[2 * lvl], strides[2 * lvl + 1], off]
        start += h * w * c.shape[0]
        off += c.shape[0]
    device = cell_anchors[0].device
    out = torch.empty((start, 4), dtype=cell_anchors[0].dtype, device=device)
    if start == 0:
        return out
    cells = torch.cat([c.contiguous() for c in cell_anchors])
    meta_t = torch.tensor(meta, dtype=torch.int64).to(device, non_blocking=True)
    coords = 4 * start
    _grid_anchors_kernel[(triton.cdiv(coords, BLOCK),)](
        cells, meta_t, out, coords, LEVELS=levels, BLOCK=BLOCK, IS_FP64=out.dtype == torch.float64)
    return out


@_grid_anchors_op.register_fake
def _grid_anchors_fake(cell_anchors, grid_sizes, strides):
    total = sum(grid_sizes[2 * i] * grid_sizes[2 * i + 1] * c.shape[0] for i, c in enumerate(cell_anchors))
    return cell_anchors[0].new_empty((total, 4))


def grid_anchors(cell_anchors, grid_sizes, strides) -> torch.Tensor:
    """Anchors of all levels, concatenated; flat ``grid_sizes`` / ``strides`` ``[h0, w0, h1, w1, ...]``."""
    return torch.ops.fastseg_triton.grid_anchors(list(cell_anchors), list(grid_sizes), list(strides))
