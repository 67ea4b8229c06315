"""AnchorGenerator / grid_anchors: every backend against torchvision's AnchorGenerator, bit for bit."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torchvision.models.detection.anchor_utils import AnchorGenerator as TvAnchorGenerator
from torchvision.models.detection.image_list import ImageList

import fastseg
from conftest import call, require_backend
from test_boxes import poison_allocator

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
RETINA_SIZES = tuple((x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in [32, 64, 128, 256, 512])
RETINA_RATIOS = ((0.5, 1.0, 2.0),) * 5


def image_list(n, h, w, device="cpu"):
    return ImageList(torch.zeros(n, 3, h, w, device=device), [(h, w)] * n)


def feature_maps(shapes, dtype=torch.float32, device="cpu", n=2):
    return [torch.zeros(n, 2, h, w, dtype=dtype, device=device) for h, w in shapes]


def small_shapes(backend_name):
    # The Triton interpreter is slow: smaller pyramids there.
    if backend_name == "triton":
        return [(13, 19), (7, 10), (4, 5)], 104, 152
    return [(100, 152), (50, 76), (25, 38), (13, 19), (7, 10)], 800, 1216


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_matches_torchvision(backend_name, device, dtype):
    require_backend(backend_name, device)
    shapes, h, w = small_shapes(backend_name)
    sizes, ratios = RETINA_SIZES[: len(shapes)], RETINA_RATIOS[: len(shapes)]
    il, fms = image_list(2, h, w, device), feature_maps(shapes, dtype, device)
    expected = TvAnchorGenerator(sizes, ratios)(il, fms)
    ours = fastseg.ops.AnchorGenerator(sizes, ratios)
    for _ in range(2):  # second call: from the cache
        out = call(backend_name, ours, il, fms)
        assert len(out) == len(expected) == 2
        for o, e in zip(out, expected):
            assert o.dtype == e.dtype and o.device == e.device and o.shape == e.shape
            assert torch.equal(o, e)


def test_attributes_match_torchvision():
    for sizes, ratios in [((128, 256, 512),), ((0.5, 1.0, 2.0),)], [(32, 64), (0.5, 1.0)], [RETINA_SIZES, RETINA_RATIOS]:
        tv, ours = TvAnchorGenerator(sizes, ratios), fastseg.ops.AnchorGenerator(sizes, ratios)
        assert ours.num_anchors_per_location() == tv.num_anchors_per_location()
        assert ours.sizes == tv.sizes and ours.aspect_ratios == tv.aspect_ratios
        assert len(ours.cell_anchors) == len(tv.cell_anchors)
        for a, b in zip(ours.cell_anchors, tv.cell_anchors):
            assert torch.equal(a, b)
    assert isinstance(fastseg.ops.AnchorGenerator(), torch.nn.Module)


def test_default_generator_and_grid_anchors_list_form(backend_name):
    require_backend(backend_name, "cpu")
    tv, ours = TvAnchorGenerator(), fastseg.ops.AnchorGenerator()
    il, fms = image_list(3, 64, 96), feature_maps([(8, 12)], n=3)
    with fastseg.use_backend(backend_name):
        out = ours(il, fms)
        grids = [[8, 12]]
        strides = [[torch.tensor(8), torch.tensor(8)]]
        per_level = ours.grid_anchors(grids, strides)
    assert all(torch.equal(o, e) for o, e in zip(out, tv(il, fms)))
    assert torch.equal(per_level[0], tv.grid_anchors(grids, strides)[0])


def test_writing_into_anchors_does_not_change_later_results():
    gen = fastseg.ops.AnchorGenerator(RETINA_SIZES[:2], RETINA_RATIOS[:2])
    il, fms = image_list(2, 128, 160), feature_maps([(16, 20), (8, 10)])
    first = gen(il, fms)
    reference = [a.clone() for a in first]
    assert first[0].data_ptr() != first[1].data_ptr()
    first[0].fill_(float("nan"))
    first[1].add_(1000)
    again = gen(il, fms)
    assert all(torch.equal(a, r) for a, r in zip(again, reference))
    # Writes through every kind of access: indexing, views, .data, numpy, out= of another op.
    third = gen(il, fms)
    third[0][0, 0] = -1.0
    third[0].view(-1)[5] = -2.0
    third[1].data.mul_(2)
    third[1].numpy()[3, 3] = 123.0
    torch.add(third[0], 1, out=third[0])
    fourth = gen(il, fms)
    assert all(torch.equal(a, r) for a, r in zip(fourth, reference))
    assert third[0][0, 0].item() == 0.0 and third[1][3, 3].item() == 123.0  # the writes took effect


def test_cache_follows_cell_anchor_edits_and_shapes():
    gen = fastseg.ops.AnchorGenerator(((16,),), ((1.0,),))
    tv = TvAnchorGenerator(((16,),), ((1.0,),))
    il = image_list(1, 64, 64)
    for shape in [(8, 8), (4, 4), (8, 8), (16, 16)]:
        assert torch.equal(gen(il, feature_maps([shape], n=1))[0], tv(il, feature_maps([shape], n=1))[0])
    gen.cell_anchors[0].add_(1)  # in place: a new version
    tv.cell_anchors[0].add_(1)
    assert torch.equal(gen(il, feature_maps([(8, 8)], n=1))[0], tv(il, feature_maps([(8, 8)], n=1))[0])
    gen.cell_anchors = [torch.tensor([[-3.0, -2.0, 3.0, 2.0]])]  # replaced
    tv.cell_anchors = [torch.tensor([[-3.0, -2.0, 3.0, 2.0]])]
    assert torch.equal(gen(il, feature_maps([(8, 8)], n=1))[0], tv(il, feature_maps([(8, 8)], n=1))[0])


def test_dtype_switches_follow_torchvision():
    # torchvision converts its cell anchors in place to the feature maps' dtype; a bf16 call rounds them.
    gen, tv = fastseg.ops.AnchorGenerator(RETINA_SIZES, RETINA_RATIOS), TvAnchorGenerator(RETINA_SIZES, RETINA_RATIOS)
    il = image_list(1, 256, 256)
    shapes = [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    for dtype in [torch.float32, torch.bfloat16, torch.float32, torch.float16, torch.float64]:
        fms = feature_maps(shapes, dtype, n=1)
        assert torch.equal(gen(il, fms)[0], tv(il, fms)[0]), dtype


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    levels=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 3), st.integers(1, 3)), min_size=1, max_size=4),
    image=st.tuples(st.integers(1, 400), st.integers(1, 400)),
    n_images=st.integers(1, 3),
)
def test_random_pyramids_native_and_reference(levels, image, n_images):
    sizes = tuple(tuple(16 * (k + 1) * (i + 1) for k in range(ns)) for i, (_, _, ns, _) in enumerate(levels))
    ratios = tuple((0.5, 1.0, 2.0)[:nr] for (_, _, _, nr) in levels)
    shapes = [(h, w) for h, w, _, _ in levels]
    il, fms = image_list(n_images, *image), feature_maps(shapes, n=n_images)
    expected = TvAnchorGenerator(sizes, ratios)(il, fms)
    for name in ["native", "torch"]:
        out = call(name, fastseg.ops.AnchorGenerator(sizes, ratios), il, fms)
        assert all(torch.equal(o, e) for o, e in zip(out, expected))


def test_tensor_level_functions():
    gen = TvAnchorGenerator(RETINA_SIZES, RETINA_RATIOS)
    shapes = [(100, 152), (50, 76), (25, 38), (13, 19), (7, 10)]
    expected = gen(image_list(1, 800, 1216), feature_maps(shapes, n=1))[0]
    out = fastseg.ops.anchors_for((800, 1216), shapes, RETINA_SIZES, RETINA_RATIOS)
    assert torch.equal(out, expected)
    strides = [(800 // h, 1216 // w) for h, w in shapes]
    assert torch.equal(fastseg.ops.grid_anchors(gen.cell_anchors, shapes, strides), expected)


def test_empty_grid_level():
    cells = [torch.tensor([[-1.0, -1.0, 1.0, 1.0]]), torch.tensor([[-2.0, -2.0, 2.0, 2.0]])]
    for name in ["native", "torch"]:
        with fastseg.use_backend(name):
            out = fastseg.ops.grid_anchors(cells, [(0, 5), (2, 2)], [(4, 4), (8, 8)])
        assert out.shape == (4, 4)
        assert torch.equal(out[0], torch.tensor([-2.0, -2.0, 2.0, 2.0]))


def test_bad_input():
    gen = fastseg.ops.AnchorGenerator(RETINA_SIZES[:2], RETINA_RATIOS[:2])
    il = image_list(1, 64, 64)
    with pytest.raises(ValueError, match="one feature map per entry"):
        gen(il, feature_maps([(8, 8)], n=1))
    with pytest.raises(AssertionError):  # what torchvision raises for the same mistake
        gen(il, feature_maps([(8, 8)] * 3, n=1))
    with pytest.raises(ValueError, match="feature_maps"):
        gen(il, [])
    with pytest.raises(ValueError, match="cell_anchors"):
        fastseg.ops.grid_anchors(torch.zeros(3, 4), [(2, 2)], [(1, 1)])
    with pytest.raises(ValueError, match=r"cell_anchors\[0\]"):
        fastseg.ops.grid_anchors([torch.zeros(3, 5)], [(2, 2)], [(1, 1)])
    with pytest.raises(ValueError, match="grid_sizes"):
        fastseg.ops.grid_anchors([torch.zeros(3, 4)], [(2, 2), (1, 1)], [(1, 1)])
    with pytest.raises(ValueError, match="strides"):
        fastseg.ops.grid_anchors([torch.zeros(3, 4)], [(2, 2)], [(1.5, 1)])
    with pytest.raises(RuntimeError, match="grid_sizes must hold"):
        torch.ops.fastseg.grid_anchors([torch.zeros(3, 4)], [2], [1, 1])


def test_opcheck():
    cells = [torch.tensor([[-1.0, -2.0, 1.0, 2.0], [-3.0, -3.0, 3.0, 3.0]]), torch.tensor([[-4.0, -4.0, 4.0, 4.0]])]
    torch.library.opcheck(torch.ops.fastseg.grid_anchors.default, (cells, [3, 4, 2, 2], [8, 8, 16, 16]))


def test_triton_opcheck():
    require_backend("triton", "cpu")
    from fastseg.kernels import anchors as tk  # noqa: F401  (registers fastseg_triton::grid_anchors)

    cells = [torch.tensor([[-1.0, -2.0, 1.0, 2.0], [-3.0, -3.0, 3.0, 3.0]]), torch.tensor([[-4.0, -4.0, 4.0, 4.0]])]
    torch.library.opcheck(torch.ops.fastseg_triton.grid_anchors.default, (cells, [3, 4, 2, 2], [8, 8, 16, 16]))


def test_every_output_element_written(backend_name):
    require_backend(backend_name, "cpu")
    cells = [torch.tensor([[-1.0, -2.0, 1.0, 2.0], [-3.0, -3.0, 3.0, 3.0]]), torch.tensor([[-4.0, -4.0, 4.0, 4.0]])]
    for grids in [[(3, 4), (2, 2)], [(17, 9), (1, 1)], [(40, 30), (20, 15)]]:
        total = sum(h * w * c.shape[0] for (h, w), c in zip(grids, cells))
        poison_allocator(4 * 4 * total)
        with fastseg.use_backend(backend_name):
            out = fastseg.ops.grid_anchors(cells, grids, [(8, 8), (16, 16)])
        assert out.shape == (total, 4) and not torch.isnan(out).any()
        with fastseg.use_backend("torch"):
            assert torch.equal(out, fastseg.ops.grid_anchors(cells, grids, [(8, 8), (16, 16)]))


def test_torch_compile():
    gen, tv = fastseg.ops.AnchorGenerator(RETINA_SIZES[:2], RETINA_RATIOS[:2]), TvAnchorGenerator(RETINA_SIZES[:2], RETINA_RATIOS[:2])
    il, fms = image_list(2, 128, 160), feature_maps([(16, 20), (8, 10)])

    @torch.compile(backend="eager")
    def f(images, maps):
        return gen(images, maps)

    assert all(torch.equal(a, b) for a, b in zip(f(il, fms), tv(il, fms)))
