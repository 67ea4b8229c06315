r"""Sigmoid focal loss in Triton: one fused pass forward, one fused pass backward.

Maths (same as csrc/focal_loss.h)
---------------------------------
With ``x`` the logit, ``t`` the target, ``e = exp(-|x|)``, ``u = 1 + e``::

    p = 1/u if x >= 0 else e/u          q = 1 - p = e/u if x >= 0 else 1/u   (no cancellation)
    ce = max(x, 0) - x t + log1p(e),    log1p(e) = log(u) + (e - (u - 1)) / u   (u - 1 exact)
    m = p (1 - t) + q t                 (= 1 - p_t)
    a_t = alpha t + (1 - alpha)(1 - t)  (1 when alpha < 0)
    loss = a_t ce m^gamma
    dloss/dx = a_t [(p - t) m^gamma + ce gamma m^(gamma - 1) p q (1 - 2t)]

``G`` (constexpr) picks exact products for gamma 0, 1, 2 and ``exp(gamma log m)`` otherwise; where
``m == 0`` the derivative term is its limit (0, or 1 for gamma == 1), not torchvision's 0 * inf = NaN.
Everything is computed in fp32 (fp64 for fp64 inputs) and stored in the input dtype.

Kernels
-------
``_fwd_kernel``: one program per ``BLOCK`` elements; "none" stores the loss, "mean"/"sum" store one
partial sum per program (the partials are then added on the device by torch: deterministic, no host
sync). ``_bwd_kernel`` recomputes the terms and stores ``grad * dloss/dx`` (``grad`` per element, or one
scalar read on the device). The labels form (``*_labels_kernel``) reads logits ``[N, C]`` and labels
``[N]``: element ``i`` is row ``i // C``, class ``i % C``, target ``class == label``; a row labelled
``ignore_index`` contributes 0. The normaliser is read on the device.

The ops are ``torch.library.custom_op`` s ``fastseg_triton::sigmoid_focal_loss``,
``..._backward``, ``..._with_labels`` and ``..._with_labels_backward`` with fake kernels and autograd.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

__all__ = ["sigmoid_focal_loss", "sigmoid_focal_loss_with_labels"]

# Elements per program: 1024 at 4 warps is 8 per thread, enough loads in flight to stream memory.
# Not tuned on a GPU yet.
BLOCK = 1024
NUM_WARPS = 4


@triton.jit
def _terms(x, t):
    ax = tl.abs(x)
    e = tl.exp(-ax)
    u = 1.0 + e
    inv = 1.0 / u
    big = inv
    small = e * inv
    pos = x >= 0
    p = tl.where(pos, big, small)
    q = tl.where(pos, small, big)
    log1p_e = tl.log(u) + (e - (u - 1.0)) * inv
    ce = (tl.where(pos, x, 0.0) - x * t) + log1p_e
    m = p * (1.0 - t) + q * t
    return p, q, ce, m


@triton.jit
def _alpha_t(t, alpha):
    return tl.where(alpha < 0, 1.0, alpha * t + (1.0 - alpha) * (1.0 - t))


@triton.jit
def _mod(m, gamma, G: tl.constexpr):
    if G == 0:
        r = tl.full(m.shape, 1.0, m.dtype)
    elif G == 1:
        r = m
    elif G == 2:
        r = m * m
    else:
        r = tl.where(m > 0, tl.exp(gamma * tl.log(tl.where(m > 0, m, 1.0))), tl.where(gamma == 0, 1.0, 0.0))
    return r


@triton.jit
def _dmod(m, gamma, G: tl.constexpr):
    if G == 0:
        r = tl.zeros(m.shape, m.dtype)
    elif G == 1:
        r = tl.full(m.shape, 1.0, m.dtype)
    elif G == 2:
        r = 2.0 * m
    else:
        at_zero = tl.where(gamma == 1.0, 1.0, 0.0)
        r = tl.where(m > 0, gamma * tl.exp((gamma - 1.0) * tl.log(tl.where(m > 0, m, 1.0))), at_zero)
        r = tl.where(gamma == 0, 0.0, r)
    return r


@triton.jit
def _loss(x, t, alpha, gamma, G: tl.constexpr):
    p, q, ce, m = _terms(x, t)
    return _alpha_t(t, alpha) * (ce * _mod(m, gamma, G))


@triton.jit
def _grad(x, t, alpha, gamma, G: tl.constexpr):
    p, q, ce, m = _terms(x, t)
    dm = p * q * (1.0 - 2.0 * t)
    g = (p - t) * _mod(m, gamma, G) + ce * (_dmod(m, gamma, G) * dm)
    return _alpha_t(t, alpha) * g


@triton.jit
def _scalars(params_ptr, a, b, c, IS_FP64: tl.constexpr):
    """The kernel's three float scalars. Triton passes Python floats as fp32: fp64 kernels read them
    from a tensor instead."""
    if IS_FP64:
        a = tl.load(params_ptr + 0)
        b = tl.load(params_ptr + 1)
        c = tl.load(params_ptr + 2)
    return a, b, c


@triton.jit
def _labels_tile(x_ptr, labels_ptr, offs, mask, C, IS_FP64: tl.constexpr):
    """Logits, one-hot targets and row labels of the flat elements `offs` of an [N, C] problem."""
    ct = tl.float64 if IS_FP64 else tl.float32
    row = offs // C
    label = tl.load(labels_ptr + row, mask=mask, other=0)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ct)
    t = tl.where(offs - row * C == label, 1.0, 0.0).to(ct)
    return x, t, label


@triton.jit
def _fwd_kernel(x_ptr, t_ptr, out_ptr, partial_ptr, params_ptr, n, alpha, gamma,
                BLOCK: tl.constexpr, G: tl.constexpr, REDUCE: tl.constexpr, IS_FP64: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    ct = tl.float64 if IS_FP64 else tl.float32
    if IS_FP64:  # Triton passes Python floats as fp32: fp64 kernels read their scalars from a tensor
        alpha = tl.load(params_ptr + 0)
        gamma = tl.load(params_ptr + 1)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ct)
    t = tl.load(t_ptr + offs, mask=mask, other=0.0).to(ct)
    loss = _loss(x, t, alpha, gamma, G)
    if REDUCE:
        tl.store(partial_ptr + pid, tl.sum(tl.where(mask, loss, 0.0), axis=0))
    else:
        tl.store(out_ptr + offs, loss.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_kernel(g_ptr, x_ptr, t_ptr, out_ptr, params_ptr, n, g_scale, alpha, gamma,
                BLOCK: tl.constexpr, G: tl.constexpr, GRAD_SCALAR: tl.constexpr, IS_FP64: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    ct = tl.float64 if IS_FP64 else tl.float32
    alpha, gamma, g_scale = _scalars(params_ptr, alpha, gamma, g_scale, IS_FP64)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ct)
    t = tl.load(t_ptr + offs, mask=mask, other=0.0).to(ct)
    if GRAD_SCALAR:
        g = tl.load(g_ptr).to(ct) * g_scale
    else:
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ct)
    tl.store(out_ptr + offs, (g * _grad(x, t, alpha, gamma, G)).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fwd_labels_kernel(x_ptr, labels_ptr, norm_ptr, out_ptr, partial_ptr, params_ptr, n, C, alpha, gamma, scale,
                       ignore_index,
                       BLOCK: tl.constexpr, G: tl.constexpr, REDUCE: tl.constexpr, HAS_NORM: tl.constexpr,
                       IS_FP64: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    ct = tl.float64 if IS_FP64 else tl.float32
    alpha, gamma, scale = _scalars(params_ptr, alpha, gamma, scale, IS_FP64)
    x, t, label = _labels_tile(x_ptr, labels_ptr, offs, mask, C, IS_FP64)
    loss = tl.where(label == ignore_index, 0.0, _loss(x, t, alpha, gamma, G))
    if REDUCE:
        tl.store(partial_ptr + pid, tl.sum(tl.where(mask, loss, 0.0), axis=0))
    else:
        factor = scale
        if HAS_NORM:
            factor = scale / tl.load(norm_ptr).to(ct)
        tl.store(out_ptr + offs, (loss * factor).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_labels_kernel(g_ptr, x_ptr, labels_ptr, norm_ptr, out_ptr, params_ptr, n, C, g_scale, alpha, gamma,
                       ignore_index,
                       BLOCK: tl.constexpr, G: tl.constexpr, GRAD_SCALAR: tl.constexpr, HAS_NORM: tl.constexpr,
                       IS_FP64: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    ct = tl.float64 if IS_FP64 else tl.float32
    alpha, gamma, g_scale = _scalars(params_ptr, alpha, gamma, g_scale, IS_FP64)
    x, t, label = _labels_tile(x_ptr, labels_ptr, offs, mask, C, IS_FP64)
    if GRAD_SCALAR:
        g = tl.load(g_ptr).to(ct) * g_scale
    else:
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ct) * g_scale
    if HAS_NORM:
        g = g / tl.load(norm_ptr).to(ct)
    d = tl.where(label == ignore_index, 0.0, g * _grad(x, t, alpha, gamma, G))
    tl.store(out_ptr + offs, d.to(out_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------
def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def _params(x: torch.Tensor, *values: float) -> torch.Tensor:
    """The scalars of an fp64 kernel as an fp64 tensor (Triton rounds Python floats to fp32); fp32
    kernels take them as arguments and get x as an unused pointer (no host-to-device copy)."""
    if x.dtype != torch.float64:
        return x
    return torch.tensor(values, dtype=torch.float64, device=x.device)


def _gamma_kind(gamma: float) -> int:
    return {0.0: 0, 1.0: 1, 2.0: 2}.get(float(gamma), -1)


def _prepare(x: torch.Tensor, op: str) -> torch.Tensor:
    if x.device.type == "cpu" and not _interpreting():
        raise RuntimeError(f"fastseg_triton {op} needs CUDA tensors (or TRITON_INTERPRET=1 set before triton "
                           f"is imported to run on the CPU); got a tensor on {x.device}")
    if _interpreting() and x.dtype == torch.bfloat16:
        x = x.float()  # the interpreter has no bf16 arithmetic: upcast (exact), result cast back
    return x.contiguous()


def _check(inputs, targets, reduction, op):
    if not inputs.is_floating_point() or not targets.is_floating_point():
        raise ValueError(f"{op}: inputs and targets must be floating-point tensors, got {inputs.dtype} and {targets.dtype}")
    if inputs.shape != targets.shape:
        raise ValueError(f"{op}: inputs and targets must have the same shape, got {list(inputs.shape)} and "
                         f"{list(targets.shape)}")
    if reduction not in (0, 1, 2):
        raise ValueError(f"{op}: reduction must be 0 (none), 1 (mean) or 2 (sum), got {reduction}")


def _finish(partial: torch.Tensor, n: int, reduction: int, dtype, factor=None) -> torch.Tensor:
    """Sum of the per-program partials on the device (fp64: the partials are few), mean, normaliser."""
    s = partial.double().sum()
    if reduction == 1:
        s = s / n
    if factor is not None:
        s = factor(s)
    return s.to(dtype)


@torch.library.custom_op("fastseg_triton::sigmoid_focal_loss", mutates_args=())
def _focal_op(inputs: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float,
              reduction: int) -> torch.Tensor:
    _check(inputs, targets, reduction, "sigmoid_focal_loss")
    dtype = inputs.dtype
    x = _prepare(inputs, "sigmoid_focal_loss")
    t = _prepare(targets.to(x.dtype), "sigmoid_focal_loss")
    n = x.numel()
    if reduction == 0:
        out = torch.empty_like(x)
        if n:
            _fwd_kernel[(triton.cdiv(n, BLOCK),)](x, t, out, out, _params(x, alpha, gamma), n, alpha, gamma, BLOCK=BLOCK,
                                                 G=_gamma_kind(gamma), REDUCE=False,
                                                 IS_FP64=x.dtype == torch.float64, num_warps=NUM_WARPS)
        return out.to(dtype).reshape(inputs.shape)
    partial = torch.zeros(max(1, triton.cdiv(n, BLOCK)), dtype=torch.float64 if x.dtype == torch.float64
                          else torch.float32, device=x.device)
    if n:
        _fwd_kernel[(triton.cdiv(n, BLOCK),)](x, t, x, partial, _params(x, alpha, gamma), n, alpha, gamma, BLOCK=BLOCK,
                                             G=_gamma_kind(gamma), REDUCE=True,
                                             IS_FP64=x.dtype == torch.float64, num_warps=NUM_WARPS)
    return _finish(partial, n, reduction, dtype)


@_focal_op.register_fake
def _focal_fake(inputs, targets, alpha, gamma, reduction):
    _check(inputs, targets, reduction, "sigmoid_focal_loss")
    return inputs.new_empty(()) if reduction else torch.empty_like(inputs)


@torch.library.custom_op("fastseg_triton::sigmoid_focal_loss_backward", mutates_args=())
def _focal_backward_op(grad: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor, alpha: float,
                       gamma: float, reduction: int) -> torch.Tensor:
    _check(inputs, targets, reduction, "sigmoid_focal_loss_backward")
    dtype = inputs.dtype
    x = _prepare(inputs, "sigmoid_focal_loss_backward")
    t = _prepare(targets.to(x.dtype), "sigmoid_focal_loss_backward")
    g = _prepare(grad.to(x.dtype), "sigmoid_focal_loss_backward")
    n = x.numel()
    out = torch.empty_like(x)
    if n:
        g_scale = 1.0 / n if reduction == 1 else 1.0
        _bwd_kernel[(triton.cdiv(n, BLOCK),)](g, x, t, out, _params(x, alpha, gamma, g_scale), n, g_scale, alpha, gamma,
                                             BLOCK=BLOCK, G=_gamma_kind(gamma), GRAD_SCALAR=reduction != 0,
                                             IS_FP64=x.dtype == torch.float64, num_warps=NUM_WARPS)
    return out.to(dtype).reshape(inputs.shape)


@_focal_backward_op.register_fake
def _focal_backward_fake(grad, inputs, targets, alpha, gamma, reduction):
    return torch.empty_like(inputs)


def _check_labels(logits, labels, reduction, op):
    if logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"{op}: logits must be a floating-point [N, C] tensor, got {logits.dtype} {list(logits.shape)}")
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0] or labels.is_floating_point():
        raise ValueError(f"{op}: labels must be an integer [N] tensor, got {labels.dtype} {list(labels.shape)}")
    if reduction not in (0, 1, 2):
        raise ValueError(f"{op}: reduction must be 0 (none), 1 (mean) or 2 (sum), got {reduction}")


@torch.library.custom_op("fastseg_triton::sigmoid_focal_loss_with_labels", mutates_args=())
def _labels_op(logits: torch.Tensor, labels: torch.Tensor, alpha: float, gamma: float,
               normalizer: Optional[torch.Tensor], scale: float, ignore_index: int, reduction: int) -> torch.Tensor:
    op = "sigmoid_focal_loss_with_labels"
    _check_labels(logits, labels, reduction, op)
    dtype = logits.dtype
    x = _prepare(logits, op)
    lab = labels.to(torch.int64).contiguous()
    rows, c = x.shape
    n = rows * c
    is64 = x.dtype == torch.float64
    has_norm = normalizer is not None
    norm = normalizer.reshape(1).contiguous() if has_norm else x
    grid = (triton.cdiv(n, BLOCK),)
    if reduction == 0:
        out = torch.empty_like(x)
        if n:
            _fwd_labels_kernel[grid](x, lab, norm, out, out, _params(x, alpha, gamma, scale), n, c, alpha, gamma, scale, ignore_index, BLOCK=BLOCK,
                                     G=_gamma_kind(gamma), REDUCE=False, HAS_NORM=has_norm, IS_FP64=is64,
                                     num_warps=NUM_WARPS)
        return out.to(dtype)
    partial = torch.zeros(max(1, grid[0]), dtype=torch.float64 if is64 else torch.float32, device=x.device)
    if n:
        _fwd_labels_kernel[grid](x, lab, norm, x, partial, _params(x, alpha, gamma, scale), n, c, alpha, gamma, scale, ignore_index, BLOCK=BLOCK,
                                 G=_gamma_kind(gamma), REDUCE=True, HAS_NORM=has_norm, IS_FP64=is64,
                                 num_warps=NUM_WARPS)

    def factor(s):
        s = s * scale
        return s / normalizer.double().reshape(()) if has_norm else s

    return _finish(partial, n, reduction, dtype, factor)


@_labels_op.register_fake
def _labels_fake(logits, labels, alpha, gamma, normalizer, scale, ignore_index, reduction):
    _check_labels(logits, labels, reduction, "sigmoid_focal_loss_with_labels")
    return logits.new_empty(()) if reduction else torch.empty_like(logits)


@torch.library.custom_op("fastseg_triton::sigmoid_focal_loss_with_labels_backward", mutates_args=())
def _labels_backward_op(grad: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, alpha: float, gamma: float,
                        normalizer: Optional[torch.Tensor], scale: float, ignore_index: int,
                        reduction: int) -> torch.Tensor:
    op = "sigmoid_focal_loss_with_labels_backward"
    _check_labels(logits, labels, reduction, op)
    dtype = logits.dtype
    x = _prepare(logits, op)
    lab = labels.to(torch.int64).contiguous()
    g = _prepare(grad.to(x.dtype), op)
    rows, c = x.shape
    n = rows * c
    has_norm = normalizer is not None
    norm = normalizer.reshape(1).contiguous() if has_norm else x
    out = torch.empty_like(x)
    if n:
        g_scale = scale / n if reduction == 1 else scale
        _bwd_labels_kernel[(triton.cdiv(n, BLOCK),)](g, x, lab, norm, out, _params(x, alpha, gamma, g_scale), n, c, g_scale, alpha, gamma, ignore_index,
                                                    BLOCK=BLOCK, G=_gamma_kind(gamma), GRAD_SCALAR=reduction != 0,
                                                    HAS_NORM=has_norm, IS_FP64=x.dtype == torch.float64,
                                                    num_warps=NUM_WARPS)
    return out.to(dtype)


@_labels_backward_op.register_fake
def _labels_backward_fake(grad, logits, labels, alpha, gamma, normalizer, scale, ignore_index, reduction):
    return torch.empty_like(logits)


def _register_autograd():
    from fastseg.ops.sigmoid_focal_loss import make_autograd

    (s, b), (ls, lb) = make_autograd(torch.ops.fastseg_triton.sigmoid_focal_loss_backward,
                                     torch.ops.fastseg_triton.sigmoid_focal_loss_with_labels_backward)
    _focal_op.register_autograd(b, setup_context=s)
    _labels_op.register_autograd(lb, setup_context=ls)


_register_autograd()


def sigmoid_focal_loss(inputs, targets, alpha: float, gamma: float, reduction: int) -> torch.Tensor:
    return torch.ops.fastseg_triton.sigmoid_focal_loss(inputs, targets, float(alpha), float(gamma), int(reduction))


def sigmoid_focal_loss_with_labels(logits, labels, alpha, gamma, normalizer, scale, ignore_index, reduction):
    return torch.ops.fastseg_triton.sigmoid_focal_loss_with_labels(
        logits, labels, float(alpha), float(gamma), normalizer, float(scale), int(ignore_index), int(reduction))
