"""Training throughput of the bundled models against torchvision's equivalents (``fastseg bench
--models``): the same input size, batch, backbone depth and dtype on both sides, training steps
(forward, loss, backward, SGD step) timed alternately on the same batches."""
from __future__ import annotations

import math
import statistics

import torch

from fastseg.bench._core import Case, rel_mad, time_pair


def _batch(img_size: int, batch: int, seed: int, device: str):
    from fastseg.data import ShapesDataset

    data = ShapesDataset(length=batch, img_size=img_size, seed=seed)
    items = [data[i] for i in range(batch)]
    images = torch.stack([im for im, _ in items]).to(device)
    targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for _, t in items]
    return images, targets


def _trainer(model, device: str, list_input: bool = False):
    """A training step of `model`; torchvision's detection models take a list of images."""
    model.to(device).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    def step(images, targets):
        losses = model(list(images) if list_input else images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def retinanet_case(device: str, quick: bool) -> Case:
    import torchvision

    import fastseg.models

    img_size, batch, classes = (256, 2, 3) if quick else (512, 2, 3)
    # The same architecture on both sides: ResNet-50 with frozen batch norm, FPN P3-P7, 9 anchors, heads
    # without group norm (torchvision's v1), inputs kept at img_size (no resize in torchvision's transform).
    ours = fastseg.models.build("retinanet", num_classes=classes, depth=50, backbone_norm="frozen", head_norm=None)
    peer = torchvision.models.detection.retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=classes + 1, min_size=img_size, max_size=img_size)

    def check(a, b, inputs):
        assert math.isfinite(float(a)) and math.isfinite(float(b)), f"non-finite loss: {float(a)}, {float(b)}"

    return Case("train retinanet", f"batch {batch}, {img_size}x{img_size}, ResNet-50 FPN", batch, torch.float32,
                device, lambda seed: _batch(img_size, batch, seed, device), _trainer(ours, device),
                _trainer(peer, device, list_input=True), "torchvision", check, {})


MODEL_CASES = {"retinanet": retinanet_case}


def run_model_case(case: Case, quick: bool) -> dict:
    args = case.make(0)
    case.check(case.fastseg(*args), case.peer(*args), args)
    t_fast, t_peer = time_pair(case, case.fastseg, case.peer, quick)
    fast_ms, peer_ms = statistics.median(t_fast) * 1e3, statistics.median(t_peer) * 1e3
    return {
        "op": case.op, "shape": case.shape, "size": case.size, "dtype": str(case.dtype).replace("torch.", ""),
        "device": case.device, "backend": "auto", "auto": "-", "fastseg_ms": fast_ms, "peer": case.peer_name,
        "peer_ms": peer_ms, "speedup": peer_ms / fast_ms, "repeats": len(t_fast),
        "fastseg_images_per_s": case.size / (fast_ms / 1e3), "peer_images_per_s": case.size / (peer_ms / 1e3),
        "fastseg_rel_mad": rel_mad(t_fast), "peer_rel_mad": rel_mad(t_peer),
        "fastseg_ms_all": [t * 1e3 for t in t_fast], "peer_ms_all": [t * 1e3 for t in t_peer],
    }
