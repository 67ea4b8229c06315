"""conv_transpose2d: every backend against torch.nn.functional.conv_transpose2d, forward and backward;
fastseg.nn.ConvTranspose2d against torch.nn.ConvTranspose2d; fastseg.nn.init.bilinear_."""
import math
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastseg
from fastseg import backend, reference
from conftest import call, require_backend

# Per-dtype tolerances (atol = rtol) for outputs of unit scale (weights scaled by 1/sqrt(fan-in)).
TOL = {torch.float64: 1e-9, torch.float32: 2e-4, torch.float16: 1.5e-2, torch.bfloat16: 8e-2}


def expected(x, w, b, stride, padding, output_padding, groups, dilation, relu=False):
    """PyTorch's answer, computed in fp64 on the (already rounded) inputs."""
    out = F.conv_transpose2d(x.double(), w.double(), None if b is None else b.double(), stride, padding,
                             output_padding, groups, dilation)
    return out.relu() if relu else out


def make(n, cin, cout_g, groups, kh, kw, h, w, dtype=torch.float32, device="cpu", seed=0, bias=True,
         channels_last=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin * groups, h, w, generator=g)
    wt = torch.randn(cin * groups, cout_g, kh, kw, generator=g) / math.sqrt(cin * kh * kw)
    b = torch.randn(cout_g * groups, generator=g) if bias else None
    x, wt = x.to(device, dtype), wt.to(device, dtype)
    b = b.to(device, dtype) if b is not None else None
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, wt, b


@st.composite
def configs(draw, max_hw=6, max_c=3):
    groups = draw(st.integers(1, 3))
    cfg = dict(
        n=draw(st.integers(0, 2)), cin=draw(st.integers(1, max_c)), cout_g=draw(st.integers(1, max_c)),
        groups=groups, kh=draw(st.integers(1, 4)), kw=draw(st.integers(1, 4)),
        h=draw(st.integers(1, max_hw)), w=draw(st.integers(1, max_hw)),
        channels_last=draw(st.booleans()), bias=draw(st.booleans()),
    )
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    if draw(st.booleans()):  # the kernel == stride fast path gets half the examples
        cfg["kh"], cfg["kw"] = stride
        dilation = (1, 1) if draw(st.booleans()) else dilation
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    ho = (cfg["h"] - 1) * stride[0] - 2 * padding[0] + dilation[0] * (cfg["kh"] - 1) + output_padding[0] + 1
    wo = (cfg["w"] - 1) * stride[1] - 2 * padding[1] + dilation[1] * (cfg["kw"] - 1) + output_padding[1] + 1
    assume(ho > 0 and wo > 0)
    return cfg, dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups,
                     dilation=dilation)


def run(backend_name, x, w, b, args, relu=False):
    with fastseg.use_backend(backend_name):
        return fastseg.ops.conv_transpose2d(x, w, b, **args, activation="relu" if relu else None)


def check_close(out, exp, dtype):
    assert out.shape == exp.shape, (out.shape, exp.shape)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double().cpu(), exp.cpu(), atol=TOL[dtype], rtol=TOL[dtype])


def backends_for_hypothesis(backend_name):
    return 25 if backend_name == "triton" else 120


# -- forward --------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend_name", ["native", "triton", "torch"])
def test_forward_random_configs(backend_name):
    require_backend(backend_name, "cpu")

    @settings(max_examples=backends_for_hypothesis(backend_name), deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(problem=configs(), relu=st.booleans(),
           dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
    def body(problem, relu, dtype):
        cfg, args = problem
        x, w, b = make(**cfg, dtype=dtype)
        out = run(backend_name, x, w, b, args, relu)
        check_close(out, expected(x, w, b, **args, relu=relu), dtype)

    body()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("case", [
    # (n, cin, cout_g, groups, kh, kw, h, w), stride, padding, output_padding, dilation
    ((2, 8, 6, 1, 2, 2, 5, 7), 2, 0, 0, 1),      # U-Net k2 s2
    ((1, 5, 5, 1, 4, 4, 6, 5), 2, 1, 0, 1),      # FCN / Hourglass k4 s2 p1
    ((1, 3, 3, 1, 16, 16, 3, 4), 8, 4, 0, 1),    # FCN-8s k16 s8 p4
    ((2, 6, 7, 1, 3, 3, 6, 6), 1, 1, 0, 1),      # DeconvNet k3 s1 p1
    ((1, 4, 3, 2, 3, 3, 5, 4), 2, 1, 1, 1),      # groups, output_padding
    ((1, 6, 3, 3, 2, 3, 4, 5), (2, 3), (1, 0), (1, 2), 1),  # k == s with padding and output_padding
    ((1, 3, 2, 1, 3, 2, 4, 4), (3, 2), (2, 1), (1, 0), (2, 1)),  # dilation
])
def test_forward_dtypes(backend_name, dtype, channels_last, case):
    require_backend(backend_name, "cpu")
    shape, stride, padding, output_padding, dilation = case
    n, cin, cout_g, groups, kh, kw, h, w = shape
    x, wt, b = make(n, cin // groups, cout_g, groups, kh, kw, h, w, dtype, channels_last=channels_last)
    args = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups, dilation=dilation)
    out = run(backend_name, x, wt, b, args)
    check_close(out, expected(x, wt, b, **args), dtype)
    # same memory format as PyTorch's
    ref = F.conv_transpose2d(x, wt, b, **args)
    assert out.is_contiguous(memory_format=torch.channels_last) == ref.is_contiguous(memory_format=torch.channels_last)
    assert out.is_contiguous() == ref.is_contiguous()


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_is_rounded_to_nearest(backend_name, channels_last):
    """Integer inputs make every fp32 sum exact, so a bf16 output must be the exact result rounded to
    nearest even: the Triton interpreter's own conversion truncates (half the outputs 1 ulp off)."""
    require_backend(backend_name, "cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-20, 21, (2, 16, 5, 6), generator=g).to(torch.bfloat16)
    w = torch.randint(-20, 21, (16, 8, 2, 2), generator=g).to(torch.bfloat16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    exact = F.conv_transpose2d(x.double(), w.double(), stride=2)
    assert exact.abs().max() > 512  # beyond bf16's 8 significant bits: rounding decides
    with fastseg.use_backend(backend_name):
        out = fastseg.ops.conv_transpose2d(x, w, stride=2)
    assert torch.equal(out, exact.to(torch.bfloat16))


def assert_rounded_once(out, exact, pytorch):
    """Each element of a 16-bit result within the rounding of the exact one: equal to it rounded once, or
    no further from it than PyTorch's own (PyTorch's CPU fp16 routine rounds twice; its bf16 one once)."""
    assert out.dtype == pytorch.dtype and out.shape == exact.shape
    if out.dtype == torch.bfloat16:
        assert torch.equal(pytorch, exact.to(out.dtype))  # what makes "rounded once" PyTorch's behaviour
    assert ((out.double() - exact).abs() <= (pytorch.double() - exact).abs()).all(), (out, pytorch, exact)
    assert torch.equal(out, exact.to(out.dtype)) or not torch.equal(pytorch, exact.to(out.dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["NCHW", "channels_last"])
@pytest.mark.parametrize("kernel,stride", [(2, 2), (3, 1), (4, 2)])
def test_reduced_precision_output_is_rounded_once(backend_name, dtype, channels_last, kernel, stride):
    """fp16/bf16 outputs: the sum 0.5 + 2^-12 is exact in fp32 but not in 16 bits, so rounding it before
    adding the bias -0.5 gives 0 where the answer is 2^-12."""
    require_backend(backend_name, "cpu")
    x = torch.ones(2, 2, 3, 4, dtype=dtype)
    w = torch.zeros(2, 3, kernel, kernel, dtype=dtype)
    w[0, :, 0, 0], w[1, :, 0, 0] = 0.5, 2.0 ** -12  # one tap: each output pixel gets one product a channel
    b = torch.full((3,), -0.5, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    exact = F.conv_transpose2d(x.double(), w.double(), b.double(), stride=stride)
    assert (exact == 2.0 ** -12).any()
    pytorch = F.conv_transpose2d(x, w, b, stride=stride)
    for relu in (False, True):
        with fastseg.use_backend(backend_name):
            out = fastseg.ops.conv_transpose2d(x, w, b, stride=stride, activation="relu" if relu else None)
        assert_rounded_once(out, exact.relu() if relu else exact, pytorch.relu() if relu else pytorch)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["NCHW", "channels_last"])
def test_reduced_precision_weight_gradient_is_rounded_once(backend_name, dtype, channels_last):
    """fp16/bf16 weight and bias gradients: 1 followed by eight terms under half an ulp each sums to
    1 + 8 * small, which a 16-bit running sum leaves at 1."""
    require_backend(backend_name, "cpu")
    small = 2.0 ** (-12 if dtype == torch.float16 else -9)
    grad = torch.full((9, 1, 2, 2), small, dtype=dtype)
    grad[0] = 1.0

    def gradients(conv, dtype):
        x = torch.ones(9, 1, 1, 1, dtype=dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        leaves = [x.requires_grad_(), torch.ones(1, 1, 2, 2, dtype=dtype, requires_grad=True),
                  torch.zeros(1, dtype=dtype, requires_grad=True)]
        conv(*leaves, stride=2).backward(grad.to(dtype))
        return [t.grad for t in leaves]

    exact = gradients(F.conv_transpose2d, torch.float64)
    assert exact[1].flatten()[0] == 1 + 8 * small
    with fastseg.use_backend(backend_name):
        ours = gradients(fastseg.ops.conv_transpose2d, dtype)
    for out, ex, pt in zip(ours, exact, gradients(F.conv_transpose2d, dtype)):
        assert_rounded_once(out, ex, pt)


def test_output_padding_region_is_written(backend_name):
    """Pixels no tap reaches (added by output_padding) hold the bias: poison the allocator first."""
    require_backend(backend_name, "cpu")
    x, w, b = make(1, 3, 4, 1, 2, 2, 5, 5)
    args = dict(stride=(2, 2), padding=0, output_padding=(1, 1), groups=1, dilation=1)
    for _ in range(3):
        junk = torch.full((1, 4, 11, 11), float("nan"))
        del junk
        out = run(backend_name, x, w, b, args)
        check_close(out, expected(x, w, b, **args), torch.float32)
        assert torch.equal(out[0, :, -1, :], b[:, None].expand(4, 11))


@pytest.mark.parametrize("n,cin,cout,h,w", [
    (2, 16, 6, 8, 8), (1, 5, 2, 4, 8), (3, 24, 4, 2, 16), (1, 9, 10, 4, 24), (2, 3, 8, 1, 32),
    (2, 5, 4, 32, 32),     # 1,024 pixels: each tile's X copied first; one block of channel pairs: prefetched
    (2, 1024, 18, 1, 32),  # two blocks of channel pairs (8 + 1), X read in place, nothing prefetched
])
@pytest.mark.parametrize("bias,relu", [(True, False), (False, False), (True, True)])
def test_native_fused_k2s2_nchw_kernel(n, cin, cout, h, w, bias, relu):
    """The fused fp32 NCHW kernel-2 stride-2 CPU kernel (GEMM with a pixel-shuffle epilogue: widths that are
    multiples of 8, H*W a multiple of 32, an even number of output channels). Poisoned memory first, so an
    output element it failed to write shows; gradients too (the backward is a separate kernel)."""
    x, wt, b = make(n, cin, cout, 1, 2, 2, h, w, bias=bias)
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True  # empty tensors are NaN
    try:
        with fastseg.use_backend("native"):
            xg, wg = x.clone().requires_grad_(), wt.clone().requires_grad_()
            out = fastseg.ops.conv_transpose2d(xg, wg, b, stride=2, activation="relu" if relu else None)
            grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
            gx, gw = torch.autograd.grad(out, (xg, wg), grad)
    finally:
        torch.use_deterministic_algorithms(False)
    check_close(out, expected(x, wt, b, 2, 0, 0, 1, 1, relu), torch.float32)
    xr, wr = x.double().requires_grad_(), wt.double().requires_grad_()
    ref = expected(xr, wr, b, 2, 0, 0, 1, 1, relu)
    ex, ew = torch.autograd.grad(ref, (xr, wr), grad.double())
    check_close(gx, ex, torch.float32)
    check_close(gw, ew, torch.float32)


@pytest.mark.parametrize("n,cin,cout,k,stride,padding,output_padding,hw", [
    (1, 21, 21, (4, 4), 2, 1, 0, (7, 9)),                # FCN's k4 s2 p1 score upsampling
    (2, 3, 5, (16, 16), 8, 4, 0, (4, 3)),                # FCN's k16 s8 p4
    (2, 13, 40, (3, 3), 2, 1, 0, (5, 6)),                # two output-channel blocks, a 1-channel tail of 6
    (1, 7, 64, (3, 4), (2, 3), (0, 2), (1, 0), (4, 5)),  # uneven stride, padding, output_padding
    (3, 1, 2, (5, 2), (3, 1), (2, 0), (2, 0), (1, 8)),
    (1, 40, 33, (3, 2), 2, (1, 0), 0, (3, 4)),         # two input-channel blocks for the input gradient
])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias,relu", [(True, False), (False, True)])
def test_native_direct_small_channel_kernels(n, cin, cout, k, stride, padding, output_padding, hw, channels_last,
                                             bias, relu):
    """The fp32 direct CPU kernels for layers with <= 64 channels (forward, input and weight gradients,
    csrc/cpu/conv_transpose2d_direct.cpp) against fp64 PyTorch, on poisoned memory; the weight gradient
    (one task per tap and channel block, no reduction between threads) is bitwise the same on 1 thread."""
    x, wt, b = make(n, cin, cout, 1, *k, *hw, bias=bias, channels_last=channels_last)
    args = dict(stride=stride, padding=padding, output_padding=output_padding, groups=1, dilation=1)

    def forward_backward():
        xg, wg = x.clone().requires_grad_(), wt.clone().requires_grad_()
        out = run("native", xg, wg, b, args, relu)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        return (out,) + torch.autograd.grad(out, (xg, wg), grad), grad

    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True  # empty tensors are NaN
    threads = torch.get_num_threads()
    try:
        (out, gx, gw), grad = forward_backward()
        torch.set_num_threads(1)
        (out1, gx1, gw1), _ = forward_backward()
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
    xr, wr = x.double().requires_grad_(), wt.double().requires_grad_()
    ref = expected(xr, wr, b, **args, relu=relu)
    ex, ew = torch.autograd.grad(ref, (xr, wr), grad.double())
    check_close(out, ref.detach(), torch.float32)
    assert out.stride() == F.conv_transpose2d(x, wt, b, **args).stride()  # PyTorch's memory format
    check_close(gx, ex, torch.float32)
    check_close(gw, ew, torch.float32)
    for a, b1 in ((out, out1), (gx, gx1), (gw, gw1)):
        assert torch.equal(a, b1)


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "NCHW"])
@pytest.mark.parametrize("groups,output_padding", [(1, 0), (2, 1)])
def test_native_k2s2_backward_in_blocks(groups, output_padding, channels_last):
    """The k == s backward gathers grad_output ~2 MB of input rows at a time: 64 KB rows here (64 columns
    x 4 taps x 64 channels). channels_last blocks run across images: 80 rows make three blocks, the last
    one partial. NCHW blocks stay within an image: 32 + 8 rows per image. With groups, each group's part
    of the block buffer starts at its own offset."""
    x, wt, b = make(2, 8 // groups, 64 // groups, groups, 2, 2, 40, 64, channels_last=channels_last)
    args = dict(stride=2, padding=0, output_padding=output_padding, groups=groups, dilation=1)
    leaves = [t.clone().requires_grad_() for t in (x, wt, b)]
    out = run("native", *leaves, args)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(out, leaves, grad)
    ref_leaves = [t.double().requires_grad_() for t in (x, wt, b)]
    want = torch.autograd.grad(expected(*ref_leaves, **args), ref_leaves, grad.double())
    for g, e in zip(got, want):  # sums over 10k pixels: fp32 rounding beyond the per-element tolerance
        torch.testing.assert_close(g.double(), e, atol=2e-3, rtol=2e-3)
    assert got[0].is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def check_native_layer(n, cin, cout, h, w, padding, channels_last, bias, relu, seed=0, kernel=3, stride=1,
                       output_padding=0):
    """One layer (3x3 stride 1 unless told) on the native backend against fp64 PyTorch: forward and all
    gradients, on poisoned memory (fresh outputs are NaN), in PyTorch's memory format."""
    x, wt, b = make(n, cin, cout, 1, kernel, kernel, h, w, bias=bias, channels_last=channels_last, seed=seed)
    args = dict(stride=stride, padding=padding, output_padding=output_padding, groups=1, dilation=1)
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        leaves = [t.clone().requires_grad_() for t in (x, wt, b) if t is not None]
        out = run("native", *leaves[:2], leaves[2] if bias else None, args, relu)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1))
        got = torch.autograd.grad(out, leaves, grad)
    finally:
        torch.use_deterministic_algorithms(False)
    ref_leaves = [t.double().requires_grad_() for t in (x, wt, b) if t is not None]
    ref = expected(*ref_leaves[:2], ref_leaves[2] if bias else None, **args, relu=relu)
    want = torch.autograd.grad(ref, ref_leaves, grad.double())
    check_close(out, ref.detach(), torch.float32)
    assert out.stride() == F.conv_transpose2d(x, wt, b, **args).stride()
    for name, g, e in zip("xwb", got, want):  # sums over up to 10k products: a scaled tolerance
        scale = max(1.0, e.abs().max().item())
        torch.testing.assert_close(g.double(), e, atol=TOL[torch.float32] * scale, rtol=TOL[torch.float32],
                                   msg=f"grad {name}")
    assert got[0].stride() == x.stride()


@pytest.mark.parametrize("n,cin,cout,h,w,kernel,padding,output_padding", [
    (2, 13, 7, 5, 9, 2, 0, 0),      # 13 input channels: a short panel of rows in both GEMMs; 28 columns, 90 pixels
    (1, 40, 24, 6, 7, 2, 1, 1),     # padding and output_padding: cropped taps gathered as zeros
    (2, 64, 72, 40, 64, 2, 0, 0),   # 288 columns (two depth blocks of 256), 80 rows in three gathered blocks
    (1, 520, 12, 3, 5, 2, 0, 0),    # grad_input 520 columns wide: two column blocks of 512, the last 8 wide
    (1, 16, 20, 4, 5, 3, 1, 2),     # kernel == stride == 3
    (2, 72, 80, 48, 40, 2, 1, 1),   # > 64 channels on each side (NCHW: AVX-512 only); 2 blocks an image
    (3, 136, 256, 16, 16, 2, 0, 0),  # NCHW: blocks of two whole images (the last alone), W's rows in chunks of 64
    (3, 12, 10, 3, 5, 3, 1, 2),     # three images in one block, cropped taps in each
    (2, 20, 24, 3, 21, 2, (1, 0), (0, 1)),  # rows cropped, columns not: the vector gather, 16 + 5 wide
    # NCHW fp32 on AVX-512, weights of <= 64K floats: split by pixels, each thread its own blocks
    (1, 3, 5, 1, 1, 2, 0, 0),       # one pixel: one block, the other thread's weight gradient stays zero
    (2, 7, 9, 13, 11, 2, 0, 0),     # a whole image a block: 143 pixels (masked columns, the bias sum's tail)
    (1, 64, 32, 37, 64, 2, 0, 0),   # 8 rows a block: four full blocks and a 5-row one
    (1, 8, 16, 3, 1500, 2, 0, 0),   # rows wider than a block's budget: one row a block
    (3, 40, 24, 6, 7, 2, 1, 1),     # output_padding <= padding: the bias summed from the gathered blocks
    # NCHW weights of > 64K floats: split by input channels
    (3, 96, 192, 3, 5, 2, 1, 1),    # three whole images in one block, cropped taps
    (1, 80, 256, 70, 8, 2, 0, 0),   # 64 + 6 rows of one image
])
@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "NCHW"])
def test_native_k_eq_s_backward_edges(n, cin, cout, h, w, kernel, padding, output_padding, channels_last):
    """The kernel == stride backward (on AVX-512 CPUs avx512::sgemm; elsewhere the BLAS) against fp64 PyTorch
    on poisoned memory, with the edges of its tiles and blocks. In NCHW these layers (<= 64 channels on a
    side, or any on AVX-512) take it too; there 40 rows of 64 columns make two blocks an image, and small
    images share a block."""
    check_native_layer(n, cin, cout, h, w, padding, channels_last, True, False, kernel=kernel, stride=kernel,
                       output_padding=output_padding)


@pytest.mark.parametrize("n,cin,cout,h,w,kernel", [
    (2, 16, 8, 4, 8, 2),      # one row block; 16 columns of (kx, co): a masked half panel
    (3, 40, 21, 5, 16, 2),    # 42 columns: a full panel and a 10-wide tail; 15 input rows
    (2, 520, 12, 20, 8, 2),   # 520 input channels: three depth blocks (bias on the first, ReLU on the last); 3 row blocks
    (1, 24, 20, 3, 24, 3),    # kernel == stride == 3: three tap rows, 60 columns a row
    (2, 64, 64, 4, 32, 2),    # 32 pixels wide, 64 channels: 128 rows of A, the next row panel prefetched
    (1, 24, 16, 2, 128, 2),   # the widest image it takes
])
@pytest.mark.parametrize("bias,relu", [(True, False), (False, True), (True, True)])
def test_native_k_eq_s_channels_last_forward(n, cin, cout, h, w, kernel, bias, relu):
    """The channels_last kernel == stride forward on avx512::sgemm_rows (fp32, no padding, image widths a
    multiple of 8 up to 128; elsewhere oneDNN): each input row's pixels stored straight into their output
    rows, with the bias and the ReLU, against fp64 PyTorch on poisoned memory."""
    check_native_layer(n, cin, cout, h, w, 0, True, bias, relu, kernel=kernel, stride=kernel)


@pytest.mark.parametrize("n,cin,cout,h,w,padding", [
    (2, 104, 112, 9, 11, 1),      # DeconvNet's k3 s1 p1, odd output: a last tile half outside
    (1, 97, 98, 1, 1, 1),         # a one-pixel image
    (3, 98, 104, 5, 8, 2),        # padding 2: the output is 2 smaller than the input
    (1, 112, 97, 6, 7, 0),        # padding 0: 2 larger
    (2, 102, 99, 3, 2, (0, 1)),   # uneven padding
    (2, 96, 96, 40, 120, 1),      # several blocks of tile rows, blocks across images
    (2, 96, 100, 12, 10, 1),      # the fewest channels routed to it
])
@pytest.mark.parametrize("channels_last", [False, True], ids=["NCHW", "channels_last"])
@pytest.mark.parametrize("bias,relu", [(True, False), (False, True)])
def test_native_winograd_3x3_layers(n, cin, cout, h, w, padding, channels_last, bias, relu):
    """3x3 stride-1 layers with >= 96 channels run Winograd's F(2x2, 3x3) on the native CPU backend
    (csrc/cpu/conv_transpose2d_winograd.cpp): forward and input gradient."""
    require_backend("native", "cpu")
    check_native_layer(n, cin, cout, h, w, padding, channels_last, bias, relu)


@pytest.mark.parametrize("n,cin,cout,h,w,padding,output_padding", [
    (2, 128, 128, 8, 8, 1, 0),        # the Hourglass' k4 s2 p1
    (1, 128, 136, 7, 5, 1, 0),        # odd sizes: phase tiles half outside the output
    (1, 130, 128, 5, 6, 0, 1),        # padding 0, output_padding 1 (the odd phase has one row fewer)
    (2, 129, 128, 6, 5, 2, 1),        # padding 2: taps shifted by a whole input row
    (1, 136, 128, 4, 7, 3, 0),        # padding 3: odd again, the phases swap taps
    (1, 128, 132, 5, 4, (1, 2), (1, 0)),  # uneven padding and output_padding
    (1, 144, 128, 1, 1, 1, 0),        # a one-pixel image
    (2, 128, 160, 40, 40, 1, 0),      # the fewest channels routed to it; several blocks, across images
])
@pytest.mark.parametrize("channels_last", [False, True], ids=["NCHW", "channels_last"])
@pytest.mark.parametrize("bias,relu", [(True, False), (False, True)])
def test_native_winograd_k4s2_layers(n, cin, cout, h, w, padding, output_padding, channels_last, bias, relu):
    """Kernel-4 stride-2 layers with >= 128 channels run Winograd's F(2x2, 2x2) on each sub-pixel phase
    (csrc/cpu/conv_transpose2d_winograd_k4s2.cpp): forward and all gradients."""
    require_backend("native", "cpu")
    check_native_layer(n, cin, cout, h, w, padding, channels_last, bias, relu, kernel=4, stride=2,
                       output_padding=output_padding)


@pytest.mark.parametrize("kernel,stride", [(3, 1), (4, 2)])
def test_native_winograd_every_shape_when_forced(kernel, stride):
    """The Winograd kernels forced onto 40 random small layers (FASTSEG_CONV_TRANSPOSE2D_CPU_ROUTE=5, the
    measurement switch), so that few channels, tiny images, every padding and output_padding reach them."""
    require_backend("native", "cpu")
    code = ("import random, sys\n"
            "sys.path.insert(0, 'tests')\n"
            "from test_conv_transpose2d import check_native_layer\n"
            f"kernel, stride = {kernel}, {stride}\n"
            "rng = random.Random(kernel)\n"
            "for i in range(40):\n"
            "    h, w = rng.randint(1, 9), rng.randint(1, 9)\n"
            "    padding = (rng.randint(0, kernel - 1), rng.randint(0, kernel - 1))\n"
            "    output_padding = (rng.randint(0, stride - 1), rng.randint(0, stride - 1))\n"
            "    if min((h - 1) * stride + kernel - 2 * padding[0], (w - 1) * stride + kernel - 2 * padding[1]) <= 0:\n"
            "        continue\n"
            "    check_native_layer(rng.randint(1, 3), rng.randint(1, 20), rng.randint(1, 20), h, w, padding,\n"
            "                       rng.random() < 0.5, rng.random() < 0.5, rng.random() < 0.5, seed=i,\n"
            "                       kernel=kernel, stride=stride, output_padding=output_padding)\n"
            "print('ok')\n")
    env = dict(os.environ, FASTSEG_CONV_TRANSPOSE2D_CPU_ROUTE="5", FASTSEG_CONV_TRANSPOSE2D_CPU_BWD_ROUTE="5")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "ok"


def run_under_heap_checks(code):
    """Runs `code` in a child with glibc's heap checks on (and its checking allocator where installed: a
    corrupted heap aborts at the first bad free) and fresh memory filled with a byte pattern (unwritten
    elements show); the child must exit cleanly and print 'ok'."""
    env = dict(os.environ, GLIBC_TUNABLES="glibc.malloc.check=3", MALLOC_PERTURB_="165")
    debug_malloc = "/lib/x86_64-linux-gnu/libc_malloc_debug.so.0"
    if os.path.exists(debug_malloc):
        env["LD_PRELOAD"] = debug_malloc
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, f"exit status {out.returncode}: {out.stderr[-2000:]}"
    assert out.stdout.split()[-1] == "ok"


def test_native_backward_of_degenerate_layers_is_sound():
    """Layers with output pixels no tap reaches (the kernel spans less than the stride, output_padding
    beyond padding) or taps that reach no output pixel (tiny images): PyTorch's oneDNN backward on
    channels_last tensors corrupts the heap on some (1x1 kernels with an output padding) and returns bf16
    gradients with elements of uninitialised memory on others, torch 2.14.1; the native backend must not
    send them there. In a child under glibc's heap checks and a byte pattern (run_under_heap_checks);
    gradients against fp64 PyTorch in NCHW."""
    require_backend("native", "cpu")
    code = ("import torch, torch.nn.functional as F, fastseg\n"
            "cl = torch.channels_last\n"
            # (input shape, output channels, kernel, stride, padding, output_padding)
            "layers = [((3, 4, 7, 8), 7, (1, 1), (2, 4), (0, 0), (1, 3)),\n"
            "          ((2, 80, 5, 6), 70, (1, 1), (2, 2), (0, 0), (1, 1)),\n"
            "          ((2, 8, 5, 6), 70, (1, 1), (3, 1), (0, 0), (2, 0)),\n"
            "          ((1, 100, 4, 4), 3, (1, 1), (1, 2), (0, 0), (0, 1)),\n"
            "          ((3, 5, 3, 1), 4, (1, 4), (4, 4), (0, 2), (0, 2)),\n"
            "          ((3, 6, 7, 1), 5, (1, 3), (1, 4), (0, 1), (0, 2)),\n"
            "          ((2, 5, 4, 1), 6, (2, 4), (2, 3), (1, 2), (1, 1)),  # taps that reach no output pixel\n"
            "          ((2, 7, 3, 1), 1, (2, 4), (1, 3), (0, 0), (0, 2))]  # output_padding > padding\n"
            "for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 5e-2)):\n"
            "    for i, (shape, cout, kernel, stride, padding, output_padding) in enumerate(layers):\n"
            "        args = dict(stride=stride, padding=padding, output_padding=output_padding)\n"
            "        for xf, wf in ((None, None), (cl, cl), (None, cl), (cl, None)):\n"
            "            g = torch.Generator().manual_seed(i)\n"
            "            x, w = torch.randn(shape, generator=g), torch.randn(shape[1], cout, *kernel, generator=g)\n"
            "            b = torch.randn(cout, generator=g)\n"
            "            xs, ws = x.to(dtype, memory_format=xf or torch.contiguous_format), \\\n"
            "                w.to(dtype, memory_format=wf or torch.contiguous_format)\n"
            "            leaves = [t.detach().requires_grad_() for t in (xs, ws, b.to(dtype))]\n"
            "            for _ in range(3):  # a corrupted heap shows at a later free\n"
            "                out = fastseg.ops.conv_transpose2d(*leaves, **args)\n"
            "                gy = torch.randn(out.shape, generator=g)\n"
            "                got = torch.autograd.grad(out, leaves, gy.to(dtype))\n"
            "            ref = [t.double().requires_grad_() for t in (x, w, b)]\n"
            "            want = torch.autograd.grad(F.conv_transpose2d(*ref, **args), ref, gy.double())\n"
            "            for a, e in zip(got, want):\n"
            "                err = (a.double() - e).abs().max().item() / max(1.0, e.abs().max().item())\n"
            "                assert err < tol, (dtype, shape, kernel, xf, wf, err)\n"
            "print('ok')\n")
    run_under_heap_checks(code)


def test_native_double_backward_of_degenerate_layers_is_sound():
    """create_graph=True on a degenerate channels_last layer (1x1 kernel, stride and output padding): the
    native backward hands the gradients to PyTorch's differentiable convolution_backward, which must get
    it in NCHW (see the test above); first and second-order gradients against fp64 PyTorch, in a child
    under glibc's heap checks and a byte pattern."""
    require_backend("native", "cpu")
    code = ("import torch, torch.nn.functional as F, fastseg\n"
            "cl = torch.channels_last\n"
            "args = dict(stride=(2, 4), output_padding=(1, 3))\n"
            "for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 5e-2)):\n"
            "    g = torch.Generator().manual_seed(0)\n"
            "    x, w = torch.randn(3, 4, 7, 8, generator=g), torch.randn(4, 7, 1, 1, generator=g)\n"
            "    b = torch.randn(7, generator=g)\n"
            "    gy = torch.randn(3, 7, 14, 32, generator=g)\n"
            "    for _ in range(3):  # a corrupted heap shows at a later free\n"
            "        leaves = [x.to(dtype, memory_format=cl), w.to(dtype, memory_format=cl), b.to(dtype)]\n"
            "        leaves = [t.requires_grad_() for t in leaves]\n"
            "        out = fastseg.ops.conv_transpose2d(*leaves, **args)\n"
            "        gx, gw, gb = torch.autograd.grad(out, leaves, gy.to(dtype), create_graph=True)\n"
            "        (gx.square().sum() + gw.square().sum()).backward()\n"
            "    assert gx.is_contiguous(memory_format=cl) and gw.is_contiguous(memory_format=cl)\n"
            "    ref = [t.double().requires_grad_() for t in (x, w, b)]\n"
            "    out = F.conv_transpose2d(*ref, **args)\n"
            "    rx, rw, rb = torch.autograd.grad(out, ref, gy.double(), create_graph=True)\n"
            "    (rx.square().sum() + rw.square().sum()).backward()\n"
            "    for a, e in ((gx, rx), (gw, rw), (leaves[0].grad, ref[0].grad), (leaves[1].grad, ref[1].grad)):\n"
            "        err = (a.double() - e).abs().max().item() / max(1.0, e.abs().max().item())\n"
            "        assert err < tol, (dtype, err)\n"
            "print('ok')\n")
    run_under_heap_checks(code)


@pytest.mark.parametrize("kernel,stride,cin,cout", [(3, 1, 96, 104), (4, 2, 128, 136)])
def test_native_winograd_workspace_released(kernel, stride, cin, cout):
    """fastseg.ops.empty_cache frees the calling thread's Winograd workspace (and says how much), and the
    next call builds it again."""
    require_backend("native", "cpu")
    x, w, b = make(2, cin, cout, 1, kernel, kernel, 8, 8)
    args = dict(stride=stride, padding=1, output_padding=0, groups=1, dilation=1)
    fastseg.ops.empty_cache()
    run("native", x, w, b, args)
    assert fastseg.ops.empty_cache() >= 4 * 16 * cin * cout  # at least the weight's transform (16 or 36 planes)
    assert fastseg.ops.empty_cache() == 0
    check_close(run("native", x, w, b, args), expected(x, w, b, **args), torch.float32)
    fastseg.ops.empty_cache()


@pytest.mark.parametrize("kernel,stride,cin,cout", [(3, 1, 96, 104), (4, 2, 128, 136)])
def test_native_winograd_weight_cache(kernel, stride, cin, cout):
    """The transformed weight is kept like oneDNN's packed one: packed by the second forward, never by a
    backward, and a weight changed in place is transformed again."""
    require_backend("native", "cpu")
    fastseg.ops.empty_cache()
    try:
        x, w, b = make(1, cin, cout, 1, kernel, kernel, 5, 6)
        args = dict(stride=stride, padding=1, output_padding=0, groups=1, dilation=1)
        wg = w.clone().requires_grad_()
        for _ in range(3):  # training-like: forward + backward, the weight unchanged
            leaves = [x.clone().requires_grad_(), wg]
            torch.autograd.grad(run("native", *leaves, b, args).sum(), leaves)
        assert torch.ops.fastseg.weight_cache_entries() == 1
        with torch.no_grad():
            wg.mul_(-0.5)
        for _ in range(3):
            check_close(run("native", x, wg.detach(), b, args), expected(x, wg.detach(), b, **args), torch.float32)
        fastseg.ops.empty_cache()
        gy = torch.randn(expected(x, w, b, **args).shape)
        for _ in range(3):  # the backward op alone, called again and again: it only looks the weight up
            gx = torch.ops.fastseg.conv_transpose2d_backward(gy, x, w, [stride] * 2, [1, 1], [0, 0], 1, [1, 1])[0]
        assert torch.ops.fastseg.weight_cache_entries() == 0
        xr = x.double().requires_grad_()
        want = torch.autograd.grad(F.conv_transpose2d(xr, w.double(), None, stride, 1), xr, gy.double())[0]
        check_close(gx, want, torch.float32)
    finally:
        fastseg.ops.empty_cache()


def test_unbatched_and_empty(backend_name):
    require_backend(backend_name, "cpu")
    x, w, b = make(1, 4, 3, 1, 3, 3, 5, 5)
    args = dict(stride=2, padding=1, output_padding=1, groups=1, dilation=1)
    out = run(backend_name, x[0], w, b, args)
    check_close(out, expected(x[0], w, b, **args), torch.float32)
    for n, h, w_ in [(0, 5, 5), (0, 1, 1)]:
        x0 = torch.zeros(n, 4, h, w_)
        out = run(backend_name, x0, w, b, args)
        assert out.shape == F.conv_transpose2d(x0, w, b, **args).shape


def test_non_contiguous_input(backend_name):
    require_backend(backend_name, "cpu")
    x, w, b = make(2, 4, 3, 1, 2, 2, 8, 8)
    xs = x[:, :, ::2, 1::2]
    ws = torch.randn(3, 4, 2, 2).transpose(0, 1)  # [4, 3, 2, 2] strided
    args = dict(stride=2, padding=0, output_padding=0, groups=1, dilation=1)
    check_close(run(backend_name, xs, ws, b, args), expected(xs, ws, b, **args), torch.float32)


# -- backward -------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend_name", ["native", "triton", "torch"])
def test_gradients_random_configs(backend_name):
    require_backend(backend_name, "cpu")

    @settings(max_examples=15 if backend_name == "triton" else 80, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(problem=configs(max_hw=5), relu=st.booleans(), fp32=st.booleans())
    def body(problem, relu, fp32):
        cfg, args = problem
        dtype = torch.float32 if fp32 else torch.float64  # fp32 reaches the native direct kernels (fp64 runs oneDNN)
        x, w, b = make(**cfg, dtype=dtype)
        leaves = [t.detach().clone().requires_grad_() for t in (x, w) + ((b,) if b is not None else ())]
        out = run(backend_name, *leaves[:2], leaves[2] if b is not None else None, args, relu)
        gy = torch.randn_like(out)
        got = torch.autograd.grad(out, leaves, gy, allow_unused=True)
        ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
        ref = F.conv_transpose2d(*ref_leaves[:2], ref_leaves[2] if b is not None else None, **args)
        ref = ref.relu() if relu else ref
        want = torch.autograd.grad(ref, ref_leaves, gy, allow_unused=True)
        for name, a, e, leaf in zip("xwb", got, want, leaves):
            if e is None:
                e = torch.zeros_like(leaf)
            if a is None:
                a = torch.zeros_like(leaf)
            assert a.shape == leaf.shape, name
            torch.testing.assert_close(a, e, atol=TOL[dtype] * 10, rtol=TOL[dtype] * 10, msg=f"grad {name}")

    body()


@pytest.mark.parametrize("layer", [
    # (n, cin, cout, kernel, stride, padding, h, w): the native routes (direct, k == s, oneDNN, Winograd)
    (2, 6, 5, 3, 1, 1, 5, 6),
    (2, 16, 8, 2, 2, 0, 4, 8),
    (1, 70, 72, 4, 2, 1, 3, 4),
    (1, 96, 96, 3, 1, 1, 4, 4),
])
@pytest.mark.parametrize("x_cl,w_cl", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_memory_formats_are_pytorchs(backend_name, layer, x_cl, w_cl, dtype):
    """grad_input and grad_weight in PyTorch's layouts: channels_last when the input or the weight is
    (PyTorch's grad_weight follows the forward's memory format, not the weight's)."""
    require_backend(backend_name, "cpu")
    n, cin, cout, k, s, p, h, w = layer
    if backend_name == "triton":  # the interpreter: few channels (the native routes do not apply to it)
        cin, cout = min(cin, 8), min(cout, 8)
    x, wt, b = make(n, cin, cout, 1, k, k, h, w, dtype)
    x = x.contiguous(memory_format=torch.channels_last) if x_cl else x
    wt = wt.contiguous(memory_format=torch.channels_last) if w_cl else wt
    args = dict(stride=s, padding=p, output_padding=0, groups=1, dilation=1)
    grads = []
    for f in (lambda *t: run(backend_name, *t, args), lambda *t: F.conv_transpose2d(*t, **args)):
        leaves = [t.clone().requires_grad_() for t in (x, wt, b)]
        out = f(*leaves)
        grads.append(torch.autograd.grad(out, leaves, torch.ones_like(out)))
    for name, got, want in zip("xwb", *grads):
        for fmt in (torch.contiguous_format, torch.channels_last):
            assert got.is_contiguous(memory_format=fmt) == want.is_contiguous(memory_format=fmt), (name, fmt)
        torch.testing.assert_close(got, want, atol=TOL[dtype] * 10, rtol=TOL[dtype] * 10, msg=f"grad {name}")


@pytest.mark.parametrize("case", [
    ((1, 2, 2, 1, 2, 2, 3, 3), 2, 0, 0, 1),
    ((2, 2, 1, 2, 3, 3, 3, 2), 2, 1, 1, 1),
    ((1, 2, 2, 1, 3, 2, 2, 3), (1, 2), (1, 0), (0, 1), (2, 1)),
    ((1, 3, 2, 1, 2, 3, 3, 3), (2, 3), (1, 1), (1, 2), 1),
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck(backend_name, case, channels_last):
    require_backend(backend_name, "cpu")
    shape, stride, padding, output_padding, dilation = case
    n, cin, cout_g, groups, kh, kw, h, w = shape
    x, wt, b = make(n, cin // groups, cout_g, groups, kh, kw, h, w, torch.float64, channels_last=channels_last)
    args = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups, dilation=dilation)
    inputs = tuple(t.requires_grad_() for t in (x, wt, b))
    # The Triton interpreter takes ~0.1 s a call: fast mode checks random projections of the Jacobian
    # (a few calls) instead of every entry (a call per input element)
    fast = backend_name == "triton"
    for relu in (False, True):
        torch.autograd.gradcheck(lambda *t: run(backend_name, *t, args, relu), inputs, fast_mode=fast)
        # create_graph=True: the gradients are themselves differentiable (double backward, gradient
        # penalties); the ReLU is left out of the second order, where its kink makes finite differences lie
        if not relu:
            torch.autograd.gradgradcheck(lambda *t: run(backend_name, *t, args, relu), inputs, fast_mode=fast)


def test_double_backward_matches_pytorch(backend_name):
    """Second-order gradients in fp32 (what the Triton interpreter runs), against PyTorch's."""
    require_backend(backend_name, "cpu")
    x, w, b = make(2, 4, 3, 1, 3, 3, 5, 4)
    args = dict(stride=2, padding=1, output_padding=1, groups=1, dilation=1)

    def second_order(conv):
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        out = conv(*leaves)
        gx, gw = torch.autograd.grad(out.pow(2).sum(), leaves[:2], create_graph=True)
        return torch.autograd.grad(gx.pow(2).sum() + gw.sum(), leaves)

    got = second_order(lambda *t: run(backend_name, *t, args))
    want = second_order(lambda *t: F.conv_transpose2d(*t, **args))
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, atol=1e-3, rtol=1e-3)


def test_first_order_backward_runs_fastseg_kernels():
    """Only create_graph=True takes PyTorch's differentiable convolution_backward; a training step runs
    fastseg's backward kernels."""
    require_backend("native", "cpu")
    leaves = [t.requires_grad_() for t in make(1, 21, 21, 1, 4, 4, 8, 8)]
    out = run("native", *leaves, dict(stride=2, padding=1, output_padding=0, groups=1, dilation=1))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        torch.autograd.grad(out.sum(), leaves)
    names = {e.name for e in prof.events()}
    assert "fastseg::conv_transpose2d_backward" in names and "aten::convolution_backward" not in names, names


# -- registration ---------------------------------------------------------------------------------

def test_opcheck_native():
    for channels_last in (False, True):
        x, w, b = make(2, 3, 4, 1, 2, 2, 4, 5, channels_last=channels_last)
        for args in [([2, 2], [0, 0], [0, 0], 1, [1, 1]), ([2, 1], [1, 0], [1, 0], 1, [1, 2])]:
            torch.library.opcheck(torch.ops.fastseg.conv_transpose2d.default, (x, w, b, *args, False))
            torch.library.opcheck(torch.ops.fastseg.conv_transpose2d.default, (x, w, None, *args, True))
            out = torch.ops.fastseg.conv_transpose2d(x, w, b, *args, False)
            torch.library.opcheck(torch.ops.fastseg.conv_transpose2d_backward.default,
                                  (torch.randn_like(out), x, w, *args))


def test_opcheck_triton():
    require_backend("triton", "cpu")
    from fastseg.kernels import conv_transpose2d as k  # noqa: F401  (registers fastseg_triton::*)

    x, w, b = make(1, 2, 3, 1, 3, 3, 3, 4)
    args = ([2, 2], [1, 1], [1, 0], 1, [1, 1])
    torch.library.opcheck(torch.ops.fastseg_triton.conv_transpose2d.default, (x, w, b, *args, False))
    out = torch.ops.fastseg_triton.conv_transpose2d(x, w, b, *args, False)
    torch.library.opcheck(torch.ops.fastseg_triton.conv_transpose2d_backward.default,
                          (torch.randn_like(out), x, w, *args))


def test_torch_compile():
    torch._dynamo.reset()
    x, w, b = make(2, 4, 3, 1, 2, 2, 6, 6)

    @torch.compile(fullgraph=True)  # no graph break, the autocast check included
    def f(x, w, b):
        return fastseg.ops.conv_transpose2d(x, w, b, stride=2, activation="relu") * 2

    check_close(f(x, w, b), expected(x, w, b, 2, 0, 0, 1, 1, relu=True) * 2, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # compiled under autocast: the autocast dtype
        got, want = f(x, w, b), F.conv_transpose2d(x, w, b, stride=2).relu() * 2
    assert got.dtype == want.dtype == torch.bfloat16
    check_close(got, want.double(), torch.bfloat16)


# -- bad input ------------------------------------------------------------------------------------

BAD = [
    (dict(x=torch.randn(2, 4, 5)[0]), "input must be a 3-D"),
    (dict(x=torch.randn(1, 1, 2, 4, 5)), "input must be a 3-D"),
    (dict(w=torch.randn(4, 3, 2)), "weight must be a 4-D"),
    (dict(x=torch.randn(1, 5, 5, 5)), r"weight.shape\[0\] must equal the input channels \(5\)"),
    (dict(groups=3), r"input channels must be a positive multiple of groups \(3\), got 4"),
    (dict(groups=0), "groups must be an int >= 1, got 0"),
    (dict(stride=0), "stride must be >= 1, got 0"),
    (dict(padding=-1), "padding must be >= 0, got -1"),
    (dict(dilation=(1, 0)), r"dilation must be >= 1, got \(1, 0\)"),
    (dict(output_padding=2), r"output_padding must be smaller than stride or dilation, got output_padding=\[2, 2\]"),
    (dict(output_padding=-1), "output_padding must be >= 0"),
    (dict(stride=(1, 2, 3)), r"stride must be an int or a pair of ints, got \(1, 2, 3\)"),
    (dict(stride=1.5), "stride must be an int or a pair of ints, got 1.5"),
    (dict(b=torch.randn(5)), r"bias must have shape \[3\] \(C_out\), got \[5\]"),
    (dict(b=torch.randn(3, dtype=torch.float64)), "bias must have the dtype and device of input"),
    (dict(w=torch.randn(4, 3, 2, 2, dtype=torch.float64)), "weight must have the dtype of input"),
    (dict(x=torch.randint(0, 3, (1, 4, 5, 5))), "input must be a floating-point tensor, got torch.int64"),
    (dict(padding=6), "the output size would be -2 x -2"),
    (dict(x=torch.randn(1, 4, 0, 5)), r"input must have a non-empty image unless the batch is empty, got shape \[1, 4, 0, 5\]"),
    (dict(x=[1, 2]), "input must be a torch.Tensor, got list"),
    (dict(activation="gelu"), "activation must be one of"),
]


@pytest.mark.parametrize("bad,match", BAD)
def test_bad_input(backend_name, bad, match):
    require_backend(backend_name, "cpu")
    kw = dict(x=torch.randn(1, 4, 5, 5), w=torch.randn(4, 3, 2, 2), b=torch.randn(3), stride=2, padding=0,
              output_padding=0, groups=1, dilation=1, activation=None)
    kw.update(bad)
    with pytest.raises(fastseg.ops.ArgumentError, match="conv_transpose2d: " + match) as err:
        with fastseg.use_backend(backend_name):
            fastseg.ops.conv_transpose2d(kw["x"], kw["w"], kw["b"], kw["stride"], kw["padding"], kw["output_padding"],
                                         kw["groups"], kw["dilation"], activation=kw["activation"])
    # A ValueError, and a RuntimeError as PyTorch's checks raise, so torch-era `except` clauses still work.
    assert isinstance(err.value, ValueError) and isinstance(err.value, RuntimeError)


def test_output_with_no_rows_is_empty(backend_name):
    """Padding that leaves no output row is valid, as in PyTorch's oneDNN route: an empty output, zero
    gradients (not the uninitialised memory of an empty_like)."""
    require_backend(backend_name, "cpu")
    x, w, b = torch.randn(4, 64, 1, 64), torch.randn(64, 3, 4, 2), torch.randn(6)
    args = dict(stride=(1, 3), padding=(2, 3), output_padding=(0, 2), groups=2, dilation=(1, 2))
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    with fastseg.use_backend(backend_name):
        out = fastseg.ops.conv_transpose2d(*leaves, **args)
    assert out.shape == F.conv_transpose2d(x, w, b, **args).shape == (4, 6, 0, 188)
    for _ in range(3):  # freed NaN blocks of grad_input's size: an unwritten gradient often shows (best effort)
        torch.full((x.numel(),), float("nan"))
    out.sum().backward()
    for t in leaves:
        assert torch.equal(t.grad, torch.zeros_like(t))


def test_native_op_checks_directly():
    """A direct torch.ops call gets a clear error too, not a crash."""
    x, w = torch.randn(1, 4, 5, 5), torch.randn(4, 3, 2, 2)
    with pytest.raises(RuntimeError, match="output_padding must be >= 0 and smaller than stride or dilation"):
        torch.ops.fastseg.conv_transpose2d(x, w, None, [2, 2], [0, 0], [2, 0], 1, [1, 1], False)
    with pytest.raises(RuntimeError, match="weight.size\\(0\\) must equal the input channels"):
        torch.ops.fastseg.conv_transpose2d(x, w[:3], None, [2, 2], [0, 0], [0, 0], 1, [1, 1], False)
    with pytest.raises(RuntimeError, match="grad_output must have shape"):
        torch.ops.fastseg.conv_transpose2d_backward(torch.randn(1, 3, 9, 9), x, w, [2, 2], [0, 0], [0, 0], 1, [1, 1])


def test_reference_matches_pytorch():
    # The reference is the oracle of the `torch` backend: check it on its own too, including the empty
    # batch with a zero-width output that conv2d itself refuses.
    x, w, b = make(2, 3, 2, 1, 3, 2, 4, 5, torch.float64)
    for args in [(2, 1, 1, 1, 1), ((1, 3), (0, 2), (0, 1), 1, (2, 1))]:
        torch.testing.assert_close(reference.conv_transpose2d(x, w, b, *args), F.conv_transpose2d(x, w, b, *args))
    x0 = torch.zeros(0, 6, 5, 1)
    assert reference.conv_transpose2d(x0, torch.randn(6, 1, 1, 2), None, 2, (0, 2), 1, 1, (1, 2)).shape == \
        F.conv_transpose2d(x0, torch.randn(6, 1, 1, 2), None, 2, (0, 2), 1, 1, (1, 2)).shape


# -- fastseg.nn.ConvTranspose2d and fastseg.nn.init.bilinear_ --------------------------------------

@pytest.mark.parametrize("kwargs", [
    dict(in_channels=4, out_channels=6, kernel_size=2, stride=2),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 4), stride=(2, 3), padding=(1, 2), output_padding=(1, 0),
         groups=2, bias=False, dilation=(1, 2)),
])
def test_module_is_a_drop_in(backend_name, kwargs):
    import fastseg.nn

    require_backend(backend_name, "cpu")
    torch.manual_seed(0)
    theirs = torch.nn.ConvTranspose2d(**kwargs)
    ours = fastseg.nn.ConvTranspose2d(**kwargs)
    assert repr(ours).replace("fastseg", "") == repr(theirs) or ours.extra_repr() == theirs.extra_repr()
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    theirs2 = torch.nn.ConvTranspose2d(**kwargs)
    theirs2.load_state_dict(ours.state_dict())
    x = torch.randn(2, 4, 5, 6)
    with fastseg.use_backend(backend_name):
        out = ours(x)
        torch.testing.assert_close(out, theirs(x), atol=1e-5, rtol=1e-5)
        # output_size picks the output_padding, as in torch
        # the largest valid size: output_padding = stride - 1
        size = [o - op + s - 1 for o, op, s in zip(out.shape[-2:], ours.output_padding, ours.stride)]
        torch.testing.assert_close(ours(x, output_size=size), theirs(x, output_size=size), atol=1e-5, rtol=1e-5)
        assert list(ours(x, output_size=size).shape[-2:]) == size
        out.sum().backward()
    assert ours.weight.grad is not None and ours.weight.grad.shape == ours.weight.shape
    ours.reset_parameters()  # inherited: same initialisation scheme


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("stride,kernel", [(2, 2), (2, 4)])
def test_module_under_autocast_is_a_drop_in(backend_name, dtype, stride, kernel):
    """Inside torch.autocast a ConvTranspose2d takes a low-precision activation and its fp32 weight: torch
    casts both to the autocast dtype, so must we (it raised on the mixed dtypes); fp32 gradients reach the
    fp32 parameters; an fp64 input is left alone, as autocast leaves fp64."""
    require_backend(backend_name, "cpu")
    torch.manual_seed(0)
    theirs = torch.nn.ConvTranspose2d(6, 4, kernel, stride=stride, padding=(kernel - stride) // 2)
    ours = fastseg.nn.ConvTranspose2d(6, 4, kernel, stride=stride, padding=(kernel - stride) // 2)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 6, 5, 7)
    for inp in (x.to(dtype), x):  # an autocast layer's output, and an fp32 input
        with torch.autocast("cpu", dtype=dtype), fastseg.use_backend(backend_name):
            got, want = ours(inp), theirs(inp)
        assert got.dtype == want.dtype == dtype
        torch.testing.assert_close(got.float(), want.float(), atol=TOL[dtype], rtol=TOL[dtype])
        got.float().sum().backward()
        want.float().sum().backward()
        for a, b in ((ours.weight, theirs.weight), (ours.bias, theirs.bias)):
            assert a.grad.dtype == torch.float32
            torch.testing.assert_close(a.grad, b.grad, atol=TOL[dtype] * 10, rtol=TOL[dtype] * 10)
            a.grad = b.grad = None
    with torch.autocast("cpu", dtype=dtype), fastseg.use_backend(backend_name):
        out = fastseg.ops.conv_transpose2d(x.double(), ours.weight.double(), stride=stride)
        assert out.dtype == torch.float64


def test_module_output_size_error():
    import fastseg.nn

    m = fastseg.nn.ConvTranspose2d(2, 2, 2, stride=2)
    with pytest.raises(ValueError, match="requested an output size"):
        m(torch.randn(1, 2, 4, 4), output_size=[20, 20])


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated, but still used
def test_module_scripts_like_torchs():
    """torch.jit.script takes ConvTranspose2d as it takes torch's (it failed on the Python op): the
    scripted module runs the native op, output_size, unbatched input and gradients included."""
    import fastseg.nn

    require_backend("native", "cpu")
    torch.manual_seed(0)
    theirs = torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, groups=2)
    ours = fastseg.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, groups=2)
    ours.load_state_dict(theirs.state_dict())
    scripted = torch.jit.script(ours)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    for args in ((x,), (x, [10, 10]), (x[0],)):
        check_close(scripted(*args), theirs(*args).double(), torch.float32)
    (gx,) = torch.autograd.grad(scripted(x).square().sum(), x)
    check_close(gx, torch.autograd.grad(theirs(x).square().sum(), x)[0].double(), torch.float32)
    with pytest.raises(RuntimeError, match="conv_transpose2d: input channels must be a positive multiple of groups"):
        scripted(torch.randn(1, 3, 5, 5))


def test_bilinear_init_upsamples_like_bilinear_interpolation():
    import fastseg.nn

    for f in (2, 3, 4):
        k = 2 * f
        pad = (f + 1) // 2 if f % 2 else f // 2
        up = fastseg.nn.ConvTranspose2d(3, 3, k, stride=f, padding=pad, bias=False)
        fastseg.nn.init.bilinear_(up.weight)
        w = up.weight.detach()
        # channel c maps to c only
        off = w.clone()
        off[torch.arange(3), torch.arange(3)] = 0
        assert torch.equal(off, torch.zeros_like(off))
        x = torch.randn(1, 3, 8, 9, dtype=torch.float32)
        y = up(x).detach()
        ref = F.interpolate(x, scale_factor=f, mode="bilinear", align_corners=False)
        if f % 2 == 0:  # FCN's k = 2f, s = f, p = f / 2: bilinear interpolation away from the border
            assert y.shape == ref.shape
            torch.testing.assert_close(y[..., f:-f, f:-f], ref[..., f:-f, f:-f], atol=1e-5, rtol=1e-5)
        # the weights of one channel sum to f * f (each output pixel's taps sum to 1)
        torch.testing.assert_close(w[0, 0].sum(), torch.tensor(float(f * f)), atol=1e-5, rtol=0)


def test_bilinear_init_depthwise_and_known_values():
    import fastseg.nn

    w = torch.empty(5, 1, 4, 4)
    fastseg.nn.init.bilinear_(w)
    k1 = torch.tensor([0.25, 0.75, 0.75, 0.25])
    for c in range(5):
        torch.testing.assert_close(w[c, 0], k1[:, None] * k1[None, :])
    w3 = fastseg.nn.init.bilinear_(torch.empty(2, 2, 3, 3))
    torch.testing.assert_close(w3[1, 1], torch.tensor([[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]]))
    with pytest.raises(ValueError, match="bilinear_: weight must be a 4-D tensor"):
        fastseg.nn.init.bilinear_(torch.empty(3, 3))


# -- registration and the GPU -----------------------------------------------------------------------

# -- the native CPU path's packed-weight cache (csrc/cpu/packed_weights.cpp) ----------------------------

# More than 64 channels and kernel != stride: oneDNN's deconvolution, whose packed weight is cached. The
# 590 KB weight spans three of the comparison's 256 KB chunks.
WIDE = dict(n=2, cin=128, cout_g=128, groups=1, kh=3, kw=3, h=4, w=5)
WIDE_ARGS = dict(stride=2, padding=1, output_padding=1, groups=1, dilation=1)


@pytest.fixture
def weight_cache():
    require_backend("native", "cpu")
    fastseg.ops.empty_cache()
    yield torch.ops.fastseg.weight_cache_entries
    fastseg.ops.empty_cache()


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias,relu", [(True, False), (False, True)])
def test_weight_cache_packs_the_second_time_and_stays_exact(weight_cache, channels_last, bias, relu):
    x, w, b = make(**WIDE, bias=bias, channels_last=channels_last)
    outs = []
    for _ in range(3):
        outs.append(run("native", x, w, b, WIDE_ARGS, relu))
        assert outs[-1].stride() == F.conv_transpose2d(x, w, b, **WIDE_ARGS).stride()
    assert weight_cache() == 1  # packed on the second call
    for out in outs:
        check_close(out, expected(x, w, b, **WIDE_ARGS, relu=relu), torch.float32)
    # Another input shape packs its own; a clone with the same bytes finds the first one.
    x2, _, _ = make(**dict(WIDE, h=3), bias=bias, channels_last=channels_last)
    for _ in range(2):
        check_close(run("native", x2, w, b, WIDE_ARGS, relu), expected(x2, w, b, **WIDE_ARGS, relu=relu),
                    torch.float32)
    assert weight_cache() == 2
    check_close(run("native", x, w.clone(), b, WIDE_ARGS, relu), expected(x, w, b, **WIDE_ARGS, relu=relu),
                torch.float32)
    assert weight_cache() == 2
    assert fastseg.ops.empty_cache() >= 2 * 2 * w.numel() * 4 and weight_cache() == 0  # copies and packed forms


@pytest.mark.parametrize("how", ["in place", ".data", "numpy", "last element through .data"])
def test_weight_cache_sees_every_change_of_the_weight(weight_cache, how):
    """Writes through .data or NumPy do not bump the version counter: the byte comparison must catch them,
    down to the last element of the last chunk."""
    x, w, b = make(**WIDE)
    w = w.clone().requires_grad_()  # like a Parameter
    for _ in range(3):
        run("native", x, w, b, WIDE_ARGS)
    assert weight_cache() == 1
    new = w.detach().clone()
    if how == "last element through .data":
        new[-1, -1, -1, -1] += 1.0
    else:
        new = torch.randn(new.shape, generator=torch.Generator().manual_seed(5)) / 30
    if how == "in place":
        with torch.no_grad():
            w.copy_(new)
    elif how == "numpy":
        w.detach().numpy()[...] = new.numpy()
    else:
        w.data.copy_(new)
    for _ in range(3):
        out = run("native", x, w, b, WIDE_ARGS)
        check_close(out, expected(x, new, b, **WIDE_ARGS), torch.float32)
    assert weight_cache() <= 2
    if how == "in place":  # the tensor's stale contents are dropped when it is packed again
        assert weight_cache() == 1


def test_weight_cache_gradients_and_inference_tensors(weight_cache):
    x, w, b = make(**WIDE)
    grad = torch.randn(expected(x, w, b, **WIDE_ARGS).shape, generator=torch.Generator().manual_seed(1))
    xr, wr, br = (t.double().requires_grad_() for t in (x, w, b))
    want = torch.autograd.grad(expected(xr, wr, br, **WIDE_ARGS), (xr, wr, br), grad.double())
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
    for _ in range(3):
        got = torch.autograd.grad(run("native", xg, wg, bg, WIDE_ARGS), (xg, wg, bg), grad)
        for g, e in zip(got, want):
            check_close(g, e, torch.float32)
    assert weight_cache() == 1
    for _ in range(3):  # a fresh detach() of the same weight every call, as training loops do: same memory
        leaves = [t.detach().requires_grad_() for t in (x, w.clone(), b)]
        torch.autograd.grad(run("native", *leaves, WIDE_ARGS), leaves, grad)
    assert weight_cache() == 1  # the clone's bytes equal w's: the same entry
    fastseg.ops.empty_cache()
    w2 = w.clone()
    for _ in range(3):
        leaves = [t.detach().requires_grad_() for t in (x, w2, b)]
        got = torch.autograd.grad(run("native", *leaves, WIDE_ARGS), leaves, grad)
    assert weight_cache() == 1
    for g, e in zip(got, want):
        check_close(g, e, torch.float32)
    with torch.inference_mode():  # no version counter
        wi = w.clone()
        for _ in range(3):
            check_close(run("native", x, wi, b, WIDE_ARGS), expected(x, wi, b, **WIDE_ARGS), torch.float32)
        wi.mul_(-1.0)
        check_close(run("native", x, wi, b, WIDE_ARGS), expected(x, wi, b, **WIDE_ARGS), torch.float32)


def test_weight_cache_random_configs_and_bounds(weight_cache):
    """oneDNN-routed configurations (groups, dilation, output_padding, few channels in NCHW), each called
    three times so the last call runs the packed weight; more weights than the cache holds."""

    @settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(problem=configs(max_c=5), relu=st.booleans())
    def body(problem, relu):
        cfg, args = problem
        x, w, b = make(**cfg)
        exp = expected(x, w, b, **args, relu=relu)
        for _ in range(3):
            check_close(run("native", x, w, b, args, relu), exp, torch.float32)

    body()
    assert weight_cache() > 0  # the packed path ran
    for i in range(70):
        x, w, b = make(1, 2, 3, 2, 3, 3, 3, 3, seed=i)
        for _ in range(2):
            run("native", x, w, b, dict(stride=1, padding=0, output_padding=0, groups=2, dilation=1))
    assert 0 < weight_cache() <= 64


def test_weight_cache_can_be_switched_off():
    require_backend("native", "cpu")
    code = ("import torch, fastseg\n"
            "x, w = torch.randn(2, 128, 4, 4), torch.randn(128, 96, 3, 3)\n"
            "for _ in range(3): fastseg.ops.conv_transpose2d(x, w, stride=2)\n"
            "print(torch.ops.fastseg.weight_cache_entries())\n")
    for value, entries in (("0", "0"), ("1", "1")):
        env = dict(os.environ, FASTSEG_WEIGHT_CACHE=value)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split()[-1] == entries


@pytest.mark.parametrize("op", ["conv_transpose2d", "conv_transpose2d_backward"])
def test_kernels_registered(op):
    from fastseg import _extension

    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastseg::{op}", "CPU")
    if _extension.with_cuda():
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastseg::{op}", "CUDA")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_device_forward_backward(backend_name, device, dtype, channels_last):
    """Every backend on every device (the CUDA run of make gpu-check), forward and gradients."""
    require_backend(backend_name, device)
    cases = [((2, 8, 6, 1, 2, 2, 5, 7), 2, 0, 0, 1), ((1, 5, 5, 1, 4, 4, 6, 5), 2, 1, 1, 1),
             ((1, 6, 3, 3, 2, 3, 4, 5), (2, 3), (1, 0), (1, 2), 1), ((1, 3, 2, 1, 3, 2, 4, 4), (3, 2), (2, 1), (1, 0), (2, 1))]
    for shape, stride, padding, output_padding, dilation in cases:
        n, cin, cout_g, groups, kh, kw, h, w = shape
        x, wt, b = make(n, cin // groups, cout_g, groups, kh, kw, h, w, dtype, device, channels_last=channels_last)
        args = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups, dilation=dilation)
        leaves = [t.detach().clone().requires_grad_() for t in (x, wt, b)]
        out = run(backend_name, *leaves, args)
        check_close(out, expected(x.cpu(), wt.cpu(), b.cpu(), **args), dtype)
        gy = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(device, dtype)
        got = torch.autograd.grad(out, leaves, gy)
        ref_leaves = [t.detach().cpu().double().requires_grad_() for t in (x, wt, b)]
        want = torch.autograd.grad(F.conv_transpose2d(*ref_leaves, **args), ref_leaves, gy.cpu().double())
        for name, a, e in zip("xwb", got, want):
            scale = max(1.0, e.abs().max().item())
            torch.testing.assert_close(a.double().cpu(), e, atol=TOL[dtype] * 4 * scale, rtol=TOL[dtype] * 4,
                                       msg=f"grad {name}")
