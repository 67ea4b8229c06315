"""roi_pool and RoIPool: every backend against torchvision and the reference, forward and backward."""
import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastseg
from fastseg import reference
from conftest import call, require_backend
from test_roi_align import make_input, make_rois

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def tv_roi_pool(x, rois, *args):
    up = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torchvision.ops.roi_pool(x.cpu().to(up), rois.cpu().to(up), *args)


def sizes(backend_name):
    return ((2, 6, 16, 20), 50) if backend_name == "native" else ((2, 3, 10, 9), 10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_backward_match_torchvision(backend_name, device, dtype):
    require_backend(backend_name, device)
    if backend_name == "triton" and device == "cpu" and dtype == torch.bfloat16:
        dtype = torch.float16  # the interpreter has no bf16 arithmetic
    shape, k = sizes(backend_name)
    x = make_input(shape, 1, dtype, device).requires_grad_()
    rois = make_rois(k, 1, extent=60, max_side=40, device=device)
    for scale, size in [(0.25, (3, 4)), (0.5, 2), (1.0, 5)]:
        out = call(backend_name, fastseg.ops.roi_pool, x, rois, size, scale)
        xe = x.detach().cpu().to(torch.float64 if dtype == torch.float64 else torch.float32).requires_grad_()
        expected = torchvision.ops.roi_pool(xe, rois.cpu().to(xe.dtype), size, scale)
        assert out.dtype == dtype
        # max pooling selects input values: exact in every dtype
        assert torch.equal(out.cpu().to(expected.dtype), expected.detach().to(dtype).to(expected.dtype))
        grad = make_input(out.shape, 2, dtype, device)
        (g,) = torch.autograd.grad(out, x, grad)
        (ge,) = torch.autograd.grad(expected, xe, grad.cpu().to(xe.dtype))
        tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}[dtype]
        torch.testing.assert_close(g.cpu().to(ge.dtype), ge, atol=tol, rtol=tol)


@pytest.mark.parametrize("values", ["ties", "special"])
def test_native_argmax_ties_and_special_values(values):
    """The CPU scans bins 16 columns at a time (fp32, AVX-512) and must still pick torchvision's element:
    the first maximum in row-major order. Many ties (integer values), -inf, NaN and bins wider than 16
    columns; the gradient shows which element was picked."""
    g = torch.Generator().manual_seed(7)
    x = torch.randint(0, 3, (2, 5, 40, 70), generator=g).float()
    if values == "special":
        x[torch.rand(x.shape, generator=g) < 0.2] = float("-inf")
        x[torch.rand(x.shape, generator=g) < 0.05] = float("nan")
        x[:, :, :20, :40] = float("-inf")  # whole bins of -inf: torchvision's -FLT_MAX sentinel, no argmax
    rois = make_rois(60, 8, extent=70, max_side=70)
    xf, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
    with fastseg.use_backend("native"):
        out = fastseg.ops.roi_pool(xf, rois, (3, 2), 1.0)
    expected = torchvision.ops.roi_pool(xt, rois, (3, 2), 1.0)
    assert torch.equal(out.nan_to_num(), expected.nan_to_num())
    grad = torch.randn(out.shape, generator=g)
    assert torch.equal(torch.autograd.grad(out, xf, grad)[0], torch.autograd.grad(expected, xt, grad)[0])


def test_box_list_module_channels_last_and_strided(backend_name, device):
    require_backend(backend_name, device)
    base = make_input((2, 6, 12, 20), 3, device=device)
    boxes = [make_rois(5, 4, extent=30, max_side=20)[:, 1:].to(device), make_rois(3, 5)[:, 1:].to(device)]
    for x in (base, base.contiguous(memory_format=torch.channels_last), base[:, ::2, :, ::2]):
        expected = torchvision.ops.roi_pool(x.contiguous().cpu(), [b.cpu() for b in boxes], 3, 0.5)
        assert torch.equal(call(backend_name, fastseg.ops.roi_pool, x, boxes, 3, 0.5).cpu(), expected)
        module = fastseg.ops.RoIPool(3, 0.5)
        assert torch.equal(call(backend_name, module, x, boxes).cpu(), expected)
    assert repr(module) == "RoIPool(output_size=3, spatial_scale=0.5)"


def test_empty_and_outside(backend_name, device):
    require_backend(backend_name, device)
    x = make_input((2, 3, 8, 8), 6, device=device).requires_grad_()
    assert call(backend_name, fastseg.ops.roi_pool, x, torch.zeros(0, 5, device=device), 2, 1.0).shape == (0, 3, 2, 2)
    rois = torch.tensor([[0, 50, 50, 60, 60], [1, -20, -20, -10, -10], [0, 2.5, 2.5, 2.5, 2.5], [1, 6, 6, 2, 2],
                         [0, -1.5, -0.5, 9.5, 9.5]], device=device)
    out = call(backend_name, fastseg.ops.roi_pool, x, rois, 3, 1.0)
    expected = tv_roi_pool(x.detach(), rois, 3, 1.0)
    assert torch.equal(out.detach().cpu(), expected)
    (g,) = torch.autograd.grad(out, x, torch.ones_like(out))
    xe = x.detach().cpu().requires_grad_()
    (ge,) = torch.autograd.grad(torchvision.ops.roi_pool(xe, rois.cpu(), 3, 1.0), xe, torch.ones(out.shape))
    assert torch.equal(g.cpu(), ge)


def test_rounding_is_half_away_from_zero(backend_name):
    # x1 * scale = 2.5 rounds to 3 (std::round), not 2 (torch.round's half to even)
    x = torch.arange(64.0).reshape(1, 1, 8, 8)
    rois = torch.tensor([[0, 5.0, 5.0, 9.0, 9.0], [0, -5.0, -5.0, 3.0, 3.0]])
    out = call(backend_name, fastseg.ops.roi_pool, x, rois, 1, 0.5)
    assert torch.equal(out, torchvision.ops.roi_pool(x, rois, 1, 0.5))


def test_gradcheck(backend_name, device):
    require_backend(backend_name, device)
    # distinct values: the argmax is stable under the finite-difference step
    shape = (2, 2, 6, 7) if backend_name == "native" else (2, 1, 4, 5)
    numel = shape[0] * shape[1] * shape[2] * shape[3]
    x = (torch.randperm(numel, generator=torch.Generator().manual_seed(7)).double().reshape(shape)
         / 10).to(device).requires_grad_()
    rois = make_rois(5, 7, extent=6.0, max_side=6.0, dtype=torch.float64, device=device)
    assert torch.autograd.gradcheck(lambda x: call(backend_name, fastseg.ops.roi_pool, x, rois, (2, 3), 1.0), (x,))
    if backend_name != "triton":  # (the interpreter: test_roi_align.py::test_triton_double_backward)
        # create_graph=True: the gradient is differentiable itself (torchvision raises here)
        assert torch.autograd.gradgradcheck(
            lambda x: call(backend_name, fastseg.ops.roi_pool, x, rois, (2, 3), 1.0), (x,))


def test_deterministic_backward(backend_name, device):
    require_backend(backend_name, device)
    shape, k = sizes(backend_name)
    x = make_input(shape, 8, device=device).requires_grad_()
    rois = make_rois(k, 8, extent=60, max_side=40, device=device)
    rois = torch.cat([rois, rois])
    torch.use_deterministic_algorithms(True)
    try:
        runs = [torch.autograd.grad(call(backend_name, fastseg.ops.roi_pool, x, rois, 3, 0.25), x,
                                    torch.ones(2 * k, shape[1], 3, 3, device=device))[0] for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(torch.equal(r, runs[0]) for r in runs[1:])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 2), c=st.integers(1, 4), h=st.integers(1, 9), w=st.integers(1, 9), k=st.integers(0, 5),
       ph=st.integers(1, 4), pw=st.integers(1, 4), scale=st.sampled_from([0.25, 0.5, 1.0, 1.3]),
       seed=st.integers(0, 1000))
def test_property_native_and_reference(n, c, h, w, k, ph, pw, scale, seed):
    x = make_input((n, c, h, w), seed)
    rois = make_rois(k, seed, n_images=n, extent=12, max_side=10)
    expected = torchvision.ops.roi_pool(x, rois, (ph, pw), scale)
    for name in ("native", "torch"):
        assert torch.equal(call(name, fastseg.ops.roi_pool, x, rois, (ph, pw), scale), expected)


def test_reference_is_exported():
    x = make_input((1, 2, 5, 5), 9)
    rois = make_rois(3, 9, n_images=1, extent=8, max_side=6)
    assert torch.equal(reference.roi_pool(x, rois, 1.0, 2, 2), torchvision.ops.roi_pool(x, rois, 2, 1.0))


@pytest.mark.parametrize("args, message", [
    ((torch.zeros(3, 8, 8), torch.zeros(1, 5), 2), "input must be a 4-D tensor"),
    ((torch.zeros(1, 3, 8, 8), torch.zeros(1, 4), 2), r"boxes must be a tensor of shape \[K, 5\]"),
    ((torch.zeros(1, 3, 8, 8), torch.tensor([[3.0, 0, 0, 1, 1]]), 2), "out of range for a batch of 1"),
    ((torch.zeros(1, 3, 8, 8), torch.zeros(1, 5), 0), "output_size must be positive"),
])
def test_bad_input(backend_name, args, message):
    with fastseg.use_backend(backend_name), pytest.raises(ValueError, match=message):
        fastseg.ops.roi_pool(*args)


@pytest.mark.parametrize("namespace", ["fastseg", "fastseg_triton"])
def test_opcheck(namespace, device):
    if namespace == "fastseg_triton":
        require_backend("triton", device)
        import fastseg.kernels.roi_pool  # noqa: F401
    x = make_input((2, 3, 8, 9), 10, device=device).requires_grad_()
    rois = make_rois(6, 10, extent=20, max_side=12, device=device)
    op = getattr(torch.ops, namespace).roi_pool.default
    torch.library.opcheck(op, (x, rois, 0.5, 2, 3))
    torch.library.opcheck(op, (x, rois[:0], 0.5, 2, 3))
