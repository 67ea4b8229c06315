"""BoxCoder: every backend against torchvision's BoxCoder (values, shapes, dtypes, the clip)."""
import math

import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torchvision.models.detection._utils import BoxCoder as TvBoxCoder

import fastseg
from conftest import call, require_backend
from test_boxes import poison_allocator


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
WEIGHTS = [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (0.5, 2.0, 3.0, 0.25)]
# exp/log differ from PyTorch's SLEEF ones by an ulp; everything else is bit-exact. fp16/bf16 round
# after every op like PyTorch, so they agree except where an exp lands on a rounding boundary.
TOL = {torch.float32: dict(rtol=2e-6, atol=2e-3), torch.float64: dict(rtol=1e-12, atol=1e-9),
       torch.float16: dict(rtol=2e-3, atol=0.5), torch.bfloat16: dict(rtol=1.6e-2, atol=4.0)}


def random_boxes(n, seed, extent=800.0, max_side=200.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * extent
    return torch.cat([xy, xy + torch.rand(n, 2, generator=g) * max_side + 1], 1)


def codes(n, k, seed, scale=1.0):
    return torch.randn(n, 4 * k, generator=torch.Generator().manual_seed(seed)) * scale


def n_for(backend_name):
    return 64 if backend_name == "triton" else 3000


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weights", WEIGHTS)
def test_decode_matches_torchvision(backend_name, device, dtype, weights):
    require_backend(backend_name, device)
    n = n_for(backend_name)
    for k, sizes in [(1, [n]), (3, [n // 3, n - n // 3]), (1, [0, 5])]:
        total = sum(sizes)
        boxes = [random_boxes(s, seed=s + k).to(device, dtype) for s in sizes]
        rel = codes(total, k, seed=k, scale=3.0).to(device, dtype)  # |codes| > clip happens
        expected = TvBoxCoder(weights).decode(rel, boxes)
        out = call(backend_name, fastseg.ops.BoxCoder(weights).decode, rel, boxes)
        assert out.shape == expected.shape and out.dtype == expected.dtype and out.device == expected.device
        torch.testing.assert_close(out, expected, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_single_and_clip(backend_name, device, dtype):
    require_backend(backend_name, device)
    n = n_for(backend_name)
    boxes = random_boxes(n, seed=1).to(device, dtype)
    rel = codes(n, 2, seed=2, scale=2.0).to(device, dtype)
    tv = TvBoxCoder((10.0, 10.0, 5.0, 5.0), bbox_xform_clip=1.5)
    ours = fastseg.ops.BoxCoder((10.0, 10.0, 5.0, 5.0), bbox_xform_clip=1.5)
    expected = tv.decode_single(rel, boxes)
    torch.testing.assert_close(call(backend_name, ours.decode_single, rel, boxes), expected, **TOL[dtype])
    size = (600, 700)
    clipped = torchvision.ops.clip_boxes_to_image(tv.decode(rel, [boxes]), size)
    out = call(backend_name, ours.decode_and_clip, rel, [boxes], size)
    assert out.shape == clipped.shape
    torch.testing.assert_close(out, clipped, **TOL[dtype])
    flat = call(backend_name, ours.decode_and_clip, rel, boxes, size)
    torch.testing.assert_close(flat, clipped.flatten(1), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_encode_matches_torchvision(backend_name, device, dtype):
    require_backend(backend_name, device)
    n = n_for(backend_name)
    props = [random_boxes(n, seed=3).to(device, dtype), random_boxes(7, seed=4).to(device, dtype)]
    refs = [random_boxes(n, seed=5).to(device, dtype), random_boxes(7, seed=6).to(device, dtype)]
    for weights in WEIGHTS:
        expected = TvBoxCoder(weights).encode(refs, props)
        out = call(backend_name, fastseg.ops.BoxCoder(weights).encode, refs, props)
        assert len(out) == len(expected)
        for o, e in zip(out, expected):
            assert o.shape == e.shape and o.dtype == e.dtype
            torch.testing.assert_close(o, e, **TOL[dtype])


def test_exactness_apart_from_exp():
    # With every dw, dh <= -200 the exp underflows to 0 exactly on both sides: the rest is bit-exact.
    n = 5000
    boxes = random_boxes(n, seed=8)
    rel = codes(n, 1, seed=9)
    rel[:, 2:] = -300.0
    for name in ["native", "torch"]:
        out = call(name, fastseg.ops.BoxCoder((2.0, 3.0, 1.0, 1.0)).decode_single, rel, boxes)
        assert torch.equal(out, TvBoxCoder((2.0, 3.0, 1.0, 1.0)).decode_single(rel, boxes))


def test_degenerate_and_special_values(backend_name):
    require_backend(backend_name, "cpu")
    boxes = torch.tensor([[0.0, 0.0, 0.0, 0.0], [5.0, 5.0, 4.0, 4.0], [1.0, 1.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]] * 2)
    rel = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 10.0, -10.0], [float("nan"), 0.0, 0.0, float("nan")],
                        [0.0, 0.0, float("inf"), -float("inf")]] * 2)
    coder = fastseg.ops.BoxCoder((1.0, 1.0, 1.0, 1.0))
    out = call(backend_name, coder.decode_single, rel, boxes)
    expected = TvBoxCoder((1.0, 1.0, 1.0, 1.0)).decode_single(rel, boxes)
    torch.testing.assert_close(out, expected, equal_nan=True, rtol=1e-6, atol=1e-5)
    # Zero-width proposals: division by zero gives inf / nan as in torchvision.
    enc = call(backend_name, coder.encode_single, boxes, boxes.flip(0))
    torch.testing.assert_close(enc, TvBoxCoder((1.0, 1.0, 1.0, 1.0)).encode_single(boxes, boxes.flip(0)), equal_nan=True)


def test_empty():
    coder, tv = fastseg.ops.BoxCoder((1.0, 1.0, 1.0, 1.0)), TvBoxCoder((1.0, 1.0, 1.0, 1.0))
    for name in ["native", "torch"]:
        with fastseg.use_backend(name):
            out = coder.decode(torch.zeros(0, 4), [torch.zeros(0, 4)])
            assert out.shape == tv.decode(torch.zeros(0, 4), [torch.zeros(0, 4)]).shape
            enc = coder.encode([torch.zeros(0, 4)], [torch.zeros(0, 4)])
            assert enc[0].shape == (0, 4)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(0, 300), k=st.integers(1, 4), seed=st.integers(0, 10_000),
       weights=st.tuples(*[st.floats(0.1, 20.0)] * 4), clip=st.floats(0.1, 10.0),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_random_decode_native(n, k, seed, weights, clip, dtype):
    boxes = random_boxes(n, seed).to(dtype)
    rel = codes(n, k, seed + 1, scale=4.0).to(dtype)
    expected = TvBoxCoder(weights, clip).decode_single(rel, boxes)
    with fastseg.use_backend("native"):
        out = fastseg.ops.BoxCoder(weights, clip).decode_single(rel, boxes)
    torch.testing.assert_close(out, expected, **TOL[dtype])


def test_gradients_flow_through_the_reference():
    boxes = random_boxes(6, seed=2).double()
    rel = codes(6, 1, seed=3).double().requires_grad_()
    coder = fastseg.ops.BoxCoder((1.0, 2.0, 1.0, 1.0))
    assert torch.autograd.gradcheck(lambda r: coder.decode_single(r, boxes), (rel,))


def test_bad_input():
    coder = fastseg.ops.BoxCoder((1.0, 1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="list or tuple"):
        coder.decode(torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(AssertionError):  # torchvision's exception type for the same mistake
        coder.decode(torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="rel_codes"):
        coder.decode_single(torch.zeros(2, 5), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="boxes"):
        coder.decode_single(torch.zeros(2, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="rel_codes"):
        coder.decode_single(torch.zeros(2, 4, dtype=torch.int64), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="proposals"):
        coder.encode_single(torch.zeros(2, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="image_size"):
        coder.decode_and_clip(torch.zeros(2, 4), torch.zeros(2, 4), (5,))
    with pytest.raises(ValueError, match="weights"):
        fastseg.ops.box_decode(torch.zeros(2, 4), torch.zeros(2, 4), (1.0, 1.0), math.log(2))
    with pytest.raises(RuntimeError, match="rel_codes must have shape"):
        torch.ops.fastseg.box_decode(torch.zeros(2, 5), torch.zeros(2, 4), [1.0] * 4, 1.0, None)


def test_opcheck():
    boxes, rel = random_boxes(9, seed=1), codes(9, 2, seed=2)
    torch.library.opcheck(torch.ops.fastseg.box_decode.default, (rel, boxes, [1.0, 2.0, 3.0, 4.0], 2.0, None))
    torch.library.opcheck(torch.ops.fastseg.box_decode.default, (rel, boxes, [1.0, 2.0, 3.0, 4.0], 2.0, [30, 40]))
    torch.library.opcheck(torch.ops.fastseg.box_encode.default, (boxes, random_boxes(9, seed=3), [1.0, 2.0, 3.0, 4.0]))


def test_torch_compile():
    coder = fastseg.ops.BoxCoder((1.0, 1.0, 1.0, 1.0))
    boxes, rel = random_boxes(50, seed=1), codes(50, 1, seed=2)

    @torch.compile(backend="eager", fullgraph=False)
    def f(r, b):
        return coder.decode_single(r, b)

    torch.testing.assert_close(f(rel, boxes), TvBoxCoder((1.0, 1.0, 1.0, 1.0)).decode_single(rel, boxes), **TOL[torch.float32])


def test_triton_opcheck():
    require_backend("triton", "cpu")
    from fastseg.kernels import box_coder as tk  # noqa: F401  (registers fastseg_triton::*)

    boxes, rel = random_boxes(9, seed=1), codes(9, 2, seed=2)
    torch.library.opcheck(torch.ops.fastseg_triton.box_decode.default, (rel, boxes, [1.0, 2.0, 3.0, 4.0], 2.0, [30, 40]))
    torch.library.opcheck(torch.ops.fastseg_triton.box_encode.default, (boxes, random_boxes(9, seed=3), [1.0, 2.0, 3.0, 4.0]))


def test_every_output_element_written(backend_name):
    require_backend(backend_name, "cpu")
    for n, k in [(1, 1), (37, 1), (300, 3), (2000, 1)]:
        boxes, rel = random_boxes(n, seed=n), codes(n, k, seed=k)
        poison_allocator(4 * n * k * 4)
        out = call(backend_name, fastseg.ops.BoxCoder((1.0, 1.0, 1.0, 1.0)).decode_single, rel, boxes)
        assert not torch.isnan(out).any()
        poison_allocator(4 * n * 4)
        enc = call(backend_name, fastseg.ops.BoxCoder((1.0, 1.0, 1.0, 1.0)).encode_single, boxes, boxes.flip(0))
        assert not torch.isnan(enc).any()
