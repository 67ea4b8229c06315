"""Evaluation (COCO mAP through pycocotools, mIoU), schedules, EMA, checkpoints, the training loop,
exact resume, the NaN stop, and DDP (two gloo processes) against single-process gradients."""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from fastseg.data import ShapesDataset
from fastseg.engine import ModelEMA, NonFiniteLossError, TrainConfig, Trainer, coco_evaluate, mean_iou, warmup_lambda
from fastseg.engine.checkpoint import save_atomic
from fastseg.engine.evaluate import STAT_NAMES
from fastseg.models import build


def _gt():
    ds = ShapesDataset(4, 64, seed=11, min_objects=2)
    return [ds[i][1] for i in range(4)]


def _perfect(targets):
    return [{"boxes": t["boxes"].clone(), "scores": torch.linspace(0.9, 0.5, len(t["labels"])),
             "labels": t["labels"].clone(), "masks": t["masks"].clone()} for t in targets]


def test_coco_map_perfect_is_one_and_shifted_is_less():
    targets = _gt()
    res = coco_evaluate(_perfect(targets), targets)
    assert set(res) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        assert list(res[task]) == list(STAT_NAMES)
        assert res[task]["AP"] == pytest.approx(1.0) and res[task]["AP50"] == pytest.approx(1.0)
        assert res[task]["AR100"] == pytest.approx(1.0)
    shifted = _perfect(targets)
    for p in shifted:
        p["boxes"] = p["boxes"] + 6.0
        p["masks"] = torch.roll(p["masks"], shifts=(6, 6), dims=(1, 2))
    res2 = coco_evaluate(shifted, targets)
    for task in ("bbox", "segm"):
        assert 0.0 <= res2[task]["AP"] < 0.9
        assert res2[task]["AP"] < res2[task]["AP50"] + 1e-9
    wrong = _perfect(targets)
    for p in wrong:
        p["labels"] = p["labels"] % 3 + 1  # every class wrong
    assert coco_evaluate(wrong, targets)["bbox"]["AP"] == 0.0


def test_coco_map_without_detections_or_masks():
    targets = _gt()
    empty = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
             for _ in targets]
    res = coco_evaluate(empty, targets)
    assert set(res) == {"bbox"} and res["bbox"]["AP"] == 0.0
    boxes_only = [{k: v for k, v in p.items() if k != "masks"} for p in _perfect(targets)]
    assert coco_evaluate(boxes_only, targets)["bbox"]["AP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same length"):
        coco_evaluate(boxes_only[:2], targets)


def test_mean_iou():
    t = torch.tensor([[0, 0, 1, 1], [0, 0, 2, 2]])
    assert mean_iou(t, t, 3)["mIoU"] == pytest.approx(1.0)
    p = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 2]])
    r = mean_iou(p, t, 3)
    # class 0: 4/4, class 1: 2/3, class 2: 1/2
    assert r["IoU"] == pytest.approx([1.0, 2 / 3, 0.5])
    assert r["mIoU"] == pytest.approx((1 + 2 / 3 + 0.5) / 3)
    r = mean_iou(t, t, 5)  # classes 3, 4 absent from both: left out of the mean
    assert r["mIoU"] == pytest.approx(1.0)


def test_warmup_cosine_and_step():
    f = warmup_lambda(100, warmup_iters=10, warmup_factor=0.1, kind="cosine", min_ratio=0.0)
    assert f(0) == pytest.approx(0.1) and f(5) == pytest.approx(0.55) and f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5) and f(100) == pytest.approx(0.0, abs=1e-12)
    g = warmup_lambda(100, 0, kind="step", milestones=(30, 60), gamma=0.1)
    assert g(29) == 1.0 and g(30) == pytest.approx(0.1) and g(99) == pytest.approx(0.01)
    with pytest.raises(ValueError):
        warmup_lambda(10, kind="linear")


def test_ema_tracks_weights():
    m = torch.nn.Linear(2, 2)
    ema = ModelEMA(m, decay=0.5, tau=1e-9)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema.update(m)
    before = m.weight.detach().clone()
    assert not torch.equal(ema.module.weight, before)
    for _ in range(60):
        ema.update(m)
    torch.testing.assert_close(ema.module.weight, before)


def test_save_atomic_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "c.pt"
    save_atomic({"a": 1}, p)
    save_atomic({"a": 2}, p)
    assert torch.load(p)["a"] == 2
    assert sorted(x.name for x in tmp_path.iterdir()) == ["c.pt"]

    class Boom:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        save_atomic({"a": Boom()}, p)
    assert torch.load(p)["a"] == 2  # the old checkpoint survives a failed save
    assert sorted(x.name for x in tmp_path.iterdir()) == ["c.pt"]


def _tiny_model():
    torch.manual_seed(0)
    return build("boxreg", 3)


def _cfg(tmp, **kw):
    base = dict(iters=4, batch_size=4, lr=1e-3, warmup_iters=2, ema_decay=0.9, out_dir=str(tmp), ckpt_every=100,
                log_every=1, progress=False, seed=1)
    base.update(kw)
    return TrainConfig(**base)


def test_resume_gives_the_same_next_step(tmp_path):
    from fastseg.data.transforms import default_train_transforms

    ds = ShapesDataset(12, 48, seed=0, transforms=default_train_transforms(48))  # 3 steps per epoch
    full = Trainer(_tiny_model(), ds, _cfg(tmp_path / "full", iters=5))
    res_full = full.fit()
    # interrupted run: 4 steps (crossing an epoch boundary), checkpoint, new process-like object, resume
    part = Trainer(_tiny_model(), ds, _cfg(tmp_path / "part", iters=5))
    part.fit(until=4)
    assert (tmp_path / "part" / "last.pt").exists()
    torch.manual_seed(1234)  # resume must restore RNG state, not depend on the caller's
    resumed = Trainer(_tiny_model(), ds, _cfg(tmp_path / "part", iters=5))
    resumed.load(tmp_path / "part" / "last.pt")
    assert resumed.step == 4
    res_resumed = resumed.fit()
    assert res_resumed["last"]["loss"] == res_full["last"]["loss"]
    for (n, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), n
    for a, b in zip(full.ema.module.state_dict().values(), resumed.ema.module.state_dict().values()):
        assert torch.equal(a, b)
    assert full.optimizer.param_groups[0]["lr"] == resumed.optimizer.param_groups[0]["lr"]
    lines = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4, 5]
    assert all(r["images_per_s"] > 0 for r in lines if "loss" in r)


class _NaNAfter(torch.nn.Module):
    """Wraps a model; its loss turns NaN from the ``k``-th call on."""

    def __init__(self, model, k):
        super().__init__()
        self.m, self.k, self.calls = model, k, 0

    def forward(self, images, targets=None):
        self.calls += 1
        losses = self.m(images, targets)
        if self.calls >= self.k:
            losses = {k: v * float("nan") for k, v in losses.items()}
        return losses


def test_nan_loss_stops_with_clear_message_and_keeps_last_good(tmp_path):
    ds = ShapesDataset(16, 32, seed=0)
    tr = Trainer(_NaNAfter(_tiny_model(), 4), ds, _cfg(tmp_path, iters=10, ckpt_every=2, log_every=5, ema_decay=0))
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 4.*last good checkpoint is .*last\.pt"):
        tr.fit()
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.dtype.is_floating_point)


def test_short_training_lowers_the_loss(tmp_path):
    ds = ShapesDataset(8, 48, seed=3, max_objects=1)
    tr = Trainer(_tiny_model(), ds, _cfg(tmp_path, iters=24, batch_size=4, lr=2e-3, warmup_iters=3, ema_decay=0))
    tr.fit()
    losses = [json.loads(x)["loss"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_and_channels_last_step(tmp_path, amp):
    ds = ShapesDataset(4, 32, seed=0)
    tr = Trainer(_tiny_model(), ds, _cfg(tmp_path, iters=1, amp=amp, channels_last=True, ema_decay=0))
    before = [p.detach().clone() for p in tr.model.parameters()]
    res = tr.fit()
    assert res["step"] == 1 and torch.isfinite(torch.tensor(res["last"]["loss"]))
    assert tr.scaler.is_enabled() == (amp == "fp16")
    changed = any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))
    # fp16: GradScaler skips a step whose scaled gradients overflow, and lowers the scale instead
    assert changed or (amp == "fp16" and tr.scaler.get_scale() < 65536.0)
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    assert state["scaler"] == tr.scaler.state_dict()
    with pytest.raises(ValueError, match="amp"):
        Trainer(_tiny_model(), ds, _cfg(tmp_path, amp="fp8"))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _grads_after_one_step(world, rank, out, port):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        # frozen BN: batch statistics would differ between a half batch and the full one
        model = build("boxreg", 3, backbone_norm="frozen")
        ds = ShapesDataset(16, 32, seed=2)
        cfg = TrainConfig(iters=1, batch_size=8 // world, lr=0.0, warmup_iters=0, clip_grad=None, progress=False,
                          seed=3, optimizer="sgd")
        tr = Trainer(model, ds, cfg)
        tr.fit()
        torch.save({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, out)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            os.environ.pop(k, None)


def _ddp_worker(rank, world, tmp, port):
    _grads_after_one_step(world, rank, os.path.join(tmp, f"g{rank}.pt"), port)


def test_ddp_two_gloo_processes_match_single_process_gradients(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path), _free_port()), nprocs=2, join=True)
    _grads_after_one_step(1, 0, str(tmp_path / "single.pt"), _free_port())
    single = torch.load(tmp_path / "single.pt")
    for r in range(2):
        ddp = torch.load(tmp_path / f"g{r}.pt")
        assert ddp.keys() == single.keys() and len(single) > 10
        for k in single:
            torch.testing.assert_close(ddp[k], single[k], rtol=1e-4, atol=1e-6, msg=k)
