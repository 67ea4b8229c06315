"""sigmoid_focal_loss and sigmoid_focal_loss_with_labels: every backend against torchvision and the
reference, values and gradients."""
import re

import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastseg
from fastseg import _extension, reference
from conftest import call, require_backend

REDUCTIONS = ["none", "mean", "sum"]
# (rtol, atol) of the loss / gradient per input dtype. fp16/bf16 are computed in fp32 and rounded
# once, so they are compared with the fp32 reference at their own rounding.
TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (2e-5, 1e-6),
       torch.float16: (2e-3, 1e-4), torch.bfloat16: (1.6e-2, 1e-3)}
PARAMS = [(0.25, 2.0), (-1, 2.0), (0.5, 0.0), (0.75, 1.0), (0.25, 1.5), (1.0, 3.0), (0.0, 0.5)]


def small(backend_name):
    return backend_name == "triton"  # the Triton interpreter is slow: small shapes


def make(shape, seed, dtype=torch.float32, device="cpu", scale=4.0, soft=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    t = torch.rand(shape, generator=g, dtype=torch.float64) if soft else (
        torch.rand(shape, generator=g) < 0.3).double()
    return x.to(device, dtype), t.to(device, dtype)


def tv(x, t, alpha, gamma, reduction):
    """torchvision in fp64 on the CPU: the exact answer to compare with."""
    return torchvision.ops.sigmoid_focal_loss(x.cpu().double(), t.cpu().double(), alpha, gamma, reduction)


def close(out, expected, dtype, what=""):
    rtol, atol = TOL[dtype]
    # a value beyond the dtype's range (an fp16 sum) is inf in the result, as in torchvision
    expected = torch.where(expected.abs() > torch.finfo(dtype).max, expected.sign() * float("inf"), expected)
    finite = expected[torch.isfinite(expected)]
    if finite.numel() and finite.abs().max() > 1e3:
        atol = atol * float(finite.abs().max())  # sums of many terms: relative to their size
    torch.testing.assert_close(out.cpu().double(), expected.cpu().double(), rtol=rtol, atol=atol, msg=what)


# -- values ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_torchvision(backend_name, device, dtype, reduction):
    require_backend(backend_name, device)
    shapes = [(0,), (1,), (37,), (5, 9), (3, 4, 5)] + ([] if small(backend_name) else [(1000, 80), (3, 1031)])
    for i, shape in enumerate(shapes):
        for alpha, gamma in PARAMS:
            x, t = make(shape, i, dtype, device, soft=i % 2 == 1)
            out = call(backend_name, fastseg.ops.sigmoid_focal_loss, x, t, alpha, gamma, reduction)
            assert out.dtype == dtype and out.device.type == device
            assert out.shape == (x.shape if reduction == "none" else ())
            expected = tv(x, t, alpha, gamma, reduction)
            if shape == (0,) and reduction == "mean":
                assert torch.isnan(out)
                continue
            close(out, expected, dtype, f"{shape} alpha={alpha} gamma={gamma}")


def test_default_arguments_are_torchvisions():
    x, t = make((20, 3), 0)
    assert torch.allclose(fastseg.ops.sigmoid_focal_loss(x, t), torchvision.ops.sigmoid_focal_loss(x, t))


def test_extreme_logits(backend_name, device):
    require_backend(backend_name, device)
    x = torch.tensor([-200.0, -90.0, -87.5, -60.0, -20.0, -1e-30, 0.0, 1e-30, 20.0, 60.0, 87.5, 90.0, 200.0])
    x = torch.cat([x, x]).to(device)
    t = torch.cat([torch.zeros(13), torch.ones(13)]).to(device)
    for reduction in REDUCTIONS:
        out = call(backend_name, fastseg.ops.sigmoid_focal_loss, x, t, 0.25, 2.0, reduction)
        assert torch.isfinite(out).all()
        close(out, tv(x, t, 0.25, 2.0, reduction), torch.float32)
        xg = x.clone().requires_grad_()
        call(backend_name, fastseg.ops.sigmoid_focal_loss, xg, t, 0.25, 2.0, "sum").backward()
        xt = x.cpu().double().requires_grad_()
        tv(xt, t, 0.25, 2.0, "sum").backward()
        close(xg.grad, xt.grad, torch.float32)


def test_saturated_gradient_is_zero_not_nan():
    # gamma < 1 at a saturated logit: torchvision's autograd gives 0 * inf = NaN, the limit is 0.
    x = torch.tensor([100.0, -100.0], requires_grad=True)
    t = torch.tensor([1.0, 0.0])
    for name in ["native", "torch"]:
        x.grad = None
        call(name, fastseg.ops.sigmoid_focal_loss, x, t, 0.25, 0.5, "sum").backward()
        if name == "native":
            assert torch.equal(x.grad, torch.zeros(2))


def test_nan_propagates():
    x = torch.tensor([float("nan"), 1.0])
    t = torch.tensor([1.0, 0.0])
    out = call("native", fastseg.ops.sigmoid_focal_loss, x, t, 0.25, 2.0, "none")
    assert torch.isnan(out[0]) and torch.isfinite(out[1])


def test_poisoned_memory_is_overwritten():
    # Fill freed memory with NaN first: an element the kernel forgets to write would show.
    n = 1 << 20
    x, t = make((n,), 3)
    for _ in range(2):
        poison = torch.full((n,), float("nan"))
        del poison
        out = call("native", fastseg.ops.sigmoid_focal_loss, x, t, 0.25, 2.0, "none")
        assert torch.isfinite(out).all()
        poison = torch.full((n,), float("nan"))
        del poison
        xg = x.clone().requires_grad_()
        call("native", fastseg.ops.sigmoid_focal_loss, xg, t, 0.25, 2.0, "none").backward(torch.ones(n))
        assert torch.isfinite(xg.grad).all()


def test_non_contiguous(backend_name, device):
    require_backend(backend_name, device)
    x, t = make((40, 30), 5, device=device)
    xs, ts = x.t(), t.t()  # transposed views
    assert not xs.is_contiguous()
    for reduction in REDUCTIONS:
        out = call(backend_name, fastseg.ops.sigmoid_focal_loss, xs, ts, 0.25, 2.0, reduction)
        close(out, tv(xs, ts, 0.25, 2.0, reduction), torch.float32)
    xc = torch.randn(2, 3, 8, 8, device=device).to(memory_format=torch.channels_last)
    tc = (torch.rand(2, 3, 8, 8, device=device) < 0.5).float()
    out = call(backend_name, fastseg.ops.sigmoid_focal_loss, xc, tc, 0.25, 2.0, "none")
    close(out, tv(xc, tc, 0.25, 2.0, "none"), torch.float32)


def test_sum_is_deterministic_across_thread_counts():
    x, t = make((300_000,), 9)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fastseg.ops.sigmoid_focal_loss(x, t, reduction="sum")
        torch.set_num_threads(max(2, threads))
        many = fastseg.ops.sigmoid_focal_loss(x, t, reduction="sum")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


# -- gradients ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradient_matches_torchvision(backend_name, device, dtype, reduction):
    require_backend(backend_name, device)
    for i, shape in enumerate([(0,), (13,), (7, 11)] + ([] if small(backend_name) else [(500, 80)])):
        for alpha, gamma in PARAMS:
            x, t = make(shape, 100 + i, dtype, device, soft=i % 2 == 0)
            xg = x.clone().requires_grad_()
            out = call(backend_name, fastseg.ops.sigmoid_focal_loss, xg, t, alpha, gamma, reduction)
            g = torch.randn(out.shape, generator=torch.Generator().manual_seed(i)).to(device, dtype)
            out.backward(g)
            xt = x.cpu().double().requires_grad_()
            tv(xt, t, alpha, gamma, reduction).backward(g.cpu().double())
            assert xg.grad.dtype == dtype
            close(xg.grad, xt.grad, dtype, f"{shape} alpha={alpha} gamma={gamma}")


def test_broadcast_gradient_of_none(backend_name, device):
    """loss.sum().backward() on reduction="none" sends a broadcast gradient (all strides 0), which the
    backward reads as one number (the "sum" kernel): same gradient as torchvision's, and as the "sum"
    reduction's, for both forms of the loss."""
    require_backend(backend_name, device)
    x, t = make((37, 9), 7, device=device)
    logits, labels = make_labels(37, 9, 8, torch.float32, device)
    grads = {}
    for reduction, then_sum in [("none", True), ("sum", False)]:
        xg, lg = x.clone().requires_grad_(), logits.clone().requires_grad_()
        out = call(backend_name, fastseg.ops.sigmoid_focal_loss, xg, t, 0.25, 2.0, reduction)
        out_l = call(backend_name, fastseg.ops.sigmoid_focal_loss_with_labels, lg, labels, 0.25, 2.0, 3.0, -1,
                     reduction)
        ((out.sum() if then_sum else out) * 2.5 + (out_l.sum() if then_sum else out_l)).backward()
        grads[reduction] = (xg.grad, lg.grad)
    xt = x.cpu().double().requires_grad_()
    (tv(xt, t, 0.25, 2.0, "none").sum() * 2.5).backward()
    close(grads["none"][0], xt.grad, torch.float32)
    torch.testing.assert_close(grads["none"][0], grads["sum"][0], rtol=0, atol=0)
    torch.testing.assert_close(grads["none"][1], grads["sum"][1], rtol=1e-6, atol=1e-7)


def test_targets_gradient(backend_name, device):
    require_backend(backend_name, device)
    x, t = make((9, 5), 3, device=device, soft=True)
    for reduction in REDUCTIONS:
        tg = t.clone().requires_grad_()
        out = call(backend_name, fastseg.ops.sigmoid_focal_loss, x, tg, 0.25, 2.0, reduction)
        out.backward(torch.ones_like(out))
        tt = t.cpu().double().requires_grad_()
        out_t = tv(x, tt, 0.25, 2.0, reduction)
        out_t.backward(torch.ones_like(out_t))
        close(tg.grad, tt.grad, torch.float32)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck(backend_name, device, reduction):
    require_backend(backend_name, device)
    x, t = make((6, 5), 7, torch.float64, device, scale=2.0, soft=True)
    for alpha, gamma in [(0.25, 2.0), (-1, 1.5), (0.6, 1.0), (0.4, 0.0), (0.25, 3.0)]:
        x_ = x.clone().requires_grad_()
        t_ = t.clone().requires_grad_()
        assert torch.autograd.gradcheck(
            lambda a, b: call(backend_name, fastseg.ops.sigmoid_focal_loss, a, b, alpha, gamma, reduction),
            (x_, t_))
        # create_graph=True: the gradients are themselves differentiable (double backward)
        assert torch.autograd.gradgradcheck(
            lambda a, b: call(backend_name, fastseg.ops.sigmoid_focal_loss, a, b, alpha, gamma, reduction),
            (x_, t_))


# -- labels form ---------------------------------------------------------------------------------------

def make_labels(n, c, seed, dtype=torch.float32, device="cpu", ignore_index=-1):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=g, dtype=torch.float64) * 4).to(device, dtype)
    # positives, background (c), ignored, and other out-of-range values (background too)
    labels = torch.randint(0, c + 1, (n,), generator=g)
    r = torch.rand(n, generator=g)
    labels[r < 0.15] = ignore_index
    labels[(r > 0.9) & (r < 0.95)] = c + 7
    return logits, labels.to(device)


def labels_expected(logits, labels, alpha, gamma, normalizer, ignore_index, reduction):
    """torchvision on an explicit one-hot, masked, then divided (fp64, CPU)."""
    x = logits.cpu().double()
    lab = labels.cpu()
    c = x.shape[1]
    onehot = torch.zeros_like(x)
    for i, v in enumerate(lab.tolist()):
        if 0 <= v < c and v != ignore_index:
            onehot[i, v] = 1
    loss = torchvision.ops.sigmoid_focal_loss(x, onehot, alpha, gamma, "none") * (lab != ignore_index)[:, None]
    loss = {"none": loss, "sum": loss.sum(), "mean": loss.mean()}[reduction]
    if normalizer is not None:
        loss = loss / (normalizer.cpu().double().reshape(()) if isinstance(normalizer, torch.Tensor) else normalizer)
    return loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_labels_matches_one_hot_torchvision(backend_name, device, dtype, reduction):
    require_backend(backend_name, device)
    sizes = [(0, 5), (1, 1), (17, 3), (40, 11)] + ([] if small(backend_name) else [(700, 80), (3, 1500)])
    for i, (n, c) in enumerate(sizes):
        for normalizer in [None, 3.0, torch.tensor(7.5, device=device), torch.tensor([2.0], device=device)]:
            for ignore_index in [-1, 2]:
                logits, labels = make_labels(n, c, i, dtype, device, ignore_index)
                out = call(backend_name, fastseg.ops.sigmoid_focal_loss_with_labels, logits, labels, 0.25, 2.0,
                           normalizer, ignore_index, reduction)
                assert out.dtype == dtype and out.shape == ((n, c) if reduction == "none" else ())
                expected = labels_expected(logits, labels, 0.25, 2.0, normalizer, ignore_index, reduction)
                if n == 0 and reduction == "mean":
                    assert torch.isnan(out)
                    continue
                close(out, expected, dtype, f"{n}x{c} {normalizer} {ignore_index}")


def test_labels_gradients(backend_name, device):
    require_backend(backend_name, device)
    for reduction in REDUCTIONS:
        for alpha, gamma in [(0.25, 2.0), (-1, 1.5), (0.5, 0.0)]:
            logits, labels = make_labels(30, 6, 1, torch.float64, device)
            lg = logits.clone().requires_grad_()
            norm = torch.tensor(4.0, dtype=torch.float64, device=device, requires_grad=True)
            out = call(backend_name, fastseg.ops.sigmoid_focal_loss_with_labels, lg, labels, alpha, gamma, norm,
                       -1, reduction)
            out.backward(torch.ones_like(out) * 1.5)
            lt = logits.cpu().requires_grad_()
            nt = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
            exp = labels_expected(lt, labels, alpha, gamma, nt, -1, reduction)
            exp.backward(torch.ones_like(exp) * 1.5)
            close(lg.grad, lt.grad, torch.float64)
            close(norm.grad, nt.grad, torch.float64)


def test_labels_gradcheck(backend_name, device):
    require_backend(backend_name, device)
    logits, labels = make_labels(8, 4, 2, torch.float64, device)
    for reduction in REDUCTIONS:
        lg = logits.clone().requires_grad_()
        norm = torch.tensor(2.5, dtype=torch.float64, device=device, requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda a, b: call(backend_name, fastseg.ops.sigmoid_focal_loss_with_labels, a, labels, 0.25, 2.0, b,
                              -1, reduction), (lg, norm))
        for normalizer in (norm, 2.5):  # a tensor (differentiated) and a number (a scale)
            assert torch.autograd.gradgradcheck(
                lambda a: call(backend_name, fastseg.ops.sigmoid_focal_loss_with_labels, a, labels, 0.25, 2.0,
                               normalizer, -1, reduction), (lg,))
        assert torch.autograd.gradgradcheck(
            lambda a, b: call(backend_name, fastseg.ops.sigmoid_focal_loss_with_labels, a, labels, 0.25, 2.0, b,
                              -1, reduction), (lg, norm))


def test_labels_int32_and_all_ignored():
    logits, labels = make_labels(50, 7, 4)
    a = fastseg.ops.sigmoid_focal_loss_with_labels(logits, labels.int())
    b = fastseg.ops.sigmoid_focal_loss_with_labels(logits, labels)
    assert torch.equal(a, b)
    ignored = torch.full((50,), -1)
    lg = logits.clone().requires_grad_()
    out = fastseg.ops.sigmoid_focal_loss_with_labels(lg, ignored, reduction="sum")
    out.backward()
    assert out.item() == 0 and torch.equal(lg.grad, torch.zeros_like(logits))


# -- property-based ----------------------------------------------------------------------------------

@st.composite
def focal_problems(draw, max_elems):
    dims = draw(st.lists(st.integers(0, 9), min_size=1, max_size=3))
    numel = 1
    for d in dims:
        numel *= d
    if numel > max_elems:
        dims = [max_elems]
        numel = max_elems
    vals = st.floats(-30, 30, width=32) | st.sampled_from([0.0, -0.0, 1e-8, -1e-8, 17.0, -17.0])
    x = torch.tensor(draw(st.lists(vals, min_size=numel, max_size=numel)), dtype=torch.float32).reshape(dims)
    t = torch.tensor(draw(st.lists(st.sampled_from([0.0, 1.0]) | st.floats(0, 1, width=32),
                                   min_size=numel, max_size=numel)), dtype=torch.float32).reshape(dims)
    alpha = draw(st.sampled_from([-1.0, 0.0, 0.25, 1.0]) | st.floats(0, 1))
    gamma = draw(st.sampled_from([0.0, 1.0, 2.0, 3.0]) | st.floats(1, 5))
    return x, t, alpha, gamma, draw(st.sampled_from(REDUCTIONS))


@pytest.mark.parametrize("name", ["native", "torch"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=focal_problems(max_elems=300))
def test_property_against_torchvision(name, problem):
    x, t, alpha, gamma, reduction = problem
    xg = x.clone().requires_grad_()
    out = call(name, fastseg.ops.sigmoid_focal_loss, xg, t, alpha, gamma, reduction)
    expected = tv(x, t, alpha, gamma, reduction)
    if x.numel() == 0 and reduction == "mean":
        return
    close(out, expected, torch.float32)
    out.backward(torch.ones_like(out))
    xt = x.double().requires_grad_()
    e = tv(xt, t, alpha, gamma, reduction)
    e.backward(torch.ones_like(e))
    close(xg.grad, xt.grad, torch.float32)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=focal_problems(max_elems=60))
def test_property_triton_against_torchvision(problem):
    require_backend("triton", "cpu")
    x, t, alpha, gamma, reduction = problem
    out = call("triton", fastseg.ops.sigmoid_focal_loss, x, t, alpha, gamma, reduction)
    if x.numel() == 0 and reduction == "mean":
        return
    close(out, tv(x, t, alpha, gamma, reduction), torch.float32)


# -- bad input ---------------------------------------------------------------------------------------

def bad_inputs():
    x, t = make((4, 3), 0)
    yield "inputs not a tensor", (x.tolist(), t), {}, "torch.Tensor"
    yield "integer inputs", (x.long(), t), {}, "floating-point"
    yield "integer targets", (x, t.long()), {}, "targets must be a floating-point"
    yield "shapes differ", (x, t[:3]), {}, "same shape"
    yield "alpha 2", (x, t), {"alpha": 2.0}, "alpha"
    yield "alpha -0.5", (x, t), {"alpha": -0.5}, "alpha"
    yield "alpha nan", (x, t), {"alpha": float("nan")}, "alpha"
    yield "gamma string", (x, t), {"gamma": "2"}, "gamma"
    yield "bad reduction", (x, t), {"reduction": "avg"}, "reduction"


BAD = list(bad_inputs())


@pytest.mark.parametrize("name,args,kwargs,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_clear_error(backend_name, name, args, kwargs, message):
    with fastseg.use_backend(backend_name), pytest.raises(ValueError, match=re.escape(message)):
        fastseg.ops.sigmoid_focal_loss(*args, **kwargs)


def test_labels_bad_input():
    logits, labels = make_labels(5, 3, 0)
    f = fastseg.ops.sigmoid_focal_loss_with_labels
    for args, kwargs, message in [
        ((logits.flatten(), labels), {}, "2-D"),
        ((logits, labels[:4]), {}, "one label per row"),
        ((logits, labels.float()), {}, "integer tensor"),
        ((logits.long(), labels), {}, "floating-point"),
        ((logits, labels), {"normalizer": torch.ones(2)}, "one element"),
        ((logits, labels), {"normalizer": "x"}, "normalizer"),
        ((logits, labels), {"ignore_index": 1.5}, "ignore_index"),
        ((logits, labels), {"reduction": "max"}, "reduction"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            f(*args, **kwargs)


def test_native_op_checks_its_inputs():
    x, t = make((4, 3), 0)
    with pytest.raises(RuntimeError, match="same shape"):
        torch.ops.fastseg.sigmoid_focal_loss(x, t[:2], 0.25, 2.0, 0)
    with pytest.raises(RuntimeError, match="reduction must be"):
        torch.ops.fastseg.sigmoid_focal_loss(x, t, 0.25, 2.0, 5)
    with pytest.raises(RuntimeError, match="grad of a reduced loss"):
        torch.ops.fastseg.sigmoid_focal_loss_backward(torch.ones(3), x, t, 0.25, 2.0, 2)
    with pytest.raises(RuntimeError, match="labels must be an integer"):
        torch.ops.fastseg.sigmoid_focal_loss_with_labels(x, t[:, 0], 0.25, 2.0, None, 1.0, -1, 2)


# -- registration ------------------------------------------------------------------------------------

C_OPS = ["sigmoid_focal_loss", "sigmoid_focal_loss_backward", "sigmoid_focal_loss_with_labels",
         "sigmoid_focal_loss_with_labels_backward"]


@pytest.mark.parametrize("op", C_OPS)
def test_kernels_registered(op):
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    assert has(f"fastseg::{op}", "CPU")
    if _extension.with_cuda():
        assert has(f"fastseg::{op}", "CUDA")


def test_opcheck_native(device):
    require_backend("native", device)
    x, t = make((6, 5), 1, device=device)
    for r in [0, 1, 2]:
        torch.library.opcheck(torch.ops.fastseg.sigmoid_focal_loss, (x.requires_grad_(), t, 0.25, 2.0, r))
        g = torch.ones(()) if r else torch.ones(6, 5)
        torch.library.opcheck(torch.ops.fastseg.sigmoid_focal_loss_backward, (g.to(device), x.detach(), t, 0.25, 2.0, r))
        logits, labels = make_labels(6, 5, 2, device=device)
        norm = torch.tensor([3.0], device=device)
        torch.library.opcheck(torch.ops.fastseg.sigmoid_focal_loss_with_labels,
                              (logits.requires_grad_(), labels, 0.25, 2.0, norm, 1.0, -1, r))
        torch.library.opcheck(torch.ops.fastseg.sigmoid_focal_loss_with_labels_backward,
                              (g.to(device), logits.detach(), labels, 0.25, 2.0, None, 0.5, -1, r))


def test_opcheck_triton():
    require_backend("triton", "cpu")
    from fastseg.kernels import sigmoid_focal_loss as k  # noqa: F401  (registers the ops)

    x, t = make((5, 3), 1)
    for r in [0, 1, 2]:
        torch.library.opcheck(torch.ops.fastseg_triton.sigmoid_focal_loss, (x.requires_grad_(), t, 0.25, 2.0, r))
        logits, labels = make_labels(6, 5, 2)
        torch.library.opcheck(torch.ops.fastseg_triton.sigmoid_focal_loss_with_labels,
                              (logits.requires_grad_(), labels, 0.25, 2.0, torch.tensor([3.0]), 1.0, -1, r))


def test_torch_compile():
    x, t = make((64, 8), 2)
    logits, labels = make_labels(64, 8, 3)

    def f(x, t, logits, labels, norm):
        a = fastseg.ops.sigmoid_focal_loss(x, t, 0.25, 2.0, "sum")
        b = fastseg.ops.sigmoid_focal_loss_with_labels(logits, labels, normalizer=norm)
        return a + b

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    xg = x.clone().requires_grad_()
    out = compiled(xg, t, logits, labels, torch.tensor(3.0))
    with fastseg.use_backend("torch"):
        expected = f(x, t, logits, labels, torch.tensor(3.0))
    torch.testing.assert_close(out, expected)
    out.backward()
    xt = x.double().requires_grad_()
    tv(xt, t, 0.25, 2.0, "sum").backward()
    close(xg.grad, xt.grad, torch.float32)
