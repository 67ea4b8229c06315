// CPU fp32 transposed convolution for layers with few channels (FCN's 21-class score upsampling:
// k4 s2 p1, k16 s8 p4): a direct, output-stationary AVX-512 kernel for the forward and for the
// gradient of the input.
//
// Why: on those layers oneDNN's deconvolution runs at 30-50 GFLOP/s (its blocking is made for wide
// layers; a 16x16 FCN layer is 3.6 MFLOP and took ~76 us), a fifth of what the two cores do.
//
// Forward, one output pixel: out[oy, ox, :] = bias + sum over the taps that reach it (ky = ry + s*jy,
// kx = rx + s*jx, with ry = (oy + p) mod s and iy = (oy + p) div s - jy) and over ci of
//     X[iy, ix, ci] * W[ci, :, ky, kx]
// i.e. a broadcast input value times a vector of output channels. A tile is R = 8 output pixels of one
// row and one phase (every s-th pixel: they share their taps) by 32 output channels: 16 accumulators,
// and per (tap, ci) two weight loads, eight broadcasts and sixteen FMAs. No zero-insertion, no col2im, no
// scatter: every output element is written once.
// Gradient of the input, one input pixel: gI[iy, ix, :] = sum over ky, kx with oy = iy*s - p + ky inside
// and over co of gO[oy, ox, co] * W[:, co, ky, kx]: the same tile with the roles of the channels swapped.
// Gradient of the weight, one tap (ky, kx): gW[:, :, ky, kx] = sum over input pixels of X[pixel, ci] *
// gO[pixel * s - p + (ky, kx), co], tiles of 8 input channels by 32 output channels.
// All read their broadcast operand channels_last (NCHW callers pass a channels_last copy of the small
// input / grad_output). Pixels outside the map read a zero vector.
// Measured in benchmarks/notes/conv_transpose2d.md.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "conv_transpose2d.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FASTSEG_DIRECT_AVX512 1
// GCC 12 reports the deliberately undefined operands inside _mm512_max_ps, _mm512_castps512_ps256 and
// _mm512_zextps256_ps512 (_mm512_undefined_*) as uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace fastseg {

#ifdef FASTSEG_DIRECT_AVX512
namespace {

constexpr int kR = 8;    // pixels per tile (16 accumulators of the 32 AVX-512 registers)
constexpr int kV = 32;   // channels per tile: two 16-lane vectors

#define FASTSEG_AVX512 __attribute__((target("avx512f,avx512vl,fma")))

// The mask of the first n (clamped to 0..16) lanes of a vector.
inline __mmask16 lanes(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? 0 : __mmask16((1u << n) - 1); }

// Channels 16..31 of a tile: a 512-bit vector, or a 256-bit one (channels 16..23) when the block has at
// most 24 channels. On Zen 4 a 256-bit FMA costs half a 512-bit one, so FCN's 21 classes cost 1.5
// FMAs a step instead of 2.
template <bool Narrow>
struct Hi {
  using V = __m512;
  static FASTSEG_AVX512 V zero() { return _mm512_setzero_ps(); }
  static FASTSEG_AVX512 V load(__mmask16 m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
  static FASTSEG_AVX512 V fma(__m512 x, V w, V a) { return _mm512_fmadd_ps(x, w, a); }
  static FASTSEG_AVX512 V add(V a, V b) { return _mm512_add_ps(a, b); }
  static FASTSEG_AVX512 V relu(V a) { return _mm512_max_ps(_mm512_setzero_ps(), a); }  // keeps NaN
  static FASTSEG_AVX512 void store(float* p, __mmask16 m, V v) { _mm512_mask_storeu_ps(p, m, v); }
  static FASTSEG_AVX512 __m512 widen(V v) { return v; }
  static FASTSEG_AVX512 V narrow(__m512 v) { return v; }
};
template <>
struct Hi<true> {
  using V = __m256;
  static FASTSEG_AVX512 V zero() { return _mm256_setzero_ps(); }
  static FASTSEG_AVX512 V load(__mmask16 m, const float* p) { return _mm256_maskz_loadu_ps(__mmask8(m), p); }
  static FASTSEG_AVX512 V fma(__m512 x, V w, V a) { return _mm256_fmadd_ps(_mm512_castps512_ps256(x), w, a); }
  static FASTSEG_AVX512 V add(V a, V b) { return _mm256_add_ps(a, b); }
  static FASTSEG_AVX512 V relu(V a) { return _mm256_max_ps(_mm256_setzero_ps(), a); }
  static FASTSEG_AVX512 void store(float* p, __mmask16 m, V v) { _mm256_mask_storeu_ps(p, __mmask8(m), v); }
  static FASTSEG_AVX512 __m512 widen(V v) { return _mm512_zextps256_ps512(v); }
  static FASTSEG_AVX512 V narrow(__m512 v) { return _mm512_castps512_ps256(v); }
};

// Where pixel r of a tile reads tap t's channels: anywhere (a pointer per pixel and tap, a zero vector for
// pixels outside the map), or at base[t] + r * step (consecutive pixels all inside the map: the forward's
// inner tiles, which then skip the per-pixel pointer setup, ~8% of FCN's k16 s8 forward).
struct Scattered {
  const float* const* p;
  const float* operator()(int64_t t, int r) const { return p[t * kR + r]; }
};
struct Strided {
  const float* const* base;
  int64_t step;
  const float* operator()(int64_t t, int r) const { return base[t] + r * step; }
};

// One tile: acc[r] = sum over taps t and channels c of src(t, r)[c] * w[t][c][0:32], then bias, ReLU,
// and masked stores of the `m0`/`m1` lanes to dst[r] (channels contiguous).
template <int R, bool Narrow, class Src>
FASTSEG_AVX512 void tile(const Src& src, const float* const* w, int64_t taps, int64_t C, const float* bias,
                         bool relu, float* const* dst, __mmask16 m0, __mmask16 m1) {
  using H = Hi<Narrow>;
  __m512 a0[R];
  typename H::V a1[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) a0[r] = _mm512_setzero_ps(), a1[r] = H::zero();
  for (int64_t t = 0; t < taps; ++t) {
    const float* s[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) s[r] = src(t, r);
    const float* wt = w[t];
    for (int64_t c = 0; c < C; ++c, wt += kV) {
      const __m512 w0 = _mm512_loadu_ps(wt);
      const typename H::V w1 = H::load(0xFFFF, wt + 16);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m512 x = _mm512_set1_ps(s[r][c]);
        a0[r] = _mm512_fmadd_ps(x, w0, a0[r]);
        a1[r] = H::fma(x, w1, a1[r]);
      }
    }
  }
  const __m512 b0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
  const typename H::V b1 = bias ? H::load(m1, bias + 16) : H::zero();
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    __m512 v0 = _mm512_add_ps(a0[r], b0);
    typename H::V v1 = H::add(a1[r], b1);
    if (relu) v0 = Hi<false>::relu(v0), v1 = H::relu(v1);
    _mm512_mask_storeu_ps(dst[r], m0, v0);
    H::store(dst[r] + 16, m1, v1);
  }
}

template <bool Narrow, class Src>
void run_tile(int r, const Src& src, const float* const* w, int64_t taps, int64_t C, const float* bias,
              bool relu, float* const* dst, __mmask16 m0, __mmask16 m1) {
  switch (r) {
    case 8: return tile<8, Narrow>(src, w, taps, C, bias, relu, dst, m0, m1);
    case 7: return tile<7, Narrow>(src, w, taps, C, bias, relu, dst, m0, m1);
    case 6: return tile<6, Narrow>(src, w, taps, C, bias, relu, dst, m0, m1);
    case 5: return tile<5, Narrow>(src, w, taps, C, bias, relu, dst, m0, m1);
    case 4: return tile<4, Narrow>(src, w, taps, C, bias, relu, dst, m0, m1);
    case 3: return tile<3, Narrow>(src, w, taps, C, bias, relu, dst, m0, m1);
    case 2: return tile<2, Narrow>(src, w, taps, C, bias, relu, dst, m0, m1);
    default: return tile<1, Narrow>(src, w, taps, C, bias, relu, dst, m0, m1);
  }
}

// A block of at most this many channels takes the 256-bit variant (Hi<true>).
constexpr int64_t kNarrowChannels = 24;

// `channels` (<= 32) valid lanes of a tile.
template <class Src>
void run_tile(int r, int64_t channels, const Src& src, const float* const* w, int64_t taps, int64_t C,
              const float* bias, bool relu, float* const* dst, __mmask16 m0, __mmask16 m1) {
  if (channels <= kNarrowChannels)
    run_tile<true>(r, src, w, taps, C, bias, relu, dst, m0, m1);
  else
    run_tile<false>(r, src, w, taps, C, bias, relu, dst, m0, m1);
}

// Weight-gradient tile of one tap (ky, kx): acc[r] += sum over the input pixels of one row of
// x[pixel][r] * g[pixel's output][0:32], for `count` pixels whose input / output addresses advance by
// `xstep` / `gstep` floats. R input channels by 32 output channels.
template <int R, bool Narrow>
FASTSEG_AVX512 void weight_tile(const float* x, const float* g, int64_t count, int64_t xstep, int64_t gstep,
                                __mmask16 m0, __mmask16 m1, __m512* acc) {
  using H = Hi<Narrow>;
  __m512 a0[R];
  typename H::V a1[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) a0[r] = acc[2 * r], a1[r] = H::narrow(acc[2 * r + 1]);
  for (int64_t i = 0; i < count; ++i, x += xstep, g += gstep) {
    const __m512 g0 = _mm512_maskz_loadu_ps(m0, g);
    const typename H::V g1 = H::load(m1, g + 16);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 v = _mm512_set1_ps(x[r]);
      a0[r] = _mm512_fmadd_ps(v, g0, a0[r]);
      a1[r] = H::fma(v, g1, a1[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[2 * r] = a0[r], acc[2 * r + 1] = H::widen(a1[r]);
}

template <bool Narrow>
void run_weight_tile(int r, const float* x, const float* g, int64_t count, int64_t xstep, int64_t gstep,
                     __mmask16 m0, __mmask16 m1, __m512* acc) {
  switch (r) {
    case 8: return weight_tile<8, Narrow>(x, g, count, xstep, gstep, m0, m1, acc);
    case 7: return weight_tile<7, Narrow>(x, g, count, xstep, gstep, m0, m1, acc);
    case 6: return weight_tile<6, Narrow>(x, g, count, xstep, gstep, m0, m1, acc);
    case 5: return weight_tile<5, Narrow>(x, g, count, xstep, gstep, m0, m1, acc);
    case 4: return weight_tile<4, Narrow>(x, g, count, xstep, gstep, m0, m1, acc);
    case 3: return weight_tile<3, Narrow>(x, g, count, xstep, gstep, m0, m1, acc);
    case 2: return weight_tile<2, Narrow>(x, g, count, xstep, gstep, m0, m1, acc);
    default: return weight_tile<1, Narrow>(x, g, count, xstep, gstep, m0, m1, acc);
  }
}

// `channels` (<= 32) valid lanes of the tile, as run_tile.
void run_weight_tile(int r, int64_t channels, const float* x, const float* g, int64_t count, int64_t xstep,
                     int64_t gstep, __m512* acc) {
  const __mmask16 m0 = lanes(channels), m1 = lanes(channels - 16);
  if (channels <= kNarrowChannels)
    run_weight_tile<true>(r, x, g, count, xstep, gstep, m0, m1, acc);
  else
    run_weight_tile<false>(r, x, g, count, xstep, gstep, m0, m1, acc);
}

// [lo, hi): the input indices i whose output index i * s - p + t lies in [0, out).
inline std::pair<int64_t, int64_t> tap_range(int64_t in, int64_t out, int64_t s, int64_t p, int64_t t) {
  const int64_t lo = p - t <= 0 ? 0 : (p - t + s - 1) / s;
  const int64_t last = out - 1 + p - t;
  const int64_t hi = last < 0 ? 0 : std::min(in, last / s + 1);
  return {lo, std::max(lo, hi)};
}


// One task of the weight gradient: tap t, input channels [ci0, ci0 + 8), output channels [co0, co0 + 32).
FASTSEG_AVX512 void weight_task(int64_t task, const float* xp, const float* gp, float* wp, const ConvT2dParams& p) {
  const int64_t k = p.kh * p.kw, cblocks = (p.cin + kR - 1) / kR, oblocks = (p.cout + kV - 1) / kV;
  const int64_t ob = task % oblocks, cb = (task / oblocks) % cblocks, t = task / (oblocks * cblocks);
  const int64_t ky = t / p.kw, kx = t % p.kw, ci0 = cb * kR, co0 = ob * kV;
  const int r = static_cast<int>(std::min<int64_t>(kR, p.cin - ci0));
  const int64_t nc = std::min<int64_t>(kV, p.cout - co0);
  const auto [iy0, iy1] = tap_range(p.h, p.ho, p.sh, p.ph, ky);
  const auto [ix0, ix1] = tap_range(p.w, p.wo, p.sw, p.pw, kx);
  __m512 acc[2 * kR];
  for (auto& a : acc) a = _mm512_setzero_ps();
  for (int64_t n = 0; n < p.n; ++n)
    for (int64_t iy = iy0; iy < iy1; ++iy) {
      const int64_t oy = iy * p.sh - p.ph + ky, ox = ix0 * p.sw - p.pw + kx;
      run_weight_tile(r, nc, xp + ((n * p.h + iy) * p.w + ix0) * p.cin + ci0,
                      gp + ((n * p.ho + oy) * p.wo + ox) * p.cout + co0, ix1 - ix0, p.cin, p.sw * p.cout, acc);
    }
  float lane[kV];
  for (int i = 0; i < r; ++i) {
    _mm512_storeu_ps(lane, acc[2 * i]);
    _mm512_storeu_ps(lane + 16, acc[2 * i + 1]);
    for (int64_t c = 0; c < nc; ++c) wp[((ci0 + i) * p.cout + co0 + c) * k + t] = lane[c];
  }
}

// Weights as [block of 32 "vector" channels][ky][kx][other channel][32], zero-padded: the forward
// vectorises output channels (dim 1 of W), the input gradient input channels (dim 0).
at::Tensor pack_weight(const at::Tensor& weight, const ConvT2dParams& p, bool over_cout) {
  const int64_t vec = over_cout ? p.cout : p.cin, other = over_cout ? p.cin : p.cout;
  const int64_t blocks = (vec + kV - 1) / kV, k = p.kh * p.kw;
  at::Tensor packed = at::empty({blocks, k, other, kV}, weight.options());
  const at::Tensor w = weight.contiguous();
  const float* src = w.data_ptr<float>();  // [cin][cout][kh][kw]
  float* dst = packed.data_ptr<float>();
  // Written in order, one (block, tap) panel per task, in parallel: FCN's k16 layer packs 256 taps
  // (~0.7 MB) on every call (`perf`: 3.5% of its forward).
  at::parallel_for(0, blocks * k, 8, [&](int64_t begin, int64_t end) {
    for (int64_t bt = begin; bt < end; ++bt) {
      const int64_t b = bt / k, t = bt % k;
      float* d = dst + bt * other * kV;
      for (int64_t o = 0; o < other; ++o)
        for (int64_t l = 0; l < kV; ++l, ++d) {
          const int64_t v = b * kV + l, ci = over_cout ? o : v, co = over_cout ? v : o;
          *d = v < vec ? src[(ci * p.cout + co) * k + t] : 0.f;
        }
    }
  });
  return packed;
}

// A row of channels_last results goes to an NCHW output through this transposition.
void store_row_nchw(const float* row, float* out, int64_t width, int64_t channels, int64_t plane) {
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t x = 0; x < width; ++x) out[c * plane + x] = row[x * kV + c];
}

}  // namespace

bool direct_conv_transpose2d_fits(const at::Tensor& input, const ConvT2dParams& p) {
  static const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
  return avx512 && input.scalar_type() == at::kFloat && p.groups == 1 && p.dh == 1 && p.dw == 1;
}

void direct_conv_transpose2d_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                                     const ConvT2dParams& p, bool relu, at::Tensor& out) {
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);  // [N][H][W][Cin] in memory
  const at::Tensor packed = pack_weight(weight, p, /*over_cout=*/true);
  const bool cl = out.is_contiguous(at::MemoryFormat::ChannelsLast);
  const float* xp = x.data_ptr<float>();
  const float* wp = packed.data_ptr<float>();
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  const int64_t blocks = (p.cout + kV - 1) / kV, k = p.kh * p.kw;
  const std::vector<float> zeros(p.cin, 0.f);
  at::parallel_for(0, p.n * p.ho * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<const float*> src(k * kR), base(k), w(k);
    std::vector<float> row(cl ? 0 : p.wo * kV);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t cb = task % blocks, oy = (task / blocks) % p.ho, n = task / (blocks * p.ho);
      const int64_t c0 = cb * kV, nc = std::min<int64_t>(kV, p.cout - c0);
      const __mmask16 m0 = lanes(nc), m1 = lanes(nc - 16);
      const int64_t ry = (oy + p.ph) % p.sh, qy = (oy + p.ph) / p.sh;
      for (int64_t rx = 0; rx < p.sw; ++rx) {
        const int64_t ox0 = ((rx - p.pw) % p.sw + p.sw) % p.sw;  // first output column of this phase
        for (int64_t oxt = ox0; oxt < p.wo; oxt += kR * p.sw) {
          const int r = static_cast<int>(std::min<int64_t>(kR, (p.wo - oxt + p.sw - 1) / p.sw));
          const int64_t qx0 = (oxt + p.pw) / p.sw;  // (ox + pw) / s of the tile's first pixel; +1 per pixel
          // Pixel i of the tile reads input column qx0 + i - jx for tap column jx in [0, jx_end): all inside
          // the row for an inner tile.
          const int64_t jx_end = rx < p.kw ? (p.kw - 1 - rx) / p.sw + 1 : 0;
          const bool inner = qx0 - (jx_end - 1) >= 0 && qx0 + r <= p.w;
          int64_t taps = 0;
          for (int64_t ky = ry; ky < p.kh; ky += p.sh) {
            const int64_t iy = qy - (ky - ry) / p.sh;
            if (iy < 0 || iy >= p.h) continue;
            const float* xrow = xp + (n * p.h + iy) * p.w * p.cin;
            for (int64_t kx = rx, jx = 0; kx < p.kw; kx += p.sw, ++jx) {
              if (inner) {
                base[taps] = xrow + (qx0 - jx) * p.cin;
              } else {
                for (int i = 0; i < r; ++i) {
                  const int64_t ix = qx0 + i - jx;
                  src[taps * kR + i] = ix >= 0 && ix < p.w ? xrow + ix * p.cin : zeros.data();
                }
              }
              w[taps++] = wp + ((cb * k) + ky * p.kw + kx) * p.cin * kV;
            }
          }
          float* dst[kR];
          for (int i = 0; i < r; ++i) {
            const int64_t ox = oxt + i * p.sw;
            dst[i] = cl ? op + ((n * p.ho + oy) * p.wo + ox) * p.cout + c0 : row.data() + ox * kV;
          }
          const float* b = bp ? bp + c0 : nullptr;
          if (inner)
            run_tile(r, nc, Strided{base.data(), p.cin}, w.data(), taps, p.cin, b, relu, dst, m0, m1);
          else
            run_tile(r, nc, Scattered{src.data()}, w.data(), taps, p.cin, b, relu, dst, m0, m1);
        }
      }
      if (!cl) store_row_nchw(row.data(), op + ((n * p.cout + c0) * p.ho + oy) * p.wo, p.wo, nc, p.ho * p.wo);
    }
  });
}

void direct_conv_transpose2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                        const ConvT2dParams& p, at::Tensor& grad_input) {
  const at::Tensor g = grad_output.contiguous(at::MemoryFormat::ChannelsLast);  // [N][Ho][Wo][Cout]
  const at::Tensor packed = pack_weight(weight, p, /*over_cout=*/false);
  const bool cl = grad_input.is_contiguous(at::MemoryFormat::ChannelsLast);
  const float* gp = g.data_ptr<float>();
  const float* wp = packed.data_ptr<float>();
  float* op = grad_input.data_ptr<float>();
  const int64_t blocks = (p.cin + kV - 1) / kV, k = p.kh * p.kw;
  const std::vector<float> zeros(p.cout, 0.f);
  at::parallel_for(0, p.n * p.h * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<const float*> src(k * kR), w(k);
    std::vector<float> row(cl ? 0 : p.w * kV);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t cb = task % blocks, iy = (task / blocks) % p.h, n = task / (blocks * p.h);
      const int64_t c0 = cb * kV, nc = std::min<int64_t>(kV, p.cin - c0);
      const __mmask16 m0 = lanes(nc), m1 = lanes(nc - 16);
      for (int64_t ixt = 0; ixt < p.w; ixt += kR) {
        const int r = static_cast<int>(std::min<int64_t>(kR, p.w - ixt));
        int64_t taps = 0;
        for (int64_t ky = 0; ky < p.kh; ++ky) {
          const int64_t oy = iy * p.sh - p.ph + ky;
          if (oy < 0 || oy >= p.ho) continue;
          const float* grow = gp + (n * p.ho + oy) * p.wo * p.cout;
          for (int64_t kx = 0; kx < p.kw; ++kx) {
            for (int i = 0; i < r; ++i) {
              const int64_t ox = (ixt + i) * p.sw - p.pw + kx;
              src[taps * kR + i] = ox >= 0 && ox < p.wo ? grow + ox * p.cout : zeros.data();
            }
            w[taps++] = wp + ((cb * k) + ky * p.kw + kx) * p.cout * kV;
          }
        }
        float* dst[kR];
        for (int i = 0; i < r; ++i)
          dst[i] = cl ? op + ((n * p.h + iy) * p.w + ixt + i) * p.cin + c0 : row.data() + (ixt + i) * kV;
        run_tile(r, nc, Scattered{src.data()}, w.data(), taps, p.cout, nullptr, false, dst, m0, m1);
      }
      if (!cl) store_row_nchw(row.data(), op + ((n * p.cin + c0) * p.h + iy) * p.w, p.w, nc, p.h * p.w);
    }
  });
}

at::Tensor direct_conv_transpose2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                               const ConvT2dParams& p) {
  const at::Tensor g = grad_output.contiguous(at::MemoryFormat::ChannelsLast);  // [N][Ho][Wo][Cout]
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);        // [N][H][W][Cin]
  at::Tensor grad_weight = at::empty({p.cin, p.cout, p.kh, p.kw}, input.options());
  const float* gp = g.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  float* wp = grad_weight.data_ptr<float>();
  const int64_t k = p.kh * p.kw, cblocks = (p.cin + kR - 1) / kR, oblocks = (p.cout + kV - 1) / kV;
  // A task owns one (tap, block of 8 input channels, block of 32 output channels) of the gradient and
  // sums over every pixel: no reduction between threads, the result is the same for any thread count.
  at::parallel_for(0, k * cblocks * oblocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) weight_task(task, xp, gp, wp, p);
  });
  return grad_weight;
}

#else

bool direct_conv_transpose2d_fits(const at::Tensor&, const ConvT2dParams&) { return false; }
void direct_conv_transpose2d_forward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const ConvT2dParams&,
                                     bool, at::Tensor&) {
  TORCH_CHECK(false, "conv_transpose2d: the direct kernel needs x86-64 AVX-512");
}
void direct_conv_transpose2d_grad_input(const at::Tensor&, const at::Tensor&, const ConvT2dParams&, at::Tensor&) {
  TORCH_CHECK(false, "conv_transpose2d: the direct kernel needs x86-64 AVX-512");
}
at::Tensor direct_conv_transpose2d_grad_weight(const at::Tensor&, const at::Tensor&, const ConvT2dParams&) {
  TORCH_CHECK(false, "conv_transpose2d: the direct kernel needs x86-64 AVX-512");
}

#endif

}  // namespace fastseg
