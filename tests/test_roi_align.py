"""roi_align and RoIAlign: every backend against torchvision and the reference, forward and backward."""
import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastseg
from fastseg import reference
from conftest import call, require_backend

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Per-dtype tolerance (atol, rtol) against torchvision on the fp32 (fp64) upcast of the input.
TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3),
       torch.bfloat16: (1.6e-2, 1.6e-2)}


def make_rois(k, seed, n_images=2, extent=48.0, max_side=30.0, dtype=torch.float32, device="cpu"):
    """k rois (batch index, x1, y1, x2, y2) in image coordinates, some reaching past the map."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(k, 2, generator=g) * extent - 4.0
    wh = torch.rand(k, 2, generator=g) * max_side
    idx = torch.randint(0, n_images, (k, 1), generator=g).float()
    return torch.cat([idx, xy, xy + wh], 1).to(device, dtype)


def make_input(shape, seed, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(device, dtype)


def tv_roi_align(x, rois, *args, **kwargs):
    up = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torchvision.ops.roi_align(x.cpu().to(up), rois.cpu().to(up), *args, **kwargs)


def assert_close(out, expected, dtype):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.cpu().to(expected.dtype), expected, atol=atol, rtol=rtol)


def shapes_for(backend_name):
    # The Triton interpreter and the per-RoI reference are slow: small problems for them.
    if backend_name == "native":
        return [(2, 8, 16, 20), (3, 40, 9, 7)], 60
    return [(2, 3, 10, 9)], 6


def configs(backend_name):
    """(aligned, sampling_ratio, spatial_scale, output_size) to run: all for the native kernels, a
    covering subset for the slow Triton interpreter and reference (each axis value appears)."""
    full = [(a, sr, scale, size) for a in (False, True) for sr in (-1, 0, 1, 2, 3)
            for scale, size in [(0.5, (3, 4)), (0.25, 7), (1.0, (2, 2))]]
    if backend_name == "native":
        return full
    return [(False, -1, 0.5, (3, 4)), (True, 2, 0.25, 7), (True, 0, 1.0, (2, 2)), (False, 3, 0.5, (2, 2)),
            (True, 1, 0.5, (3, 4))]


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_matches_torchvision(backend_name, device, dtype):
    require_backend(backend_name, device)
    if backend_name == "triton" and dtype == torch.bfloat16 and device == "cpu":
        dtype = torch.float16  # the interpreter has no bf16 arithmetic
    shapes, k = shapes_for(backend_name)
    for i, shape in enumerate(shapes):
        x = make_input(shape, i, dtype, device)
        rois = make_rois(k, i, n_images=shape[0], dtype=dtype if dtype == torch.float64 else torch.float32,
                         device=device)
        for aligned, sampling_ratio, scale, size in configs(backend_name):
            out = call(backend_name, fastseg.ops.roi_align, x, rois, size, scale, sampling_ratio, aligned)
            assert out.dtype == dtype and out.device.type == device
            assert_close(out, tv_roi_align(x, rois, size, scale, sampling_ratio, aligned), dtype)


def test_native_fp32_forward_is_bit_identical_to_torchvision():
    # Same weights, same sum order, no FMA: the CPU kernel reproduces torchvision's bits.
    x = make_input((2, 16, 30, 26), 3)
    rois = make_rois(200, 3, extent=100.0, max_side=60.0)
    for aligned in (False, True):
        for sr in (-1, 2):
            with fastseg.use_backend("native"):
                out = fastseg.ops.roi_align(x, rois, 7, 0.25, sr, aligned)
            assert torch.equal(out, torchvision.ops.roi_align(x, rois, 7, 0.25, sr, aligned))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned", [False, True])
def test_backward_matches_torchvision(backend_name, device, dtype, aligned):
    require_backend(backend_name, device)
    shapes, k = shapes_for(backend_name)
    for i, shape in enumerate(shapes):
        x = make_input(shape, 10 + i, dtype, device).requires_grad_()
        rois = make_rois(k, 10 + i, n_images=shape[0], dtype=dtype, device=device)
        grad = make_input((k, shape[1], 3, 4), 20 + i, dtype, device)
        for sr in (-1, 2):
            (g,) = torch.autograd.grad(call(backend_name, fastseg.ops.roi_align, x, rois, (3, 4), 0.5, sr, aligned),
                                       x, grad)
            xe = x.detach().cpu().requires_grad_()
            (ge,) = torch.autograd.grad(torchvision.ops.roi_align(xe, rois.cpu(), (3, 4), 0.5, sr, aligned), xe,
                                        grad.cpu())
            assert g.shape == x.shape and g.dtype == dtype
            assert_close(g, ge, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_backward_reduced_precision(backend_name, device, dtype):
    require_backend(backend_name, device)
    if backend_name == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bf16 arithmetic")
    shapes, k = shapes_for(backend_name)
    x = make_input(shapes[0], 30, dtype, device).requires_grad_()
    rois = make_rois(k, 30, n_images=shapes[0][0], device=device)
    grad = make_input((k, shapes[0][1], 2, 2), 31, dtype, device)
    (g,) = torch.autograd.grad(call(backend_name, fastseg.ops.roi_align, x, rois, 2, 0.5, 2), x, grad)
    xe = x.detach().float().cpu().requires_grad_()
    (ge,) = torch.autograd.grad(torchvision.ops.roi_align(xe, rois.cpu(), 2, 0.5, 2), xe, grad.float().cpu())
    assert g.dtype == dtype
    torch.testing.assert_close(g.float().cpu(), ge, atol=4e-2, rtol=2e-2)


def test_box_list_format_and_module(backend_name, device):
    require_backend(backend_name, device)
    x = make_input((2, 3, 12, 10), 40, device=device)
    boxes = [make_rois(5, 41)[:, 1:].to(device), make_rois(4, 42)[:, 1:].to(device)]
    expected = torchvision.ops.roi_align(x.cpu(), [b.cpu() for b in boxes], 3, 0.5, 2, True)
    out = call(backend_name, fastseg.ops.roi_align, x, boxes, 3, 0.5, 2, True)
    assert_close(out, expected, torch.float32)
    module = fastseg.ops.RoIAlign(3, 0.5, 2, True)
    assert_close(call(backend_name, module, x, boxes), expected, torch.float32)
    assert "RoIAlign(output_size=3" in repr(module)


def test_non_contiguous_and_channels_last(backend_name, device):
    require_backend(backend_name, device)
    base = make_input((2, 6, 14, 24), 50, device=device)
    rois = make_rois(12, 50, device=device)
    variants = {"strided": base[:, ::2, :, ::2], "channels_last": base.contiguous(memory_format=torch.channels_last),
                "transposed": base.transpose(2, 3)}
    for name, x in variants.items():
        expected = tv_roi_align(x.contiguous(), rois, 3, 0.5, 2)
        xg = x.detach().requires_grad_()
        out = call(backend_name, fastseg.ops.roi_align, xg, rois, 3, 0.5, 2)
        assert_close(out, expected, torch.float32)
        grad = make_input(out.shape, 51, device=device)
        (g,) = torch.autograd.grad(out, xg, grad)
        xe = x.detach().contiguous().cpu().requires_grad_()
        (ge,) = torch.autograd.grad(torchvision.ops.roi_align(xe, rois.cpu(), 3, 0.5, 2), xe, grad.cpu())
        assert_close(g, ge, torch.float32)
        if name == "channels_last" and backend_name != "torch":
            assert g.is_contiguous(memory_format=torch.channels_last), name


def test_empty_and_degenerate(backend_name, device):
    require_backend(backend_name, device)
    x = make_input((2, 3, 8, 8), 60, device=device).requires_grad_()
    empty = torch.zeros(0, 5, device=device)
    out = call(backend_name, fastseg.ops.roi_align, x, empty, 3, 1.0, 2)
    assert out.shape == (0, 3, 3, 3)
    (g,) = torch.autograd.grad(out.sum(), x, allow_unused=True) if out.requires_grad else (None,)
    assert g is None or torch.equal(g, torch.zeros_like(x))
    # zero-size, inverted, far outside, and huge boxes
    rois = torch.tensor([[0, 2, 2, 2, 2], [1, 5, 5, 1, 1], [0, 100, 100, 120, 130], [1, -50, -50, -20, -10],
                         [0, -100, -100, 500, 500], [1, 3.5, 3.5, 3.6, 3.6]], device=device)
    if backend_name != "native":  # adaptive sampling of the huge box is 90,000 samples a bin: too slow interpreted
        rois[4] = torch.tensor([0, -10, -10, 20, 20])
    # (an inverted box with aligned=True and adaptive sampling makes torchvision fail: tested apart)
    for aligned in (False, True):
        for sr in (-1, 2):
            out = call(backend_name, fastseg.ops.roi_align, x, rois, 2, 1.0, sr, aligned)
            assert_close(out, tv_roi_align(x.detach(), rois, 2, 1.0, sr, aligned), torch.float32)
            (g,) = torch.autograd.grad(out, x, torch.ones_like(out))
            xe = x.detach().cpu().requires_grad_()
            (ge,) = torch.autograd.grad(torchvision.ops.roi_align(xe, rois.cpu(), 2, 1.0, sr, aligned), xe,
                                        torch.ones(out.shape))
            assert_close(g, ge, torch.float32)


def test_zero_channels_and_one_pixel_map(backend_name, device):
    require_backend(backend_name, device)
    rois = make_rois(4, 70, device=device)
    x = torch.zeros(2, 0, 5, 5, device=device)
    assert call(backend_name, fastseg.ops.roi_align, x, rois, 2, 1.0, 2).shape == (4, 0, 2, 2)
    x = make_input((2, 3, 1, 1), 71, device=device)
    assert_close(call(backend_name, fastseg.ops.roi_align, x, rois, 2, 0.1, 2), tv_roi_align(x, rois, 2, 0.1, 2),
                 torch.float32)


@pytest.mark.parametrize("aligned", [False, True])
def test_gradcheck(backend_name, device, aligned):
    require_backend(backend_name, device)
    # small for the interpreter: gradcheck runs the op twice per input element
    shape, k = ((2, 2, 6, 7), 5) if backend_name == "native" else ((2, 1, 4, 5), 3)
    x = make_input(shape, 80, torch.float64, device).requires_grad_()
    rois = make_rois(k, 80, extent=6.0, max_side=6.0, dtype=torch.float64, device=device)

    def f(x):
        return call(backend_name, fastseg.ops.roi_align, x, rois, (2, 3), 1.0, 2, aligned)

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-7)
    if backend_name != "triton":  # (the interpreter: test_triton_double_backward below)
        # create_graph=True: the gradient is differentiable itself (torchvision raises here)
        assert torch.autograd.gradgradcheck(f, (x,), eps=1e-6, atol=1e-7)
    if backend_name == "native" or device == "cuda":  # the deterministic kernels (interpreter: too slow)
        torch.use_deterministic_algorithms(True)
        try:
            assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-7)
        finally:
            torch.use_deterministic_algorithms(False)


def test_triton_double_backward():
    """create_graph=True through the Triton ops (roi_align, roi_pool, MultiScaleRoIAlign's multi-level op):
    second-order gradients equal the torch backend's (gradgradcheck under the interpreter is too slow)."""
    require_backend("triton", "cpu")
    x = make_input((1, 2, 5, 6), 3, torch.float64)
    rois = make_rois(3, 3, n_images=1, extent=6.0, max_side=6.0, dtype=torch.float64)
    ops = [lambda t: fastseg.ops.roi_align(t, rois, (2, 2), 1.0, 2, True),
           lambda t: fastseg.ops.roi_pool(t, rois, (2, 2), 1.0),
           lambda t: fastseg.ops.poolers.multi_level_roi_align([t, t[:, :, ::2, ::2]], rois, torch.tensor([0, 1, 0]),
                                                              [1.0, 0.5], (2, 2), 2, True)]

    def second_order(backend_name, op):
        t = x.clone().requires_grad_()
        with fastseg.use_backend(backend_name):
            (g,) = torch.autograd.grad(op(t).pow(2).sum(), t, create_graph=True)
        return torch.autograd.grad(g.pow(2).sum(), t)[0]

    for op in ops:
        want = second_order("torch", op)
        assert want.abs().sum() > 0
        torch.testing.assert_close(second_order("triton", op), want)


# -- pool_mode="max" ------------------------------------------------------------------------------

@pytest.mark.parametrize("aligned", [False, True])
def test_max_mode_matches_reference(backend_name, device, aligned):
    require_backend(backend_name, device)
    shapes, k = shapes_for(backend_name)
    x = make_input(shapes[0], 90, torch.float64, device).requires_grad_()
    rois = make_rois(k, 90, n_images=shapes[0][0], dtype=torch.float64, device=device)
    out = call(backend_name, lambda *a: fastseg.ops.roi_align(*a, pool_mode="max"), x, rois, (3, 2), 0.5, 2, aligned)
    xr = x.detach().cpu().requires_grad_()
    expected = reference.roi_align(xr, rois.cpu(), 0.5, 3, 2, 2, aligned, max_mode=True)
    torch.testing.assert_close(out.cpu(), expected.detach())
    grad = make_input(out.shape, 91, torch.float64, device)
    (g,) = torch.autograd.grad(out, x, grad)
    (ge,) = torch.autograd.grad(expected, xr, grad.cpu())
    torch.testing.assert_close(g.cpu(), ge)


def test_max_mode_semantics():
    # A bin of 2x2 samples over a map with a single peak: max picks the largest bilinear sample.
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 1] = 8.0
    rois = torch.tensor([[0, 0.0, 0.0, 4.0, 4.0]])
    with fastseg.use_backend("native"):
        out = fastseg.ops.roi_align(x, rois, 1, 1.0, 2, pool_mode="max")
        avg = fastseg.ops.roi_align(x, rois, 1, 1.0, 2)
    # samples at 1, 3 on each axis: sample (1, 1) reads x[1, 1] exactly
    assert out.item() == 8.0 and avg.item() == 2.0


# -- determinism ----------------------------------------------------------------------------------

def test_deterministic_backward_is_bit_identical(backend_name, device):
    require_backend(backend_name, device)
    shapes, k = shapes_for(backend_name)
    x = make_input(shapes[0], 100, device=device).requires_grad_()
    rois = make_rois(k * 2, 100, n_images=shapes[0][0], device=device)
    rois[k:] = rois[:k]  # overlapping RoIs add into the same elements
    grad = make_input((2 * k, shapes[0][1], 3, 3), 101, device=device)
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True  # poison: empty tensors are NaN
    try:
        runs = [torch.autograd.grad(call(backend_name, fastseg.ops.roi_align, x, rois, 3, 0.5, 2), x, grad)[0]
                for _ in range(3)]
        out = call(backend_name, fastseg.ops.roi_align, x, rois, 3, 0.5, 2)
    finally:
        torch.use_deterministic_algorithms(False)
    assert not torch.isnan(out).any() and not torch.isnan(runs[0]).any()
    for r in runs[1:]:
        assert torch.equal(r, runs[0])


def test_native_backward_independent_of_thread_count():
    x = make_input((2, 48, 20, 20), 110).requires_grad_()
    rois = make_rois(300, 110, extent=70, max_side=40)
    grad = make_input((300, 48, 7, 7), 111)
    old = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            with fastseg.use_backend("native"):
                results.append(torch.autograd.grad(fastseg.ops.roi_align(x, rois, 7, 0.25, 2), x, grad)[0])
    finally:
        torch.set_num_threads(old)
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])



@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_native_nchw_and_channels_last_kernels_agree(mode, dtype):
    """The CPU has two kernels: plane by plane for NCHW input, vectorised over channels for channels-last
    input. Both sum in the same order, so they agree to the bit, forward and backward."""
    x = make_input((2, 24, 17, 23), 120, dtype)
    rois = make_rois(200, 120, extent=80, max_side=50)
    grad = make_input((200, 24, 5, 4), 121, dtype)
    results = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        xi = x.contiguous(memory_format=fmt).requires_grad_()
        with fastseg.use_backend("native"):
            out = fastseg.ops.roi_align(xi, rois, (5, 4), 0.25, -1, True, pool_mode=mode)
            results.append((out, torch.autograd.grad(out, xi, grad)[0]))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])

# -- property-based -------------------------------------------------------------------------------

@st.composite
def problems(draw):
    n = draw(st.integers(1, 2))
    c = draw(st.integers(1, 5))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    k = draw(st.integers(0, 6))
    coords = draw(st.lists(st.floats(-6, 30, allow_nan=False, width=32), min_size=4 * k, max_size=4 * k))
    idx = draw(st.lists(st.integers(0, n - 1), min_size=k, max_size=k))
    ph, pw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    scale = draw(st.sampled_from([0.25, 0.5, 1.0, 1.5]))
    sr = draw(st.integers(-1, 3))
    aligned = draw(st.booleans())
    rois = torch.cat([torch.tensor(idx, dtype=torch.float32).reshape(k, 1),
                      torch.tensor(coords, dtype=torch.float32).reshape(k, 4)], 1)
    x = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
    return x, rois, (ph, pw), scale, sr, aligned


def tv_or_reference(x, rois, size, scale, sr, aligned):
    """torchvision's answer; where torchvision fails (aligned, x2 < x1 and adaptive sampling: a negative
    sample count sizes a vector), the reference's: such a box has no samples and pools to 0."""
    try:
        return torchvision.ops.roi_align(x, rois, size, scale, sr, aligned)
    except (ValueError, RuntimeError):
        out = reference.roi_align(x, rois, scale, size[0], size[1], sr, aligned)
        return out + 0 * x.sum() if x.requires_grad else out  # a gradient of zeros where nothing is sampled


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems())
def test_property_native_against_torchvision(problem):
    x, rois, size, scale, sr, aligned = problem
    x = x.requires_grad_()
    with fastseg.use_backend("native"):
        out = fastseg.ops.roi_align(x, rois, size, scale, sr, aligned)
    expected = tv_or_reference(x, rois, size, scale, sr, aligned)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    (g,) = torch.autograd.grad(out, x, grad)
    (ge,) = torch.autograd.grad(expected, x, grad)
    torch.testing.assert_close(g, ge, atol=1e-5, rtol=1e-5)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems())
def test_property_triton_and_reference_against_torchvision(problem):
    x, rois, size, scale, sr, aligned = problem
    expected = tv_or_reference(x, rois, size, scale, sr, aligned)
    for name in ("triton", "torch"):
        require_backend(name, "cpu")
        with fastseg.use_backend(name):
            torch.testing.assert_close(fastseg.ops.roi_align(x, rois, size, scale, sr, aligned), expected,
                                       atol=1e-5, rtol=1e-5)


# -- bad input ------------------------------------------------------------------------------------

X = torch.zeros(2, 3, 8, 8)
R = torch.tensor([[0, 1.0, 1, 4, 4]])


@pytest.mark.parametrize("args, kwargs, message", [
    ((torch.zeros(3, 8, 8), R, 2), {}, "input must be a 4-D tensor"),
    ((X.long(), R, 2), {}, "input must be a floating-point tensor"),
    (([1, 2], R, 2), {}, "input must be a torch.Tensor"),
    ((X, torch.zeros(3, 4), 2), {}, r"boxes must be a tensor of shape \[K, 5\]"),
    ((X, torch.zeros(3, 6), 2), {}, r"boxes must be a tensor of shape \[K, 5\]"),
    ((X, [torch.zeros(3, 5)], 2), {}, r"boxes\[0\] must be a 2-D tensor of shape \[L, 4\]"),
    ((X, torch.tensor([[2, 1.0, 1, 4, 4]]), 2), {}, "batch index 2.0, out of range for a batch of 2"),
    ((X, torch.tensor([[-1, 1.0, 1, 4, 4]]), 2), {}, "out of range"),
    ((X, [torch.zeros(1, 4)] * 3, 2), {}, "boxes has 3 entries"),
    ((X, R.long(), 2), {}, "boxes must be a floating-point tensor"),
    ((X, R, 0), {}, "output_size must be positive"),
    ((X, R, (2, -1)), {}, "output_size must be positive"),
    ((X, R, (2, 2, 2)), {}, "output_size must be an int or a pair"),
    ((X, R, 2), {"pool_mode": "sum"}, "pool_mode must be 'avg' or 'max'"),
    ((X, R, 2), {"sampling_ratio": 1.5}, "sampling_ratio must be an int"),
])
def test_bad_input_raises_clear_error(backend_name, args, kwargs, message):
    with fastseg.use_backend(backend_name), pytest.raises(ValueError, match=message):
        fastseg.ops.roi_align(*args, **kwargs)


@pytest.mark.parametrize("args, message", [
    ((torch.zeros(3, 8, 8), R, 1.0, 2, 2, 2, False), "input must be a 4-D tensor"),
    ((X, torch.zeros(3, 4), 1.0, 2, 2, 2, False), r"rois must be a 2-D tensor of shape \[K, 5\]"),
    ((X, torch.tensor([[5, 1.0, 1, 4, 4]]), 1.0, 2, 2, 2, False), "batch index 5"),
    ((X, R, 1.0, 0, 2, 2, False), "output_size must be positive"),
])
def test_native_op_checks_its_inputs(args, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fastseg.roi_align(*args)


# -- registration: opcheck and torch.compile ------------------------------------------------------

@pytest.mark.parametrize("namespace", ["fastseg", "fastseg_triton"])
@pytest.mark.parametrize("max_mode", [False, True])
def test_opcheck(namespace, device, max_mode):
    if namespace == "fastseg_triton":
        require_backend("triton", device)
        import fastseg.kernels.roi_align  # noqa: F401  (registers fastseg_triton::*)
    x = make_input((2, 3, 8, 9), 120, device=device).requires_grad_()
    rois = make_rois(6, 120, extent=20, max_side=12, device=device)
    op = getattr(torch.ops, namespace).roi_align.default
    torch.library.opcheck(op, (x, rois, 0.5, 2, 3, 2, True, max_mode))
    torch.library.opcheck(op, (x, rois[:0], 0.5, 2, 3, 2, True, max_mode))
    xcl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(op, (xcl, rois, 0.5, 2, 3, -1, False, max_mode))
    grad = make_input((6, 3, 2, 3), 121, device=device)
    bop = getattr(torch.ops, namespace).roi_align_backward.default
    torch.library.opcheck(bop, (grad, x.detach(), rois, 0.5, 2, 3, 2, True, max_mode, True),
                          test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_calls_roi_align():
    torch._dynamo.reset()

    @torch.compile(fullgraph=True)
    def head(x, rois):
        return torch.ops.fastseg.roi_align(x * 2.0, rois, 0.5, 3, 3, 2, False, False).relu()

    x = make_input((2, 4, 10, 10), 130)
    rois = make_rois(7, 130, extent=15, max_side=8)
    expected = torchvision.ops.roi_align(x * 2.0, rois, 3, 0.5, 2).relu()
    torch.testing.assert_close(head(x, rois), expected)


@pytest.mark.parametrize("op", ["roi_align", "roi_align_backward", "multi_level_roi_align",
                                "multi_level_roi_align_backward", "roi_pool", "roi_pool_backward"])
def test_kernels_registered(op):
    from fastseg import _extension

    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastseg::{op}", "CPU")
    if _extension.with_cuda():
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastseg::{op}", "CUDA")
