// CPU kernels of fastseg::roi_align, fastseg::multi_level_roi_align and their backward ops
// (schemas: csrc/roi_align.cpp; maths: csrc/roi_align.h).
//
// Where torchvision's CPU kernel spends its time: it walks RoIs outermost and, per RoI, the NCHW maps
// one channel at a time, so every (RoI, channel) fetches the rows it samples from memory again, on one
// thread; its backward scatters the same way, serially. Here the bilinear weights are separable (one
// AxisSample per (bin, sub-sample) of each axis, computed once per RoI and reused everywhere), and
// there are two kernels, one per input layout:
// - NCHW input (the usual case): plane by plane. A task owns one (image, channel) plane of every level,
//   keeps it in L2 (the next one prefetched) and pools every RoI of the image from it, so the map is
//   read from memory once and never copied. Its backward owns the gradient plane the same way: zeroed
//   in cache, RoIs scattered in index order, written once.
// - channels-last input: a sample corner is a contiguous run of C values and the inner loop a
//   vectorised axpy over channels (AVX2 / AVX-512 clones picked at run time); forward parallel over
//   RoIs, backward over (image, channel block) tasks, each owning its slice of the gradient.
// In both backward kernels no two threads write the same element, nothing is atomic, and each element
// sums its terms in the same fixed order (RoI, bin, sample, corner): the result is bit-identical run
// to run whatever the thread count, and between the two kernels (tested); the backward is always the
// deterministic one and needs no memory beyond the gradient itself.
// fp16/bf16 are computed in fp32 (plane by plane, or maps converted once), fp64 in fp64.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "roi_align.h"
#include "cpu/clones.h"
#include "cpu/planes.h"

namespace fastseg {
namespace {

// acc[c] += ((w1*a[c] + w2*b[c]) + w3*d[c]) + w4*e[c]: torchvision's grouping, so fp32 sums round the
// same way.
template <typename T>
FASTSEG_CLONES void axpy4(T* __restrict acc, const T* __restrict a, const T* __restrict b,
                          const T* __restrict d, const T* __restrict e, T w1, T w2, T w3, T w4,
                          int64_t n) {
  for (int64_t c = 0; c < n; ++c) acc[c] += w1 * a[c] + w2 * b[c] + w3 * d[c] + w4 * e[c];
}

// Max pooling of bilinear samples (mmcv's pool_mode="max"): keeps the first maximum.
template <typename T>
FASTSEG_CLONES void max4(T* __restrict best, int32_t* __restrict arg, int32_t s, const T* __restrict a,
                         const T* __restrict b, const T* __restrict d, const T* __restrict e, T w1,
                         T w2, T w3, T w4, int64_t n) {
  for (int64_t c = 0; c < n; ++c) {
    const T v = w1 * a[c] + w2 * b[c] + w3 * d[c] + w4 * e[c];
    const bool take = v > best[c];
    best[c] = take ? v : best[c];
    arg[c] = take ? s : arg[c];
  }
}

// g[c] * w added to four rows (the corners of one sample).
template <typename T>
FASTSEG_CLONES void scatter4(T* __restrict a, T* __restrict b, T* __restrict d, T* __restrict e,
                             const T* __restrict g, T w1, T w2, T w3, T w4, int64_t n) {
  // Corners may coincide (clamped at the border): the four updates are sequential, as in torchvision.
  for (int64_t c = 0; c < n; ++c) a[c] += g[c] * w1;
  for (int64_t c = 0; c < n; ++c) b[c] += g[c] * w2;
  for (int64_t c = 0; c < n; ++c) d[c] += g[c] * w3;
  for (int64_t c = 0; c < n; ++c) e[c] += g[c] * w4;
}

// The levels of a call: channels-last maps in compute type T and their sizes.
template <typename T>
struct Levels {
  std::vector<at::Tensor> keep;  // owners of the pointers below
  std::vector<T*> data;
  std::vector<int64_t> h, w;
  std::vector<T> scale;
};

// Sample tables of one RoI: n, level, count and the separable axis samples.
template <typename T>
struct RoiPlan {
  int64_t n, level;
  int32_t gh, gw;
  T count;
  int64_t y_off, x_off;  // into the shared AxisSample arrays
};

template <typename T>
AxisGeometry<T> geometry_y(const T* r, T scale, int64_t ph, int64_t sr, bool aligned) {
  return axis_geometry<T>(r[2], r[4], scale, ph, sr, aligned);
}
template <typename T>
AxisGeometry<T> geometry_x(const T* r, T scale, int64_t pw, int64_t sr, bool aligned) {
  return axis_geometry<T>(r[1], r[3], scale, pw, sr, aligned);
}

// Checks shared by forward and backward; returns rois (and levels) as contiguous compute-type and
// int64 tensors.
void check_common(const char* op, const std::vector<at::Tensor>& features, const at::Tensor& rois,
                  const at::Tensor& levels, at::ArrayRef<double> scales, int64_t ph, int64_t pw) {
  TORCH_CHECK(!features.empty(), op, ": at least one feature map is needed");
  for (const auto& f : features) check_feature(op, f, features[0]);
  check_rois(op, rois, features[0].device());
  check_pooled(op, ph, pw);
  TORCH_CHECK(static_cast<int64_t>(scales.size()) == static_cast<int64_t>(features.size()), op,
              ": one spatial scale per feature map is needed, got ", scales.size(), " scales for ",
              features.size(), " maps");
  if (levels.defined()) {
    TORCH_CHECK(levels.dim() == 1 && levels.size(0) == rois.size(0), op,
                ": levels must be a 1-D tensor with one level per RoI (", rois.size(0), "), got shape ",
                levels.sizes());
    TORCH_CHECK(!at::isFloatingType(levels.scalar_type()), op,
                ": levels must be an integer tensor, got ", levels.scalar_type());
  }
}

// The sample tables of every RoI (rois [K, 5], levels [K] or undefined), in compute type T; checks the
// batch indices and levels.
template <typename T>
std::vector<RoiPlan<T>> plan_rois(const char* op, const at::Tensor& rois, const at::Tensor& levels,
                                  const Levels<T>& L, int64_t batch, int64_t ph, int64_t pw,
                                  int64_t sr, bool aligned, std::vector<AxisSample<T>>& ys,
                                  std::vector<AxisSample<T>>& xs) {
  const at::Tensor rt = rois.to(c10::CppTypeToScalarType<T>::value).contiguous();
  const at::Tensor lt = levels.defined() ? levels.to(at::kLong).contiguous() : at::Tensor();
  const T* r = rt.data_ptr<T>();
  const int64_t* lv = lt.defined() ? lt.data_ptr<int64_t>() : nullptr;
  const int64_t K = rois.size(0);
  std::vector<RoiPlan<T>> plans(K);
  int64_t ny = 0, nx = 0;
  const int64_t n_levels = static_cast<int64_t>(L.data.size());
  for (int64_t k = 0; k < K; ++k) {
    const T* b = r + 5 * k;
    const int64_t n = static_cast<int64_t>(b[0]);
    TORCH_CHECK(n >= 0 && n < batch, op, ": rois[", k, ", 0] is batch index ", n,
                ", out of range for a batch of ", batch, " images");
    const int64_t l = lv ? lv[k] : 0;
    TORCH_CHECK(l >= 0 && l < n_levels, op, ": levels[", k, "] = ", l, " is out of range for ",
                n_levels, " feature maps");
    const auto gy = geometry_y<T>(b, L.scale[l], ph, sr, aligned);
    const auto gx = geometry_x<T>(b, L.scale[l], pw, sr, aligned);
    RoiPlan<T>& p = plans[k];
    p.n = n, p.level = l, p.gh = gy.grid, p.gw = gx.grid;
    const int32_t cnt = gy.grid * gx.grid;
    p.count = static_cast<T>(cnt > 1 ? cnt : 1);
    p.y_off = ny, p.x_off = nx;
    ny += ph * gy.grid, nx += pw * gx.grid;
  }
  ys.resize(ny), xs.resize(nx);
  at::parallel_for(0, K, 64, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const T* b = r + 5 * k;
      const RoiPlan<T>& p = plans[k];
      const auto gy = geometry_y<T>(b, L.scale[p.level], ph, sr, aligned);
      const auto gx = geometry_x<T>(b, L.scale[p.level], pw, sr, aligned);
      for (int64_t i = 0; i < ph; ++i)
        for (int32_t s = 0; s < p.gh; ++s)
          ys[p.y_off + i * p.gh + s] = axis_sample<T>(axis_coordinate(gy, i, s), L.h[p.level]);
      for (int64_t j = 0; j < pw; ++j)
        for (int32_t s = 0; s < p.gw; ++s)
          xs[p.x_off + j * p.gw + s] = axis_sample<T>(axis_coordinate(gx, j, s), L.w[p.level]);
    }
  });
  return plans;
}

#if defined(__x86_64__) && defined(__GNUC__)
#define FASTSEG_HAVE_AVX2_TRANSPOSE 1

// d[j * ds + i] = s[i * ss + j] for an 8 x 8 block, in registers.
__attribute__((target("avx2"))) static inline void transpose8x8(const float* s, int64_t ss, float* d,
                                                                 int64_t ds) {
  const __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + ss), r2 = _mm256_loadu_ps(s + 2 * ss),
               r3 = _mm256_loadu_ps(s + 3 * ss), r4 = _mm256_loadu_ps(s + 4 * ss),
               r5 = _mm256_loadu_ps(s + 5 * ss), r6 = _mm256_loadu_ps(s + 6 * ss),
               r7 = _mm256_loadu_ps(s + 7 * ss);
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1),
               t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3),
               t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
               t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE),
               u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE),
               u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
               u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
  _mm256_storeu_ps(d + ds, _mm256_permute2f128_ps(u1, u5, 0x20));
  _mm256_storeu_ps(d + 2 * ds, _mm256_permute2f128_ps(u2, u6, 0x20));
  _mm256_storeu_ps(d + 3 * ds, _mm256_permute2f128_ps(u3, u7, 0x20));
  _mm256_storeu_ps(d + 4 * ds, _mm256_permute2f128_ps(u0, u4, 0x31));
  _mm256_storeu_ps(d + 5 * ds, _mm256_permute2f128_ps(u1, u5, 0x31));
  _mm256_storeu_ps(d + 6 * ds, _mm256_permute2f128_ps(u2, u6, 0x31));
  _mm256_storeu_ps(d + 7 * ds, _mm256_permute2f128_ps(u3, u7, 0x31));
}

// Columns [j0, j1) of the R x Q matrix s (row stride ss) into rows [j0, j1) of d (row stride ds):
// d[j][i] = s[i][j]. 8 x 8 register blocks, scalar edges.
__attribute__((target("avx2"))) static void transpose_columns_avx2(const float* s, int64_t ss, float* d,
                                                                   int64_t ds, int64_t R, int64_t j0,
                                                                   int64_t j1) {
  int64_t i = 0;
  for (; i + 8 <= R; i += 8) {
    int64_t j = j0;
    for (; j + 8 <= j1; j += 8) transpose8x8(s + i * ss + j, ss, d + j * ds + i, ds);
    for (; j < j1; ++j)
      for (int64_t r = i; r < i + 8; ++r) d[j * ds + r] = s[r * ss + j];
  }
  for (; i < R; ++i)
    for (int64_t j = j0; j < j1; ++j) d[j * ds + i] = s[i * ss + j];
}

// fp32 -> fp32 transposes of `batches` R x Q matrices, parallel over blocks of 32 columns: each task
// writes 32 whole destination rows. Measured on a 200x272x256 map: 3x faster than 16 x 64 scalar tiles
// (115 vs 360 ms single-threaded on this loaded machine). Returns false where AVX2 is missing.
bool transpose_f32_avx2(const float* src, float* dst, int64_t batches, int64_t R, int64_t Q) {
  if (!__builtin_cpu_supports("avx2")) return false;
  constexpr int64_t kCols = 32;
  const int64_t blocks = (Q + kCols - 1) / kCols;
  at::parallel_for(0, batches * blocks, 8, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / blocks, j0 = (t % blocks) * kCols;
      transpose_columns_avx2(src + b * R * Q, Q, dst + b * R * Q, R, R, j0, std::min(Q, j0 + kCols));
    }
  });
  return true;
}
#endif

// dst[b][q][r] = src[b][r][q] for `batches` R x Q matrices, with a type conversion (NCHW -> NHWC is
// R = C, Q = H*W; a gradient [K, C, bins] -> [K, bins, C] the same; the way back swaps R and Q). ATen's
// permuted copy ran at about 1 GB/s here; 16 x 64 tiles touch whole cache lines on both sides and run in
// parallel over tiles; fp32 takes the AVX2 register transposes above.
constexpr int64_t kTileR = 16, kTileQ = 64;

template <typename S, typename D>
void transpose(const S* src, D* dst, int64_t batches, int64_t R, int64_t Q) {
#ifdef FASTSEG_HAVE_AVX2_TRANSPOSE
  if constexpr (std::is_same_v<S, float> && std::is_same_v<D, float>) {
    if (transpose_f32_avx2(src, dst, batches, R, Q)) return;
  }
#endif
  const int64_t tr = (R + kTileR - 1) / kTileR, tq = (Q + kTileQ - 1) / kTileQ;
  at::parallel_for(0, batches * tr * tq, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / (tr * tq), rest = t % (tr * tq);
      const int64_t r0 = (rest / tq) * kTileR, q0 = (rest % tq) * kTileQ;
      const int64_t r1 = std::min(R, r0 + kTileR), q1 = std::min(Q, q0 + kTileQ);
      const S* s = src + b * R * Q;
      D* d = dst + b * R * Q;
      for (int64_t q = q0; q < q1; ++q)
        for (int64_t r = r0; r < r1; ++r) d[q * R + r] = static_cast<D>(s[r * Q + q]);
    }
  });
}

// A [B, C, ...] tensor as [B, rest..., C] contiguous in type t (a map NCHW -> NHWC, or a gradient
// [K, C, ph, pw] -> [K, ph, pw, C]). No copy when it already is one.
at::Tensor channels_last_as(const at::Tensor& f, at::ScalarType t) {
  const int64_t B = f.size(0), C = f.size(1), P = f.numel() / std::max<int64_t>(1, B * C);
  std::vector<int64_t> shape{B};
  for (int64_t d = 2; d < f.dim(); ++d) shape.push_back(f.size(d));
  shape.push_back(C);
  at::Tensor out = at::empty(shape, f.options().dtype(t));
  if (f.numel() == 0) return out;
  if (f.is_contiguous()) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "roi_align_nhwc", [&] {
      using S = scalar_t;
      AT_DISPATCH_FLOATING_TYPES(t, "roi_align_nhwc_out", [&] {
        transpose<S, scalar_t>(f.data_ptr<S>(), out.data_ptr<scalar_t>(), B, C, P);
      });
    });
    return out;
  }
  std::vector<int64_t> perm{0};
  for (int64_t d = 2; d < f.dim(); ++d) perm.push_back(d);
  perm.push_back(1);
  const at::Tensor v = f.permute(perm);
  if (v.is_contiguous() && f.scalar_type() == t) return v;  // channels-last already
  out.copy_(v);
  return out;
}

// Zeroed tensor, filled in parallel (at::zeros is a serial memset here).
at::Tensor parallel_zeros(at::IntArrayRef shape, const at::TensorOptions& opt) {
  at::Tensor z = at::empty(shape, opt);
  const int64_t n = z.numel(), item = z.element_size();
  char* p = static_cast<char*>(z.data_ptr());
  at::parallel_for(0, n, 1 << 16, [&](int64_t b, int64_t e) {
    std::memset(p + b * item, 0, (e - b) * item);
  });
  return z;
}

// The sizes and scales of the levels, without their data (enough to plan the RoIs).
template <typename T>
Levels<T> level_shapes(const std::vector<at::Tensor>& features, at::ArrayRef<double> scales) {
  Levels<T> L;
  for (size_t i = 0; i < features.size(); ++i) {
    L.data.push_back(nullptr);
    L.h.push_back(features[i].size(2));
    L.w.push_back(features[i].size(3));
    L.scale.push_back(static_cast<T>(scales[i]));
  }
  return L;
}

template <typename T>
Levels<T> load_levels(const std::vector<at::Tensor>& features, at::ArrayRef<double> scales,
                      at::ScalarType t) {
  Levels<T> L;
  for (size_t i = 0; i < features.size(); ++i) {
    L.keep.push_back(channels_last_as(features[i], t));
    L.data.push_back(L.keep.back().template data_ptr<T>());
    L.h.push_back(features[i].size(2));
    L.w.push_back(features[i].size(3));
    L.scale.push_back(static_cast<T>(scales[i]));
  }
  return L;
}

// The gradient of a channels-last input is channels-last, of any other input contiguous (the rule of
// grad_like in fastseg/ops/roi_align.py).
bool grad_is_channels_last(const at::Tensor& f) {
  return f.is_contiguous(at::MemoryFormat::ChannelsLast) && !f.is_contiguous();
}

at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

template <typename T, typename O>
void forward_impl(const Levels<T>& L, const std::vector<RoiPlan<T>>& plans,
                  const std::vector<AxisSample<T>>& ys, const std::vector<AxisSample<T>>& xs,
                  int64_t C, int64_t ph, int64_t pw, bool max_mode, O* out) {
  const int64_t K = static_cast<int64_t>(plans.size());
  const int64_t bins = ph * pw;
  at::parallel_for(0, K, 4, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(C);
    std::vector<int32_t> arg(max_mode ? C : 0);
    for (int64_t k = begin; k < end; ++k) {
      const RoiPlan<T>& p = plans[k];
      const int64_t H = L.h[p.level], W = L.w[p.level];
      const T* base = L.data[p.level] + p.n * H * W * C;
      O* o = out + k * C * bins;
      for (int64_t i = 0; i < ph; ++i) {
        for (int64_t j = 0; j < pw; ++j) {
          std::fill(acc.begin(), acc.end(), max_mode ? -std::numeric_limits<T>::infinity() : T(0));
          bool sampled = false;
          for (int32_t sy = 0; sy < p.gh; ++sy) {
            const AxisSample<T>& Y = ys[p.y_off + i * p.gh + sy];
            for (int32_t sx = 0; sx < p.gw; ++sx) {
              const AxisSample<T>& X = xs[p.x_off + j * p.gw + sx];
              sampled = true;
              if (!(Y.valid && X.valid)) {
                // Outside the map: the sample is 0 (it still counts in the average).
                if (max_mode)
                  for (int64_t c = 0; c < C; ++c) acc[c] = T(0) > acc[c] ? T(0) : acc[c];
                continue;
              }
              const Weights4<T> w = bilinear_weights(Y, X);
              const T* a = base + (Y.lo * W + X.lo) * C;
              const T* b = base + (Y.lo * W + X.hi) * C;
              const T* d = base + (Y.hi * W + X.lo) * C;
              const T* e = base + (Y.hi * W + X.hi) * C;
              if (max_mode)
                max4<T>(acc.data(), arg.data(), 0, a, b, d, e, w.w1, w.w2, w.w3, w.w4, C);
              else
                axpy4<T>(acc.data(), a, b, d, e, w.w1, w.w2, w.w3, w.w4, C);
            }
          }
          O* ob = o + i * pw + j;
          if (max_mode) {
            for (int64_t c = 0; c < C; ++c) ob[c * bins] = static_cast<O>(sampled ? acc[c] : T(0));
          } else {
            for (int64_t c = 0; c < C; ++c) ob[c * bins] = static_cast<O>(acc[c] / p.count);
          }
        }
      }
    }
  });
}

// ---- NCHW inputs: plane by plane -------------------------------------------------------------------
// A task owns one (image, channel): it reads that channel's plane of each level (217 KB at the
// 200x272 level: it stays in L2) and pools every RoI of the image from it. The map is then read from
// memory once, with no layout copy, where torchvision walks RoIs outermost and re-fetches each plane's
// rows from memory for every RoI. The backward is the same walk: a task owns a gradient plane, zeroes
// it in cache, scatters its RoIs in index order and writes it once; no atomics, no extra memory, and
// each element sums its terms in the same order as the channels-last kernel (bit-identical results).

// RoI indices grouped by (image, level), each group in index order.
template <typename T>
std::vector<std::vector<int64_t>> group_rois(const std::vector<RoiPlan<T>>& plans, int64_t batch,
                                             int64_t levels) {
  std::vector<std::vector<int64_t>> groups(batch * levels);
  for (int64_t k = 0; k < static_cast<int64_t>(plans.size()); ++k)
    groups[plans[k].n * levels + plans[k].level].push_back(k);
  return groups;
}

// The (n, c) plane of a map in compute type T: the map itself when its type is T, else converted into
// `buf`.
template <typename T, typename S>
const T* plane_as(const S* src, int64_t size, std::vector<T>& buf) {
  if constexpr (std::is_same_v<S, T>) {
    return src;
  } else {
    buf.resize(size);
    for (int64_t i = 0; i < size; ++i) buf[i] = static_cast<T>(src[i]);
    return buf.data();
  }
}

// The x samples as arrays, so that a sample row is one flat loop: the cells and weights of each sample;
// a sample outside the map reads cell 0 with weight 0 (a zero sample, as in torchvision's pre_calc
// table).
template <typename T>
struct XTable {
  std::vector<int32_t> lo, hi;
  std::vector<T> lo_w, hi_w;
};

template <typename T>
XTable<T> x_table(const std::vector<AxisSample<T>>& xs) {
  XTable<T> t;
  const size_t n = xs.size();
  t.lo.resize(n), t.hi.resize(n), t.lo_w.resize(n), t.hi_w.resize(n);
  for (size_t s = 0; s < n; ++s) {
    t.lo[s] = xs[s].lo, t.hi[s] = xs[s].hi;  // 0 when invalid
    t.lo_w[s] = xs[s].valid ? xs[s].lo_w : T(0);
    t.hi_w[s] = xs[s].valid ? xs[s].hi_w : T(0);
  }
  return t;
}

// The n samples of one sample row (y fixed: rows lo and hi of a plane, weights ylw and yhw), with the
// weights and sums formed as bilinear_weights and torchvision form them:
// v[s] = ((w1 * lo[xl] + w2 * lo[xh]) + w3 * hi[xl]) + w4 * hi[xh].
// noinline: a separate function with restrict pointers vectorises on its own; inlined into pool_plane
// it measured 5-10% slower (1,000 RoIs on a 2x256x200x272 map: 157 vs 142 ms on one thread).
template <typename T>
__attribute__((noinline)) void row_samples(const T* __restrict lo, const T* __restrict hi,
                                           const int32_t* __restrict xl, const int32_t* __restrict xh,
                                           const T* __restrict xlw, const T* __restrict xhw, T ylw, T yhw,
                                           int64_t n, T* __restrict v) {
  for (int64_t s = 0; s < n; ++s)
    v[s] = (ylw * xlw[s]) * lo[xl[s]] + (ylw * xhw[s]) * lo[xh[s]] + (yhw * xlw[s]) * hi[xl[s]] +
           (yhw * xhw[s]) * hi[xh[s]];
}

// The bilinear value of sample (Y, X) on a plane of row stride W (both valid), in torchvision's order.
template <typename T>
inline T plane_sample(const T* plane, int64_t W, const AxisSample<T>& Y, const AxisSample<T>& X) {
  const Weights4<T> w = bilinear_weights(Y, X);
  const T* lo = plane + Y.lo * W;
  const T* hi = plane + Y.hi * W;
  return w.w1 * lo[X.lo] + w.w2 * lo[X.hi] + w.w3 * hi[X.lo] + w.w4 * hi[X.hi];
}

// The ph x pw outputs of RoI p on one plane (row stride W), into o. `v` and `acc` are scratch.
template <typename T, typename O>
void pool_plane(const T* plane, int64_t W, const RoiPlan<T>& p, const AxisSample<T>* ys,
                const AxisSample<T>* xs, const XTable<T>& xt, int64_t ph, int64_t pw, bool max_mode,
                std::vector<T>& v, std::vector<T>& acc, O* o) {
  if (!max_mode) {
    const int64_t nx = pw * p.gw;
    v.resize(nx), acc.resize(pw);
    for (int64_t i = 0; i < ph; ++i) {
      std::fill(acc.begin(), acc.end(), T(0));
      for (int32_t sy = 0; sy < p.gh; ++sy) {
        const AxisSample<T>& Y = ys[p.y_off + i * p.gh + sy];
        if (!Y.valid) continue;  // zero samples
        row_samples<T>(plane + Y.lo * W, plane + Y.hi * W, xt.lo.data() + p.x_off, xt.hi.data() + p.x_off,
                       xt.lo_w.data() + p.x_off, xt.hi_w.data() + p.x_off, Y.lo_w, Y.hi_w, nx, v.data());
        // Each bin sums its samples row by row, x in order: torchvision's order.
        for (int64_t j = 0; j < pw; ++j)
          for (int32_t sx = 0; sx < p.gw; ++sx) acc[j] += v[j * p.gw + sx];
      }
      for (int64_t j = 0; j < pw; ++j) o[i * pw + j] = static_cast<O>(acc[j] / p.count);
    }
    return;
  }
  for (int64_t i = 0; i < ph; ++i) {
    for (int64_t j = 0; j < pw; ++j) {
      T best = -std::numeric_limits<T>::infinity();
      bool sampled = false;
      for (int32_t sy = 0; sy < p.gh; ++sy) {
        const AxisSample<T>& Y = ys[p.y_off + i * p.gh + sy];
        for (int32_t sx = 0; sx < p.gw; ++sx) {
          const AxisSample<T>& X = xs[p.x_off + j * p.gw + sx];
          sampled = true;
          // a zero sample outside the map
          const T val = Y.valid && X.valid ? plane_sample(plane, W, Y, X) : T(0);
          best = val > best ? val : best;
        }
      }
      o[i * pw + j] = static_cast<O>(sampled ? best : T(0));
    }
  }
}

// The gradient of RoI p (g: its ph x pw gradient on this channel) added into one plane.
template <typename T>
void scatter_plane(T* acc, const T* plane, int64_t W, const RoiPlan<T>& p, const AxisSample<T>* ys,
                   const AxisSample<T>* xs, int64_t ph, int64_t pw, bool max_mode, const T* g) {
  for (int64_t i = 0; i < ph; ++i) {
    for (int64_t j = 0; j < pw; ++j) {
      if (max_mode) {
        // The first maximum takes the gradient; a zero sample (outside the map) can win and then
        // the gradient goes nowhere.
        T best = -std::numeric_limits<T>::infinity();
        int32_t arg = -1;
        for (int32_t sy = 0; sy < p.gh; ++sy) {
          const AxisSample<T>& Y = ys[p.y_off + i * p.gh + sy];
          for (int32_t sx = 0; sx < p.gw; ++sx) {
            const AxisSample<T>& X = xs[p.x_off + j * p.gw + sx];
            const bool inside = Y.valid && X.valid;
            const T v = inside ? plane_sample(plane, W, Y, X) : T(0);
            if (v > best) best = v, arg = inside ? sy * p.gw + sx : -1;
          }
        }
        if (arg < 0) continue;
        const AxisSample<T>& Y = ys[p.y_off + i * p.gh + arg / p.gw];
        const AxisSample<T>& X = xs[p.x_off + j * p.gw + arg % p.gw];
        const Weights4<T> w = bilinear_weights(Y, X);
        const T gv = g[i * pw + j];
        acc[Y.lo * W + X.lo] += gv * w.w1;
        acc[Y.lo * W + X.hi] += gv * w.w2;
        acc[Y.hi * W + X.lo] += gv * w.w3;
        acc[Y.hi * W + X.hi] += gv * w.w4;
        continue;
      }
      // (grad / count) * w, as the channels-last kernel forms it.
      const T gv = g[i * pw + j] / p.count;
      for (int32_t sy = 0; sy < p.gh; ++sy) {
        const AxisSample<T>& Y = ys[p.y_off + i * p.gh + sy];
        if (!Y.valid) continue;
        T* lo = acc + Y.lo * W;
        T* hi = acc + Y.hi * W;
        for (int32_t sx = 0; sx < p.gw; ++sx) {
          const AxisSample<T>& X = xs[p.x_off + j * p.gw + sx];
          if (!X.valid) continue;
          const Weights4<T> w = bilinear_weights(Y, X);
          // Corners may coincide (clamped at the border): four sequential updates.
          lo[X.lo] += gv * w.w1;
          lo[X.hi] += gv * w.w2;
          hi[X.lo] += gv * w.w3;
          hi[X.hi] += gv * w.w4;
        }
      }
    }
  }
}

template <typename T, typename S>
void plane_forward(const std::vector<const S*>& maps, const Levels<T>& L,
                   const std::vector<RoiPlan<T>>& plans, const std::vector<AxisSample<T>>& ys,
                   const std::vector<AxisSample<T>>& xs, int64_t batch, int64_t C, int64_t ph,
                   int64_t pw, bool max_mode, S* out) {
  const int64_t levels = static_cast<int64_t>(maps.size()), bins = ph * pw;
  const auto groups = group_rois(plans, batch, levels);
  const XTable<T> xt = x_table(xs);
  at::parallel_for(0, batch * C, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> buf, v, acc;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / C, c = task % C;
      for (int64_t l = 0; l < levels; ++l) {
        const auto& ks = groups[n * levels + l];
        if (ks.empty()) continue;
        const int64_t H = L.h[l], W = L.w[l];
        if (task + 1 < end) prefetch_plane(maps[l] + (n * C + c + 1) * H * W, H * W);
        const T* plane = plane_as<T, S>(maps[l] + (n * C + c) * H * W, H * W, buf);
        for (const int64_t k : ks)
          pool_plane<T, S>(plane, W, plans[k], ys.data(), xs.data(), xt, ph, pw, max_mode, v, acc,
                           out + (k * C + c) * bins);
      }
    }
  });
}

template <typename T, typename S>
void plane_backward(const std::vector<const S*>& maps, const std::vector<S*>& grads, const Levels<T>& L,
                    const std::vector<RoiPlan<T>>& plans, const std::vector<AxisSample<T>>& ys,
                    const std::vector<AxisSample<T>>& xs, const T* g, int64_t batch, int64_t C,
                    int64_t ph, int64_t pw, bool max_mode) {
  const int64_t levels = static_cast<int64_t>(grads.size()), bins = ph * pw;
  const auto groups = group_rois(plans, batch, levels);
  at::parallel_for(0, batch * C, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> abuf, fbuf;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / C, c = task % C;
      for (int64_t l = 0; l < levels; ++l) {
        const int64_t H = L.h[l], W = L.w[l], size = H * W;
        S* dst = grads[l] + (n * C + c) * size;
        const auto& ks = groups[n * levels + l];
        if (ks.empty()) {
          std::fill(dst, dst + size, S(0));
          continue;
        }
        T* acc;
        if constexpr (std::is_same_v<S, T>) {
          acc = dst;
        } else {
          abuf.resize(size);
          acc = abuf.data();
        }
        std::fill(acc, acc + size, T(0));
        const T* plane = max_mode ? plane_as<T, S>(maps[l] + (n * C + c) * size, size, fbuf) : nullptr;
        for (const int64_t k : ks)
          scatter_plane<T>(acc, plane, W, plans[k], ys.data(), xs.data(), ph, pw, max_mode,
                           g + (k * C + c) * bins);
        if constexpr (!std::is_same_v<S, T>)
          for (int64_t e = 0; e < size; ++e) dst[e] = static_cast<S>(acc[e]);
      }
    }
  });
}

// The plane kernels serve inputs that are not channels-last (they are made contiguous); the
// channels-last kernels serve channels-last ones, which they read without a copy.
bool use_planes(const std::vector<at::Tensor>& features) {
  return std::none_of(features.begin(), features.end(), grad_is_channels_last);
}

at::Tensor multi_level_roi_align_cpu_impl(const char* op, const std::vector<at::Tensor>& features,
                                          const at::Tensor& rois, const at::Tensor& levels,
                                          at::ArrayRef<double> scales, int64_t ph, int64_t pw,
                                          int64_t sampling_ratio, bool aligned, bool max_mode) {
  check_common(op, features, rois, levels, scales, ph, pw);
  const at::Tensor& f0 = features[0];
  const int64_t K = rois.size(0), C = f0.size(1), batch = f0.size(0);
  at::Tensor out = at::empty({K, C, ph, pw}, f0.options());
  if (K == 0 || C == 0) return out;
  const at::ScalarType ct = compute_type(f0.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(ct, "roi_align_cpu", [&] {
    using T = scalar_t;
    std::vector<AxisSample<T>> ys, xs;
    // Plan first (it checks batch indices and levels), then convert the maps.
    const Levels<T> shapes = level_shapes<T>(features, scales);
    const auto plans = plan_rois<T>(op, rois, levels, shapes, batch, ph, pw, sampling_ratio, aligned, ys, xs);
    if (use_planes(features)) {
      std::vector<at::Tensor> maps;
      for (const auto& f : features) maps.push_back(f.contiguous());
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f0.scalar_type(), "roi_align_cpu_planes", [&] {
        std::vector<const scalar_t*> mp;
        for (const auto& m : maps) mp.push_back(m.data_ptr<scalar_t>());
        plane_forward<T, scalar_t>(mp, shapes, plans, ys, xs, batch, C, ph, pw, max_mode,
                                   out.data_ptr<scalar_t>());
      });
      return;
    }
    const Levels<T> L = load_levels<T>(features, scales, ct);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f0.scalar_type(), "roi_align_cpu_out", [&] {
      forward_impl<T, scalar_t>(L, plans, ys, xs, C, ph, pw, max_mode, out.data_ptr<scalar_t>());
    });
  });
  return out;
}

template <typename T>
void backward_impl(const Levels<T>& L, std::vector<T*>& grads, const std::vector<RoiPlan<T>>& plans,
                   const std::vector<AxisSample<T>>& ys, const std::vector<AxisSample<T>>& xs,
                   const T* g, int64_t C, int64_t ph, int64_t pw, bool max_mode) {
  const int64_t K = static_cast<int64_t>(plans.size());
  // Tasks are (image, block of channels): a task walks the RoIs of its image in index order. The
  // blocks are as wide as the thread count allows (about 2 tasks per thread): a sample corner then
  // updates a long contiguous run of channels (whole cache lines, prefetched), where narrow blocks
  // made each corner a separate cache miss (measured: 32-channel blocks ran 2x slower).
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  int64_t batch = 0;
  for (const auto& p : plans) batch = std::max(batch, p.n + 1);
  std::vector<std::vector<int64_t>> by_image(batch);
  for (int64_t k = 0; k < K; ++k) by_image[plans[k].n].push_back(k);
  int64_t cw = (C * batch + 2 * threads - 1) / (2 * threads);
  cw = std::min(C, std::max<int64_t>(16, (cw + 15) / 16 * 16));
  const int64_t blocks = (C + cw - 1) / cw;
  at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> best(cw), gw(cw);
    std::vector<int32_t> arg(cw);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t blk = task % blocks, img = task / blocks;
      const int64_t c0 = blk * cw, n = std::min(cw, C - c0);
      for (const int64_t k : by_image[img]) {
        const RoiPlan<T>& p = plans[k];
        const int64_t H = L.h[p.level], W = L.w[p.level];
        T* gbase = grads[p.level] + p.n * H * W * C + c0;
        const T* fbase = max_mode ? L.data[p.level] + p.n * H * W * C + c0 : nullptr;
        for (int64_t i = 0; i < ph; ++i) {
          for (int64_t j = 0; j < pw; ++j) {
            const T* gb = g + ((k * ph + i) * pw + j) * C + c0;
            if (max_mode) {
              std::fill(best.begin(), best.begin() + n, -std::numeric_limits<T>::infinity());
              std::fill(arg.begin(), arg.begin() + n, -1);
              for (int32_t sy = 0; sy < p.gh; ++sy) {
                const AxisSample<T>& Y = ys[p.y_off + i * p.gh + sy];
                for (int32_t sx = 0; sx < p.gw; ++sx) {
                  const AxisSample<T>& X = xs[p.x_off + j * p.gw + sx];
                  const int32_t s = sy * p.gw + sx;
                  if (!(Y.valid && X.valid)) {
                    // A zero sample can win the max; its gradient goes nowhere.
                    for (int64_t c = 0; c < n; ++c) {
                      const bool take = T(0) > best[c];
                      best[c] = take ? T(0) : best[c];
                      arg[c] = take ? -1 : arg[c];
                    }
                    continue;
                  }
                  const Weights4<T> w = bilinear_weights(Y, X);
                  max4<T>(best.data(), arg.data(), s, fbase + (Y.lo * W + X.lo) * C,
                          fbase + (Y.lo * W + X.hi) * C, fbase + (Y.hi * W + X.lo) * C,
                          fbase + (Y.hi * W + X.hi) * C, w.w1, w.w2, w.w3, w.w4, n);
                }
              }
              for (int64_t c = 0; c < n; ++c) {
                if (arg[c] < 0) continue;
                const AxisSample<T>& Y = ys[p.y_off + i * p.gh + arg[c] / p.gw];
                const AxisSample<T>& X = xs[p.x_off + j * p.gw + arg[c] % p.gw];
                const Weights4<T> w = bilinear_weights(Y, X);
                gbase[(Y.lo * W + X.lo) * C + c] += gb[c] * w.w1;
                gbase[(Y.lo * W + X.hi) * C + c] += gb[c] * w.w2;
                gbase[(Y.hi * W + X.lo) * C + c] += gb[c] * w.w3;
                gbase[(Y.hi * W + X.hi) * C + c] += gb[c] * w.w4;
              }
              continue;
            }
            // torchvision adds grad * w / count per corner; (grad / count) * w is the same maths
            // with one division per bin instead of four per sample (last-bit differences only).
            for (int64_t c = 0; c < n; ++c) gw[c] = gb[c] / p.count;
            for (int32_t sy = 0; sy < p.gh; ++sy) {
              const AxisSample<T>& Y = ys[p.y_off + i * p.gh + sy];
              if (!Y.valid) continue;
              for (int32_t sx = 0; sx < p.gw; ++sx) {
                const AxisSample<T>& X = xs[p.x_off + j * p.gw + sx];
                if (!X.valid) continue;
                const Weights4<T> w = bilinear_weights(Y, X);
                scatter4<T>(gbase + (Y.lo * W + X.lo) * C, gbase + (Y.lo * W + X.hi) * C,
                            gbase + (Y.hi * W + X.lo) * C, gbase + (Y.hi * W + X.hi) * C, gw.data(),
                            w.w1, w.w2, w.w3, w.w4, n);
              }
            }
          }
        }
      }
    }
  });
}

// Backward of NCHW inputs: the gradient is written in place, plane by plane (see plane_backward).
std::vector<at::Tensor> plane_backward_impl(const char* op, const at::Tensor& grad,
                                            const std::vector<at::Tensor>& features,
                                            const at::Tensor& rois, const at::Tensor& levels,
                                            at::ArrayRef<double> scales, int64_t ph, int64_t pw,
                                            int64_t sampling_ratio, bool aligned, bool max_mode) {
  const at::Tensor& f0 = features[0];
  const int64_t K = rois.size(0), C = f0.size(1), batch = f0.size(0);
  const at::ScalarType ct = compute_type(f0.scalar_type());
  std::vector<at::Tensor> out, maps;
  for (const auto& f : features) {
    out.push_back(at::empty(f.sizes(), f.options()));
    maps.push_back(max_mode ? f.contiguous() : f);
  }
  if (C == 0) return out;
  if (K == 0) {
    for (auto& o : out) o.zero_();
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES(ct, "roi_align_backward_cpu_planes", [&] {
    using T = scalar_t;
    const Levels<T> L = level_shapes<T>(features, scales);
    std::vector<AxisSample<T>> ys, xs;
    const auto plans = plan_rois<T>(op, rois, levels, L, batch, ph, pw, sampling_ratio, aligned, ys, xs);
    const at::Tensor g = grad.to(ct).contiguous();  // [K, C, ph, pw]
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f0.scalar_type(), "roi_align_bwd_planes", [&] {
      using S = scalar_t;
      std::vector<const S*> mp;
      std::vector<S*> gp;
      for (size_t i = 0; i < features.size(); ++i) {
        mp.push_back(max_mode ? maps[i].data_ptr<S>() : nullptr);
        gp.push_back(out[i].data_ptr<S>());
      }
      plane_backward<T, S>(mp, gp, L, plans, ys, xs, g.data_ptr<T>(), batch, C, ph, pw, max_mode);
    });
  });
  return out;
}

std::vector<at::Tensor> multi_level_roi_align_backward_cpu_impl(
    const char* op, const at::Tensor& grad, const std::vector<at::Tensor>& features,
    const at::Tensor& rois, const at::Tensor& levels, at::ArrayRef<double> scales, int64_t ph,
    int64_t pw, int64_t sampling_ratio, bool aligned, bool max_mode) {
  check_common(op, features, rois, levels, scales, ph, pw);
  const at::Tensor& f0 = features[0];
  const int64_t K = rois.size(0), C = f0.size(1), batch = f0.size(0);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == K && grad.size(1) == C && grad.size(2) == ph &&
                  grad.size(3) == pw,
              op, ": grad must have shape [", K, ", ", C, ", ", ph, ", ", pw, "], got ", grad.sizes());
  const at::ScalarType ct = compute_type(f0.scalar_type());
  if (use_planes(features)) return plane_backward_impl(op, grad, features, rois, levels, scales, ph, pw,
                                                       sampling_ratio, aligned, max_mode);
  std::vector<at::Tensor> acc;
  for (const auto& f : features)
    acc.push_back(parallel_zeros({f.size(0), f.size(2), f.size(3), f.size(1)}, f.options().dtype(ct)));
  if (K > 0 && C > 0) {
    AT_DISPATCH_FLOATING_TYPES(ct, "roi_align_backward_cpu", [&] {
      using T = scalar_t;
      const Levels<T> L = max_mode ? load_levels<T>(features, scales, ct) : level_shapes<T>(features, scales);
      std::vector<AxisSample<T>> ys, xs;
      const auto plans = plan_rois<T>(op, rois, levels, L, batch, ph, pw, sampling_ratio, aligned, ys, xs);
      // grad as [K, ph, pw, C]: the channels of a bin contiguous.
      const at::Tensor g = channels_last_as(grad, ct);
      std::vector<T*> gp;
      for (auto& a : acc) gp.push_back(a.data_ptr<T>());
      backward_impl<T>(L, gp, plans, ys, xs, g.data_ptr<T>(), C, ph, pw, max_mode);
    });
  }
  // Back to [N, C, H, W] in the input's dtype; channels-last inputs get a channels-last gradient
  // (no transposition).
  std::vector<at::Tensor> out;
  for (size_t i = 0; i < features.size(); ++i) {
    const at::Tensor& f = features[i];
    if (grad_is_channels_last(f)) {
      out.push_back(acc[i].permute({0, 3, 1, 2}).to(f.scalar_type()));
      continue;
    }
    at::Tensor o = at::empty(f.sizes(), f.options());
    if (o.numel() > 0) {
      AT_DISPATCH_FLOATING_TYPES(ct, "roi_align_nchw", [&] {
        using S = scalar_t;
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "roi_align_nchw_out", [&] {
          transpose<S, scalar_t>(acc[i].data_ptr<S>(), o.data_ptr<scalar_t>(), f.size(0), f.size(2) * f.size(3),
                                 f.size(1));
        });
      });
    }
    out.push_back(o);
  }
  return out;
}

at::Tensor roi_align_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                         int64_t ph, int64_t pw, int64_t sampling_ratio, bool aligned, bool max_mode) {
  check_feature("roi_align", input, input);
  return multi_level_roi_align_cpu_impl("roi_align", {input}, rois, at::Tensor(), {spatial_scale}, ph,
                                        pw, sampling_ratio, aligned, max_mode);
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& input,
                                  const at::Tensor& rois, double spatial_scale, int64_t ph,
                                  int64_t pw, int64_t sampling_ratio, bool aligned, bool max_mode,
                                  bool deterministic) {
  (void)deterministic;  // the CPU backward is always deterministic
  check_feature("roi_align_backward", input, input);
  return multi_level_roi_align_backward_cpu_impl("roi_align_backward", grad, {input}, rois,
                                                 at::Tensor(), {spatial_scale}, ph, pw,
                                                 sampling_ratio, aligned, max_mode)[0];
}

at::Tensor multi_level_roi_align_cpu(at::TensorList features, const at::Tensor& rois,
                                     const at::Tensor& levels, at::ArrayRef<double> scales,
                                     int64_t ph, int64_t pw, int64_t sampling_ratio, bool aligned,
                                     bool max_mode) {
  return multi_level_roi_align_cpu_impl("multi_level_roi_align", features.vec(), rois, levels, scales,
                                        ph, pw, sampling_ratio, aligned, max_mode);
}

std::vector<at::Tensor> multi_level_roi_align_backward_cpu(
    const at::Tensor& grad, at::TensorList features, const at::Tensor& rois,
    const at::Tensor& levels, at::ArrayRef<double> scales, int64_t ph, int64_t pw,
    int64_t sampling_ratio, bool aligned, bool max_mode, bool deterministic) {
  (void)deterministic;
  return multi_level_roi_align_backward_cpu_impl("multi_level_roi_align_backward", grad,
                                                 features.vec(), rois, levels, scales, ph, pw,
                                                 sampling_ratio, aligned, max_mode);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg, CPU, m) {
  m.impl("roi_align", &roi_align_cpu);
  m.impl("roi_align_backward", &roi_align_backward_cpu);
  m.impl("multi_level_roi_align", &multi_level_roi_align_cpu);
  m.impl("multi_level_roi_align_backward", &multi_level_roi_align_backward_cpu);
}

}  // namespace fastseg
