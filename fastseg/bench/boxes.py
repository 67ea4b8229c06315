"""Dense-detector box cases of the benchmark suite: anchors, box decoding, pairwise IoU, against
torchvision (AnchorGenerator.forward, BoxCoder.decode, torchvision.ops.box_iou)."""
import torch

import fastseg
from fastseg.bench import Case
from fastseg.ops.anchors import GRID_ANCHORS_IMPLS
from fastseg.ops.box_coder import BOX_DECODE_IMPLS
from fastseg.ops.boxes import PAIRWISE_IMPLS

# RetinaNet's pyramid on an 800 x 1216 batch: 9 anchors per location, 182,403 per image.
RETINA_SIZES = tuple((x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in [32, 64, 128, 256, 512])
RETINA_RATIOS = ((0.5, 1.0, 2.0),) * 5
RETINA_GRIDS = [(100, 152), (50, 76), (25, 38), (13, 19), (7, 10)]


def random_boxes(n: int, seed: int, device="cpu", dtype=torch.float32, extent=800.0, max_side=200.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * extent
    return torch.cat([xy, xy + torch.rand(n, 2, generator=g) * max_side + 1], 1).to(device, dtype)


def _equal_lists(out, expected, inputs):
    if len(out) != len(expected) or not all(torch.equal(a, b) for a, b in zip(out, expected)):
        raise AssertionError("fastseg's anchors differ from torchvision's")


def _close(rtol, atol):
    def check(out, expected, inputs):
        torch.testing.assert_close(out, expected, rtol=rtol, atol=atol)

    return check


def cases(device: str, quick: bool) -> list[Case]:
    from torchvision.models.detection._utils import BoxCoder as TvBoxCoder
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TvAnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    out = []
    # Anchors: the full forward(image_list, feature_maps) of two long-lived modules, as in training
    # (fastseg's keeps the anchors of the shape and hands out one copy per image).
    dtypes = [torch.float32] if device == "cpu" else [torch.float32, torch.float16]
    for dtype in dtypes:
        images = ImageList(torch.zeros(2, 3, 800, 1216, device=device, dtype=dtype), [(800, 1216)] * 2)
        fmaps = [torch.zeros(2, 1, h, w, device=device, dtype=dtype) for h, w in RETINA_GRIDS]
        ours = fastseg.ops.AnchorGenerator(RETINA_SIZES, RETINA_RATIOS)
        theirs = TvAnchorGenerator(RETINA_SIZES, RETINA_RATIOS)
        out.append(Case(
            "grid_anchors", "RetinaNet 5 levels, 2 x 800x1216, 9/loc", 2 * 182_403, dtype, device,
            lambda seed, images=images, fmaps=fmaps: (images, fmaps), ours, theirs, "torchvision",
            _equal_lists, GRID_ANCHORS_IMPLS))

    # Box decoding: RetinaNet's coder on 200k (anchor, code) pairs.
    n = 200_000
    for dtype in dtypes:
        ours, theirs = fastseg.ops.BoxCoder((1.0, 1.0, 1.0, 1.0)), TvBoxCoder((1.0, 1.0, 1.0, 1.0))

        def make(seed, dtype=dtype):
            g = torch.Generator().manual_seed(seed)
            codes = torch.randn(n, 4, generator=g).to(device, dtype)
            return codes, [random_boxes(n, seed, device, dtype)]

        tol = (2e-6, 5e-3) if dtype == torch.float32 else (2e-3, 1.0)
        out.append(Case("box_decode", f"{n // 1000}k boxes", n, dtype, device, make, ours.decode, theirs.decode,
                        "torchvision", _close(*tol), BOX_DECODE_IMPLS))

    # Pairwise IoU of 2k predictions against 20k anchors.
    import torchvision

    sizes = [(2_000, 20_000)] if device == "cpu" or quick else [(2_000, 20_000), (10_000, 20_000)]
    for n1, n2 in sizes:
        out.append(Case(
            "box_iou", f"{n1} x {n2}", n1 * n2, torch.float32, device,
            lambda seed, n1=n1, n2=n2: (random_boxes(n1, seed, device), random_boxes(n2, seed + 1, device)),
            fastseg.ops.box_iou, torchvision.ops.box_iou, "torchvision", _close(0, 0), PAIRWISE_IMPLS["box_iou"]))
    return out
