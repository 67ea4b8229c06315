"""nms and batched_nms: every backend against torchvision and the reference."""
import math
import re

import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastseg
from fastseg import reference
from conftest import call, require_backend

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def max_n(backend_name):
    return 160 if backend_name == "triton" else 700  # the Triton interpreter is slow


def random_boxes(n, seed, dtype=torch.float32, device="cpu", extent=100.0, max_side=30.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * extent
    wh = torch.rand(n, 2, generator=g) * max_side
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(n, generator=g)
    return boxes.to(device, dtype), scores.to(device, dtype)


def tv_nms(boxes, scores, thr):
    """torchvision's answer, on the exact fp32 upcast of reduced-precision inputs, on the CPU."""
    up = torch.float64 if boxes.dtype == torch.float64 else torch.float32
    return torchvision.ops.nms(boxes.cpu().to(up), scores.cpu().to(up), thr)


def tv_batched_nms(boxes, scores, idxs, thr):
    up = torch.float64 if boxes.dtype == torch.float64 else torch.float32
    return torchvision.ops.batched_nms(boxes.cpu().to(up), scores.cpu().to(up), idxs.cpu(), thr)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("thr", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_nms_matches_torchvision(backend_name, device, dtype, thr):
    require_backend(backend_name, device)
    for n in [0, 1, 2, 63, 64, 65, max_n(backend_name)]:
        boxes, scores = random_boxes(n, seed=n, dtype=dtype, device=device)
        out = call(backend_name, fastseg.ops.nms, boxes, scores, thr)
        assert out.dtype == torch.int64 and out.device.type == device
        assert torch.equal(out.cpu(), tv_nms(boxes, scores, thr)), (n, thr)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("thr", [0.0, 0.5, 0.8])
def test_batched_nms_matches_torchvision(backend_name, device, dtype, thr):
    require_backend(backend_name, device)
    for n, classes in [(0, 1), (1, 3), (64, 1), (max_n(backend_name), 5), (max_n(backend_name), 40)]:
        boxes, scores = random_boxes(n, seed=n + classes, dtype=dtype, device=device)
        idxs = torch.randint(-2, classes - 2, (n,), generator=torch.Generator().manual_seed(n)).to(device)
        out = call(backend_name, fastseg.ops.batched_nms, boxes, scores, idxs, thr)
        assert out.dtype == torch.int64 and out.device.type == device
        assert torch.equal(out.cpu(), tv_batched_nms(boxes, scores, idxs, thr)), (n, classes, thr)


def test_reference_matches_torchvision_large():
    # torchvision switches to a per-class loop above 1,000 boxes on the CPU; the reference and the
    # native kernel must agree with it there too (torchvision's order of tied scores is arbitrary on
    # that path, so scores are made distinct).
    n = 2500
    boxes, _ = random_boxes(n, seed=7, extent=300.0)
    scores = torch.randperm(n, generator=torch.Generator().manual_seed(1)).float() / n
    idxs = torch.randint(0, 7, (n,), generator=torch.Generator().manual_seed(2))
    expected = torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(reference.batched_nms(boxes, scores, idxs, 0.5), expected)
    with fastseg.use_backend("native"):
        assert torch.equal(fastseg.ops.batched_nms(boxes, scores, idxs, 0.5), expected)
        assert torch.equal(fastseg.ops.nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))


def edge_cases():
    """(name, boxes, scores, threshold) that break careless kernels."""
    t = torch.tensor
    yield "one box", t([[0.0, 0.0, 1.0, 1.0]]), t([0.5]), 0.5
    yield "all identical", t([[1.0, 2.0, 5.0, 7.0]] * 70), torch.linspace(1, 0, 70), 0.5
    yield "identical, tied scores", t([[1.0, 2.0, 5.0, 7.0]] * 70), torch.ones(70), 0.5
    yield "tied scores", random_boxes(90, 3)[0], torch.randint(0, 4, (90,), generator=torch.Generator().manual_seed(0)).float(), 0.3
    # IoU exactly 0.5 (inter 1, union 2 ... inter 2 / union 4): not suppressed at 0.5, suppressed below.
    yield "iou at threshold", t([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0]]), t([0.9, 0.8]), 0.5
    yield "iou just above threshold", t([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0]]), t([0.9, 0.8]), math.nextafter(0.5, 0)
    yield "iou 1/3 vs 0.33333333", t([[0.0, 0.0, 2.0, 1.0], [1.0, 0.0, 3.0, 1.0]]), t([0.9, 0.8]), 1 / 3
    yield "zero width", t([[1.0, 1.0, 1.0, 5.0], [1.0, 1.0, 1.0, 5.0], [0.0, 0.0, 4.0, 4.0]]), t([0.9, 0.8, 0.7]), 0.0
    yield "negative width", t([[3.0, 0.0, 1.0, 4.0], [0.0, 0.0, 4.0, 4.0], [2.0, 3.0, 0.0, 1.0]]), t([0.9, 0.8, 0.7]), 0.1
    yield "points", t([[2.0, 2.0, 2.0, 2.0]] * 5), t([0.1, 0.2, 0.3, 0.4, 0.5]), 0.0
    yield "nested", t([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 9.0, 9.0], [2.0, 2.0, 8.0, 8.0]]), t([0.3, 0.2, 0.1]), 0.5
    yield "threshold 0 touching", t([[0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 2.0, 1.0], [0.5, 0.5, 1.5, 1.5]]), t([0.9, 0.8, 0.7]), 0.0
    yield "threshold > 1", random_boxes(80, 4)[0], random_boxes(80, 4)[1], 1.5
    yield "nan score", t([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 6.0, 6.0]]), t([0.5, float("nan"), 0.9]), 0.5
    yield "huge coordinates", t([[0.0, 0.0, 3e19, 3e19], [1e19, 1e19, 3e19, 3e19]]), t([0.9, 0.8]), 0.4
    nan, inf = float("nan"), float("inf")
    odd = t([[0, 0, 1, 1.0], [nan, 0, 1, 1], [0, 0, nan, 1], [0, 0, 1, 1], [0.5, 0, 1.5, 1]])
    yield "nan coordinates", odd, t([0.9, 0.8, 0.7, 0.6, 0.5]), 0.3
    # 600 boxes: above the size where the CPU kernel prunes by x, which NaN must switch off
    yield "nan coordinates, many", odd.repeat(120, 1) + torch.arange(120.0).repeat_interleave(5)[:, None] * 0.1, \
        torch.rand(600, generator=torch.Generator().manual_seed(3)), 0.3
    yield "inf coordinates", t([[0, 0, inf, 1.0], [1, 0, inf, 1], [-inf, 0, 1, 1], [0, 0, 1, 1], [0.5, 0, 1.5, 1]]), \
        t([0.9, 0.8, 0.7, 0.6, 0.5]), 0.3
    big = random_boxes(120, 5, extent=1e4, max_side=20.0)
    yield "sparse, many blocks", big[0], big[1], 0.2
    wide = random_boxes(100, 6)
    wide_boxes = wide[0].clone()
    wide_boxes[7] = torch.tensor([-1e3, 10.0, 1e3, 20.0])  # one very wide box stretches every x-window
    yield "one very wide box", wide_boxes, wide[1], 0.05


EDGE = list(edge_cases())


@pytest.mark.parametrize("name,boxes,scores,thr", EDGE, ids=[e[0] for e in EDGE])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nms_edge_cases(backend_name, device, name, boxes, scores, thr, dtype):
    require_backend(backend_name, device)
    boxes, scores = boxes.to(device, dtype), scores.to(device, dtype)
    expected = tv_nms(boxes, scores, thr)
    assert torch.equal(call(backend_name, fastseg.ops.nms, boxes, scores, thr).cpu(), expected)
    idxs = torch.zeros(len(boxes), dtype=torch.long, device=device)
    assert torch.equal(call(backend_name, fastseg.ops.batched_nms, boxes, scores, idxs, thr).cpu(), expected)


def test_iou_at_threshold_is_kept():
    # Stated outright, not only "as torchvision does": IoU == threshold does not suppress.
    boxes = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    scores = torch.tensor([0.9, 0.8])
    for name in ["native", "torch"]:
        assert call(name, fastseg.ops.nms, boxes, scores, 0.5).tolist() == [0, 1]
        assert call(name, fastseg.ops.nms, boxes, scores, 0.4999).tolist() == [0]


def test_non_contiguous_inputs(backend_name, device):
    require_backend(backend_name, device)
    boxes, scores = random_boxes(150, 11, device=device)
    wide = torch.zeros(150, 8, device=device)
    wide[:, 1::2] = boxes  # boxes as a strided view
    strided_boxes = wide[:, 1::2]
    strided_scores = torch.stack([scores, scores], 1)[:, 1]
    assert not strided_boxes.is_contiguous() and not strided_scores.is_contiguous()
    expected = tv_nms(boxes, scores, 0.4)
    assert torch.equal(call(backend_name, fastseg.ops.nms, strided_boxes, strided_scores, 0.4).cpu(), expected)


def test_mixed_float_dtypes():
    boxes, scores = random_boxes(200, 12, dtype=torch.float16)
    expected = tv_nms(boxes, scores, 0.5)
    for name in ["native", "torch"]:
        assert torch.equal(call(name, fastseg.ops.nms, boxes, scores.float(), 0.5), expected)


def test_batched_nms_classes_do_not_interact(backend_name):
    require_backend(backend_name, "cpu")
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 6)
    scores = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3, 0.8])
    idxs = torch.tensor([0, 1, 2, 1, 0, 2])
    out = call(backend_name, fastseg.ops.batched_nms, boxes, scores, idxs, 0.5)
    assert out.tolist() == [1, 5, 4]  # the best of each class, by decreasing score


def test_batched_nms_int32_and_huge_class_ids():
    boxes, scores = random_boxes(300, 13)
    idxs64 = torch.randint(-(2**62), 2**62, (3,), generator=torch.Generator().manual_seed(0))[
        torch.randint(0, 3, (300,), generator=torch.Generator().manual_seed(1))]
    expected = reference.batched_nms(boxes, scores, idxs64, 0.3)
    assert torch.equal(call("native", fastseg.ops.batched_nms, boxes, scores, idxs64, 0.3), expected)
    idxs32 = torch.randint(0, 9, (300,), generator=torch.Generator().manual_seed(2), dtype=torch.int32)
    assert torch.equal(call("native", fastseg.ops.batched_nms, boxes, scores, idxs32, 0.3),
                       tv_batched_nms(boxes, scores, idxs32.long(), 0.3))


# -- property-based ------------------------------------------------------------------------------

coord = st.one_of(st.integers(-20, 60).map(float), st.floats(-20, 60, allow_nan=False, width=32))


@st.composite
def nms_problems(draw, max_boxes):
    n = draw(st.integers(0, max_boxes))
    boxes = torch.tensor(draw(st.lists(st.tuples(coord, coord, st.floats(0, 40, width=32), st.floats(0, 40, width=32)),
                                        min_size=n, max_size=n)), dtype=torch.float32).reshape(n, 4)
    if n and draw(st.booleans()):  # mostly proper boxes, sometimes any corners (degenerate, inverted)
        boxes[:, 2:] += boxes[:, :2]
    scores = torch.tensor(draw(st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0]) | st.floats(0, 1, width=32),
                                        min_size=n, max_size=n)), dtype=torch.float32)
    idxs = torch.tensor(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), dtype=torch.long)
    thr = draw(st.sampled_from([0.0, 0.1, 0.5, 0.7, 1.0]) | st.floats(0, 1))
    return boxes, scores, idxs, thr


@pytest.mark.parametrize("name", ["native", "torch"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=nms_problems(max_boxes=80))
def test_property_against_torchvision(name, problem):
    boxes, scores, idxs, thr = problem
    assert torch.equal(call(name, fastseg.ops.nms, boxes, scores, thr), torchvision.ops.nms(boxes, scores, thr))
    assert torch.equal(call(name, fastseg.ops.batched_nms, boxes, scores, idxs, thr),
                       reference.batched_nms(boxes, scores, idxs, thr))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=nms_problems(max_boxes=70))
def test_property_triton_against_torchvision(problem):
    require_backend("triton", "cpu")
    boxes, scores, idxs, thr = problem
    assert torch.equal(call("triton", fastseg.ops.nms, boxes, scores, thr), torchvision.ops.nms(boxes, scores, thr))
    assert torch.equal(call("triton", fastseg.ops.batched_nms, boxes, scores, idxs, thr),
                       reference.batched_nms(boxes, scores, idxs, thr))


# -- bad input -----------------------------------------------------------------------------------

def bad_inputs():
    b, s = random_boxes(5, 0)
    yield "boxes 1-D", (b.flatten(), s, 0.5), "boxes must be a 2-D tensor"
    yield "boxes last dim 5", (torch.zeros(5, 5), s, 0.5), "shape [N, 4]"
    yield "scores 2-D", (b, s[:, None], 0.5), "scores must be a 1-D tensor"
    yield "lengths differ", (b, s[:4], 0.5), "same length"
    yield "integer boxes", (b.long(), s, 0.5), "floating-point"
    yield "integer scores", (b, (s * 10).long(), 0.5), "floating-point"
    yield "negative threshold", (b, s, -0.1), "iou_threshold"
    yield "nan threshold", (b, s, float("nan")), "iou_threshold"
    yield "string threshold", (b, s, "0.5"), "iou_threshold"
    yield "boxes not a tensor", (b.tolist(), s, 0.5), "torch.Tensor"
    if torch.cuda.is_available():
        yield "mixed devices", (b.cuda(), s, 0.5), "same device"


BAD = list(bad_inputs())


@pytest.mark.parametrize("name,args,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_clear_error(backend_name, name, args, message):
    with fastseg.use_backend(backend_name), pytest.raises(ValueError, match=re.escape(message)):
        fastseg.ops.nms(*args)
    with fastseg.use_backend(backend_name), pytest.raises(ValueError, match=re.escape(message)):
        fastseg.ops.batched_nms(args[0], args[1], torch.zeros(5, dtype=torch.long), args[2])


def test_bad_idxs_raise():
    b, s = random_boxes(5, 0)
    with pytest.raises(ValueError, match="idxs must be an integer tensor"):
        fastseg.ops.batched_nms(b, s, torch.zeros(5), 0.5)
    with pytest.raises(ValueError, match="one class index per box"):
        fastseg.ops.batched_nms(b, s, torch.zeros(4, dtype=torch.long), 0.5)


@pytest.mark.parametrize("name,args,message", [a for a in BAD if isinstance(a[1][0], torch.Tensor)
                                                and isinstance(a[1][2], float)], ids=lambda a: str(a)[:30])
def test_native_op_checks_its_inputs(name, args, message):
    # torch.ops.fastseg.* called directly (no Python checks) still refuses bad input clearly.
    with pytest.raises(RuntimeError, match=re.escape(message)):
        torch.ops.fastseg.nms(*args)


# -- registration: opcheck and torch.compile ----------------------------------------------------

@pytest.mark.parametrize("op", ["fastseg.nms", "fastseg_triton.nms"])
def test_opcheck_nms(op, device):
    namespace, name = op.split(".")
    if namespace == "fastseg_triton":
        require_backend("triton", device)
        import fastseg.kernels.nms  # noqa: F401  (registers fastseg_triton::*)
    boxes, scores = random_boxes(90, 21, device=device)
    torch.library.opcheck(getattr(getattr(torch.ops, namespace), name).default, (boxes, scores, 0.5))
    torch.library.opcheck(getattr(getattr(torch.ops, namespace), name).default, (boxes[:0], scores[:0], 0.5))


@pytest.mark.parametrize("op", ["fastseg.batched_nms", "fastseg_triton.batched_nms"])
def test_opcheck_batched_nms(op, device):
    namespace, name = op.split(".")
    if namespace == "fastseg_triton":
        require_backend("triton", device)
        import fastseg.kernels.nms  # noqa: F401
    boxes, scores = random_boxes(90, 22, device=device)
    idxs = torch.randint(0, 4, (90,), generator=torch.Generator().manual_seed(0)).to(device)
    torch.library.opcheck(getattr(getattr(torch.ops, namespace), name).default, (boxes, scores, idxs, 0.5))


def test_torch_compile_calls_nms():
    torch._dynamo.reset()

    @torch.compile
    def postprocess(boxes, scores):
        keep = fastseg.ops.nms(boxes, scores * 2.0, 0.5)
        return boxes[keep], keep

    boxes, scores = random_boxes(200, 23)
    kept_boxes, keep = postprocess(boxes, scores)
    expected = torchvision.ops.nms(boxes, scores, 0.5)
    assert torch.equal(keep, expected) and torch.equal(kept_boxes, boxes[expected])
