"""Max-unpooling cases of the benchmark suite: fastseg vs torch.nn.functional.max_unpool2d on the
unpooling layers of DeconvNet (VGG-16's five 2x2 poolings of a 224x224 image, batch 2), forward and
forward+backward, NCHW and channels_last."""
import torch
import torch.nn.functional as F

import fastseg
from fastseg.bench import Case
from fastseg.ops.max_unpool2d import MAX_UNPOOL2D_IMPLS

# pooled maps [N, C, H, W] (the unpooled output is twice as large in H and W)
SHAPES = [(2, 512, 7, 7), (2, 512, 14, 14), (2, 256, 28, 28), (2, 128, 56, 56), (2, 64, 112, 112)]
QUICK = {1, 4}


def _make(shape, device, dtype, channels_last, grad=False):
    """Pooled values and indices (and, with `grad`, the unpooled output's incoming gradient: in a network
    the next layer's backward produces it, so a training step of this layer does not allocate it)."""
    def make(seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(shape[0], shape[1], 2 * shape[2], 2 * shape[3], generator=g)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        values, indices = F.max_pool2d(x, 2, return_indices=True)
        if not grad:
            return values.to(device, dtype), indices.to(device)
        return values.to(device, dtype), indices.to(device), torch.randn_like(x, dtype=dtype, device=device)
    return make


def _check(out, expected, inputs):
    gradient = isinstance(out, tuple)
    if gradient:
        out, expected = out[0], expected[0]
    if not torch.equal(out, expected):
        raise AssertionError("fastseg and PyTorch disagree")
    # (the gradient keeps the input's memory format; PyTorch's gather returns NCHW)
    if not gradient and out.stride() != expected.stride():
        raise AssertionError("fastseg's output is not in PyTorch's memory format")


def _train_step(unpool):
    def step(x, idx, gy):
        leaf = x.detach().requires_grad_()
        out = unpool(leaf, idx, 2)
        return torch.autograd.grad(out, leaf, gy)
    return step


def cases(device: str, quick: bool) -> list:
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    cases = []
    for i, shape in enumerate(SHAPES):
        if quick and i not in QUICK:
            continue
        for cl in (False, True):
            name = f"DeconvNet {list(shape)} -> x2 {'channels_last' if cl else 'NCHW'}"
            make = _make(shape, device, dtype, cl)
            make_step = _make(shape, device, dtype, cl, grad=True)
            size = shape[0] * shape[1] * shape[2] * shape[3]
            cases.append(Case("max_unpool2d", name + " fwd", size, dtype, device, make,
                              lambda x, idx: fastseg.ops.max_unpool2d(x, idx, 2),
                              lambda x, idx: F.max_unpool2d(x, idx, 2), "torch", _check, MAX_UNPOOL2D_IMPLS))
            cases.append(Case("max_unpool2d", name + " fwd+bwd", size, dtype, device, make_step,
                              _train_step(fastseg.ops.max_unpool2d), _train_step(F.max_unpool2d), "torch",
                              _check, MAX_UNPOOL2D_IMPLS))
    return cases
