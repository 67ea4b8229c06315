"""Pairwise IoUs and box helpers: every backend against torchvision.ops."""
import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastseg
from conftest import call, require_backend


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
PAIRWISE = ["box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou"]


def random_boxes(n, seed, dtype=torch.float32, device="cpu", extent=100.0, max_side=40.0, batch=()):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(*batch, n, 2, generator=g) * extent
    b = torch.cat([xy, xy + torch.rand(*batch, n, 2, generator=g) * max_side], -1)
    return b.to(device, dtype)


def check(op, out, expected):
    assert out.shape == expected.shape and out.dtype == expected.dtype and out.device == expected.device
    if op == "complete_box_iou":  # atan differs from PyTorch's SLEEF atan by an ulp
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6, equal_nan=True)
    else:  # everything else is the same arithmetic: bit-exact
        torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)


def sizes(backend_name):
    return [(0, 5), (5, 0), (1, 1), (37, 70)] + ([] if backend_name == "triton" else [(300, 500)])


@pytest.mark.parametrize("op", PAIRWISE)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pairwise_matches_torchvision(backend_name, device, op, dtype):
    require_backend(backend_name, device)
    for n, m in sizes(backend_name):
        b1, b2 = random_boxes(n, n, dtype, device), random_boxes(m, m + 1, dtype, device)
        out = call(backend_name, getattr(fastseg.ops, op), b1, b2)
        check(op, out, getattr(torchvision.ops, op)(b1, b2))


@pytest.mark.parametrize("op", PAIRWISE)
def test_pairwise_batched_and_broadcast(backend_name, op):
    require_backend(backend_name, "cpu")
    b1 = random_boxes(6, 1, batch=(2, 3))
    b2 = random_boxes(7, 2, batch=(3,))
    out = call(backend_name, getattr(fastseg.ops, op), b1, b2)
    check(op, out, getattr(torchvision.ops, op)(b1, b2))


@pytest.mark.parametrize("op", PAIRWISE)
def test_pairwise_degenerate_boxes(backend_name, op):
    require_backend(backend_name, "cpu")
    b = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 5.0], [0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 2.0, 2.0],
                      [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [float("nan"), 0.0, 1.0, 1.0]])
    out = call(backend_name, getattr(fastseg.ops, op), b, b)
    check(op, out, getattr(torchvision.ops, op)(b, b))


def test_fp16_large_boxes_do_not_overflow():
    # Areas of 60000-pixel-wide boxes overflow fp16 (max 65504); computed in fp32 like torchvision.
    b = torch.tensor([[0.0, 0.0, 60000.0, 60000.0], [30000.0, 0.0, 65000.0, 60000.0]], dtype=torch.float16)
    for op in PAIRWISE:
        out = call("native", getattr(fastseg.ops, op), b, b)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        check(op, out, getattr(torchvision.ops, op)(b, b))


def test_mixed_and_integer_dtypes():
    a = random_boxes(5, 1, torch.float32)
    b = random_boxes(6, 2, torch.float64)
    # Mixed precisions are promoted first (torchvision promotes op by op): equal to rounding.
    out = fastseg.ops.box_iou(a, b)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, torchvision.ops.box_iou(a, b), rtol=1e-6, atol=1e-7)
    ai, bi = (a * 3).round().int(), (random_boxes(6, 2) * 3).round().int()
    check("box_iou", fastseg.ops.box_iou(ai, bi), torchvision.ops.box_iou(ai, bi))


@pytest.mark.parametrize("fmt", ["xywh", "cxcywh"])
def test_box_iou_formats(fmt):
    a, b = random_boxes(9, 1), random_boxes(11, 2)
    a, b = torchvision.ops.box_convert(a, "xyxy", fmt), torchvision.ops.box_convert(b, "xyxy", fmt)
    torch.testing.assert_close(fastseg.ops.box_iou(a, b, fmt=fmt), torchvision.ops.box_iou(a, b, fmt=fmt))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(0, 40), m=st.integers(0, 40), seed=st.integers(0, 10_000),
       op=st.sampled_from(PAIRWISE), dtype=st.sampled_from(DTYPES), side=st.floats(0.0, 200.0))
def test_random_pairwise_native(n, m, seed, op, dtype, side):
    b1 = random_boxes(n, seed, dtype, max_side=side)
    b2 = random_boxes(m, seed + 1, dtype, max_side=side)
    check(op, call("native", getattr(fastseg.ops, op), b1, b2), getattr(torchvision.ops, op)(b1, b2))


def test_gradients_flow_through_the_reference():
    b1 = random_boxes(4, 1, torch.float64).requires_grad_()
    b2 = random_boxes(5, 2, torch.float64)
    for op in ["generalized_box_iou", "distance_box_iou", "box_iou"]:
        assert torch.autograd.gradcheck(lambda x: getattr(fastseg.ops, op)(x, b2), (b1,))


@pytest.mark.parametrize("dtype", DTYPES)
def test_helpers_match_torchvision(dtype):
    b = random_boxes(50, 3, dtype, extent=700.0, max_side=300.0)
    b[0] = torch.tensor([5.0, 5.0, 5.0, 9.0])  # degenerate
    for fmt in ["xyxy", "xywh", "cxcywh"]:
        check("", fastseg.ops.box_area(b, fmt=fmt), torchvision.ops.box_area(b, fmt=fmt))
    check("", fastseg.ops.clip_boxes_to_image(b, (500, 600)), torchvision.ops.clip_boxes_to_image(b, (500, 600)))
    for min_size in [0.0, 1.0, 50.0]:
        assert torch.equal(fastseg.ops.remove_small_boxes(b, min_size), torchvision.ops.remove_small_boxes(b, min_size))
    for i in ["xyxy", "xywh", "cxcywh"]:
        for o in ["xyxy", "xywh", "cxcywh"]:
            check("", fastseg.ops.box_convert(b, i, o), torchvision.ops.box_convert(b, i, o))
    assert fastseg.ops.box_area(torch.zeros(0, 4, dtype=dtype)).shape == (0,)


def test_bad_input():
    with pytest.raises(ValueError, match="boxes1"):
        fastseg.ops.box_iou(torch.zeros(3, 5), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="boxes2"):
        fastseg.ops.generalized_box_iou(torch.zeros(3, 4), [1, 2, 3, 4])
    with pytest.raises(ValueError, match="broadcast"):
        fastseg.ops.distance_box_iou(torch.zeros(2, 3, 4), torch.zeros(3, 3, 4))
    with pytest.raises(ValueError, match="eps"):
        fastseg.ops.complete_box_iou(torch.zeros(3, 4), torch.zeros(2, 4), eps="x")
    with pytest.raises(ValueError, match="fmt"):
        fastseg.ops.box_iou(torch.zeros(3, 4), torch.zeros(2, 4), fmt="xy")
    with pytest.raises(ValueError, match="in_fmt"):
        fastseg.ops.box_convert(torch.zeros(3, 4), "xyxy", "abcd")
    with pytest.raises(ValueError, match="size"):
        fastseg.ops.clip_boxes_to_image(torch.zeros(3, 4), 5)
    with pytest.raises(RuntimeError, match="boxes2 must have the dtype"):
        torch.ops.fastseg.box_iou(torch.zeros(3, 4), torch.zeros(2, 4, dtype=torch.float64))


@pytest.mark.parametrize("op", PAIRWISE)
def test_opcheck(op):
    b1, b2 = random_boxes(5, 1), random_boxes(7, 2)
    args = (b1, b2) if op in ("box_iou", "generalized_box_iou") else (b1, b2, 1e-7)
    torch.library.opcheck(getattr(torch.ops.fastseg, op).default, args)
    args3 = (b1[None].expand(2, 5, 4).contiguous(), b2[None].expand(2, 7, 4).contiguous()) + args[2:]
    torch.library.opcheck(getattr(torch.ops.fastseg, op).default, args3)


ALL_NATIVE_OPS = PAIRWISE + ["grid_anchors", "box_decode", "box_encode"]


@pytest.mark.parametrize("op", ALL_NATIVE_OPS)
def test_kernels_registered(op):
    from fastseg import _extension

    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastseg::{op}", "CPU")
    if _extension.with_cuda():
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastseg::{op}", "CUDA")


@pytest.mark.parametrize("op", PAIRWISE)
def test_triton_opcheck(op):
    require_backend("triton", "cpu")
    from fastseg.kernels import box_iou as tk  # noqa: F401  (registers fastseg_triton::*)

    b1, b2 = random_boxes(5, 1), random_boxes(7, 2)
    args = (b1, b2) if op in ("box_iou", "generalized_box_iou") else (b1, b2, 1e-7)
    torch.library.opcheck(getattr(torch.ops.fastseg_triton, op).default, args)


def poison_allocator(nbytes: int, device="cpu"):
    """Leave freed blocks of the output's size full of NaN, so that an output element a kernel forgets
    to write shows as NaN rather than as a stale copy of an earlier identical result. Best effort: the
    allocator reuses such a block often but not always (measured: reliably above ~10 KiB)."""
    for _ in range(3):
        t = torch.full((nbytes // 4,), float("nan"), device=device)
        del t


@pytest.mark.parametrize("op", PAIRWISE)
def test_every_output_element_written(backend_name, op):
    require_backend(backend_name, "cpu")
    for n, m in [(3, 5), (33, 70), (1, 129), (60, 100)]:
        b1, b2 = random_boxes(n, n + 2), random_boxes(m, m + 3)
        poison_allocator(4 * n * m)
        out = call(backend_name, getattr(fastseg.ops, op), b1, b2)
        assert not torch.isnan(out).any()
        check(op, out, getattr(torchvision.ops, op)(b1, b2))


def test_torch_compile():
    b1, b2 = random_boxes(20, 1), random_boxes(30, 2)

    @torch.compile(backend="eager")
    def f(a, b):
        return fastseg.ops.generalized_box_iou(a, b) + fastseg.ops.box_iou(a, b)

    with fastseg.use_backend("native"):
        out = f(b1, b2)
    check("", out, torchvision.ops.generalized_box_iou(b1, b2) + torchvision.ops.box_iou(b1, b2))
