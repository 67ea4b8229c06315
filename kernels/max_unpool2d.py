r"""Max unpooling in Triton: the output is zero-filled (``zero_``), then one program per block of
input values writes each at its index in its (image, channel) plane, through the strides of the
input, the indices and the output (NCHW or channels_last alike). An index outside the output plane is
refused before the launch (ValueError; Triton kernels cannot raise). Where two indices of a plane
coincide either value may win, as with PyTorch on CUDA.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch._prims_common import suggest_memory_format

from fastseg.reference.max_unpool2d import check_indices

__all__ = ["max_unpool2d"]

BLOCK = 1024  # values per program; not tuned on a GPU yet


@triton.jit
def _unpool_kernel(x_ptr, idx_ptr, out_ptr, total, C, H, W, sxn, sxc, sxh, sxw, sin, sic, sih, siw, son, soc,
                   sop, BLOCK: tl.constexpr):
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = e < total
    w = e % W
    h = (e // W) % H
    c = (e // (W * H)) % C
    n = e // (W * H * C)
    v = tl.load(x_ptr + n * sxn + c * sxc + h * sxh + w * sxw, mask=mask)
    j = tl.load(idx_ptr + n * sin + c * sic + h * sih + w * siw, mask=mask, other=0)
    tl.store(out_ptr + n * son + c * soc + j * sop, v, mask=mask)


@torch.library.custom_op("fastseg_triton::max_unpool2d", mutates_args=())
def _max_unpool2d_op(input: torch.Tensor, indices: torch.Tensor, output_size: list[int]) -> torch.Tensor:
    check_indices(indices, output_size)
    N, C, H, W = input.shape
    out = torch.empty((N, C, *output_size), dtype=input.dtype, device=input.device,
                      memory_format=suggest_memory_format(input)).zero_()
    total = input.numel()
    if total and out.numel():
        # The flat position j = h_out * W_out + w_out has stride out.stride(3) in both memory formats.
        _unpool_kernel[(triton.cdiv(total, BLOCK),)](input, indices, out, total, C, H, W, *input.stride(),
                                                      *indices.stride(), out.stride(0), out.stride(1), out.stride(3),
                                                      BLOCK=BLOCK)
    return out


@_max_unpool2d_op.register_fake
def _(input, indices, output_size):
    return input.new_empty((input.shape[0], input.shape[1], *output_size)).contiguous(
        memory_format=suggest_memory_format(input))


def max_unpool2d(input: torch.Tensor, indices: torch.Tensor, output_size: list[int]) -> torch.Tensor:
    return _max_unpool2d_op(input, indices, list(output_size))


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _bwd(ctx, grad):
    from fastseg.ops.max_unpool2d import unpool_grad

    (indices,) = ctx.saved_tensors
    return unpool_grad(grad, indices), None, None


_max_unpool2d_op.register_autograd(_bwd, setup_context=_setup)
