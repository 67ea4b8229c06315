"""Transposed-convolution cases of the benchmark suite: fastseg vs torch.nn.functional.conv_transpose2d
on the layers of the bundled networks, forward and forward+backward, NCHW and channels_last."""
import torch
import torch.nn.functional as F

import fastseg
from fastseg.bench import Case
from fastseg.ops.conv_transpose2d import CONV_TRANSPOSE2D_IMPLS, output_size

# (network, input shape [N, C_in, H, W], C_out, kernel, stride, padding)
SHAPES = [
    ("FCN", (1, 21, 16, 16), 21, 4, 2, 1),
    ("FCN", (1, 21, 34, 34), 21, 4, 2, 1),
    ("FCN", (1, 21, 32, 32), 21, 16, 8, 4),
    ("U-Net", (4, 128, 64, 64), 64, 2, 2, 0),
    ("U-Net", (4, 256, 32, 32), 128, 2, 2, 0),
    ("U-Net", (4, 512, 16, 16), 256, 2, 2, 0),
    ("U-Net", (4, 1024, 8, 8), 512, 2, 2, 0),
    ("DeconvNet", (2, 512, 14, 14), 512, 3, 1, 1),
    ("DeconvNet", (2, 256, 56, 56), 256, 3, 1, 1),
    ("Hourglass", (8, 256, 16, 16), 256, 4, 2, 1),
    ("Hourglass", (8, 256, 16, 16), 256, 2, 2, 0),
]
QUICK = {0, 3, 9}


def _close(out, expected, inputs):
    outs = out if isinstance(out, tuple) else (out,)
    exps = expected if isinstance(expected, tuple) else (expected,)
    for a, b in zip(outs, exps):
        scale = b.abs().max().item() if b.numel() else 1.0
        tol = 1e-3 if a.dtype == torch.float32 else 3e-2
        if a.shape != b.shape or not torch.allclose(a.float(), b.float(), atol=tol * max(scale, 1.0), rtol=tol):
            raise AssertionError(f"fastseg and PyTorch disagree: max |diff| {(a.float() - b.float()).abs().max()}")
    if out is not None and isinstance(out, torch.Tensor) and isinstance(expected, torch.Tensor):
        if out.is_contiguous(memory_format=torch.channels_last) != expected.is_contiguous(memory_format=torch.channels_last):
            raise AssertionError("fastseg's output is not in PyTorch's memory format")


def _make(shape, cout, k, s, p, device, dtype, channels_last, grad=False):
    """Input, weight, bias (and, with `grad`, the incoming gradient: in a network the next layer's backward
    produces it, so a training step of this layer does not allocate it), stride and padding."""
    def make(seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(*shape, generator=g)
        w = torch.randn(shape[1], cout, k, k, generator=g) / (shape[1] * k * k) ** 0.5
        b = torch.randn(cout, generator=g)
        size = output_size(*shape[2:], (k, k), (s, s), (p, p), (0, 0), (1, 1))
        gy = torch.randn(shape[0], cout, *size, generator=g) if grad else None
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        x, w = (t.to(device, dtype).contiguous(memory_format=fmt) for t in (x, w))
        b = b.to(device, dtype)
        if not grad:
            return x, w, b, s, p
        return x, w, b, gy.to(device, dtype).contiguous(memory_format=fmt), s, p
    return make


def _train_step(conv):
    """Forward and backward (input, weight and bias gradients) from a given output gradient: what a
    training step pays for this layer."""
    def step(x, w, b, gy, s, p):
        leaves = [t.detach().requires_grad_() for t in (x, w, b)]
        out = conv(*leaves, stride=s, padding=p)
        return torch.autograd.grad(out, leaves, gy)
    return step


def cases(device: str, quick: bool) -> list:
    dtypes = [torch.float32] if device == "cpu" else [torch.bfloat16]
    cases = []
    for i, (net, shape, cout, k, s, p) in enumerate(SHAPES):
        if quick and i not in QUICK:
            continue
        for dtype in dtypes:
            for cl in (False, True):
                fmt = "channels_last" if cl else "NCHW"
                name = f"{net} {list(shape)}->{cout} k{k} s{s} p{p} {fmt}"
                make = _make(shape, cout, k, s, p, device, dtype, cl)
                make_step = _make(shape, cout, k, s, p, device, dtype, cl, grad=True)
                size = shape[0] * shape[2] * shape[3] * shape[1]
                cases.append(Case(
                    "conv_transpose2d", name + " fwd", size, dtype, device,
                    make,
                    lambda x, w, b, s, p: fastseg.ops.conv_transpose2d(x, w, b, stride=s, padding=p),
                    lambda x, w, b, s, p: F.conv_transpose2d(x, w, b, stride=s, padding=p),
                    "torch", _close, CONV_TRANSPOSE2D_IMPLS))
                cases.append(Case(
                    "conv_transpose2d", name + " fwd+bwd", size, dtype, device,
                    make_step,
                    _train_step(fastseg.ops.conv_transpose2d), _train_step(F.conv_transpose2d),
                    "torch", _close, CONV_TRANSPOSE2D_IMPLS))
    return cases
