r"""Transposed 2-D convolution in Triton: forward, grad_input, grad_weight.

Maths
-----
Input ``x[n, ci, iy, ix]``, weight ``w[ci, co, ky, kx]`` (``co`` within the group of ``ci``), stride s,
padding p, dilation d. Output pixel ``oy`` receives tap ``ky`` from ``iy = (oy + p - ky d) / s`` when
that division is exact and ``0 <= iy < H`` (same for x):

    y[n, g co', oy, ox] = b + sum_{ci in g, ky, kx} x[n, ci, iy, ix] w[ci, co', ky, kx]

Sub-pixel decomposition: output rows with the same phase ``ry = oy mod s`` receive only the taps with
``(ry + p - ky d) mod s == 0``. A program owns BLOCK_P output pixels of ONE phase (ry, rx) of one image
and BLOCK_CO output channels, so whether a tap contributes is a scalar decided once per tap, and each
contributing tap is a dense ``[BLOCK_P, Cin_g] @ [Cin_g, BLOCK_CO]`` product (``tl.dot``, fp32
accumulation) with no zero-insertion: the s*s phases are s*s small dense GEMMs.

Backward: ``grad_input`` is the ordinary convolution of grad_output with the same weight
(``gi[n, ci, iy, ix] = sum_{co, ky, kx} gy[n, co, iy s + ky d - p, ix s + kx d - p] w[ci, co, ky, kx]``),
one program per (BLOCK_P input pixels, BLOCK_CI channels), reducing over taps and co blocks.
``grad_weight[ci, co, ky, kx] = sum_{n, iy, ix} x[n, ci, iy, ix] gy[n, co, iy s + ky d - p, ...]``,
one program per (tap, BLOCK_CI, BLOCK_CO), reducing over all input pixels. ``grad_bias`` is
``grad_output.sum((0, 2, 3))``.

Tensors are addressed through their strides, so NCHW and channels_last run without copies; the output
takes PyTorch's memory format. The ops are ``torch.library.custom_op`` s
``fastseg_triton::conv_transpose2d`` and ``fastseg_triton::conv_transpose2d_backward`` with fake
kernels and autograd. fp16/bf16 are accumulated in fp32; fp32 uses IEEE products (no TF32) to match
PyTorch, and so does bf16 under the interpreter (``_dot``; stores round through ``_interpreter.cast``). fp64, which ``tl.dot`` lacks, multiplies
and sums its tiles in fp64 on the FMA units (slow; for gradcheck and fp64 models).
"""
from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl

from fastseg.kernels._interpreter import INTERPRETED, cast
from fastseg.ops.conv_transpose2d import _memory_format, _out_shape, fake_backward, make_backward, setup_context



def _tiles(dtype: torch.dtype) -> tuple[int, int, int]:
    """(pixels, channels, reduced channels) per tile. tl.dot needs >= 16 per dimension; small on purpose:
    the layers of the bundled networks have 21 to 1024 channels; not tuned on a GPU yet. fp64 multiplies
    a [P, K, C] broadcast (no fp64 tl.dot), kept to 4096 elements."""
    return (16, 16, 16) if dtype == torch.float64 else (64, 32, 32)


@triton.jit
def _dot(a, b, IEEE: tl.constexpr, ACC: tl.constexpr):
    if ACC == tl.float64:  # tl.dot has no fp64: products and sums on the FMA units, in fp64
        return tl.sum(a.to(tl.float64)[:, :, None] * b.to(tl.float64)[None, :, :], axis=1)
    elif IEEE or (INTERPRETED and a.dtype == tl.bfloat16):
        # fp32 operands (a no-op for fp32 tiles), IEEE products: no TF32. The interpreter's tl.dot returns
        # garbage for bf16 tiles (NumPy has no bf16), but bf16 products are exact in fp32, so this is the
        # tensor-core answer.
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b)


def _precision(dtype: torch.dtype) -> dict:
    """The kernels' accumulator dtype ACC (fp64 for fp64, else fp32) and IEEE flag: IEEE products (fp32
    operands, no TF32) for fp32, as PyTorch."""
    return dict(IEEE=dtype == torch.float32, ACC=tl.float64 if dtype == torch.float64 else tl.float32)


@triton.jit
def _fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr,
                H, W, HO, WO, CIN_G, COUT_G,
                sxn, sxc, sxh, sxw, swi, swo, swh, sww, syn, syc, syh, syw,
                SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                DH: tl.constexpr, DW: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                HAS_BIAS: tl.constexpr, RELU: tl.constexpr, IEEE: tl.constexpr, ACC: tl.constexpr,
                BLOCK_P: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr):
    pid_p = tl.program_id(0)   # (n, phase, pixel block)
    pid_c = tl.program_id(1)   # (group, co block)
    hp = tl.cdiv(HO, SH)
    wp = tl.cdiv(WO, SW)
    nblk = tl.cdiv(hp * wp, BLOCK_P)
    blk = pid_p % nblk
    t = pid_p // nblk
    rx = t % SW
    t = t // SW
    ry = t % SH
    n = t // SH
    co_blocks = tl.cdiv(COUT_G, BLOCK_CO)
    g = pid_c // co_blocks
    co = (pid_c % co_blocks) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_ok = co < COUT_G

    q = blk * BLOCK_P + tl.arange(0, BLOCK_P)
    oy = ry + SH * (q // wp)
    ox = rx + SW * (q % wp)
    p_ok = (q < hp * wp) & (oy < HO) & (ox < WO)

    acc = tl.zeros((BLOCK_P, BLOCK_CO), dtype=ACC)
    for ky in tl.static_range(KH):
        # a phase receives tap ky only when (ry + PH - ky*DH) is a multiple of SH: a scalar test
        if (ry + PH - ky * DH) % SH == 0:
            ny = oy + PH - ky * DH
            iy = ny // SH
            y_ok = (ny >= 0) & (iy < H)
            for kx in tl.static_range(KW):
                if (rx + PW - kx * DW) % SW == 0:
                    nx = ox + PW - kx * DW
                    ix = nx // SW
                    ok = p_ok & y_ok & (nx >= 0) & (ix < W)
                    iy_s = tl.where(ok, iy, 0)
                    ix_s = tl.where(ok, ix, 0)
                    for c0 in range(0, CIN_G, BLOCK_CI):
                        ci = c0 + tl.arange(0, BLOCK_CI)
                        ci_ok = ci < CIN_G
                        cig = g * CIN_G + ci
                        xt = tl.load(x_ptr + n * sxn + cig[None, :] * sxc + iy_s[:, None] * sxh + ix_s[:, None] * sxw,
                                     mask=ok[:, None] & ci_ok[None, :], other=0.0)
                        wt = tl.load(w_ptr + cig[:, None] * swi + co[None, :] * swo + ky * swh + kx * sww,
                                     mask=ci_ok[:, None] & co_ok[None, :], other=0.0)
                        acc += _dot(xt, wt, IEEE, ACC)
    cog = g * COUT_G + co
    if HAS_BIAS:
        acc += tl.load(b_ptr + cog, mask=co_ok, other=0.0).to(ACC)[None, :]
    if RELU:
        acc = tl.where(acc > 0, acc, tl.where(acc != acc, acc, 0.0))
    dst = y_ptr + n * syn + cog[None, :] * syc + oy[:, None] * syh + ox[:, None] * syw
    tl.store(dst, cast(acc, y_ptr.dtype.element_ty), mask=p_ok[:, None] & co_ok[None, :])


@triton.jit
def _bwd_input_kernel(gy_ptr, w_ptr, gi_ptr,
                      H, W, HO, WO, CIN_G, COUT_G,
                      sgn, sgc, sgh, sgw, swi, swo, swh, sww, sin, sic, sih, siw,
                      SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                      DH: tl.constexpr, DW: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                      IEEE: tl.constexpr, ACC: tl.constexpr,
                      BLOCK_P: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr):
    pid_p = tl.program_id(0)   # (n, pixel block)
    pid_c = tl.program_id(1)   # (group, ci block)
    nblk = tl.cdiv(H * W, BLOCK_P)
    n = pid_p // nblk
    pix = (pid_p % nblk) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = pix < H * W
    iy = pix // W
    ix = pix % W
    ci_blocks = tl.cdiv(CIN_G, BLOCK_CI)
    g = pid_c // ci_blocks
    ci = (pid_c % ci_blocks) * BLOCK_CI + tl.arange(0, BLOCK_CI)
    ci_ok = ci < CIN_G
    cig = g * CIN_G + ci

    acc = tl.zeros((BLOCK_P, BLOCK_CI), dtype=ACC)
    for ky in tl.static_range(KH):
        oy = iy * SH + ky * DH - PH
        for kx in tl.static_range(KW):
            ox = ix * SW + kx * DW - PW
            ok = p_ok & (oy >= 0) & (oy < HO) & (ox >= 0) & (ox < WO)
            oy_s = tl.where(ok, oy, 0)
            ox_s = tl.where(ok, ox, 0)
            for c0 in range(0, COUT_G, BLOCK_CO):
                co = c0 + tl.arange(0, BLOCK_CO)
                co_ok = co < COUT_G
                gt = tl.load(gy_ptr + n * sgn + (g * COUT_G + co)[None, :] * sgc + oy_s[:, None] * sgh
                             + ox_s[:, None] * sgw, mask=ok[:, None] & co_ok[None, :], other=0.0)
                wt = tl.load(w_ptr + cig[None, :] * swi + co[:, None] * swo + ky * swh + kx * sww,
                             mask=co_ok[:, None] & ci_ok[None, :], other=0.0)
                acc += _dot(gt, wt, IEEE, ACC)
    dst = gi_ptr + n * sin + cig[None, :] * sic + iy[:, None] * sih + ix[:, None] * siw
    tl.store(dst, cast(acc, gi_ptr.dtype.element_ty), mask=p_ok[:, None] & ci_ok[None, :])


@triton.jit
def _bwd_weight_kernel(x_ptr, gy_ptr, gw_ptr,
                       N, H, W, HO, WO, CIN_G, COUT_G,
                       sxn, sxc, sxh, sxw, sgn, sgc, sgh, sgw, swi, swo, swh, sww,
                       SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                       DH: tl.constexpr, DW: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                       IEEE: tl.constexpr, ACC: tl.constexpr,
                       BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_P: tl.constexpr):
    tap = tl.program_id(0)     # ky * KW + kx
    pid_i = tl.program_id(1)   # (group, ci block)
    pid_o = tl.program_id(2)   # co block
    ky = tap // KW
    kx = tap % KW
    ci_blocks = tl.cdiv(CIN_G, BLOCK_CI)
    g = pid_i // ci_blocks
    ci = (pid_i % ci_blocks) * BLOCK_CI + tl.arange(0, BLOCK_CI)
    ci_ok = ci < CIN_G
    cig = g * CIN_G + ci
    co = pid_o * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_ok = co < COUT_G

    acc = tl.zeros((BLOCK_CI, BLOCK_CO), dtype=ACC)
    for p0 in range(0, N * H * W, BLOCK_P):
        pix = p0 + tl.arange(0, BLOCK_P)
        n = pix // (H * W)
        r = pix % (H * W)
        iy = r // W
        ix = r % W
        oy = iy * SH + ky * DH - PH
        ox = ix * SW + kx * DW - PW
        ok = (pix < N * H * W) & (oy >= 0) & (oy < HO) & (ox >= 0) & (ox < WO)
        n_s = tl.where(ok, n, 0)
        xt = tl.load(x_ptr + n_s[None, :] * sxn + cig[:, None] * sxc + iy[None, :] * sxh + ix[None, :] * sxw,
                     mask=ok[None, :] & ci_ok[:, None], other=0.0)
        gt = tl.load(gy_ptr + n_s[:, None] * sgn + (g * COUT_G + co)[None, :] * sgc
                     + tl.where(ok, oy, 0)[:, None] * sgh + tl.where(ok, ox, 0)[:, None] * sgw,
                     mask=ok[:, None] & co_ok[None, :], other=0.0)
        acc += _dot(xt, gt, IEEE, ACC)
    dst = gw_ptr + cig[:, None] * swi + co[None, :] * swo + ky * swh + kx * sww
    tl.store(dst, cast(acc, gw_ptr.dtype.element_ty), mask=ci_ok[:, None] & co_ok[None, :])


def _dims(input, weight, groups):
    n, cin, h, w = input.shape
    _, cout_g, kh, kw = weight.shape
    return n, cin // groups, cout_g, h, w, kh, kw


@torch.library.custom_op("fastseg_triton::conv_transpose2d", mutates_args=())
def _conv_transpose2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: List[int],
                      padding: List[int], output_padding: List[int], groups: int, dilation: List[int],
                      relu: bool) -> torch.Tensor:
    shape = _out_shape(input, weight, stride, padding, output_padding, groups, dilation)
    out = input.new_empty(shape).contiguous(memory_format=_memory_format(input, weight))
    if out.numel() == 0:
        return out
    n, cin_g, cout_g, h, w, kh, kw = _dims(input, weight, groups)
    ho, wo = shape[2], shape[3]
    hp, wp = -(-ho // stride[0]), -(-wo // stride[1])
    block_p, block_c, block_k = _tiles(input.dtype)
    grid = (n * stride[0] * stride[1] * triton.cdiv(hp * wp, block_p), groups * triton.cdiv(cout_g, block_c))
    _fwd_kernel[grid](
        input, weight, bias if bias is not None else input, out,
        h, w, ho, wo, cin_g, cout_g, *input.stride(), *weight.stride(), *out.stride(),
        SH=stride[0], SW=stride[1], PH=padding[0], PW=padding[1], DH=dilation[0], DW=dilation[1], KH=kh, KW=kw,
        HAS_BIAS=bias is not None, RELU=relu, **_precision(input.dtype),
        BLOCK_P=block_p, BLOCK_CO=block_c, BLOCK_CI=block_k)
    return out


@_conv_transpose2d.register_fake
def _(input, weight, bias, stride, padding, output_padding, groups, dilation, relu):
    shape = _out_shape(input, weight, stride, padding, output_padding, groups, dilation)
    return input.new_empty(shape).contiguous(memory_format=_memory_format(input, weight))


@torch.library.custom_op("fastseg_triton::conv_transpose2d_backward", mutates_args=())
def _conv_transpose2d_backward(grad_output: torch.Tensor, input: torch.Tensor, weight: torch.Tensor,
                               stride: List[int], padding: List[int], output_padding: List[int], groups: int,
                               dilation: List[int]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, cin_g, cout_g, h, w, kh, kw = _dims(input, weight, groups)
    ho, wo = grad_output.shape[2], grad_output.shape[3]
    fmt = _memory_format(input, weight)  # both gradients in the forward's memory format, as PyTorch's
    grad_input = input.new_empty(input.shape).contiguous(memory_format=fmt)
    grad_weight = weight.new_empty(weight.shape).contiguous(memory_format=fmt)
    grad_bias = grad_output.sum((0, 2, 3))
    consts = dict(SH=stride[0], SW=stride[1], PH=padding[0], PW=padding[1], DH=dilation[0], DW=dilation[1],
                  KH=kh, KW=kw, **_precision(input.dtype))
    block_p, block_c, block_k = _tiles(input.dtype)
    if grad_output.numel() == 0:
        grad_input.zero_()
    elif grad_input.numel():
        grid = (n * triton.cdiv(h * w, block_p), groups * triton.cdiv(cin_g, block_c))
        _bwd_input_kernel[grid](grad_output, weight, grad_input, h, w, ho, wo, cin_g, cout_g,
                                *grad_output.stride(), *weight.stride(), *grad_input.stride(), **consts,
                                BLOCK_P=block_p, BLOCK_CI=block_c, BLOCK_CO=block_k)
    if grad_output.numel() == 0:  # no output element (empty batch, or no output rows or columns)
        grad_weight.zero_()
    else:
        grid = (kh * kw, groups * triton.cdiv(cin_g, block_c), triton.cdiv(cout_g, block_c))
        _bwd_weight_kernel[grid](input, grad_output, grad_weight, n, h, w, ho, wo, cin_g, cout_g,
                                 *input.stride(), *grad_output.stride(), *grad_weight.stride(), **consts,
                                 BLOCK_CI=block_c, BLOCK_CO=block_c, BLOCK_P=block_p)
    return grad_input, grad_weight, grad_bias


_conv_transpose2d_backward.register_fake(fake_backward)
_conv_transpose2d.register_autograd(make_backward(_conv_transpose2d_backward), setup_context=setup_context)


def conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation, relu=False):
    """Inputs already validated by fastseg.ops.conv_transpose2d (4-D input)."""
    return _conv_transpose2d(input, weight, bias, list(stride), list(padding), list(output_padding), groups,
                             list(dilation), relu)
