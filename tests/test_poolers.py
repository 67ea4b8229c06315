"""MultiScaleRoIAlign: every backend against torchvision's, forward and backward, one launch per call."""
from collections import OrderedDict

import pytest
import torch
import torchvision

import fastseg
from fastseg.ops.poolers import LevelMapper
from conftest import call, require_backend

IMAGE = (96, 128)


def pyramid(seed, device="cpu", dtype=torch.float32, channels=4, batch=2, channels_last=False, sizes=None):
    g = torch.Generator().manual_seed(seed)
    sizes = sizes or [(24, 32), (12, 16), (6, 8), (3, 4)]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return OrderedDict((f"p{i + 2}", torch.randn(batch, channels, h, w, generator=g).to(
        device=device, dtype=dtype, memory_format=fmt)) for i, (h, w) in enumerate(sizes))


def boxes_for(seed, counts, device="cpu", dtype=torch.float32):
    """Boxes of log-uniform sides 4..128 px, so that all four levels get some."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in counts:
        wh = torch.exp(torch.log(torch.tensor(4.0)) + torch.rand(n, 2, generator=g) * torch.log(torch.tensor(32.0)))
        xy = torch.rand(n, 2, generator=g) * torch.tensor([IMAGE[1], IMAGE[0]]) - 5
        out.append(torch.cat([xy, xy + wh], 1).to(device, dtype))
    return out


def run(module, feats, boxes, shapes):
    return module(feats, boxes, shapes)


@pytest.mark.parametrize("names, output_size, sampling_ratio", [
    (["p2", "p3", "p4", "p5"], 7, 2), (["p2", "p3", "p4", "p5"], (3, 5), -1), (["p3", "p5"], 4, 1), (["p4"], 3, 2)])
def test_matches_torchvision(backend_name, device, names, output_size, sampling_ratio):
    require_backend(backend_name, device)
    counts = [9, 6] if backend_name != "native" else [60, 45]
    feats = pyramid(1, device)
    boxes = boxes_for(1, counts, device)
    shapes = [IMAGE, (80, 120)]
    ours = fastseg.ops.MultiScaleRoIAlign(names, output_size, sampling_ratio)
    theirs = torchvision.ops.MultiScaleRoIAlign(names, output_size, sampling_ratio)
    fe = OrderedDict((k, v.detach().cpu().requires_grad_()) for k, v in feats.items())
    fo = OrderedDict((k, v.detach().requires_grad_()) for k, v in feats.items())
    out = call(backend_name, run, ours, fo, boxes, shapes)
    expected = theirs(fe, [b.cpu() for b in boxes], shapes)
    torch.testing.assert_close(out.cpu(), expected, atol=1e-5, rtol=1e-5)
    assert ours.scales == theirs.scales
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(2))
    used = [k for k in feats if k in names]
    go = torch.autograd.grad(out, [fo[k] for k in used], grad.to(device))
    ge = torch.autograd.grad(expected, [fe[k] for k in used], grad)
    for a, b in zip(go, ge):
        torch.testing.assert_close(a.cpu(), b, atol=1e-5, rtol=1e-5)


def test_level_mapping_is_torchvisions():
    from torchvision.ops.poolers import LevelMapper as TvLevelMapper

    boxes = boxes_for(3, [500, 300])
    for k_min, k_max in [(2, 5), (3, 4)]:
        assert torch.equal(LevelMapper(k_min, k_max)(boxes), TvLevelMapper(k_min, k_max)(boxes))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_and_channels_last(backend_name, device, dtype):
    require_backend(backend_name, device)
    if backend_name == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bf16 arithmetic")
    counts = [8, 5] if backend_name != "native" else [40, 30]
    feats = pyramid(4, device, dtype, channels_last=True)
    boxes = boxes_for(4, counts, device, dtype)
    names = list(feats)
    fo = OrderedDict((k, v.detach().requires_grad_()) for k, v in feats.items())
    fe = OrderedDict((k, v.detach().cpu().to(torch.float64 if dtype == torch.float64 else torch.float32)
                      .requires_grad_()) for k, v in feats.items())
    out = call(backend_name, run, fastseg.ops.MultiScaleRoIAlign(names, 5, 2), fo, boxes, [IMAGE, IMAGE])
    expected = torchvision.ops.MultiScaleRoIAlign(names, 5, 2)(fe, [b.cpu().to(fe["p2"].dtype) for b in boxes],
                                                               [IMAGE, IMAGE])
    assert out.dtype == dtype
    tol = {torch.float64: 1e-10, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(out.cpu().to(expected.dtype), expected, atol=tol, rtol=tol)
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(5), dtype=expected.dtype)
    go = torch.autograd.grad(out, list(fo.values()), grad.to(device, dtype))
    ge = torch.autograd.grad(expected, list(fe.values()), grad.to(dtype).to(expected.dtype))
    for a, b in zip(go, ge):
        assert a.dtype == dtype
        torch.testing.assert_close(a.cpu().to(b.dtype), b, atol=4 * tol, rtol=4 * tol)


def test_empty_boxes(backend_name, device):
    require_backend(backend_name, device)
    feats = OrderedDict((k, v.requires_grad_()) for k, v in pyramid(6, device).items())
    boxes = [torch.zeros(0, 4, device=device), torch.zeros(0, 4, device=device)]
    out = call(backend_name, run, fastseg.ops.MultiScaleRoIAlign(list(feats), 3, 2), feats, boxes, [IMAGE, IMAGE])
    assert out.shape == (0, 4, 3, 3)
    if out.requires_grad:
        grads = torch.autograd.grad(out.sum(), list(feats.values()), allow_unused=True)
        assert all(g is None or not g.any() for g in grads)


def test_gradcheck_multi_level(backend_name, device):
    require_backend(backend_name, device)
    sizes = [(8, 10), (4, 5), (2, 3)] if backend_name == "native" else [(4, 5), (2, 3)]
    feats = OrderedDict((k, v.requires_grad_()) for k, v in pyramid(7, device, torch.float64, channels=2,
                                                                       sizes=sizes, batch=2 if backend_name == "native" else 1).items())
    boxes = boxes_for(7, [4, 3] if backend_name == "native" else [3], device, torch.float64)
    module = fastseg.ops.MultiScaleRoIAlign(list(feats), 2, 2)
    shapes = [(4 * sizes[0][0], 4 * sizes[0][1])] * len(boxes)

    def f(*maps):
        return call(backend_name, run, module, OrderedDict(zip(feats, maps)), boxes, shapes)

    assert torch.autograd.gradcheck(f, tuple(feats.values()), eps=1e-6, atol=1e-7)
    if backend_name != "triton":  # (the interpreter: test_roi_align.py::test_triton_double_backward)
        # create_graph=True: the gradients are differentiable themselves (torchvision raises here)
        assert torch.autograd.gradgradcheck(f, tuple(feats.values()), eps=1e-6, atol=1e-7)


def test_deterministic_backward_bit_identical(backend_name, device):
    require_backend(backend_name, device)
    feats = OrderedDict((k, v.requires_grad_()) for k, v in pyramid(8, device).items())
    boxes = boxes_for(8, [10, 10] if backend_name != "native" else [200, 200], device)
    boxes = [torch.cat([b, b]) for b in boxes]  # duplicates add into the same elements
    module = fastseg.ops.MultiScaleRoIAlign(list(feats), 3, 2)
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(3):
            out = call(backend_name, run, module, feats, boxes, [IMAGE, IMAGE])
            runs.append(torch.autograd.grad(out, list(feats.values()), torch.ones_like(out)))
    finally:
        torch.use_deterministic_algorithms(False)
    for r in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(r, runs[0]))


def test_one_launch_for_all_levels():
    # The native forward and backward are single ops over all levels (no per-level loop).
    feats = OrderedDict((k, v.requires_grad_()) for k, v in pyramid(9).items())
    boxes = boxes_for(9, [30, 30])
    module = fastseg.ops.MultiScaleRoIAlign(list(feats), 3, 2)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with fastseg.use_backend("native"):
            out = module(feats, boxes, [IMAGE, IMAGE])
        torch.autograd.grad(out, list(feats.values()), torch.ones_like(out))
    names = [e.name for e in prof.events()]
    assert names.count("fastseg::multi_level_roi_align") == 1
    assert names.count("fastseg::multi_level_roi_align_backward") == 1
    assert "fastseg::roi_align" not in names and "torchvision::roi_align" not in names


def test_opcheck_multi_level(device):
    feats = [v.requires_grad_() for v in pyramid(10, device).values()]
    rois = torch.cat([torch.zeros(6, 1), boxes_for(10, [6])[0]], 1).to(device)
    levels = torch.tensor([0, 1, 2, 3, 0, 2], device=device)
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    torch.library.opcheck(torch.ops.fastseg.multi_level_roi_align.default, (feats, rois, levels, scales, 2, 3, 2, False))
    torch.library.opcheck(torch.ops.fastseg.multi_level_roi_align.default,
                          (feats, rois[:0], levels[:0], scales, 2, 3, 2, False))


def test_opcheck_multi_level_triton(device):
    require_backend("triton", device)
    import fastseg.kernels.roi_align  # noqa: F401

    feats = [v.requires_grad_() for v in pyramid(11, device, channels=2, sizes=[(8, 10), (4, 5)]).values()]
    rois = torch.cat([torch.zeros(3, 1), boxes_for(11, [3])[0] / 4], 1).to(device)
    levels = torch.tensor([0, 1, 0], device=device)
    torch.library.opcheck(torch.ops.fastseg_triton.multi_level_roi_align.default,
                          (feats, rois, levels, [0.25, 0.125], 2, 2, 2, False))


def test_bad_input():
    module = fastseg.ops.MultiScaleRoIAlign(["a"], 3, 2)
    with pytest.raises(ValueError, match="none of the featmap_names"):
        module({"b": torch.zeros(1, 2, 4, 4)}, [torch.zeros(1, 4)], [(16, 16)])
    module = fastseg.ops.MultiScaleRoIAlign(["a", "b"], 3, 2)
    with pytest.raises(ValueError, match="boxes\\[0\\] must be a 2-D tensor"):
        module({"a": torch.zeros(1, 2, 8, 8), "b": torch.zeros(1, 2, 4, 4)}, [torch.zeros(3)], [(32, 32)])
    with pytest.raises(ValueError, match="must be a 4-D tensor"):
        module({"a": torch.zeros(2, 8, 8), "b": torch.zeros(1, 2, 4, 4)}, [torch.zeros(1, 4)], [(32, 32)])
    with pytest.raises(ValueError, match="image_shapes"):
        module({"a": torch.zeros(1, 2, 8, 8), "b": torch.zeros(1, 2, 4, 4)}, [torch.zeros(1, 4)], [])
