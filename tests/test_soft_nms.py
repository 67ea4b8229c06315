"""soft_nms and batched_soft_nms: every backend against the reference (fastseg/reference/soft_nms.py),
and the reference against a direct transcription of the paper's loop."""
import math
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastseg
from fastseg import _extension, reference
from conftest import call, require_backend

METHODS = ["gaussian", "linear", "naive"]


def max_n(backend_name):
    return 60 if backend_name == "triton" else 400  # the Triton interpreter is slow


def random_boxes(n, seed, dtype=torch.float32, device="cpu", extent=100.0, max_side=40.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * extent
    wh = torch.rand(n, 2, generator=g) * max_side
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(n, generator=g)
    return boxes.to(device, dtype), scores.to(device, dtype)


def paper_loop(boxes, scores, thr, sigma, min_score, method, idxs=None):
    """The loop of Bodla et al.'s released code (and mmcv's CPU kernel), transcribed with Python floats
    (fp64) and the torchvision IoU: an independent check of the reference's definition."""
    b = boxes.double().tolist()
    s = scores.double().tolist()
    c = idxs.tolist() if idxs is not None else [0] * len(s)
    rem = [i for i in range(len(s)) if not math.isnan(s[i])]
    keep, kept = [], []
    while rem:
        i = max(rem, key=lambda j: (s[j], -j))
        keep.append(i)
        kept.append(s[i])
        rem.remove(i)
        survivors = []
        for j in rem:
            if c[j] == c[i]:
                xx1, yy1 = max(b[i][0], b[j][0]), max(b[i][1], b[j][1])
                xx2, yy2 = min(b[i][2], b[j][2]), min(b[i][3], b[j][3])
                inter = max(0.0, xx2 - xx1) * max(0.0, yy2 - yy1)
                ai = (b[i][2] - b[i][0]) * (b[i][3] - b[i][1])
                aj = (b[j][2] - b[j][0]) * (b[j][3] - b[j][1])
                iou = inter / (ai + aj - inter) if ai + aj - inter != 0 else float("nan")
                if method == "gaussian":
                    w = math.exp(-(iou * iou) / sigma)
                elif method == "linear":
                    w = 1 - iou if iou >= thr else 1.0
                else:
                    w = 0.0 if iou >= thr else 1.0
                s[j] *= w
            if s[j] >= min_score:
                survivors.append(j)
        rem = survivors
    return keep, kept


def check_same(out, expected, dtype=torch.float32, what=""):
    keep, sc = out
    ekeep, esc = expected
    assert keep.dtype == torch.int64
    assert keep.cpu().tolist() == ekeep.cpu().tolist(), what
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(sc.cpu().double(), esc.cpu().double(), rtol=tol, atol=tol, msg=what)


def test_reference_matches_paper_loop():
    for seed in range(12):
        boxes, scores = random_boxes(120, seed, dtype=torch.float64)
        idxs = torch.randint(0, 3, (120,), generator=torch.Generator().manual_seed(seed))
        for method in METHODS:
            for thr, sigma, min_score in [(0.3, 0.5, 0.001), (0.5, 0.1, 0.05), (0.0, 2.0, 0.0)]:
                keep, kept = reference.soft_nms(boxes, scores, thr, sigma, min_score, method)
                pk, ps = paper_loop(boxes, scores, thr, sigma, min_score, method)
                assert keep.tolist() == pk
                assert torch.allclose(kept, torch.tensor(ps, dtype=torch.float64), rtol=1e-12, atol=1e-15)
                keep, kept = reference.batched_soft_nms(boxes, scores, idxs, thr, sigma, min_score, method)
                pk, ps = paper_loop(boxes, scores, thr, sigma, min_score, method, idxs)
                assert keep.tolist() == pk


def test_known_example():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    iou = 81.0 / 119.0
    for name in ["native", "torch"]:
        keep, sc = call(name, fastseg.ops.soft_nms, boxes, scores)
        assert keep.tolist() == [0, 2, 1]
        assert torch.allclose(sc, torch.tensor([0.9, 0.7, 0.8 * math.exp(-iou * iou / 0.5)]))
        keep, sc = call(name, fastseg.ops.soft_nms, boxes, scores, 0.3, 0.5, 0.001, "linear")
        assert keep.tolist() == [0, 2, 1] and abs(sc[2].item() - 0.8 * (1 - iou)) < 1e-6
        keep, sc = call(name, fastseg.ops.soft_nms, boxes, scores, 0.3, 0.5, 0.001, "naive")
        assert keep.tolist() == [0, 2]  # score 0 < 0.001: dropped (hard NMS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", METHODS)
def test_matches_reference(backend_name, device, dtype, method):
    require_backend(backend_name, device)
    for n in [0, 1, 2, 33, max_n(backend_name)]:
        for thr, sigma, min_score in [(0.3, 0.5, 0.001), (0.5, 0.2, 0.1), (0.0, 1.0, 0.0)]:
            boxes, scores = random_boxes(n, n + 3, dtype, device)
            out = call(backend_name, fastseg.ops.soft_nms, boxes, scores, thr, sigma, min_score, method)
            assert out[0].device.type == device and out[1].dtype == dtype
            check_same(out, reference.soft_nms(boxes.cpu(), scores.cpu(), thr, sigma, min_score, method), dtype,
                       f"n={n} {thr} {sigma} {min_score}")


@pytest.mark.parametrize("method", METHODS)
def test_batched_matches_reference(backend_name, device, method):
    require_backend(backend_name, device)
    for n, classes in [(0, 1), (1, 2), (50, 1), (max_n(backend_name), 4), (max_n(backend_name), 30)]:
        boxes, scores = random_boxes(n, n + classes, device=device)
        idxs = torch.randint(-1, classes - 1, (n,), generator=torch.Generator().manual_seed(n)).to(device)
        out = call(backend_name, fastseg.ops.batched_soft_nms, boxes, scores, idxs, 0.3, 0.5, 0.01, method)
        check_same(out, reference.batched_soft_nms(boxes.cpu(), scores.cpu(), idxs.cpu(), 0.3, 0.5, 0.01, method))


def test_batched_classes_do_not_interact(backend_name, device):
    require_backend(backend_name, device)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 4, device=device)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6], device=device)
    idxs = torch.tensor([0, 1, 0, 1], device=device)
    keep, sc = call(backend_name, fastseg.ops.batched_soft_nms, boxes, scores, idxs, 0.3, 0.5, 0.001, "linear")
    # identical boxes: IoU 1, linear weight 0 within a class; the other class is untouched
    assert keep.cpu().tolist() == [0, 1] and torch.allclose(sc.cpu(), torch.tensor([0.9, 0.8]))


def edge_cases():
    t = torch.tensor
    yield "identical boxes, tied scores", t([[1.0, 2.0, 5.0, 7.0]] * 20), torch.ones(20)
    yield "tied scores", random_boxes(40, 3)[0], torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(0)).float() / 2
    yield "zero-area boxes", t([[1.0, 1.0, 1.0, 5.0], [1.0, 1.0, 1.0, 5.0], [0.0, 0.0, 4.0, 4.0]]), t([0.9, 0.8, 0.7])
    yield "inverted boxes", t([[3.0, 0.0, 1.0, 4.0], [0.0, 0.0, 4.0, 4.0], [2.0, 3.0, 0.0, 1.0]]), t([0.9, 0.8, 0.7])
    yield "nan score", t([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 6.0, 6.0]]), t([0.5, float("nan"), 0.9])
    yield "all below threshold", random_boxes(10, 4)[0], torch.full((10,), 1e-5)
    yield "negative scores", random_boxes(10, 5)[0], -torch.rand(10, generator=torch.Generator().manual_seed(1))
    yield "iou at threshold", t([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0]]), t([0.9, 0.8])


EDGE = list(edge_cases())


@pytest.mark.parametrize("name,boxes,scores", EDGE, ids=[e[0] for e in EDGE])
@pytest.mark.parametrize("method", METHODS)
def test_edge_cases(backend_name, device, name, boxes, scores, method):
    require_backend(backend_name, device)
    for thr in [0.3, 0.5]:
        expected = reference.soft_nms(boxes, scores, thr, 0.5, 0.001, method)
        out = call(backend_name, fastseg.ops.soft_nms, boxes.to(device), scores.to(device), thr, 0.5, 0.001, method)
        check_same(out, expected, what=name)


def test_first_pick_is_kept_whatever_its_score():
    # mmcv's loop: only decayed scores are compared with the threshold
    boxes, _ = random_boxes(3, 0)
    scores = torch.tensor([1e-5, 2e-5, 3e-6])
    for name in ["native", "torch"]:
        keep, _ = call(name, fastseg.ops.soft_nms, boxes, scores, 0.3, 0.5, 0.001)
        assert keep.tolist() == [1]


def test_non_contiguous(backend_name, device):
    require_backend(backend_name, device)
    boxes, scores = random_boxes(50, 11, device=device)
    wide = torch.zeros(50, 8, device=device)
    wide[:, 1::2] = boxes
    out = call(backend_name, fastseg.ops.soft_nms, wide[:, 1::2], torch.stack([scores, scores], 1)[:, 1])
    check_same(out, reference.soft_nms(boxes.cpu(), scores.cpu()))


# -- property-based ----------------------------------------------------------------------------------

coord = st.one_of(st.integers(-20, 60).map(float), st.floats(-20, 60, allow_nan=False, width=32))


@st.composite
def problems(draw, max_boxes):
    n = draw(st.integers(0, max_boxes))
    boxes = torch.tensor(draw(st.lists(st.tuples(coord, coord, st.floats(0, 40, width=32), st.floats(0, 40, width=32)),
                                        min_size=n, max_size=n)), dtype=torch.float32).reshape(n, 4)
    if n and draw(st.booleans()):
        boxes[:, 2:] += boxes[:, :2]
    scores = torch.tensor(draw(st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0]) | st.floats(0, 1, width=32),
                                        min_size=n, max_size=n)), dtype=torch.float32)
    idxs = torch.tensor(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), dtype=torch.long)
    thr = draw(st.sampled_from([0.0, 0.3, 0.5, 1.0]) | st.floats(0, 1))
    sigma = draw(st.sampled_from([0.5, 0.1]) | st.floats(0.05, 3))
    min_score = draw(st.sampled_from([0.0, 0.001, 0.3]))
    return boxes, scores, idxs, thr, sigma, min_score, draw(st.sampled_from(METHODS))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems(max_boxes=60))
def test_property_native_against_reference(problem):
    boxes, scores, idxs, thr, sigma, min_score, method = problem
    check_same(call("native", fastseg.ops.soft_nms, boxes, scores, thr, sigma, min_score, method),
               reference.soft_nms(boxes, scores, thr, sigma, min_score, method))
    check_same(call("native", fastseg.ops.batched_soft_nms, boxes, scores, idxs, thr, sigma, min_score, method),
               reference.batched_soft_nms(boxes, scores, idxs, thr, sigma, min_score, method))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems(max_boxes=25))
def test_property_triton_against_reference(problem):
    require_backend("triton", "cpu")
    boxes, scores, idxs, thr, sigma, min_score, method = problem
    check_same(call("triton", fastseg.ops.batched_soft_nms, boxes, scores, idxs, thr, sigma, min_score, method),
               reference.batched_soft_nms(boxes, scores, idxs, thr, sigma, min_score, method))


# -- bad input ---------------------------------------------------------------------------------------

def bad_inputs():
    b, s = random_boxes(5, 0)
    yield "boxes 1-D", (b.flatten(), s), {}, "boxes must be a 2-D tensor"
    yield "scores 2-D", (b, s[:, None]), {}, "scores must be a 1-D tensor"
    yield "lengths differ", (b, s[:4]), {}, "same length"
    yield "integer boxes", (b.long(), s), {}, "floating-point"
    yield "negative threshold", (b, s), {"iou_threshold": -0.1}, "iou_threshold"
    yield "nan sigma", (b, s), {"sigma": float("nan")}, "sigma"
    yield "zero sigma", (b, s), {"sigma": 0.0}, "sigma must be > 0"
    yield "bad method", (b, s), {"method": "soft"}, "method"
    yield "string threshold", (b, s), {"score_threshold": "0.1"}, "score_threshold"


BAD = list(bad_inputs())


@pytest.mark.parametrize("name,args,kwargs,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_clear_error(backend_name, name, args, kwargs, message):
    with fastseg.use_backend(backend_name), pytest.raises(ValueError, match=re.escape(message)):
        fastseg.ops.soft_nms(*args, **kwargs)
    with fastseg.use_backend(backend_name), pytest.raises(ValueError, match=re.escape(message)):
        fastseg.ops.batched_soft_nms(args[0], args[1], torch.zeros(5, dtype=torch.long), **kwargs)


def test_native_op_checks_its_inputs():
    b, s = random_boxes(5, 0)
    with pytest.raises(RuntimeError, match="method must be"):
        torch.ops.fastseg.soft_nms(b, s, 0.3, 0.5, 0.001, 7)
    with pytest.raises(RuntimeError, match="sigma must be > 0"):
        torch.ops.fastseg.soft_nms(b, s, 0.3, 0.0, 0.001, 2)
    with pytest.raises(RuntimeError, match="idxs must be an integer"):
        torch.ops.fastseg.batched_soft_nms(b, s, s, 0.3, 0.5, 0.001, 2)


# -- registration ------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["soft_nms", "batched_soft_nms"])
def test_kernels_registered(op):
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    assert has(f"fastseg::{op}", "CPU")
    if _extension.with_cuda():
        assert has(f"fastseg::{op}", "CUDA")


def test_opcheck(device):
    boxes, scores = random_boxes(40, 21, device=device)
    idxs = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(0)).to(device)
    for m in [0, 1, 2]:
        torch.library.opcheck(torch.ops.fastseg.soft_nms.default, (boxes, scores, 0.3, 0.5, 0.001, m))
        torch.library.opcheck(torch.ops.fastseg.batched_soft_nms.default, (boxes, scores, idxs, 0.3, 0.5, 0.001, m))
    torch.library.opcheck(torch.ops.fastseg.soft_nms.default, (boxes[:0], scores[:0], 0.3, 0.5, 0.001, 2))
    if device == "cpu":
        require_backend("triton", device)
    import fastseg.kernels.soft_nms  # noqa: F401  (registers fastseg_triton::soft_nms)

    small_boxes, small_scores = boxes[:12], scores[:12]
    torch.library.opcheck(torch.ops.fastseg_triton.soft_nms.default,
                          (small_boxes, small_scores, idxs[:12], 0.3, 0.5, 0.001, 2))
    torch.library.opcheck(torch.ops.fastseg_triton.soft_nms.default,
                          (small_boxes, small_scores, None, 0.3, 0.5, 0.001, 1))


def test_torch_compile():
    torch._dynamo.reset()

    @torch.compile
    def post(boxes, scores):
        keep, sc = fastseg.ops.soft_nms(boxes, scores * 1.0)
        return boxes[keep], sc

    boxes, scores = random_boxes(100, 23)
    kept_boxes, sc = post(boxes, scores)
    keep, esc = reference.soft_nms(boxes, scores)
    assert torch.equal(kept_boxes, boxes[keep]) and torch.allclose(sc, esc)


def test_tiny_threshold_is_compared_in_fp32(backend_name):
    # fp32 inputs compare in fp32: a threshold of 2e-309 rounds to 0, so IoU 0 >= it (found by hypothesis
    # on the Triton kernel, whose scalar arguments once kept the double).
    require_backend(backend_name, "cpu")
    boxes = torch.tensor([[0.0, 0.0, 0.0, 0.0]] * 3 + [[0.0, 0.0, 1.0, 1.0]])
    scores = torch.tensor([0.0, 0.0, 0.25, 0.25])
    out = call(backend_name, fastseg.ops.soft_nms, boxes, scores, 2.225073858507203e-309, 0.5, 0.0, "naive")
    check_same(out, reference.soft_nms(boxes, scores, 2.225073858507203e-309, 0.5, 0.0, "naive"))
    assert out[0].tolist() == [2, 0, 1, 3]
