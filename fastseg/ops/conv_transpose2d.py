"""Transposed 2-D convolution ("deconvolution"), as ``torch.nn.functional.conv_transpose2d``.

Backends: native (csrc/cpu/conv_transpose2d_kernel.cpp, csrc/cuda/conv_transpose2d_kernel.cu), triton
(kernels/conv_transpose2d.py), torch (fastseg/reference/conv_transpose2d.py). All are differentiable
with respect to input, weight and bias. ``activation="relu"`` fuses a ReLU after the bias.
"""
from __future__ import annotations

import numbers

import torch
from torch import Tensor

from fastseg import _extension, backend, reference
from fastseg.ops import _autocast
from fastseg.ops._checks import ArgumentError, int_pair

ACTIVATIONS = (None, "relu")


def _native(input, weight, bias, stride, padding, output_padding, groups, dilation, activation):
    # Autograd of the native op is registered in C++ (csrc/conv_transpose2d_autograd.cpp).
    return torch.ops.fastseg.conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups,
                                              dilation, activation == "relu")


def _triton(input, weight, bias, stride, padding, output_padding, groups, dilation, activation):
    from fastseg.kernels import conv_transpose2d as triton_impl  # imports triton: only when asked for

    return triton_impl.conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation,
                                        activation == "relu")


def _torch(input, weight, bias, stride, padding, output_padding, groups, dilation, activation):
    return reference.conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation,
                                      activation)


CONV_TRANSPOSE2D_IMPLS = backend.register("conv_transpose2d", {"native": _native, "triton": _triton, "torch": _torch})


def output_size(h: int, w: int, kernel, stride, padding, output_padding, dilation) -> tuple[int, int]:
    """Output height and width of a transposed convolution."""
    return tuple((n - 1) * s - 2 * p + d * (k - 1) + op + 1
                 for n, k, s, p, op, d in zip((h, w), kernel, stride, padding, output_padding, dilation))


def _check(op, input, weight, bias, stride, padding, output_padding, groups, dilation, activation):
    def fail(msg):
        raise ArgumentError(f"{op}: {msg}")

    if not isinstance(input, Tensor):
        fail(f"input must be a torch.Tensor, got {type(input).__name__}")
    if not isinstance(weight, Tensor):
        fail(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if input.dim() not in (3, 4):
        fail(f"input must be a 3-D [C_in, H, W] or 4-D [N, C_in, H, W] tensor, got shape {list(input.shape)}")
    if weight.dim() != 4:
        fail(f"weight must be a 4-D tensor [C_in, C_out / groups, kH, kW], got shape {list(weight.shape)}")
    if not input.is_floating_point():
        fail(f"input must be a floating-point tensor, got {input.dtype}")
    if weight.dtype != input.dtype:
        fail(f"weight must have the dtype of input ({input.dtype}), got {weight.dtype}")
    if weight.device != input.device:
        fail(f"weight must be on the device of input ({input.device}), got {weight.device}")
    stride = int_pair(op, "stride", stride, 1)
    padding = int_pair(op, "padding", padding, 0)
    output_padding = int_pair(op, "output_padding", output_padding, 0)
    dilation = int_pair(op, "dilation", dilation, 1)
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral) or groups < 1:
        fail(f"groups must be an int >= 1, got {groups!r}")
    groups = int(groups)
    cin = input.shape[-3]
    if cin == 0 or cin % groups:
        fail(f"input channels must be a positive multiple of groups ({groups}), got {cin} (input shape {list(input.shape)})")
    if weight.shape[0] != cin:
        fail(f"weight.shape[0] must equal the input channels ({cin}), got weight of shape {list(weight.shape)}")
    if weight.shape[1] == 0 or weight.shape[2] == 0 or weight.shape[3] == 0:
        fail(f"weight must have non-empty output-channel and kernel dimensions, got shape {list(weight.shape)}")
    for i in range(2):
        if output_padding[i] >= max(stride[i], dilation[i]):
            fail(f"output_padding must be smaller than stride or dilation, got output_padding={output_padding} "
                 f"with stride={stride} and dilation={dilation}")
    cout = weight.shape[1] * groups
    if bias is not None:
        if not isinstance(bias, Tensor):
            fail(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
        if bias.dim() != 1 or bias.shape[0] != cout:
            fail(f"bias must have shape [{cout}] (C_out), got {list(bias.shape)}")
        if bias.dtype != input.dtype or bias.device != input.device:
            fail(f"bias must have the dtype and device of input ({input.dtype}, {input.device}), got "
                 f"{bias.dtype}, {bias.device}")
    if activation not in ACTIVATIONS:
        fail(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    # As PyTorch: an empty image is refused unless the batch is empty, and an output with no rows or no
    # columns is a valid (empty) answer.
    empty_batch = input.dim() == 4 and input.shape[0] == 0
    if not empty_batch and (input.shape[-2] == 0 or input.shape[-1] == 0):
        fail(f"input must have a non-empty image unless the batch is empty, got shape {list(input.shape)}")
    ho, wo = output_size(input.shape[-2], input.shape[-1], weight.shape[2:], stride, padding, output_padding, dilation)
    if ho < 0 or wo < 0:
        fail(f"the output size would be {ho} x {wo} for input {list(input.shape)}, kernel "
             f"{list(weight.shape[2:])}, stride {stride}, padding {padding}: padding is too large")
    return stride, padding, output_padding, groups, dilation


def conv_transpose2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
                     output_padding=0, groups: int = 1, dilation=1, *, activation: str | None = None) -> Tensor:
    """Transposed 2-D convolution, like ``torch.nn.functional.conv_transpose2d`` (same arguments, same
    result, same output memory format), differentiable in input, weight and bias.

    Args:
        input: ``[N, C_in, H, W]`` or unbatched ``[C_in, H, W]``, NCHW or channels_last.
        weight: ``[C_in, C_out / groups, kH, kW]``.
        bias: ``[C_out]`` or None.
        stride, padding, output_padding, dilation: int or pair; ``output_padding < max(stride, dilation)``.
        groups: divides ``C_in``.
        activation: ``None`` or ``"relu"`` (fused after the bias; keyword only, not in torch's signature).

    Example:
        >>> x = torch.randn(1, 8, 16, 16)
        >>> fastseg.ops.conv_transpose2d(x, torch.randn(8, 4, 2, 2), stride=2).shape
        torch.Size([1, 4, 32, 32])
    """
    if torch._C._is_any_autocast_enabled() and isinstance(input, Tensor):  # ~0.1 us when autocast is off
        dtype = _autocast.target_dtype(input.device.type, "lower_precision")
        if dtype is not None:  # as torch.autocast treats F.conv_transpose2d
            input, weight, bias = _autocast.cast(dtype, input, weight, bias)
            with _autocast.off(input.device.type):
                return conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation,
                                        activation=activation)
    if isinstance(input, Tensor) and input.dim() == 4 and activation in ACTIVATIONS:
        name, impl = backend.select("conv_transpose2d", input.device, CONV_TRANSPOSE2D_IMPLS)
        if name == "native":
            # The native kernels check every argument themselves (csrc/conv_transpose2d.h); the Python
            # checks cost ~5 us, which measured ~15 us a call right after a parallel kernel, a tenth of
            # FCN's smallest layer. They run only to word the error when the kernel refuses the call.
            try:
                return _native(input, weight, bias, stride, padding, output_padding, groups, dilation, activation)
            except (RuntimeError, TypeError):
                _check("conv_transpose2d", input, weight, bias, stride, padding, output_padding, groups, dilation,
                       activation)
                raise
    stride, padding, output_padding, groups, dilation = _check(
        "conv_transpose2d", input, weight, bias, stride, padding, output_padding, groups, dilation, activation)
    _, impl = backend.select("conv_transpose2d", input.device, CONV_TRANSPOSE2D_IMPLS)
    if input.dim() == 3:
        return impl(input.unsqueeze(0), weight, bias, stride, padding, output_padding, groups, dilation,
                    activation).squeeze(0)
    return impl(input, weight, bias, stride, padding, output_padding, groups, dilation, activation)


def _out_shape(input, weight, stride, padding, output_padding, groups, dilation):
    ho, wo = output_size(input.shape[2], input.shape[3], weight.shape[2:], stride, padding, output_padding, dilation)
    return (input.shape[0], weight.shape[1] * groups, ho, wo)


def _memory_format(input, weight):
    """PyTorch's (and the native kernels') rule: channels_last if the input or the weight suggests it."""
    from torch._prims_common import suggest_memory_format

    cl = torch.channels_last
    return cl if cl in (suggest_memory_format(input), suggest_memory_format(weight)) else torch.contiguous_format


def fake_backward(grad_output, input, weight, stride, padding, output_padding, groups, dilation):
    """Fake kernel of the backward ops (native and Triton): grad_input, grad_weight, grad_bias. Both
    gradients in the forward's memory format, as PyTorch's (channels_last if the input or the weight is)."""
    fmt = _memory_format(input, weight)
    return (input.new_empty(input.shape).contiguous(memory_format=fmt),
            weight.new_empty(weight.shape).contiguous(memory_format=fmt), input.new_empty((weight.shape[1] * groups,)))


def setup_context(ctx, inputs, output):
    """Autograd context of the forward ops (native and Triton)."""
    input, weight, bias, stride, padding, output_padding, groups, dilation, relu = inputs
    ctx.params = (stride, padding, output_padding, groups, dilation)
    ctx.has_bias = bias is not None
    ctx.save_for_backward(input, weight, output if relu else None)


def make_backward(backward_op):
    """The autograd formula of a forward op whose gradients come from `backward_op`."""
    def backward(ctx, grad):
        input, weight, output = ctx.saved_tensors
        if output is not None:  # fused ReLU: no gradient where the output was clamped
            grad = torch.where(output > 0, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
        if torch.is_grad_enabled():
            # create_graph=True (double backward): the gradients must be differentiable themselves, which
            # the backward kernels are not; PyTorch's convolution_backward is.
            stride, padding, output_padding, groups, dilation = ctx.params
            gi, gw, gb = torch.ops.aten.convolution_backward(
                grad, input, weight, [weight.shape[1] * groups], stride, padding, dilation, True, output_padding,
                groups, [True, True, ctx.has_bias])
        else:
            gi, gw, gb = backward_op(grad, input, weight, *ctx.params)
        return gi, gw, gb if ctx.has_bias else None, None, None, None, None, None, None
    return backward


if _extension.loaded():

    @torch.library.register_fake("fastseg::conv_transpose2d")
    def _fake(input, weight, bias, stride, padding, output_padding, groups, dilation, relu):
        torch._check(input.dim() == 4 and weight.dim() == 4, lambda: "conv_transpose2d: 4-D input and weight")
        shape = _out_shape(input, weight, stride, padding, output_padding, groups, dilation)
        return input.new_empty(shape).contiguous(memory_format=_memory_format(input, weight))

    torch.library.register_fake("fastseg::conv_transpose2d_backward")(fake_backward)
