"""Learning-rate schedules (linear warm-up then cosine or step decay) and an EMA of the weights."""
from __future__ import annotations

import copy
import math

import torch


def warmup_lambda(total_iters: int, warmup_iters: int = 0, warmup_factor: float = 0.001, kind: str = "cosine",
                  min_ratio: float = 0.01, milestones=(), gamma: float = 0.1):
    """Multiplier of the base LR at step ``it``: linear ramp from ``warmup_factor`` over ``warmup_iters``,
    then cosine down to ``min_ratio`` at ``total_iters`` (or step decay by ``gamma`` at ``milestones``).
    A top-level function of plain numbers, so a LambdaLR built on it is reproducible after resume."""
    if kind not in ("cosine", "step", "constant"):
        raise ValueError(f"schedule must be 'cosine', 'step' or 'constant', got {kind!r}")

    def f(it: int) -> float:
        if it < warmup_iters:
            a = it / max(1, warmup_iters)
            return warmup_factor * (1 - a) + a
        if kind == "cosine":
            t = min(1.0, (it - warmup_iters) / max(1, total_iters - warmup_iters))
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        if kind == "step":
            return gamma ** sum(it >= m for m in milestones)
        return 1.0

    return f


class ModelEMA:
    """Exponential moving average of a model's parameters and buffers (float ones averaged, integer
    ones such as BatchNorm's counter copied). The decay ramps up as ``decay * (1 - exp(-step/tau))`` so
    the average is not dominated by the random initialisation early on."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.999, tau: float = 200.0):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module):
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        src = model.state_dict()
        ema_f, src_f = [], []
        for k, v in self.module.state_dict().items():
            if v.dtype.is_floating_point:
                ema_f.append(v)
                src_f.append(src[k].detach())
            else:
                v.copy_(src[k])
        if ema_f:
            # one fused multi-tensor op instead of a python loop of lerps
            torch._foreach_lerp_(ema_f, src_f, 1 - d)

    def state_dict(self):
        return {"module": self.module.state_dict(), "decay": self.decay, "tau": self.tau, "updates": self.updates}

    def load_state_dict(self, state):
        self.module.load_state_dict(state["module"])
        self.decay, self.tau, self.updates = state["decay"], state["tau"], state["updates"]
