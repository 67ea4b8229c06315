// Per-element maths of the sigmoid focal loss, shared by the CPU and CUDA kernels (so that the CPU
// tests exercise the arithmetic the GPU runs), plus the input checks of the C++ ops.
//
// With x the logit, t the target, p = sigmoid(x), q = 1 - p:
//   ce   = BCE-with-logits = max(x, 0) - x t + log1p(exp(-|x|))        (stable softplus form)
//   m    = 1 - p_t = p (1 - t) + q t        (computed directly: 1 - p_t cancels for easy examples)
//   a_t  = alpha t + (1 - alpha)(1 - t), or 1 when alpha < 0 (torchvision's "ignore")
//   loss = a_t ce m^gamma
//   dloss/dx = a_t [ (p - t) m^gamma + ce gamma m^(gamma-1) p q (1 - 2t) ]
// p and q both come from e = exp(-|x|): p = 1/(1+e), q = e/(1+e) for x >= 0 and swapped for x < 0, so
// neither is formed by a cancelling subtraction.
//
// fp32 uses its own exp and log1p (below): branch-free polynomials that the CPU compiler vectorises
// (libm's expf/log1pf are opaque calls that stop vectorisation) and that the GPU runs unchanged, so
// both devices compute the same bits. Measured against glibc over 2^24 random arguments: exp within
// 1.0 ulp, log1p within 1.3 ulp (tests/test_sigmoid_focal_loss.py checks the loss against a float64
// reference). fp64 (gradcheck) uses the library exp/log1p.
//
// gamma in {0, 1, 2} has exact multiplication paths (G = 0, 1, 2); any other gamma uses pow (G = -1).
// Where m == 0 (a saturated logit, |x| > ~17 in fp32) and 0 < gamma < 1, torchvision's autograd gives
// 0 * inf = NaN for the gradient; the true limit of the derivative is 0 and that is what we return.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

// Host and device, always inlined: the CPU element loops only vectorise with the whole formula inlined
// (GCC's size heuristics otherwise leave focal_terms a call once a file holds many instantiations).
#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTSEG_FOCAL_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define FASTSEG_FOCAL_HD inline __attribute__((always_inline))
#else
#define FASTSEG_FOCAL_HD inline
#endif

namespace fastseg {

// Reduction codes of the focal-loss ops (the `reduction` int argument of the schemas).
enum FocalReduction : int64_t { kFocalNone = 0, kFocalMean = 1, kFocalSum = 2 };

FASTSEG_FOCAL_HD float focal_int_as_float(int32_t i) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(i);
#else
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
#endif
}

// exp(x) for x <= 0 (and x = -inf); 0 below -87 (where exp(x) < 1.7e-38 and the loss no longer
// depends on it). Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, Cephes' degree-6 polynomial.
FASTSEG_FOCAL_HD float focal_exp_nonpos(float x) {
  const float xc = x < -87.0f ? -87.0f : x;
  // Round to nearest integer by the 1.5 * 2^23 trick (|xc log2 e| < 2^22): no call, vectorises.
  const float shifter = 12582912.0f;
  const float n = (xc * 1.44269504088896341f + shifter) - shifter;
  const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  const float z = r * r;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * z + r + 1.0f;
  const float two_n = focal_int_as_float((static_cast<int32_t>(n) + 127) << 23);  // n in [-126, 0]
  return x < -87.0f ? 0.0f : y * two_n;
}

// log(1 + e) for e in [0, 1], given u = 1 + e (rounded) and inv_u = 1 / u. log(u) by fdlibm's logf
// scheme (u = 2^k (1 + f), s = f / (2 + f), minimax polynomial in s^2), plus the rounding error of
// u: log1p(e) = log(u) + (e - (u - 1)) / u to first order (u - 1 is exact, Sterbenz).
FASTSEG_FOCAL_HD float focal_log1p_unit(float e, float u, float inv_u) {
  const bool big = u > 1.41421356f;
  const float v = big ? u * 0.5f : u;  // v in [0.707, 1.414]
  const float k = big ? 1.0f : 0.0f;
  const float f = v - 1.0f;
  const float s = f / (2.0f + f);
  const float z = s * s;
  const float w = z * z;
  const float t1 = w * (0.40000972152f + w * 0.24279078841f);
  const float t2 = z * (0.66666662693f + w * 0.28498786688f);
  const float r = t2 + t1;
  const float hfsq = 0.5f * f * f;
  const float log_v = f - (hfsq - s * (hfsq + r));
  const float log_u = (k * 0.693359375f + k * -2.12194440e-4f) + log_v;
  return log_u + (e - (u - 1.0f)) * inv_u;
}

FASTSEG_FOCAL_HD double focal_exp_nonpos(double x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  return std::exp(x);
#endif
}

FASTSEG_FOCAL_HD double focal_log1p_unit(double e, double /*u*/, double /*inv_u*/) {
#if defined(__CUDA_ARCH__)
  return ::log1p(e);
#else
  return std::log1p(e);
#endif
}

template <typename T>
FASTSEG_FOCAL_HD T focal_pow(T m, T g) {
#if defined(__CUDA_ARCH__)
  return ::pow(m, g);
#else
  return std::pow(m, g);
#endif
}

// The terms every formula needs, from one exp.
template <typename T>
struct FocalTerms {
  T p, q, ce, m;
};

template <typename T>
FASTSEG_FOCAL_HD FocalTerms<T> focal_terms(T x, T t) {
  const T ax = x < T(0) ? -x : x;
  const T e = focal_exp_nonpos(-ax);
  const T u = T(1) + e;
  const T inv = T(1) / u;
  const T big = inv;      // sigmoid(|x|)
  const T small = e * inv;  // sigmoid(-|x|)
  const bool pos = x >= T(0);
  FocalTerms<T> r;
  r.p = pos ? big : small;
  r.q = pos ? small : big;
  const T relu = pos ? x : T(0);
  r.ce = (relu - x * t) + focal_log1p_unit(e, u, inv);
  r.m = r.p * (T(1) - t) + r.q * t;
  return r;
}

// alpha_t as torchvision computes it; 1 when the alpha term is off (alpha < 0).
template <typename T>
FASTSEG_FOCAL_HD T focal_alpha_t(T t, T alpha) {
  return alpha < T(0) ? T(1) : alpha * t + (T(1) - alpha) * (T(1) - t);
}

// m^gamma, for the gamma kind G (0, 1, 2, or -1: any gamma).
template <int G, typename T>
FASTSEG_FOCAL_HD T focal_mod(T m, T gamma) {
  if (G == 0) return T(1);
  if (G == 1) return m;
  if (G == 2) return m * m;
  return focal_pow(m, gamma);
}

// gamma m^(gamma - 1), the derivative of m^gamma; 0 where the derivative's limit is 0 (see top).
template <int G, typename T>
FASTSEG_FOCAL_HD T focal_dmod(T m, T gamma) {
  if (G == 0) return T(0);
  if (G == 1) return T(1);
  if (G == 2) return T(2) * m;
  if (gamma == T(0)) return T(0);
  if (m == T(0)) return gamma >= T(1) ? (gamma == T(1) ? T(1) : T(0)) : T(0);
  return gamma * focal_pow(m, gamma - T(1));
}

template <int G, typename T>
FASTSEG_FOCAL_HD T focal_loss_value(T x, T t, T alpha, T gamma) {
  const FocalTerms<T> f = focal_terms(x, t);
  return focal_alpha_t(t, alpha) * (f.ce * focal_mod<G>(f.m, gamma));
}

template <int G, typename T>
FASTSEG_FOCAL_HD T focal_loss_grad(T x, T t, T alpha, T gamma) {
  const FocalTerms<T> f = focal_terms(x, t);
  const T dm = f.p * f.q * (T(1) - T(2) * t);
  const T g = (f.p - t) * focal_mod<G>(f.m, gamma) + f.ce * (focal_dmod<G>(f.m, gamma) * dm);
  return focal_alpha_t(t, alpha) * g;
}

}  // namespace fastseg

// ---- Input checks of the C++ ops (host only), so that a direct torch.ops.fastseg.* call gets the same
// clear message as the Python API. ------------------------------------------------------------------
#include <ATen/ATen.h>

namespace fastseg {

inline void check_focal_common(const char* op, const at::Tensor& inputs, double alpha, double gamma,
                               int64_t reduction) {
  TORCH_CHECK(at::isFloatingType(inputs.scalar_type()), op,
              ": inputs must be a floating-point tensor, got ", inputs.scalar_type());
  TORCH_CHECK(!std::isnan(alpha), op, ": alpha must be a number, got nan");
  TORCH_CHECK(!std::isnan(gamma), op, ": gamma must be a number, got nan");
  TORCH_CHECK(reduction == kFocalNone || reduction == kFocalMean || reduction == kFocalSum, op,
              ": reduction must be 0 (none), 1 (mean) or 2 (sum), got ", reduction);
}

inline void check_focal_inputs(const char* op, const at::Tensor& inputs, const at::Tensor& targets,
                               double alpha, double gamma, int64_t reduction) {
  check_focal_common(op, inputs, alpha, gamma, reduction);
  TORCH_CHECK(at::isFloatingType(targets.scalar_type()), op,
              ": targets must be a floating-point tensor, got ", targets.scalar_type());
  TORCH_CHECK(inputs.sizes() == targets.sizes(), op,
              ": inputs and targets must have the same shape, got ", inputs.sizes(), " and ",
              targets.sizes());
  TORCH_CHECK(inputs.device() == targets.device(), op,
              ": inputs and targets must be on the same device, got ", inputs.device(), " and ",
              targets.device());
}

inline void check_focal_labels_inputs(const char* op, const at::Tensor& logits, const at::Tensor& labels,
                                      double alpha, double gamma, const c10::optional<at::Tensor>& normalizer,
                                      int64_t reduction) {
  check_focal_common(op, logits, alpha, gamma, reduction);
  TORCH_CHECK(logits.dim() == 2, op, ": logits must be a 2-D tensor [N, C], got shape ", logits.sizes());
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == logits.size(0), op,
              ": labels must be a 1-D tensor with one label per row of logits (", logits.size(0),
              "), got shape ", labels.sizes());
  TORCH_CHECK(at::isIntegralType(labels.scalar_type(), /*includeBool=*/false), op,
              ": labels must be an integer tensor, got ", labels.scalar_type());
  TORCH_CHECK(labels.device() == logits.device(), op,
              ": labels must be on the same device as logits, got ", labels.device(), " and ",
              logits.device());
  if (normalizer.has_value() && normalizer->defined()) {
    TORCH_CHECK(normalizer->numel() == 1, op, ": normalizer must have one element, got shape ",
                normalizer->sizes());
    TORCH_CHECK(at::isFloatingType(normalizer->scalar_type()), op,
                ": normalizer must be a floating-point tensor, got ", normalizer->scalar_type());
    TORCH_CHECK(normalizer->device() == logits.device(), op,
                ": normalizer must be on the same device as logits, got ", normalizer->device(), " and ",
                logits.device());
  }
}

inline void check_focal_grad(const char* op, const at::Tensor& grad, const at::Tensor& inputs,
                             int64_t reduction) {
  if (reduction == kFocalNone) {
    TORCH_CHECK(grad.sizes() == inputs.sizes(), op,
                ": grad must have the shape of the loss, ", inputs.sizes(), ", got ", grad.sizes());
  } else {
    TORCH_CHECK(grad.numel() == 1, op, ": grad of a reduced loss must have one element, got shape ",
                grad.sizes());
  }
  TORCH_CHECK(grad.device() == inputs.device(), op, ": grad must be on the device of the inputs, got ",
              grad.device(), " and ", inputs.device());
}

}  // namespace fastseg
