// CPU kernels of fastseg::roi_pool and fastseg::roi_pool_backward (schemas: csrc/roi_pool.cpp; bins:
// csrc/roi_pool.h). Forward: parallel over (image, channel) planes, as RoIAlign's NCHW kernel; each bin
// is computed once per RoI and scanned in every plane. Backward: parallel over (image, channel) planes, each plane owned by one task that
// adds the RoIs' gradients in index order: deterministic, no atomics, whatever the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
// GCC 12 reports the deliberately undefined operands inside _mm512_reduce_max_ps and
// _mm512_mask_reduce_min_epi32 (_mm256_undefined_*) as uninitialized (as in conv_transpose2d_direct.cpp).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include <cfloat>
#include <vector>

#include "roi_align.h"
#include "roi_pool.h"
#include "cpu/planes.h"

namespace fastseg {
namespace {

// Max and first argmax (row-major, torchvision's scan order and strict `>`) of one bin of an fp32
// plane, 16 columns at a time: each lane keeps the first maximum of its columns, then the lanes
// holding the overall maximum give the smallest index. `best` enters as the sentinel; arg stays -1
// when nothing beats it (an empty or all -inf / NaN bin), as in the scalar scan.
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx512f"))) void bin_max_avx512(const float* plane, int64_t W, const PoolBin& bin,
                                                       float& best, int32_t& arg) {
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  __m512 vbest = _mm512_set1_ps(best);
  __m512i varg = _mm512_set1_epi32(-1);
  for (int64_t h = bin.hstart; h < bin.hend; ++h) {
    const float* row = plane + h * W;
    for (int64_t w = bin.wstart; w < bin.wend; w += 16) {
      const __mmask16 m = bin.wend - w >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (bin.wend - w)) - 1);
      const __m512 v = _mm512_maskz_loadu_ps(m, row + w);
      const __mmask16 gt = _mm512_mask_cmp_ps_mask(m, v, vbest, _CMP_GT_OQ);
      vbest = _mm512_mask_mov_ps(vbest, gt, v);
      varg = _mm512_mask_mov_epi32(varg, gt, _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(h * W + w)), lane));
    }
  }
  const float top = _mm512_reduce_max_ps(vbest);
  const __mmask16 at = _mm512_cmp_ps_mask(vbest, _mm512_set1_ps(top), _CMP_EQ_OQ) &
                       _mm512_cmp_epi32_mask(varg, _mm512_setzero_si512(), _MM_CMPINT_NLT);
  if (at == 0) return;  // nothing beat the sentinel
  best = top;
  arg = _mm512_mask_reduce_min_epi32(at, varg);
}
#endif

// The RoIs of each of the N images, in index order; checks the batch indices (column 0 of rois [K, 5]).
template <typename T>
std::vector<std::vector<int64_t>> rois_by_image(const char* op, const T* rp, int64_t K, int64_t N) {
  std::vector<std::vector<int64_t>> by_image(N);
  for (int64_t k = 0; k < K; ++k) {
    const int64_t n = static_cast<int64_t>(rp[5 * k]);
    TORCH_CHECK(n >= 0 && n < N, op, ": rois[", k, ", 0] is batch index ", n, ", out of range for a batch of ",
                N, " images");
    by_image[n].push_back(k);
  }
  return by_image;
}

// The vector scan where it exists (fp32 planes on an AVX-512 CPU); false: scan in scalar.
template <typename S, typename T>
bool bin_max_fast(const S*, int64_t, const PoolBin&, T&, int32_t&) {
  return false;
}

template <>
bool bin_max_fast<float, float>(const float* plane, int64_t W, const PoolBin& bin, float& best, int32_t& arg) {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  if (avx512) {
    bin_max_avx512(plane, W, bin, best, arg);
    return true;
  }
#endif
  return false;
}

std::tuple<at::Tensor, at::Tensor> roi_pool_cpu(const at::Tensor& input, const at::Tensor& rois,
                                                double spatial_scale, int64_t ph, int64_t pw) {
  const char* op = "roi_pool";
  check_feature(op, input, input);
  check_rois(op, rois, input.device());
  check_pooled(op, ph, pw);
  const int64_t K = rois.size(0), N = input.size(0), C = input.size(1), H = input.size(2),
                W = input.size(3);
  at::Tensor out = at::empty({K, C, ph, pw}, input.options());
  at::Tensor argmax = at::empty({K, C, ph, pw}, input.options().dtype(at::kInt));
  if (K == 0 || C == 0) return {out, argmax};
  const at::ScalarType ct = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor x = input.contiguous();
  const at::Tensor r = rois.to(ct).contiguous();
  AT_DISPATCH_FLOATING_TYPES(ct, "roi_pool_cpu", [&] {
    using T = scalar_t;
    const T* rp = r.data_ptr<T>();
    const auto by_image = rois_by_image(op, rp, K, N);
    // The bins of every RoI, once.
    std::vector<PoolBin> all(K * ph * pw);
    const T scale = static_cast<T>(spatial_scale);
    at::parallel_for(0, K, 64, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const T* b = rp + 5 * k;
        for (int64_t i = 0; i < ph; ++i)
          for (int64_t j = 0; j < pw; ++j)
            all[(k * ph + i) * pw + j] = roi_pool_bin<T>(b[1], b[2], b[3], b[4], scale, i, j, ph, pw, H, W);
      }
    });
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_pool_cpu_in", [&] {
      using S = scalar_t;
      const S* xp = x.data_ptr<S>();
      S* op_ = out.data_ptr<S>();
      int32_t* ap = argmax.data_ptr<int32_t>();
      const int64_t nb = ph * pw;

      // A task per (image, channel) plane: the plane stays in cache while every RoI of the image is
      // pooled from it (torchvision walks RoIs outermost and fetches each plane's rows again per RoI).
      at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
        for (int64_t nc = begin; nc < end; ++nc) {
          const int64_t n = nc / C, c = nc % C;
          if (nc + 1 < end) prefetch_plane(xp + (nc + 1) * H * W, H * W);
          const S* plane = xp + nc * H * W;
          for (const int64_t k : by_image[n]) {
            const PoolBin* bins = all.data() + k * nb;
            S* o = op_ + (k * C + c) * nb;
            int32_t* a = ap + (k * C + c) * nb;
            for (int64_t q = 0; q < nb; ++q) {
              const PoolBin& bin = bins[q];
              // torchvision's sentinel: -FLT_MAX (an all -inf bin keeps it, with argmax -1).
              T best = bin.empty ? T(0) : static_cast<T>(-FLT_MAX);
              int32_t arg = -1;
              if (bin_max_fast(plane, W, bin, best, arg)) {
                o[q] = static_cast<S>(best);
                a[q] = arg;
                continue;
              }
              for (int64_t h = bin.hstart; h < bin.hend; ++h)
                for (int64_t w = bin.wstart; w < bin.wend; ++w) {
                  const T v = static_cast<T>(plane[h * W + w]);
                  if (v > best) best = v, arg = static_cast<int32_t>(h * W + w);
                }
              o[q] = static_cast<S>(best);
              a[q] = arg;
            }
          }
        }
      });
    });
  });
  return {out, argmax};
}

at::Tensor roi_pool_backward_cpu(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& rois,
                                 const at::Tensor& argmax, bool deterministic) {
  (void)deterministic;  // always deterministic on the CPU
  const char* op = "roi_pool_backward";
  check_feature(op, input, input);
  check_rois(op, rois, input.device());
  const int64_t K = rois.size(0), N = input.size(0), C = input.size(1), H = input.size(2),
                W = input.size(3);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == K && grad.size(1) == C, op,
              ": grad must have shape [", K, ", ", C, ", ph, pw], got ", grad.sizes());
  TORCH_CHECK(argmax.sizes() == grad.sizes() && argmax.scalar_type() == at::kInt, op,
              ": argmax must be an int32 tensor shaped like grad, got ", argmax.sizes(), " ",
              argmax.scalar_type());
  const at::ScalarType ct = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor acc = at::zeros({N, C, H, W}, input.options().dtype(ct));
  const int64_t bins = grad.size(2) * grad.size(3);
  if (K > 0 && C > 0 && bins > 0) {
    const at::Tensor g = grad.to(ct).contiguous();
    const at::Tensor a = argmax.contiguous();
    const at::Tensor r = rois.to(ct).contiguous();
    AT_DISPATCH_FLOATING_TYPES(ct, "roi_pool_backward_cpu", [&] {
      using T = scalar_t;
      const T* rp = r.data_ptr<T>();
      const auto by_image = rois_by_image(op, rp, K, N);
      const T* gp = g.data_ptr<T>();
      const int32_t* ap = a.data_ptr<int32_t>();
      T* out = acc.data_ptr<T>();
      at::parallel_for(0, N * C, 4, [&](int64_t begin, int64_t end) {
        for (int64_t nc = begin; nc < end; ++nc) {
          const int64_t n = nc / C, c = nc % C;
          T* plane = out + nc * H * W;
          for (const int64_t k : by_image[n]) {
            const int64_t off = (k * C + c) * bins;
            for (int64_t q = 0; q < bins; ++q) {
              const int32_t i = ap[off + q];
              if (i >= 0 && i < H * W) plane[i] += gp[off + q];
            }
          }
        }
      });
    });
  }
  const bool cl = input.is_contiguous(at::MemoryFormat::ChannelsLast) && !input.is_contiguous();
  at::Tensor res = acc.to(input.scalar_type());
  return cl ? res.contiguous(at::MemoryFormat::ChannelsLast) : res;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg, CPU, m) {
  m.impl("roi_pool", &roi_pool_cpu);
  m.impl("roi_pool_backward", &roi_pool_backward_cpu);
}

}  // namespace fastseg
