// CPU fp32 NCHW transposed convolution with kernel 2, stride 2, no padding (U-Net's up-convolution, the
// Hourglass' k2 s2 upsampling) as ONE pass: a register-tiled GEMM whose epilogue writes the pixel-shuffled
// output directly.
//
// Per image, the op is Y[(co, ky, kx), p] = sum_ci W[ci, co, ky, kx] * X[ci, p] (X: the NCHW image as a
// [C_in, H*W] matrix, read in place) and out[co, 2i + ky, 2j + kx] = Y[(co, ky, kx), i*W + j] + bias[co].
// The generic kernel == stride path (conv_transpose2d_kernel.cpp) runs at::mm into a temporary and then
// scatters it: the output crosses memory twice. Here a tile of 8 GEMM rows (2 output channels x the 4
// taps) by 32 pixels lives in 16 AVX-512 registers; its epilogue interleaves the kx = 0 and kx = 1 rows
// (two permutes) into whole runs of output rows, adds the bias, applies the ReLU and stores once.
// Measured in benchmarks/notes/conv_transpose2d.md.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "conv_transpose2d.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FASTSEG_K2_AVX512 1
// GCC 12 reports the deliberately undefined operand inside _mm512_max_ps (_mm512_undefined_ps) as
// uninitialized (as in conv_transpose2d_direct.cpp).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace fastseg {

#ifdef FASTSEG_K2_AVX512
namespace {

constexpr int64_t kMR = 8;   // GEMM rows per tile: 2 output channels x (ky, kx)
constexpr int64_t kNR = 32;  // GEMM columns per tile: 32 input pixels, two 16-lane vectors

// Stores the 16 pixels of one vector pair (kx = 0 in e0, kx = 1 in e1) of output channel row `ky`:
// pixel p = i * W + j goes to out[2i + ky][2j + kx]. W % 8 == 0, so each half of the vector (8
// pixels) lies in one input row and becomes 16 contiguous outputs.
__attribute__((target("avx512f"))) inline void store_pair(__m512 e0, __m512 e1, __m512 bias, bool relu,
                                                          float* plane, int64_t p, int64_t W, int64_t ky) {
  const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
  __m512 a = _mm512_add_ps(_mm512_permutex2var_ps(e0, lo, e1), bias);
  __m512 b = _mm512_add_ps(_mm512_permutex2var_ps(e0, hi, e1), bias);
  if (relu) {  // max(0, v) keeps NaN (a NaN second operand is returned)
    a = _mm512_max_ps(_mm512_setzero_ps(), a);
    b = _mm512_max_ps(_mm512_setzero_ps(), b);
  }
  const int64_t W2 = 2 * W;
  const int64_t i0 = p / W, j0 = p % W, i1 = (p + 8) / W, j1 = (p + 8) % W;
  _mm512_storeu_ps(plane + (2 * i0 + ky) * W2 + 2 * j0, a);
  _mm512_storeu_ps(plane + (2 * i1 + ky) * W2 + 2 * j1, b);
}

// Output channel pairs [mb0, mb1) of the 32 pixels p0 .. p0 + 31 of one image. A: their packed weights
// [mb1 - mb0][K][8]; X: the image [K, P]; out: the image's output [Cout, 2H, 2W]; xt: K * 32 floats to copy
// the tile's X into, or nullptr to read it in place; next: the next tile's X to prefetch, or nullptr.
__attribute__((target("avx512f"))) void pixel_tile(const float* A, const float* X, const float* bias, float* out,
                                                   int64_t K, int64_t P, int64_t W, int64_t mb0, int64_t mb1,
                                                   int64_t p0, bool relu, float* xt, const float* next) {
  if (xt)
    for (int64_t k = 0; k < K; ++k) {
      _mm512_storeu_ps(xt + k * kNR, _mm512_loadu_ps(X + k * P + p0));
      _mm512_storeu_ps(xt + k * kNR + 16, _mm512_loadu_ps(X + k * P + p0 + 16));
    }
  const int64_t ldb = xt ? kNR : P;
  for (int64_t mb = mb0; mb < mb1; ++mb) {
    if (next)  // this pair's share of the next tile's rows of X
      for (int64_t k = (mb - mb0) * K / (mb1 - mb0); k < (mb - mb0 + 1) * K / (mb1 - mb0); ++k) {
        _mm_prefetch(reinterpret_cast<const char*>(next + k * P), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(next + k * P + 16), _MM_HINT_T0);
      }
    const float* a = A + (mb - mb0) * K * kMR;
    const float* b = xt ? xt : X + p0;
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00,
           c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00, c61 = c00, c70 = c00, c71 = c00;
    for (int64_t k = 0; k < K; ++k, b += ldb, a += kMR) {
      const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
#define FASTSEG_ROW(r)                               \
  {                                                  \
    const __m512 w = _mm512_set1_ps(a[r]);           \
    c##r##0 = _mm512_fmadd_ps(w, b0, c##r##0);       \
    c##r##1 = _mm512_fmadd_ps(w, b1, c##r##1);       \
  }
      FASTSEG_ROW(0) FASTSEG_ROW(1) FASTSEG_ROW(2) FASTSEG_ROW(3)
      FASTSEG_ROW(4) FASTSEG_ROW(5) FASTSEG_ROW(6) FASTSEG_ROW(7)
#undef FASTSEG_ROW
    }
    // Rows: r = (channel * 2 + ky) * 2 + kx.
    const int64_t co = 2 * mb, plane = 4 * P;
    const __m512 b_0 = _mm512_set1_ps(bias ? bias[co] : 0.f), b_1 = _mm512_set1_ps(bias ? bias[co + 1] : 0.f);
    float* o0 = out + co * plane;
    float* o1 = o0 + plane;
    store_pair(c00, c10, b_0, relu, o0, p0, W, 0);
    store_pair(c01, c11, b_0, relu, o0, p0 + 16, W, 0);
    store_pair(c20, c30, b_0, relu, o0, p0, W, 1);
    store_pair(c21, c31, b_0, relu, o0, p0 + 16, W, 1);
    store_pair(c40, c50, b_1, relu, o1, p0, W, 0);
    store_pair(c41, c51, b_1, relu, o1, p0 + 16, W, 0);
    store_pair(c60, c70, b_1, relu, o1, p0, W, 1);
    store_pair(c61, c71, b_1, relu, o1, p0 + 16, W, 1);
  }
}

}  // namespace

bool conv_transpose2d_k2_nchw(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                              const ConvT2dParams& p, bool relu, at::Tensor& out) {
  const int64_t P = p.h * p.w;
  const bool fits = p.kh == 2 && p.kw == 2 && p.sh == 2 && p.sw == 2 && p.ph == 0 && p.pw == 0 && p.oph == 0 &&
                    p.opw == 0 && p.dh == 1 && p.dw == 1 && p.groups == 1 && p.cout % 2 == 0 && p.w % 8 == 0 &&
                    P % kNR == 0 && input.scalar_type() == at::kFloat && input.is_contiguous();
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  if (!fits || !avx512) return false;
  const int64_t K = p.cin;
  // Packed weights: for each pair of output channels, [K][8] (the 8 GEMM rows of a tile side by side), packed
  // by each thread for the block of channel pairs its tasks are on, into a buffer of its own that stays in
  // L2. Packing the whole weight up front wrote it out to memory and read it back (8 MB at 1024 -> 512): per
  // block, 1024 -> 512 ~5%, 512 -> 256 ~2% and the Hourglass k2 ~1% faster, U-Net 128 -> 64 (one block)
  // the same (benchmarks/notes/conv_transpose2d.md, section 32).
  const at::Tensor wv = weight.contiguous();
  const float* w = wv.data_ptr<float>();
  auto pack = [&](float* dst, int64_t mb0, int64_t mb1) {  // pairs [mb0, mb1) into dst: [mb1 - mb0][K][8]
    for (int64_t mb = mb0; mb < mb1; ++mb)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t r = 0; r < kMR; ++r) dst[((mb - mb0) * K + k) * kMR + r] = w[k * p.cout * 4 + mb * kMR + r];
  };
  const float* x = input.data_ptr<float>();
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  float* o = out.data_ptr<float>();
  // Tasks: (block of channel pairs, image, pixel tile), channel blocks outermost, so that a thread's
  // consecutive tasks reuse one ~256 KB slice of the packed weights from L2 (with 1,024 input channels
  // the whole of A is 8 MB: walking all of it for every pixel tile read it from memory each time).
  const int64_t tiles = P / kNR, pairs = p.cout / 2;
  const int64_t chunk = std::max<int64_t>(1, (256 << 10) / (K * kMR * 4)), chunks = (pairs + chunk - 1) / chunk;
  // With one block of channel pairs each tile's X is read once, from memory: each channel pair's run prefetches
  // its share of the next tile's (U-Net 128 -> 64: 2.98-3.05 -> 2.78-2.80 ms). With several blocks X comes
  // back from L2/L3 and the prefetches cost 0-2.5% (256 -> 128, 512 -> 256, 1024 -> 512, the Hourglass).
  const bool prefetch = chunks == 1;
  // The tile's [K][32] block of X is copied together first where X's rows lie a multiple of 4 KiB apart
  // (images of 32 x 32, 64 x 64): in place they all fell into the same few cache sets and were read again
  // from L2/L3 for every channel pair (benchmarks/notes/conv_transpose2d.md, section 28). Elsewhere the
  // copy, made again for every block of channel pairs, cost more than it saved: in place 3-8% faster on
  // 8 x 8, 16 x 16 and 24 x 24 images (section 32).
  const bool copy_x = P % 1024 == 0;
  at::parallel_for(0, chunks * p.n * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> xt(copy_x ? K * kNR : 0);
    const std::unique_ptr<float[]> a(new float[std::min(chunk, pairs) * K * kMR]);  // uninitialised until packed
    int64_t packed_chunk = -1;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t mc = t / (p.n * tiles), rest = t % (p.n * tiles), n = rest / tiles, p0 = (rest % tiles) * kNR;
      const int64_t mb0 = mc * chunk, mb1 = std::min(pairs, mb0 + chunk);
      if (mc != packed_chunk) pack(a.get(), mb0, mb1), packed_chunk = mc;
      const int64_t t1 = t + 1, n1 = t1 % (p.n * tiles) / tiles, p1 = t1 % tiles * kNR;  // the next task's X
      const float* next = prefetch && t1 < end ? x + n1 * K * P + p1 : nullptr;
      pixel_tile(a.get(), x + n * K * P, bp, o + n * p.cout * 4 * P, K, P, p.w, mb0, mb1, p0, relu,
                 copy_x ? xt.data() : nullptr, next);
    }
  });
  return true;
}

#else

bool conv_transpose2d_k2_nchw(const at::Tensor&, const at::Tensor&, const at::Tensor&, const ConvT2dParams&, bool,
                              at::Tensor&) {
  return false;
}

#endif

}  // namespace fastseg
