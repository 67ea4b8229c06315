"""Convolution layers on fastseg.ops."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from fastseg.ops.conv_transpose2d import conv_transpose2d

torch.fx.wrap("conv_transpose2d")  # under torch.fx, forward's call is one node (fastseg/ops/__init__.py)


class ConvTranspose2d(torch.nn.ConvTranspose2d):
    """Drop-in for ``torch.nn.ConvTranspose2d`` running ``fastseg.ops.conv_transpose2d``.

    Same constructor, parameters (``weight`` ``[C_in, C_out / groups, kH, kW]``, ``bias``), state_dict
    keys, ``reset_parameters``, ``extra_repr`` and ``forward(input, output_size=None)``: a state_dict
    loads into either class. Only ``padding_mode="zeros"`` exists, as in PyTorch. ``torch.jit.script``
    compiles it too, onto the native op (the extension must be built; no backend choice there).
    """

    def forward(self, input: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        if self.padding_mode != "zeros":
            raise ValueError("ConvTranspose2d: only 'zeros' padding_mode is supported, got " + self.padding_mode)
        # torch.nn.ConvTranspose2d's own helper turns output_size into the output_padding it needs
        # (and raises its ValueError when no output_padding gives that size).
        output_padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size,
                                              2, self.dilation)
        if torch.jit.is_scripting():  # TorchScript compiles only this branch: the registered op, 4-D
            batched = input.unsqueeze(0) if input.dim() == 3 else input
            out = torch.ops.fastseg.conv_transpose2d(batched, self.weight, self.bias, self.stride, self.padding,
                                                     output_padding, self.groups, self.dilation, False)
            return out.squeeze(0) if input.dim() == 3 else out
        return conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding, output_padding,
                                self.groups, self.dilation)
