"""Soft-NMS cases of the benchmark suite. Peer: fastseg's pure-PyTorch reference (the definition; no
library in the usual stack has a soft-NMS on tensors -- torchvision has none, mmcv's is CPU-only)."""
import torch

import fastseg
from fastseg import reference
from fastseg.bench import Case
from fastseg.bench.nms import random_boxes
from fastseg.ops.soft_nms import BATCHED_SOFT_NMS_IMPLS, SOFT_NMS_IMPLS


def _same(out, expected, inputs):
    if out[0].cpu().tolist() != expected[0].cpu().tolist():
        raise AssertionError("fastseg and the reference keep different boxes or order them differently")
    if not torch.allclose(out[1].cpu().double(), expected[1].cpu().double(), rtol=1e-5, atol=1e-6):
        raise AssertionError("fastseg and the reference decay the scores differently")


def cases(device: str, quick: bool) -> list[Case]:
    sizes = [1_000] if quick else [1_000, 3_000]
    out = []
    for n in sizes:
        for method in ["gaussian", "linear"]:
            out.append(Case(
                "soft_nms", f"{n} boxes, {method}", n, torch.float32, device,
                lambda seed, n=n, method=method: (*random_boxes(n, seed, device), 0.3, 0.5, 0.001, method),
                fastseg.ops.soft_nms, reference.soft_nms, "reference", _same, SOFT_NMS_IMPLS))

        def make(seed, n=n):
            boxes, scores = random_boxes(n, seed, device)
            g = torch.Generator().manual_seed(seed + 1)
            return boxes, scores, torch.randint(0, 20, (n,), generator=g).to(device), 0.3, 0.5, 0.001, "gaussian"

        out.append(Case("batched_soft_nms", f"{n} boxes, 20 classes, gaussian", n, torch.float32, device, make,
                        fastseg.ops.batched_soft_nms, reference.batched_soft_nms, "reference", _same,
                        BATCHED_SOFT_NMS_IMPLS))
    return out
