"""The training loop.

Mixed precision (bf16 autocast, or fp16 autocast + GradScaler), channels_last, optional torch.compile,
gradient clipping, warm-up + cosine/step LR, optional EMA, atomic checkpoints with exact resume, a stop
with a clear message on a non-finite loss, a progress line with loss and images/s, JSONL metrics, and
DDP when launched by ``torchrun`` (the ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` environment variables).

Exact resume: data order and augmentations are a pure function of (seed, epoch, position)
(``ResumableSampler``), and the checkpoint holds model, optimizer, scheduler, scaler, EMA, step and RNG
states, so the step after a resume is the step an uninterrupted run would have taken.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from fastseg.data.loader import make_loader
from fastseg.engine import checkpoint as ckpt
from fastseg.engine.schedule import ModelEMA, warmup_lambda


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss became NaN or infinite."""


@dataclasses.dataclass
class TrainConfig:
    iters: int | None = None          # total optimizer steps (takes precedence over epochs)
    epochs: int | None = None
    batch_size: int = 8               # per process
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"          # "adamw" | "sgd"
    momentum: float = 0.9
    schedule: str = "cosine"          # "cosine" | "step" | "constant"
    warmup_iters: int = 100
    milestones: tuple = ()
    amp: str = "none"                 # "none" | "bf16" | "fp16"
    channels_last: bool = False
    compile: bool = False
    clip_grad: float | None = 10.0
    ema_decay: float = 0.0            # 0 disables the EMA
    num_workers: int = 0
    seed: int = 0
    device: str = "cpu"
    out_dir: str | None = None
    ckpt_every: int = 500             # steps between checkpoints (and one at the end)
    log_every: int = 10
    eval_every: int = 0               # steps between evaluations on the validation set (0: only at the end)
    time_limit: float | None = None   # seconds of training after which to stop (and checkpoint)
    progress: bool = True


def dist_info():
    """(rank, world_size, local_rank) from torchrun's environment (1 process when absent)."""
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), ws, int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed(device: str) -> tuple[int, int, str]:
    """Join the process group torchrun set up; NCCL on CUDA, gloo on CPU. Returns (rank, world, device)."""
    rank, world, local = dist_info()
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend)
    if device.startswith("cuda") and world > 1:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return rank, world, device


def _loss_sum(losses: dict) -> torch.Tensor:
    return sum(losses.values())


class _Progress:
    """tqdm when installed, else a plain line every ``log_every`` steps."""

    def __init__(self, total, initial, enabled):
        self.bar = None
        self.enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=initial, dynamic_ncols=True)
            except ImportError:
                pass
        self.total = total

    def update(self, step, postfix: dict):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(postfix, refresh=True)
        else:
            items = " ".join(f"{k}={v}" for k, v in postfix.items())
            print(f"step {step}/{self.total} {items}", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


class Trainer:
    """Train ``model`` (``forward(images, targets) -> dict of losses`` in train mode) on ``train_set``.

    ``meta`` (e.g. ``{"model": name, "model_kwargs": {...}, "num_classes": C}``) is stored in every
    checkpoint so ``fastseg eval``/``predict`` can rebuild the model.
    """

    def __init__(self, model: torch.nn.Module, train_set, config: TrainConfig, val_set=None, meta: dict | None = None,
                 evaluate_fn=None):
        self.cfg = config
        self.meta = meta or {}
        self.rank, self.world, device = init_distributed(config.device)
        self.device = torch.device(device)
        torch.manual_seed(config.seed)
        if config.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"amp must be 'none', 'bf16' or 'fp16', got {config.amp!r}")
        self.model = model.to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.train_set, self.val_set = train_set, val_set
        self.evaluate_fn = evaluate_fn
        self.loader = make_loader(train_set, config.batch_size, shuffle=True, num_workers=config.num_workers,
                                  seed=config.seed, num_replicas=self.world, rank=self.rank, drop_last=True)
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise ValueError(f"dataset of {len(train_set)} images is smaller than one batch of "
                             f"{config.batch_size} x {self.world} processes")
        if config.iters is not None:
            self.total_steps = int(config.iters)
        elif config.epochs is not None:
            self.total_steps = int(config.epochs) * self.steps_per_epoch
        else:
            raise ValueError("give either iters or epochs")
        params_decay, params_no_decay = [], []
        for n, p in self.model.named_parameters():
            if p.requires_grad:
                # no weight decay on norms and biases: decaying them only hurts (common practice)
                (params_no_decay if p.ndim <= 1 else params_decay).append(p)
        groups = [{"params": params_decay, "weight_decay": config.weight_decay},
                  {"params": params_no_decay, "weight_decay": 0.0}]
        if config.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(groups, lr=config.lr)
        elif config.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
        else:
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {config.optimizer!r}")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_lambda(self.total_steps, config.warmup_iters, kind=config.schedule,
                                          milestones=config.milestones))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        self.ema = ModelEMA(self.model, config.ema_decay) if config.ema_decay > 0 else None
        self.train_model = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.train_model = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if config.compile:
            self.train_model = torch.compile(self.train_model)
        self.step = 0
        self.out_dir = Path(config.out_dir) if config.out_dir else None
        self.last_good = None

    # ---- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "step": self.step,
            "rng": ckpt.rng_state(),
            "config": dataclasses.asdict(self.cfg),
            "meta": self.meta,
        }

    def save(self, path=None) -> Path | None:
        if self.rank != 0:
            return None
        path = Path(path) if path else self.out_dir / "last.pt"
        ckpt.save_atomic(self.state_dict(), path)
        self.last_good = path
        return path

    def load(self, path):
        state = ckpt.load(path, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])
        ckpt.set_rng_state(state["rng"])
        self.last_good = Path(path)

    # ---- the loop ----------------------------------------------------------------------------------
    def _autocast(self):
        if self.cfg.amp == "none":
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _to_device(self, images, targets):
        nb = self.device.type == "cuda"
        images = images.to(self.device, non_blocking=nb)
        if self.cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = [{k: (v.to(self.device, non_blocking=nb) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
                   for t in targets]
        return images, targets

    def train_step(self, images, targets) -> dict:
        """One optimizer step; returns the (device) loss tensors, unsynchronised."""
        self.train_model.train()
        with self._autocast():
            losses = self.train_model(images, targets)
        loss = _loss_sum(losses).float()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.clip_grad:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return {"loss": loss.detach(), **{k: v.detach() for k, v in losses.items()}}

    def _log(self, record: dict):
        if self.rank == 0 and self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def eval_model(self):
        return self.ema.module if self.ema is not None else self.model

    def run_eval(self) -> dict | None:
        if self.val_set is None or self.evaluate_fn is None or self.rank != 0:
            return None
        res = self.evaluate_fn(self.eval_model(), self.val_set)
        self._log({"step": self.step, "eval": res, "time": time.time()})
        return res

    def _all_ranks_any(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def _mean_over_ranks(self, losses: dict) -> dict:
        """Losses averaged over the DDP ranks (as floats): every rank logs, and checks for NaN, the same
        numbers, so a NaN on one rank stops all of them together instead of leaving the others hanging."""
        vals = torch.stack([v.float() for v in losses.values()])
        if self.world > 1:
            dist.all_reduce(vals)
            vals /= self.world
        return dict(zip(losses.keys(), vals.tolist()))

    def _check_finite(self, loss_value: float):
        if not math.isfinite(loss_value):
            where = f"the last good checkpoint is {self.last_good}" if self.last_good else "no checkpoint was written yet"
            raise NonFiniteLossError(
                f"loss is {loss_value} at step {self.step}: training stopped; {where}. "
                "Try a lower --lr, gradient clipping, or --amp bf16 instead of fp16.")

    def fit(self, until: int | None = None) -> dict:
        """Train to ``total_steps`` (or only up to step ``until``, checkpointing there: an interruption
        that leaves the schedule untouched). Returns the final step, time, last losses and evaluation."""
        cfg = self.cfg
        stop = self.total_steps if until is None else min(until, self.total_steps)
        progress = _Progress(self.total_steps, self.step, cfg.progress and self.rank == 0)
        sampler = self.loader.sampler
        start = time.time()
        t_last, imgs_since = time.time(), 0
        last = {}
        eval_result = None
        out_of_time = False
        try:
            while self.step < stop:
                epoch, pos = divmod(self.step, self.steps_per_epoch)
                sampler.set_epoch(epoch)
                sampler.set_start(pos * cfg.batch_size)
                for images, targets in self.loader:
                    images, targets = self._to_device(images, targets)
                    losses = self.train_step(images, targets)
                    imgs_since += images.shape[0] * self.world
                    done = self.step >= stop
                    log_step = self.step % cfg.log_every == 0
                    if cfg.time_limit is not None and log_step:
                        # decided at log steps only and agreed by every rank, so no DDP rank stops alone
                        out_of_time = self._all_ranks_any(time.time() - start >= cfg.time_limit)
                    saving = self.out_dir is not None and (self.step % cfg.ckpt_every == 0 or done or out_of_time)
                    if log_step or done or saving or out_of_time:
                        # the only host sync of the loop: once per log interval, and always before a
                        # checkpoint so no checkpoint ever holds weights updated by a non-finite loss
                        last = self._mean_over_ranks(losses)
                        self._check_finite(last["loss"])
                        now = time.time()
                        ips = imgs_since / max(now - t_last, 1e-9)
                        t_last, imgs_since = now, 0
                        lr = self.optimizer.param_groups[0]["lr"]
                        self._log({"step": self.step, "epoch": epoch, **last, "lr": lr, "images_per_s": ips,
                                   "time": now})
                        progress.update(self.step, {"loss": f"{last['loss']:.4f}", "img/s": f"{ips:.1f}",
                                                    "lr": f"{lr:.2e}"})
                    if saving:
                        self.save()
                    if cfg.eval_every and self.step % cfg.eval_every == 0 and not done:
                        self.run_eval()
                    if done or out_of_time:
                        break
                else:
                    continue
                break
        finally:
            progress.close()
        train_time = time.time() - start  # training only: the evaluation below is not counted
        if self.step >= self.total_steps or out_of_time:  # not after an interruption by `until`
            eval_result = self.run_eval()
        return {"step": self.step, "train_time_s": train_time, "last": last, "eval": eval_result}
