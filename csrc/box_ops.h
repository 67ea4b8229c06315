// Per-element maths of the dense-detector box ops (anchors, box coding, pairwise IoUs), shared by the
// CPU and CUDA kernels so that the CPU tests exercise the arithmetic the GPU runs.
//
// Exactness contract: every function performs the elementwise PyTorch ops of torchvision's Python code
// (torchvision/models/detection/{anchor_utils,_utils}.py, torchvision/ops/boxes.py) in the same order,
// in PyTorch's "opmath" type A (float for fp16/bf16/fp32, double for fp64), and rounds the result of
// each op to the tensor dtype T where PyTorch materialises a T tensor (rnd<T>). Results are then
// bit-identical to torchvision's except where PyTorch itself calls a vectorised transcendental (exp,
// log, atan: SLEEF on the CPU, within 1 ulp of ours). Build with FP contraction off
// (-ffp-contract=off, nvcc --fmad=false): an FMA changes the rounding.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "box_iou.h"  // FASTSEG_HD

namespace fastseg {

// PyTorch's opmath type: reduced precisions compute in float.
template <typename T>
struct OpMath {
  using type = float;
};
template <>
struct OpMath<double> {
  using type = double;
};

// Rounds an opmath value to the tensor dtype T and back: what storing an intermediate T tensor does.
template <typename T, typename A>
FASTSEG_HD A rnd(A x) {
  return static_cast<A>(static_cast<T>(x));
}
template <>
FASTSEG_HD float rnd<float, float>(float x) {
  return x;
}
template <>
FASTSEG_HD double rnd<double, double>(double x) {
  return x;
}

// torch.maximum / torch.minimum / clamp: NaN in either operand propagates.
// Written as nested selects without || so that the compiler can if-convert and vectorise them.
template <typename A>
FASTSEG_HD A nan_max(A a, A b) {
  return (a < b) ? b : ((b == b) ? a : b);
}
template <typename A>
FASTSEG_HD A nan_min(A a, A b) {
  return (b < a) ? b : ((b == b) ? a : b);
}
// clamp(min=0): NaN stays NaN.
template <typename A>
FASTSEG_HD A clamp_min0(A a) {
  return (a < A(0)) ? A(0) : a;
}

// ---------------------------------------------------------------------------------------------------
// exp for the CPU decode: branch-free so that the box loop vectorises (glibc's scalar expf made
// BoxCoder.decode slower than torchvision's SLEEF-vectorised exp). x = n ln2 + r, |r| <= ln2 / 2,
// exp(r) by its degree-7 Taylor polynomial (truncation < 6e-9 relative, below half an fp32 ulp), 2^n
// applied in two halves so that subnormal results and overflow to inf come out right. Within ~1 ulp of
// a correctly rounded expf. Vectorises only without -ftrapping-math (the CPU kernel file sets
// no-trapping-math: no rounding changes, it only lets the compiler evaluate selects' both sides). On the device: CUDA's expf, which is what PyTorch's CUDA exp calls.
// ---------------------------------------------------------------------------------------------------
FASTSEG_HD float bits_to_float(uint32_t bits) {
  float f;
  memcpy(&f, &bits, sizeof(f));
  return f;
}
FASTSEG_HD uint32_t float_to_bits(float f) {
  uint32_t bits;
  memcpy(&bits, &f, sizeof(f));
  return bits;
}

FASTSEG_HD float fast_expf(float x) {
#ifdef __CUDA_ARCH__
  return expf(x);
#else
  // Clamp the argument (NaN goes to -104 here and is restored at the end): outside [-104, 89] the
  // result is 0 or inf anyway, and n stays within the exponent range.
  float xc = (x > -104.0f) ? x : -104.0f;
  xc = (xc < 89.0f) ? xc : 89.0f;
  const float t = xc * 1.44269504088896341f;  // x / ln2
  // Round to nearest without an int conversion (which the vectoriser will not speculate): adding
  // 1.5 * 2^23 leaves round(t) in the low mantissa bits.
  const float kMagic = 12582912.0f;
  const float tm = t + kMagic;
  const float fn = tm - kMagic;
  const int32_t n = static_cast<int32_t>(float_to_bits(tm) - float_to_bits(kMagic));
  // ln2 split in a high part with trailing zero bits (fn * kLn2Hi is exact) and the rest.
  const float r = (xc - fn * 0.693145751953125f) - fn * 1.428606765330187045e-06f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t n1 = n >> 1;  // 2^n in two factors, each a normal float
  const float y = p * bits_to_float(static_cast<uint32_t>(n1 + 127) << 23) *
                  bits_to_float(static_cast<uint32_t>(n - n1 + 127) << 23);
  return (x == x) ? y : x;
#endif
}

FASTSEG_HD double fast_exp(double x) { return ::exp(x); }  // fp64: no speed target, libm's exp
FASTSEG_HD float fast_exp(float x) { return fast_expf(x); }

// ---------------------------------------------------------------------------------------------------
// Anchors (AnchorGenerator.grid_anchors): anchor = shift + cell_anchor, with the shift
// arange(0, W, dtype=int32) * stride (int32 arithmetic, wrapping), converted to T, and the sum rounded
// to T. `cell` is a cell-anchor coordinate already in T.
// ---------------------------------------------------------------------------------------------------
FASTSEG_HD int32_t anchor_shift(int64_t index, int64_t stride) {
  return static_cast<int32_t>(static_cast<uint32_t>(index) * static_cast<uint32_t>(stride));
}

template <typename T>
FASTSEG_HD T anchor_coord(int32_t shift, T cell) {
  using A = typename OpMath<T>::type;
  // int32 -> T goes through float for the reduced types (c10's conversion does the same).
  const A s = static_cast<A>(static_cast<T>(static_cast<A>(shift)));
  return static_cast<T>(s + static_cast<A>(cell));
}

// ---------------------------------------------------------------------------------------------------
// BoxCoder.decode_single for one (reference box, 4 codes) pair; returns the box in A (the caller
// stores it as T). `w0..w3` are the weights as the division needs them: the weights themselves
// (CPU, `codes / w`), or their reciprocals when kRecip
// (PyTorch's CUDA div by a CPU scalar multiplies by the reciprocal). `clip` is bbox_xform_clip rounded
// to T (clamp's scalar). The result is clamped to [0, clip_w] x [0, clip_h]
// (clip_boxes_to_image, bounds rounded to T) when kClip.
// ---------------------------------------------------------------------------------------------------
template <typename T, bool kRecip, bool kClip>
FASTSEG_HD void decode_box(typename OpMath<T>::type c0, typename OpMath<T>::type c1,
                           typename OpMath<T>::type c2, typename OpMath<T>::type c3,
                           typename OpMath<T>::type bx1, typename OpMath<T>::type by1,
                           typename OpMath<T>::type bx2, typename OpMath<T>::type by2,
                           typename OpMath<T>::type w0, typename OpMath<T>::type w1,
                           typename OpMath<T>::type w2, typename OpMath<T>::type w3,
                           typename OpMath<T>::type clip, typename OpMath<T>::type clip_w,
                           typename OpMath<T>::type clip_h, typename OpMath<T>::type& x1,
                           typename OpMath<T>::type& y1, typename OpMath<T>::type& x2,
                           typename OpMath<T>::type& y2) {
  using A = typename OpMath<T>::type;
  const A half = A(0.5);
  const A width = rnd<T>(bx2 - bx1);
  const A height = rnd<T>(by2 - by1);
  const A ctr_x = rnd<T>(bx1 + rnd<T>(half * width));
  const A ctr_y = rnd<T>(by1 + rnd<T>(half * height));
  const A dx = rnd<T>(kRecip ? c0 * w0 : c0 / w0);
  const A dy = rnd<T>(kRecip ? c1 * w1 : c1 / w1);
  A dw = rnd<T>(kRecip ? c2 * w2 : c2 / w2);
  A dh = rnd<T>(kRecip ? c3 * w3 : c3 / w3);
  dw = (clip < dw) ? clip : dw;  // clamp(max=clip); NaN stays NaN
  dh = (clip < dh) ? clip : dh;
  const A pcx = rnd<T>(rnd<T>(dx * width) + ctr_x);
  const A pcy = rnd<T>(rnd<T>(dy * height) + ctr_y);
  const A pw = rnd<T>(rnd<T>(fast_exp(dw)) * width);
  const A ph = rnd<T>(rnd<T>(fast_exp(dh)) * height);
  const A cw = rnd<T>(half * pw);
  const A ch = rnd<T>(half * ph);
  x1 = pcx - cw, y1 = pcy - ch, x2 = pcx + cw, y2 = pcy + ch;
  if (kClip) {
    // clamp(min=0, max=bound) with a NaN box coordinate staying NaN (bounds are never NaN).
    x1 = (x1 < A(0)) ? A(0) : x1;
    x2 = (x2 < A(0)) ? A(0) : x2;
    y1 = (y1 < A(0)) ? A(0) : y1;
    y2 = (y2 < A(0)) ? A(0) : y2;
    x1 = (clip_w < x1) ? clip_w : x1;
    x2 = (clip_w < x2) ? clip_w : x2;
    y1 = (clip_h < y1) ? clip_h : y1;
    y2 = (clip_h < y2) ? clip_h : y2;
  }
}

// ---------------------------------------------------------------------------------------------------
// encode_boxes for one (reference, proposal) pair; `w` are the weights rounded to T (torchvision makes
// them a T tensor).
// ---------------------------------------------------------------------------------------------------
template <typename T>
FASTSEG_HD void encode_box(const T* ref, const T* prop, const typename OpMath<T>::type* w, T* out) {
  using A = typename OpMath<T>::type;
  const A half = A(0.5);
  const A px1 = static_cast<A>(prop[0]), py1 = static_cast<A>(prop[1]);
  const A px2 = static_cast<A>(prop[2]), py2 = static_cast<A>(prop[3]);
  const A gx1 = static_cast<A>(ref[0]), gy1 = static_cast<A>(ref[1]);
  const A gx2 = static_cast<A>(ref[2]), gy2 = static_cast<A>(ref[3]);
  const A ex_w = rnd<T>(px2 - px1), ex_h = rnd<T>(py2 - py1);
  const A ex_cx = rnd<T>(px1 + rnd<T>(half * ex_w)), ex_cy = rnd<T>(py1 + rnd<T>(half * ex_h));
  const A gt_w = rnd<T>(gx2 - gx1), gt_h = rnd<T>(gy2 - gy1);
  const A gt_cx = rnd<T>(gx1 + rnd<T>(half * gt_w)), gt_cy = rnd<T>(gy1 + rnd<T>(half * gt_h));
  out[0] = static_cast<T>(rnd<T>(w[0] * rnd<T>(gt_cx - ex_cx)) / ex_w);
  out[1] = static_cast<T>(rnd<T>(w[1] * rnd<T>(gt_cy - ex_cy)) / ex_h);
  out[2] = static_cast<T>(w[2] * rnd<T>(::log(rnd<T>(gt_w / ex_w))));
  out[3] = static_cast<T>(w[3] * rnd<T>(::log(rnd<T>(gt_h / ex_h))));
}

// ---------------------------------------------------------------------------------------------------
// Pairwise IoUs (torchvision.ops.box_iou & co). A box's per-box terms are precomputed once:
// area = (x2 - x1) * (y2 - y1) in A (torchvision upcasts before box_area), centre (x1 + x2) / 2 and, for
// CIoU, atan(w / h). R is the dtype in which torchvision materialises `rb - lt` before upcasting it:
// the input dtype for box_iou / generalized_box_iou, A for distance/complete IoU (inputs upcast first).
// ---------------------------------------------------------------------------------------------------
enum class IouKind : int { kIoU = 0, kGIoU = 1, kDIoU = 2, kCIoU = 3 };

template <typename A>
struct BoxTerms {
  A x1, y1, x2, y2, area, cx, cy, atan_wh;
};

template <typename A>
FASTSEG_HD BoxTerms<A> box_terms(A x1, A y1, A x2, A y2, bool with_atan) {
  BoxTerms<A> t;
  t.x1 = x1, t.y1 = y1, t.x2 = x2, t.y2 = y2;
  t.area = (x2 - x1) * (y2 - y1);
  t.cx = (x1 + x2) / A(2);
  t.cy = (y1 + y2) / A(2);
  t.atan_wh = with_atan ? ::atan((x2 - x1) / (y2 - y1)) : A(0);
  return t;
}

template <IouKind K, typename R, typename A>
FASTSEG_HD A pair_iou(A ax1, A ay1, A ax2, A ay2, A a_area, A acx, A acy, A a_atan, A bx1, A by1,
                      A bx2, A by2, A b_area, A bcx, A bcy, A b_atan, A eps) {
  const A w = clamp_min0(rnd<R>(nan_min(ax2, bx2) - nan_max(ax1, bx1)));
  const A h = clamp_min0(rnd<R>(nan_min(ay2, by2) - nan_max(ay1, by1)));
  const A inter = w * h;
  const A uni = (a_area + b_area) - inter;
  const A iou = inter / uni;
  if (K == IouKind::kIoU) return iou;
  // Smallest enclosing box.
  const A ew = clamp_min0(rnd<R>(nan_max(ax2, bx2) - nan_min(ax1, bx1)));
  const A eh = clamp_min0(rnd<R>(nan_max(ay2, by2) - nan_min(ay1, by1)));
  if (K == IouKind::kGIoU) {
    const A earea = ew * eh;
    return iou - (earea - uni) / earea;
  }
  const A diag = ((ew * ew) + (eh * eh)) + eps;
  const A dx = acx - bcx, dy = acy - bcy;
  const A centers = (dx * dx) + (dy * dy);
  const A diou = iou - centers / diag;
  if (K == IouKind::kDIoU) return diou;
  const A d = a_atan - b_atan;
  const A v = static_cast<A>(4.0 / (3.14159265358979323846 * 3.14159265358979323846)) * (d * d);
  const A alpha = v / (((A(1) - iou) + v) + eps);
  return diou - alpha * v;
}

}  // namespace fastseg
