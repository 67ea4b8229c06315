"""RoI operator cases of the benchmark suite (roi_align, MultiScaleRoIAlign, roi_pool): fastseg vs
torchvision, forward and forward+backward.

Sizes are Mask R-CNN's box head: 2 images of 800x1088 with a 256-channel FPN of 4 levels (200x272,
100x136, 50x68, 25x34, strides 4..32), 1,000 boxes, 7x7 output, sampling ratio 2. The boxes are random
boxes of that image with log-uniform sides from 16 to 512 pixels (a range that torchvision's
LevelMapper spreads over all four levels). The MultiScaleRoIAlign cases map them to levels with the
LevelMapper (inside the module, as in a detector); the single-level roi_align / roi_pool cases pool
every box from the 200x272 map at scale 1/4, the costliest level.
"""
from __future__ import annotations

import torch

import fastseg
from fastseg.bench import Case
from fastseg.ops.poolers import MULTI_LEVEL_ROI_ALIGN_IMPLS
from fastseg.ops.roi_align import ROI_ALIGN_IMPLS
from fastseg.ops.roi_pool import ROI_POOL_IMPLS

IMAGE = (800, 1088)
LEVELS = [(200, 272), (100, 136), (50, 68), (25, 34)]
NAMES = ["p2", "p3", "p4", "p5"]


def random_image_boxes(n: int, seed: int, image=IMAGE, min_side=16.0, max_side=512.0, dtype=torch.float32):
    """n boxes inside an image (h, w): log-uniform sides in [min_side, max_side], uniform position."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = torch.log(torch.tensor(min_side)), torch.log(torch.tensor(max_side))
    wh = torch.exp(lo + (hi - lo) * torch.rand(n, 2, generator=g))
    wh = torch.minimum(wh, torch.tensor([image[1] - 1.0, image[0] - 1.0]))
    xy = torch.rand(n, 2, generator=g) * (torch.tensor([image[1], image[0]]) - wh)
    return torch.cat([xy, xy + wh], 1).to(dtype)


def pyramid(seed: int, device, dtype, channels=256, batch=2, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return {name: torch.randn(batch, channels, h, w, generator=g).to(device=device, dtype=dtype,
                                                                      memory_format=fmt)
            for name, (h, w) in zip(NAMES, LEVELS)}


def box_lists(n: int, seed: int, device, dtype, batch=2):
    per = [n // batch + (1 if i < n % batch else 0) for i in range(batch)]
    return [random_image_boxes(m, seed * 10 + i, dtype=dtype).to(device) for i, m in enumerate(per)]


def _close(atol):
    def check(out, expected, inputs):
        out, expected = torch.as_tensor(out).float().cpu(), torch.as_tensor(expected).float().cpu()
        if out.shape != expected.shape or not torch.allclose(out, expected, rtol=1e-4, atol=atol):
            err = (out - expected).abs().max().item() if out.shape == expected.shape else "shape"
            raise AssertionError(f"fastseg and the peer disagree (max abs error {err})")
    return check


def _grads_close(atol):
    def check(out, expected, inputs):
        for a, b in zip(out, expected):
            _close(atol)(a, b, inputs)
    return check


def _roi_align_inputs(seed, device, dtype, n, channels_last=False, requires_grad=False):
    feats = pyramid(seed, device, dtype, channels_last=channels_last)
    x = feats["p2"].requires_grad_(requires_grad)
    boxes = box_lists(n, seed, device, torch.float32 if dtype != torch.float64 else dtype)
    rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(boxes)]).to(dtype)
    grad = torch.randn(n, x.shape[1], 7, 7, generator=torch.Generator().manual_seed(seed)).to(device, dtype)
    return x, rois, grad


def cases(device: str, quick: bool) -> list[Case]:
    import torchvision

    out = []
    n = 300 if quick else 1000  # 1000: the Mask R-CNN size the targets are judged at; 300 keeps --quick short
    # the scaling view (time against the number of boxes): forward only, in the full suite
    fwd_sizes = [n] if quick else [250, 1000, 4000]
    dtypes = [torch.float32] if device == "cpu" else [torch.float32, torch.float16]
    for dtype in dtypes:
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        layouts = [False] if device == "cpu" or quick else [False, True]
        for cl in layouts:
            tag = ", channels_last" if cl else ""

            for boxes in fwd_sizes:
                def fwd_make(seed, dtype=dtype, cl=cl, boxes=boxes):
                    x, rois, _ = _roi_align_inputs(seed, device, dtype, boxes, cl)
                    return x, rois

                out.append(Case(
                    "roi_align", f"fwd 2x256x200x272, {boxes} boxes, 7x7, sr 2{tag}", boxes, dtype, device, fwd_make,
                    lambda x, r: fastseg.ops.roi_align(x, r, 7, 0.25, 2),
                    lambda x, r: torchvision.ops.roi_align(x, r, 7, 0.25, 2), "torchvision", _close(tol),
                    ROI_ALIGN_IMPLS))

            def bwd_make(seed, dtype=dtype, cl=cl):
                return _roi_align_inputs(seed, device, dtype, n, cl, requires_grad=True)

            def bwd(fn):
                def run(x, rois, grad):
                    return torch.autograd.grad(fn(x, rois, 7, 0.25, 2), x, grad)
                return run

            out.append(Case(
                "roi_align", f"fwd+bwd 2x256x200x272, {n} boxes, 7x7, sr 2{tag}", n, dtype, device, bwd_make,
                bwd(fastseg.ops.roi_align), bwd(torchvision.ops.roi_align), "torchvision", _grads_close(tol),
                ROI_ALIGN_IMPLS))

        def pool_make(seed, dtype=dtype):
            x, rois, grad = _roi_align_inputs(seed, device, dtype, n, requires_grad=True)
            return x, rois, grad

        def pool_bwd(fn):
            def run(x, rois, grad):
                return torch.autograd.grad(fn(x, rois, 7, 0.25), x, grad)
            return run

        out.append(Case(
            "roi_pool", f"fwd 2x256x200x272, {n} boxes, 7x7", n, dtype, device, pool_make,
            lambda x, r, g: fastseg.ops.roi_pool(x, r, 7, 0.25), lambda x, r, g: torchvision.ops.roi_pool(x, r, 7, 0.25),
            "torchvision", _close(0.0), ROI_POOL_IMPLS))
        out.append(Case(
            "roi_pool", f"fwd+bwd 2x256x200x272, {n} boxes, 7x7", n, dtype, device, pool_make,
            pool_bwd(fastseg.ops.roi_pool), pool_bwd(torchvision.ops.roi_pool), "torchvision", _grads_close(tol),
            ROI_POOL_IMPLS))

        def ms_make(seed, dtype=dtype):
            feats = {k: v.requires_grad_() for k, v in pyramid(seed, device, dtype).items()}
            boxes = box_lists(n, seed, device, dtype)
            grad = torch.randn(n, 256, 7, 7, generator=torch.Generator().manual_seed(seed)).to(device, dtype)
            return feats, boxes, grad

        def ms(cls):
            pooler = cls(NAMES, 7, 2)

            def run(feats, boxes, grad):
                out = pooler(feats, boxes, [IMAGE, IMAGE])
                return torch.autograd.grad(out, list(feats.values()), grad)
            return run

        out.append(Case(
            "MultiScaleRoIAlign", f"fwd+bwd 4 levels 2x256x(200x272..25x34), {n} boxes, 7x7, sr 2", n, dtype,
            device, ms_make, ms(fastseg.ops.MultiScaleRoIAlign), ms(torchvision.ops.MultiScaleRoIAlign),
            "torchvision", _grads_close(tol), MULTI_LEVEL_ROI_ALIGN_IMPLS))

        def ms_fwd(cls):
            pooler = cls(NAMES, 7, 2)
            return lambda feats, boxes, grad: pooler(feats, boxes, [IMAGE, IMAGE])

        def ms_fwd_make(seed, dtype=dtype):
            return pyramid(seed, device, dtype), box_lists(n, seed, device, dtype), None

        out.append(Case(
            "MultiScaleRoIAlign", f"fwd 4 levels 2x256x(200x272..25x34), {n} boxes, 7x7, sr 2", n, dtype,
            device, ms_fwd_make, ms_fwd(fastseg.ops.MultiScaleRoIAlign), ms_fwd(torchvision.ops.MultiScaleRoIAlign),
            "torchvision", _close(tol), MULTI_LEVEL_ROI_ALIGN_IMPLS))
    return out
