"""Sigmoid focal loss (Lin et al. 2017, RetinaNet), the definition.

With ``p = sigmoid(x)`` and a target ``t`` in [0, 1]::

    ce   = binary_cross_entropy_with_logits(x, t)          # -(t log p + (1 - t) log(1 - p))
    p_t  = p t + (1 - p)(1 - t)
    loss = alpha_t ce (1 - p_t)^gamma,     alpha_t = alpha t + (1 - alpha)(1 - t)   (1 if alpha < 0)

exactly torchvision's ``sigmoid_focal_loss``, written with the same PyTorch operations (so that
autograd gives the same gradient; one exception: for 0 < gamma < 1 at a saturated logit, where
torchvision's gradient is 0 * inf = NaN, this gives the limit 0), computed in fp32 for fp16/bf16 inputs and returned in the input
dtype. ``sigmoid_focal_loss_with_labels`` builds the one-hot targets explicitly (the fast backends never
do) and masks the ignored rows.
"""
import torch
import torch.nn.functional as F
from torch import Tensor


def _compute(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def elementwise_focal_loss(inputs: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """The unreduced loss in the compute dtype (fp32 for fp16/bf16 inputs)."""
    x = _compute(inputs)
    t = targets.to(x.dtype)
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    m = 1 - p_t
    if 0 < gamma < 1:
        # m ** gamma has an infinite derivative at m == 0 (a saturated logit), where autograd would give
        # 0 * inf = NaN; the derivative of the loss tends to 0 there. Same value, finite gradient.
        safe = torch.where(m > 0, m, torch.ones_like(m))
        mod = torch.where(m > 0, safe ** gamma, torch.zeros_like(m))
    else:
        mod = m ** gamma
    loss = ce * mod
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return loss


def sigmoid_focal_loss(inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0,
                       reduction: str = "none") -> Tensor:
    """torchvision.ops.sigmoid_focal_loss; fp16/bf16 computed in fp32, returned in the input dtype."""
    return _reduce(elementwise_focal_loss(inputs, targets, alpha, gamma), reduction).to(inputs.dtype)


def one_hot_targets(logits: Tensor, labels: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """(targets [N, C] in {0, 1}, valid [N] bool): label in [0, C) is the positive class, ignore_index
    marks a row that does not count, any other label is background (all classes negative)."""
    n, c = logits.shape
    labels = labels.long()
    valid = labels != ignore_index
    positive = valid & (labels >= 0) & (labels < c)
    targets = torch.zeros(n, c, dtype=_compute(logits).dtype, device=logits.device)
    rows = torch.nonzero(positive).flatten()
    targets[rows, labels[rows]] = 1
    return targets, valid


def sigmoid_focal_loss_with_labels(logits: Tensor, labels: Tensor, alpha: float = 0.25, gamma: float = 2.0,
                                   normalizer=None, ignore_index: int = -1, reduction: str = "sum") -> Tensor:
    """Focal loss of logits [N, C] against integer labels [N]; the reduced (or elementwise) loss is
    divided by ``normalizer`` (a float or a one-element tensor) when given. "mean" is the mean over all
    N * C elements, ignored rows counting as zeros (the mean of the "none" output)."""
    targets, valid = one_hot_targets(logits, labels, ignore_index)
    loss = elementwise_focal_loss(logits, targets, alpha, gamma) * valid[:, None]
    loss = _reduce(loss, reduction)
    if normalizer is not None:
        loss = loss / (normalizer.reshape(()) if isinstance(normalizer, Tensor) else normalizer)
    return loss.to(logits.dtype)
