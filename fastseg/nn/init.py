"""Initialisers for fastseg layers."""
from __future__ import annotations

import torch
from torch import Tensor


def bilinear_kernel(size: int, dtype=torch.float64) -> Tensor:
    """1-D bilinear-interpolation weights of an upsampling kernel of `size` taps (FCN's recipe):
    ``1 - |i - center| / factor`` with ``factor = ceil(size / 2)`` and the centre between taps for even
    sizes."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    i = torch.arange(size, dtype=dtype)
    return 1 - (i - center).abs() / factor


@torch.no_grad()
def bilinear_(weight: Tensor) -> Tensor:
    """Fill a transposed-convolution weight ``[C_in, C_out / groups, kH, kW]`` in place with FCN's
    bilinear-upsampling kernel, so that ``conv_transpose2d(x, weight, stride=f, padding=f // 2)`` with
    ``kH = kW = 2 f`` upsamples each channel by ``f`` like bilinear interpolation.

    Channel ``c`` maps to channel ``c`` only: ``weight[c, c] = kernel`` for ``c < min(C_in, C_out / groups)``,
    zero elsewhere; for a per-channel (``groups == C_in``) layer with ``C_out / groups == 1``, every
    ``weight[c, 0] = kernel``. Returns `weight`.

    Example:
        >>> up = fastseg.nn.ConvTranspose2d(21, 21, 4, stride=2, padding=1, bias=False)
        >>> fastseg.nn.init.bilinear_(up.weight)
    """
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        raise ValueError(f"bilinear_: weight must be a 4-D tensor [C_in, C_out / groups, kH, kW], got "
                         f"{getattr(weight, 'shape', type(weight).__name__)}")
    cin, cout_g, kh, kw = weight.shape
    kernel = (bilinear_kernel(kh)[:, None] * bilinear_kernel(kw)[None, :]).to(weight.dtype).to(weight.device)
    weight.zero_()
    if cout_g == 1:
        weight[:, 0] = kernel
    else:
        idx = torch.arange(min(cin, cout_g), device=weight.device)
        weight[idx, idx] = kernel
    return weight
