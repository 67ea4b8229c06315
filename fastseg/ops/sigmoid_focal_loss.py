"""Sigmoid focal loss, as ``torchvision.ops.sigmoid_focal_loss``, fused: one pass forward, one backward.

Backends: native (csrc/cpu/sigmoid_focal_loss_kernel.cpp, csrc/cuda/sigmoid_focal_loss_kernel.cu),
triton (kernels/sigmoid_focal_loss.py), torch (fastseg/reference/sigmoid_focal_loss.py).

The forward reads inputs and targets once and writes the loss once ("none") or a scalar ("mean",
"sum"); nothing is saved but the inputs themselves. The backward reads them once more and writes the
gradient once, recomputing the per-element terms. No host sync on the GPU (reductions end on the device).

``sigmoid_focal_loss_with_labels`` is the form a detection head needs: integer labels instead of a
one-hot tensor (never materialised), ignored rows, and a normaliser (e.g. the number of positive
anchors, a device tensor) that divides the loss on the device.
"""
import math
import numbers

import torch
from torch import Tensor

from fastseg import _extension, backend, reference
from fastseg.ops._autograd import graph_grads
from fastseg.ops._checks import number

_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
_REDUCTION_NAMES = {v: k for k, v in _REDUCTIONS.items()}


# --------------------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------------------
def _native(inputs, targets, alpha, gamma, reduction):
    return torch.ops.fastseg.sigmoid_focal_loss(inputs, targets, alpha, gamma, _REDUCTIONS[reduction])


def _native_labels(logits, labels, alpha, gamma, normalizer, ignore_index, reduction):
    normalizer, scale = _split_normalizer(normalizer, logits.device)
    return torch.ops.fastseg.sigmoid_focal_loss_with_labels(
        logits, labels, alpha, gamma, normalizer, scale, ignore_index, _REDUCTIONS[reduction])


def _triton(inputs, targets, alpha, gamma, reduction):
    from fastseg.kernels import sigmoid_focal_loss as k  # imports triton: only when asked for

    return k.sigmoid_focal_loss(inputs, targets, alpha, gamma, _REDUCTIONS[reduction])


def _triton_labels(logits, labels, alpha, gamma, normalizer, ignore_index, reduction):
    from fastseg.kernels import sigmoid_focal_loss as k

    normalizer, scale = _split_normalizer(normalizer, logits.device)
    return k.sigmoid_focal_loss_with_labels(logits, labels, alpha, gamma, normalizer, scale, ignore_index,
                                            _REDUCTIONS[reduction])


def _split_normalizer(normalizer, device):
    """(one-element tensor on `device` or None, float scale). A Python number, or a tensor on the CPU
    while the logits are elsewhere, becomes the scale 1 / normalizer (read on the host: no device sync)."""
    if normalizer is None:
        return None, 1.0
    if isinstance(normalizer, Tensor):
        if normalizer.device == device:
            return normalizer.reshape(1), 1.0
        if normalizer.device.type == "cpu" and not normalizer.requires_grad:
            return None, _reciprocal(float(normalizer))
        return normalizer.to(device).reshape(1), 1.0
    return None, _reciprocal(float(normalizer))


def _reciprocal(v: float) -> float:
    return 1.0 / v if v != 0 else math.copysign(math.inf, v)  # loss / 0 is inf (0 / 0 nan), as in torch


SIGMOID_FOCAL_LOSS_IMPLS = backend.register("sigmoid_focal_loss", {
    "native": _native, "triton": _triton, "torch": reference.sigmoid_focal_loss})
SIGMOID_FOCAL_LOSS_WITH_LABELS_IMPLS = backend.register("sigmoid_focal_loss_with_labels", {
    "native": _native_labels, "triton": _triton_labels, "torch": reference.sigmoid_focal_loss_with_labels})


# --------------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------------
def _check_common(op, inputs, name, alpha, gamma, reduction):
    if not isinstance(inputs, Tensor):
        raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(inputs).__name__}")
    if not inputs.is_floating_point():
        raise ValueError(f"{op}: {name} must be a floating-point tensor, got {inputs.dtype}")
    alpha = number(op, "alpha", alpha)
    # torchvision's rule: alpha in [0, 1], or -1 to switch the alpha term off.
    if not (0 <= alpha <= 1) and alpha != -1:
        raise ValueError(f"{op}: Invalid alpha value: {alpha}. alpha must be in the range [0,1] or -1 for ignore.")
    gamma = number(op, "gamma", gamma)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: Invalid Value for arg 'reduction': '{reduction}'; "
                         "supported reduction modes: 'none', 'mean', 'sum'")
    return alpha, gamma


def sigmoid_focal_loss(inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2,
                       reduction: str = "none") -> Tensor:
    """Focal loss of Lin et al. 2017, same values and gradients as ``torchvision.ops.sigmoid_focal_loss``.

    Args:
        inputs: logits, any shape, floating (fp16/bf16 computed in fp32).
        targets: same shape, floating, in [0, 1] (soft targets allowed).
        alpha: weight of the positives in [0, 1], or -1 for no weighting (torchvision's rule).
        gamma: exponent of the modulating factor (1 - p_t); any float.
        reduction: "none" (elementwise, input shape), "mean" or "sum" (0-dim), in the input dtype.

    One fused pass forward and one backward; the gradient w.r.t. the inputs comes from a fused kernel,
    the one w.r.t. targets (rarely needed) from the PyTorch reference.

    Example:
        >>> x, t = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.0])
        >>> fastseg.ops.sigmoid_focal_loss(x, t, reduction="sum")
        tensor(0.0174)
    """
    op = "sigmoid_focal_loss"
    alpha, gamma = _check_common(op, inputs, "inputs", alpha, gamma, reduction)
    if not isinstance(targets, Tensor):
        raise ValueError(f"{op}: targets must be a torch.Tensor, got {type(targets).__name__}")
    if not targets.is_floating_point():
        raise ValueError(f"{op}: targets must be a floating-point tensor, got {targets.dtype}")
    if targets.shape != inputs.shape:
        raise ValueError(f"{op}: inputs and targets must have the same shape, got {list(inputs.shape)} "
                         f"and {list(targets.shape)}")
    if targets.device != inputs.device:
        raise ValueError(f"{op}: inputs and targets must be on the same device, got {inputs.device} and "
                         f"{targets.device}")
    _, impl = backend.select(op, inputs.device, SIGMOID_FOCAL_LOSS_IMPLS)
    return impl(inputs, targets, alpha, gamma, reduction)


def sigmoid_focal_loss_with_labels(logits: Tensor, labels: Tensor, alpha: float = 0.25, gamma: float = 2.0,
                                   normalizer=None, ignore_index: int = -1, reduction: str = "sum") -> Tensor:
    """Sigmoid focal loss of a detection head's logits against integer class labels, no one-hot tensor.

    Args:
        logits: ``[N, C]`` class logits (e.g. one row per anchor), floating.
        labels: ``[N]`` integers: ``c`` in ``[0, C)`` makes class ``c`` the positive one; ``C`` (or any
            other value outside ``[0, C)`` except ``ignore_index``) is background, all classes negative;
            ``ignore_index`` drops the row (it contributes 0 to the loss and gets a zero gradient).
        alpha, gamma: as in :func:`sigmoid_focal_loss`.
        normalizer: ``None``, a number, or a one-element tensor (e.g. the number of positive anchors,
            kept on the device: the division happens in the kernel, no host sync). Divides the result.
        ignore_index: the label of rows to ignore (default -1).
        reduction: "sum" (default), "mean" (over all N * C elements, ignored ones counting as 0) or
            "none" (``[N, C]``, ignored rows 0).

    Equal to ``torchvision.ops.sigmoid_focal_loss(logits, one_hot, alpha, gamma, reduction) / normalizer``
    with ``one_hot`` built from the labels and the ignored rows masked out.
    """
    op = "sigmoid_focal_loss_with_labels"
    alpha, gamma = _check_common(op, logits, "logits", alpha, gamma, reduction)
    if logits.dim() != 2:
        raise ValueError(f"{op}: logits must be a 2-D tensor [N, C], got shape {list(logits.shape)}")
    if not isinstance(labels, Tensor):
        raise ValueError(f"{op}: labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"{op}: labels must be a 1-D tensor with one label per row of logits "
                         f"({logits.shape[0]}), got shape {list(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{op}: labels must be an integer tensor, got {labels.dtype}")
    if labels.device != logits.device:
        raise ValueError(f"{op}: labels must be on the same device as logits, got {labels.device} and {logits.device}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise ValueError(f"{op}: ignore_index must be an integer, got {ignore_index!r}")
    if normalizer is not None:
        if isinstance(normalizer, Tensor):
            if normalizer.numel() != 1:
                raise ValueError(f"{op}: normalizer must have one element, got shape {list(normalizer.shape)}")
            if not normalizer.is_floating_point():
                normalizer = normalizer.to(logits.dtype if logits.dtype == torch.float64 else torch.float32)
            if normalizer.device != logits.device and normalizer.device.type != "cpu":
                raise ValueError(f"{op}: normalizer must be on the device of logits ({logits.device}) or the "
                                 f"CPU, got {normalizer.device}")
        else:
            normalizer = number(op, "normalizer", normalizer)
    _, impl = backend.select(op, logits.device, SIGMOID_FOCAL_LOSS_WITH_LABELS_IMPLS)
    return impl(logits, labels, alpha, gamma, normalizer, int(ignore_index), reduction)


# --------------------------------------------------------------------------------------------------
# autograd (shared by the native and Triton ops: same signatures)
# --------------------------------------------------------------------------------------------------
def targets_grad(grad, inputs, targets, alpha, gamma, reduction):
    """d loss / d targets, through the reference (soft targets that learn are rare: no fused kernel)."""
    with torch.enable_grad():
        t = targets.detach().requires_grad_(True)
        loss = reference.sigmoid_focal_loss(inputs.detach(), t, alpha, gamma, _REDUCTION_NAMES[reduction])
        (g,) = torch.autograd.grad(loss, t, grad.to(loss.dtype))
    return g


def as_sum_grad(grad, reduction):
    """(grad, reduction) for the backward op. A "none" gradient that is one value broadcast (all strides
    0: what ``loss.sum().backward()`` sends) is the "sum" gradient of that value: the kernel then reads
    one number instead of a materialised [N, C] tensor (64 MB at [200k, 80] fp32). Same maths."""
    if reduction == _REDUCTIONS["none"] and grad.numel() > 0 and all(s == 0 for s in grad.stride()):
        return grad.as_strided((), ()), _REDUCTIONS["sum"]
    return grad, reduction


def make_autograd(backward_op, labels_backward_op):
    """(setup, backward) pairs for the plain and the labels op, given their backward ops."""

    def setup(ctx, inputs, output):
        x, t, alpha, gamma, reduction = inputs
        ctx.save_for_backward(x, t)
        ctx.args = (alpha, gamma, reduction)

    def backward(ctx, grad):
        x, t = ctx.saved_tensors
        alpha, gamma, reduction = ctx.args
        if torch.is_grad_enabled():  # create_graph=True: differentiable gradients (graph_grads)
            def loss(a, b):
                return reference.sigmoid_focal_loss(a, b, alpha, gamma, _REDUCTION_NAMES[reduction])

            gx, gt = graph_grads(loss, (x, t), ctx.needs_input_grad[:2], grad)
            return gx, gt, None, None, None
        gx = None
        if ctx.needs_input_grad[0]:
            g, r = as_sum_grad(grad, reduction)
            gx = backward_op(g, x, t, alpha, gamma, r)
        gt = targets_grad(grad, x, t, alpha, gamma, reduction) if ctx.needs_input_grad[1] else None
        return gx, gt, None, None, None

    def labels_setup(ctx, inputs, output):
        logits, labels, alpha, gamma, normalizer, scale, ignore_index, reduction = inputs
        ctx.save_for_backward(logits, labels, normalizer, output)
        ctx.args = (alpha, gamma, scale, ignore_index, reduction)

    def labels_backward(ctx, grad):
        logits, labels, normalizer, output = ctx.saved_tensors
        alpha, gamma, scale, ignore_index, reduction = ctx.args
        if torch.is_grad_enabled():  # create_graph=True: differentiable gradients (graph_grads)
            def loss(a, norm):
                return reference.sigmoid_focal_loss_with_labels(a, labels, alpha, gamma, norm, ignore_index,
                                                                _REDUCTION_NAMES[reduction]) * scale

            g_logits, g_norm = graph_grads(loss, (logits, normalizer),
                                           (ctx.needs_input_grad[0], ctx.needs_input_grad[4]), grad)
            return g_logits, None, None, None, g_norm, None, None, None
        g_logits = g_norm = None
        if ctx.needs_input_grad[0]:
            g, r = as_sum_grad(grad, reduction)
            g_logits = labels_backward_op(g, logits, labels, alpha, gamma, normalizer, scale, ignore_index, r)
        if normalizer is not None and ctx.needs_input_grad[4]:
            # out = L / normalizer  =>  d out / d normalizer = -out / normalizer
            g_norm = (-(grad.double() * output.double()).sum() / normalizer.double()).to(normalizer.dtype)
            g_norm = g_norm.reshape(normalizer.shape)
        return g_logits, None, None, None, g_norm, None, None, None

    return (setup, backward), (labels_setup, labels_backward)


# hasattr: an extension built before this op existed must not break `import fastseg`.
if _extension.loaded() and hasattr(torch.ops.fastseg, "sigmoid_focal_loss"):

    @torch.library.register_fake("fastseg::sigmoid_focal_loss")
    def _fake(inputs, targets, alpha, gamma, reduction):
        torch._check(inputs.shape == targets.shape, lambda: "sigmoid_focal_loss: shapes differ")
        return inputs.new_empty(()) if reduction != 0 else torch.empty_like(inputs)

    @torch.library.register_fake("fastseg::sigmoid_focal_loss_backward")
    def _fake_backward(grad, inputs, targets, alpha, gamma, reduction):
        return torch.empty_like(inputs)

    @torch.library.register_fake("fastseg::sigmoid_focal_loss_with_labels")
    def _fake_labels(logits, labels, alpha, gamma, normalizer, scale, ignore_index, reduction):
        torch._check(logits.dim() == 2, lambda: "sigmoid_focal_loss_with_labels: logits must be [N, C]")
        torch._check(labels.dim() == 1 and labels.shape[0] == logits.shape[0],
                     lambda: "sigmoid_focal_loss_with_labels: labels must be [N]")
        return logits.new_empty(()) if reduction != 0 else torch.empty_like(logits)

    @torch.library.register_fake("fastseg::sigmoid_focal_loss_with_labels_backward")
    def _fake_labels_backward(grad, logits, labels, alpha, gamma, normalizer, scale, ignore_index, reduction):
        return torch.empty_like(logits)

    (_s, _b), (_ls, _lb) = make_autograd(torch.ops.fastseg.sigmoid_focal_loss_backward,
                                         torch.ops.fastseg.sigmoid_focal_loss_with_labels_backward)
    torch.library.register_autograd("fastseg::sigmoid_focal_loss", _b, setup_context=_s)
    torch.library.register_autograd("fastseg::sigmoid_focal_loss_with_labels", _lb, setup_context=_ls)
