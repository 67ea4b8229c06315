"""NMS cases of the benchmark suite: fastseg vs torchvision."""
import torch

import fastseg
from fastseg.bench import Case
from fastseg.ops.nms import BATCHED_NMS_IMPLS, NMS_IMPLS


def random_boxes(n: int, seed: int, device="cpu", dtype=torch.float32, extent=1000.0, max_side=100.0):
    """n boxes with corners uniform in [0, extent]^2 and sides uniform in [0, max_side]: the usual
    NMS benchmark distribution (most boxes survive IoU 0.5, so a plain O(N^2) scan does all pairs)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * extent
    wh = torch.rand(n, 2, generator=g) * max_side
    boxes = torch.cat([xy, xy + wh], 1).to(device=device, dtype=dtype)
    scores = torch.rand(n, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    return boxes, scores


def _same_indices(out, expected, inputs):
    if not torch.equal(out.cpu(), expected.cpu()):
        raise AssertionError(f"fastseg and the peer disagree ({out.numel()} vs {expected.numel()} kept)")


def _same_kept_set(out, expected, inputs):
    # torchvision's batched_nms orders tied scores arbitrarily above 4,000 boxes on the CPU: compare the
    # kept set and the score sequence, which are defined.
    scores = inputs[1]
    if set(out.tolist()) != set(expected.tolist()) or not torch.equal(scores[out], scores[expected]):
        raise AssertionError("fastseg and the peer keep different boxes")


def cases(device: str, quick: bool) -> list[Case]:
    import torchvision

    cases = []
    if device == "cpu":
        sizes, dtypes = ([1_000, 10_000] if quick else [1_000, 3_000, 10_000, 30_000]), [torch.float32]
    else:
        sizes, dtypes = ([10_000, 100_000] if quick else [1_000, 10_000, 30_000, 100_000]), [torch.float32, torch.float16]
    for dtype in dtypes:
        for n in sizes:
            cases.append(Case(
                "nms", f"{n} boxes, IoU 0.5", n, dtype, device,
                lambda seed, n=n, dtype=dtype: (*random_boxes(n, seed, device, dtype), 0.5),
                fastseg.ops.nms, torchvision.ops.nms, "torchvision", _same_indices, NMS_IMPLS))
        n, classes = 20_000, 80
        for n in ([n] if quick or device == "cpu" else [n, 100_000]):
            def make(seed, n=n, dtype=dtype):
                boxes, scores = random_boxes(n, seed, device, dtype)
                g = torch.Generator().manual_seed(seed + 1)
                return boxes, scores, torch.randint(0, classes, (n,), generator=g).to(device), 0.5

            cases.append(Case(
                "batched_nms", f"{n} boxes, {classes} classes, IoU 0.5", n, dtype, device, make,
                fastseg.ops.batched_nms, torchvision.ops.batched_nms, "torchvision", _same_kept_set,
                BATCHED_NMS_IMPLS))
    return cases


