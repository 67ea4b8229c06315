"""Transposed 2-D convolution, the definition (independent of ``F.conv_transpose2d``).

A transposed convolution with stride s, padding p, output_padding op, dilation d and groups g is the
adjoint of ``conv2d(., weight, stride=s, padding=p, dilation=d, groups=g)``. Written as a regular
convolution:

1. zero insertion: put ``s - 1`` zeros between neighbouring input pixels (``(H - 1) * s + 1`` rows);
2. pad each side with ``d * (k - 1) - p`` zeros (negative: crop), and ``op`` more at the bottom/right;
3. ``conv2d`` with stride 1, dilation d, groups g and the weight of each group transposed
   (``[Cin/g, Cout/g, k, k] -> [Cout/g, Cin/g, k, k]``) and flipped in both spatial dimensions.

Output size: ``(H - 1) * s - 2 * p + d * (k - 1) + op + 1`` (same for the width).
``activation="relu"`` applies ``max(., 0)`` after the bias.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _channels_last(t: Tensor) -> bool:
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


class _GradLayout(torch.autograd.Function):
    """The identity, whose gradient comes out in a given memory format: PyTorch returns the input and weight
    gradients of a transposed convolution in its output's format (channels_last when the input or the
    weight is), where the zero insertion, transpose and flip below would leave their own strides."""

    @staticmethod
    def forward(t, memory_format):
        return t.view_as(t)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.memory_format = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous(memory_format=ctx.memory_format), None


def conv_transpose2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
                     output_padding=0, groups: int = 1, dilation=1, activation: str | None = None) -> Tensor:
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = map(_pair, (stride, padding, output_padding, dilation))
    unbatched = input.dim() == 3
    # PyTorch's rule for the memory format of the output and both gradients
    fmt = (torch.channels_last if not unbatched and (_channels_last(input) or _channels_last(weight))
           else torch.contiguous_format)
    if not unbatched and torch.is_grad_enabled() and (input.requires_grad or weight.requires_grad):
        input, weight = _GradLayout.apply(input, fmt), _GradLayout.apply(weight, fmt)
    x = input.unsqueeze(0) if unbatched else input
    n, cin, h, w = x.shape
    _, cout_g, kh, kw = weight.shape

    ho = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
    wo = (w - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    if n == 0 or ho == 0 or wo == 0:  # F.conv2d refuses these (empty image or kernel larger than it); no output
        out = torch.empty(n, cout_g * groups, ho, wo, dtype=x.dtype, device=x.device, memory_format=fmt)
        # no element; in the graph, for zero gradients; in place, to keep PyTorch's strides, which `+` would not
        out.add_((x.sum() + weight.sum() + (0 if bias is None else bias.sum())) * 0)
        return out.squeeze(0) if unbatched else out
    # 1. zero insertion
    z = x.new_zeros(n, cin, (h - 1) * sh + 1 if h else 0, (w - 1) * sw + 1 if w else 0)
    z[:, :, ::sh, ::sw] = x
    # 2. padding (F.pad crops where the amount is negative)
    top, left = dh * (kh - 1) - ph, dw * (kw - 1) - pw
    z = F.pad(z, (left, left + opw, top, top + oph))
    # 3. per-group transposed and flipped weight
    wt = weight.reshape(groups, cin // groups, cout_g, kh, kw).transpose(1, 2)
    wt = wt.flip(-1, -2).reshape(groups * cout_g, cin // groups, kh, kw)
    out = F.conv2d(z, wt, bias, 1, 0, (dh, dw), groups)
    if activation == "relu":
        out = out.relu()
    if fmt == torch.channels_last:
        out = out.contiguous(memory_format=fmt)
    return out.squeeze(0) if unbatched else out
