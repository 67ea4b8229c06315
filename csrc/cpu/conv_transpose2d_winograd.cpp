// CPU fp32 3x3 stride-1 transposed convolution by Winograd's minimal filtering F(2x2, 3x3) (DeconvNet's
// decoder layers, k3 s1 p1), forward, input gradient and weight gradient.
//
// A stride-1 transposed convolution is a plain 3x3 convolution, and so is its input gradient:
//     out     = conv2d(x, K, padding 2 - p),   K[co][ci] = W[ci][co] rotated by 180 degrees
//     grad_x  = conv2d(grad_out, W, padding p)  (W read as [out channel ci][in channel co])
// F(2x2, 3x3) computes a 2x2 output tile of a 3x3 convolution with 16 products per channel pair where the
// direct sum takes 36. For a block of tiles of the input d (4x4 patches, 2 apart):
//     V[xi][c][t]  = (B^T d B)[xi]                          input transform
//     M[xi][k][t]  = sum_c U[xi][k][c] V[xi][c][t]          16 GEMMs (the BLAS sgemm, xi split over threads)
//     y[k][tile t] = A^T M A  (+ bias, ReLU)                output transform
// with U = G g G^T the transformed 3x3 kernel g. The coefficients of B, G and A are 0, +-1 and 1/2: the
// rounding error stays close to that of the direct sum (benchmarks/notes/conv_transpose2d.md, section 23).
// One transformed weight T[xi][ci][co] = (G W[ci][co] G^T)[xi] serves both directions: rotating g by 180
// degrees swaps rows 0 and 3 of G g (and columns 0 and 3 of g G^T), so the forward's U is T at the
// swapped index, transposed, which the GEMM reads in place.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "conv_transpose2d.h"
#include "winograd_gemm.h"

namespace fastseg {
namespace {

using winograd::pixel_or;
using winograd::plane_stride;
using winograd::sgemm;
using winograd::weight_space;
using winograd::workspace;

// The 4 x 4 transform index xi = 4 * row + column, and its 180-degree rotation (rows and columns 0 <-> 3).
constexpr int kSwap[4] = {3, 1, 2, 0};

// T[xi][ci][co] = (G w[ci][co] G^T)[xi] for one ci, w: [Cin][Cout][3][3] contiguous. g: 9 * Cout floats,
// u: 16 * Cout floats of scratch (the 16 rows are built here and copied out one by one: written in place,
// 16 streams 4 * Cin * Cout bytes apart fall into the same cache sets).
FASTSEG_WINOGRAD_TARGET void transform_weight_row(const float* w, int64_t ci, int64_t cin, int64_t cout,
                                                  float* __restrict__ g, float* __restrict__ u, float* T) {
  const float* src = w + ci * cout * 9;
  for (int64_t co = 0; co < cout; ++co)  // [co][9] -> [9][co]
    for (int k = 0; k < 9; ++k) g[k * cout + co] = src[co * 9 + k];
  for (int b = 0; b < 3; ++b) {  // G g, column b: rows g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2
    const float* g0 = g + b * cout;
    const float* g1 = g0 + 3 * cout;
    const float* g2 = g0 + 6 * cout;
    float* r0 = u + b * cout;  // r[a][b] at u[(4 * a + b) * cout]; column 3 is free scratch until below
    float* r1 = r0 + 4 * cout;
    float* r2 = r0 + 8 * cout;
    float* r3 = r0 + 12 * cout;
    for (int64_t co = 0; co < cout; ++co) {
      r0[co] = g0[co];
      r1[co] = 0.5f * (g0[co] + g1[co] + g2[co]);
      r2[co] = 0.5f * (g0[co] - g1[co] + g2[co]);
      r3[co] = g2[co];
    }
  }
  for (int a = 0; a < 4; ++a) {  // (G g) G^T, row a, in place: columns 0, 1, 2 -> 0, 1, 2, 3
    float* q0 = u + 4 * a * cout;
    float* q1 = q0 + cout;
    float* q2 = q0 + 2 * cout;
    float* q3 = q0 + 3 * cout;
    for (int64_t co = 0; co < cout; ++co) {
      const float v0 = q0[co], v1 = q1[co], v2 = q2[co];
      q1[co] = 0.5f * (v0 + v1 + v2);
      q2[co] = 0.5f * (v0 - v1 + v2);
      q3[co] = v2;
    }
  }
  for (int xi = 0; xi < 16; ++xi) std::copy(u + xi * cout, u + (xi + 1) * cout, T + (xi * cin + ci) * cout);
}

void transform_weight(const at::Tensor& weight, float* tp) {
  const at::Tensor w = weight.contiguous();
  const int64_t cin = w.size(0), cout = w.size(1);
  const float* wp = w.data_ptr<float>();
  at::parallel_for(0, cin, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> g(9 * cout), u(16 * cout);
    for (int64_t ci = begin; ci < end; ++ci) transform_weight_row(wp, ci, cin, cout, g.data(), u.data(), tp);
  });
}

// The transformed weight: the cached one, else transformed into weight_space.
const float* transformed_weight(const at::Tensor& weight, const at::Tensor& cached, at::Tensor& own) {
  if (cached.defined()) return cached.data_ptr<float>();
  float* tp = weight_space(16 * weight.size(0) * weight.size(1), weight.options(), own);
  transform_weight(weight, tp);
  return tp;
}

// The geometry of one 3x3 convolution: input [N][C][H][W], output [N][K][Ho][Wo], zero padding (qh, qw),
// and its 2x2 output tiles, numbered by (image, tile row) = r and tile column j. V and M hold
// tiles_x + 1 columns per tile row: the extra one (j = tiles_x, never read back) makes a tile's input
// patch start at 2 * (tile index) in the even and odd padded rows below, so the transforms run as long
// loops over a whole block instead of short ones per tile row (measured 3-5x faster on 56-wide images);
// it costs 1 / (tiles_x + 1) more GEMM work.
struct Conv3x3 {
  int64_t n, c, h, w, k, ho, wo, qh, qw;
  int64_t tiles_y() const { return (ho + 1) / 2; }
  int64_t tiles_x() const { return (wo + 1) / 2; }
  int64_t stride_x() const { return tiles_x() + 1; }  // columns of V and M per tile row
  int64_t padded_width() const { return 2 * stride_x(); }
};

// dst = a + b or a - b.
FASTSEG_WINOGRAD_TARGET inline void add(float* __restrict__ dst, const float* __restrict__ a,
                                        const float* __restrict__ b, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = a[j] + b[j];
}
FASTSEG_WINOGRAD_TARGET inline void sub(float* __restrict__ dst, const float* __restrict__ a,
                                        const float* __restrict__ b, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = a[j] - b[j];
}

// d B for one row of n 4x4 patches, whose columns are d0..d3: e0 = d0 - d2, e1 = d1 + d2, e2 = d2 - d1,
// e3 = d1 - d3. (Loops take their arrays as restrict parameters: with restrict locals GCC 12 did not
// vectorise them.)
FASTSEG_WINOGRAD_TARGET inline void times_b(float* __restrict__ e0, float* __restrict__ e1, float* __restrict__ e2,
                                            float* __restrict__ e3, const float* __restrict__ d0,
                                            const float* __restrict__ d1, const float* __restrict__ d2,
                                            const float* __restrict__ d3, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    e0[j] = d0[j] - d2[j];
    e1[j] = d1[j] + d2[j];
    e2[j] = d2[j] - d1[j];
    e3[j] = d1[j] - d3[j];
  }
}

// B^T e for n patches, e = d B: row r, column col of e at e + (4 r + col) n, V's row xi at v + xi plane.
FASTSEG_WINOGRAD_TARGET inline void bt_times(float* v, int64_t plane, const float* e, int64_t n) {
  for (int col = 0; col < 4; ++col) {
    const float* e0 = e + col * n;
    const float* e1 = e0 + 4 * n;
    const float* e2 = e0 + 8 * n;
    const float* e3 = e0 + 12 * n;
    sub(v + col * plane, e0, e2, n);
    add(v + (4 + col) * plane, e1, e2, n);
    sub(v + (8 + col) * plane, e2, e1, n);
    sub(v + (12 + col) * plane, e1, e3, n);
  }
}

// A^T M for one column of n tiles: s0 = m0 + m1 + m2, s1 = m1 - m2 - m3.
FASTSEG_WINOGRAD_TARGET inline void times_at(float* __restrict__ s0, float* __restrict__ s1,
                                             const float* __restrict__ m0, const float* __restrict__ m1,
                                             const float* __restrict__ m2, const float* __restrict__ m3, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    s0[j] = m0[j] + m1[j] + m2[j];
    s1[j] = m1[j] - m2[j] - m3[j];
  }
}

// (A^T M) A + bias for one row of n tiles, the tiles' two columns interleaved: y[2 j] = q0 + q1 + q2 + b,
// y[2 j + 1] = q1 - q2 - q3 + b.
FASTSEG_WINOGRAD_TARGET inline void times_a(float* __restrict__ y, const float* __restrict__ q0,
                                            const float* __restrict__ q1, const float* __restrict__ q2,
                                            const float* __restrict__ q3, float b, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    y[2 * j] = q0[j] + q1[j] + q2[j] + b;
    y[2 * j + 1] = q1[j] - q2[j] - q3[j] + b;
  }
}

// The input rows a segment of tile rows reads, zero-padded to padded_width() columns (padded column x is
// input column x - qw): dst row s = input row first + 2 s, for s in [0, rows).
void padded_rows(const float* plane, const Conv3x3& g, int64_t first, int64_t rows, float* dst) {
  const int64_t width = g.padded_width();
  const int64_t x0 = std::min(g.qw, width), x1 = std::min(g.qw + g.w, width);  // columns with input
  for (int64_t s = 0; s < rows; ++s, dst += width) {
    const int64_t iy = first + 2 * s;
    if (iy < 0 || iy >= g.h) {
      std::fill(dst, dst + width, 0.f);
      continue;
    }
    std::fill(dst, dst + x0, 0.f);
    std::copy(plane + iy * g.w, plane + iy * g.w + (x1 - x0), dst + x0);
    std::fill(dst + x1, dst + width, 0.f);
  }
}

// Scratch floats for a segment of up to `rows` tile rows: the even and odd padded rows (with 4 zeros
// after each set, read by the last extra tile) and e.
int64_t input_scratch(const Conv3x3& g, int64_t rows) {
  return 2 * ((rows + 1) * g.padded_width() + 4) + 16 * rows * g.stride_x();
}

// Input transform of channel c over the tile rows [r0, r1) (r = image * tiles_y + tile row):
// V[xi][c][t], t = (r - r0) * stride_x + tile column, V's rows `ld` apart.
FASTSEG_WINOGRAD_TARGET void input_transform(const float* x, const Conv3x3& g, int64_t c, int64_t r0, int64_t r1,
                                             float* V, int64_t ld, float* scratch) {
  const int64_t ty = g.tiles_y(), sx = g.stride_x(), width = g.padded_width(), plane = plane_stride(ld, g.c);
  for (int64_t ra = r0; ra < r1;) {  // one segment per image
    const int64_t img = ra / ty, rb = std::min(r1, (img + 1) * ty), rows = rb - ra, n_t = rows * sx;
    // Tile row s of the segment reads padded rows 2 s .. 2 s + 3 of its image block: even ones are rows
    // s, s + 1 of `even`, odd ones rows s, s + 1 of `odd`; tile (s, j) starts at column 2 j of them, i.e.
    // at 2 (s sx + j) = 2 t.
    float* even = scratch;
    float* odd = even + (rows + 1) * width + 4;
    float* e = odd + (rows + 1) * width + 4;
    const float* plane_x = x + (img * g.c + c) * g.h * g.w;
    const int64_t first = 2 * (ra % ty) - g.qh;
    padded_rows(plane_x, g, first, rows + 1, even);
    padded_rows(plane_x, g, first + 1, rows + 1, odd);
    std::fill(even + (rows + 1) * width, even + (rows + 1) * width + 4, 0.f);
    std::fill(odd + (rows + 1) * width, odd + (rows + 1) * width + 4, 0.f);
    // d B, for each of the patch's 4 rows: e[(4 i + col) * n_t + t].
    for (int i = 0; i < 4; ++i) {
      const float* __restrict__ q = (i % 2 ? odd : even) + (i / 2) * width;
      float* __restrict__ e0 = e + 4 * i * n_t;
      float* __restrict__ e1 = e0 + n_t;
      float* __restrict__ e2 = e1 + n_t;
      float* __restrict__ e3 = e2 + n_t;
      for (int64_t t = 0; t < n_t; ++t) {
        e0[t] = q[2 * t] - q[2 * t + 2];
        e1[t] = q[2 * t + 1] + q[2 * t + 2];
        e2[t] = q[2 * t + 2] - q[2 * t + 1];
        e3[t] = q[2 * t + 1] - q[2 * t + 3];
      }
    }
    bt_times(V + c * ld + (ra - r0) * sx, plane, e, n_t);
    ra = rb;
  }
}

// Scratch floats of the output transform for a segment of up to `rows` tile rows.
int64_t output_scratch(const Conv3x3& g, int64_t rows) { return 12 * rows * g.stride_x(); }

// Output transform of output channel k over the same tile rows: y = A^T M A + bias, ReLU, into out
// [N][K][Ho][Wo].
FASTSEG_WINOGRAD_TARGET void output_transform(const float* M, const Conv3x3& g, int64_t k, int64_t r0, int64_t r1,
                                              int64_t ld, const float* bias, bool relu, float* out, float* scratch) {
  const int64_t ty = g.tiles_y(), sx = g.stride_x(), plane = plane_stride(ld, g.k);
  const float bk = bias ? bias[k] : 0.f;
  for (int64_t ra = r0; ra < r1;) {
    const int64_t img = ra / ty, rb = std::min(r1, (img + 1) * ty), n_t = (rb - ra) * sx;
    float* y0 = scratch;  // output rows 2 s and 2 s + 1 of tile row s at [2 s sx, 2 (s + 1) sx)
    float* y1 = scratch + 2 * n_t;
    float* s = scratch + 4 * n_t;  // A^T M: row i, column col at s[(4 i + col) n_t]
    const float* m = M + k * ld + (ra - r0) * sx;
    for (int col = 0; col < 4; ++col)
      times_at(s + col * n_t, s + (4 + col) * n_t, m + col * plane, m + (4 + col) * plane, m + (8 + col) * plane,
               m + (12 + col) * plane, n_t);
    times_a(y0, s, s + n_t, s + 2 * n_t, s + 3 * n_t, bk, n_t);  // (A^T M) A
    times_a(y1, s + 4 * n_t, s + 5 * n_t, s + 6 * n_t, s + 7 * n_t, bk, n_t);
    if (relu)  // v < 0 is false for NaN: NaN stays NaN
      for (int64_t t = 0; t < 4 * n_t; ++t) scratch[t] = scratch[t] < 0.f ? 0.f : scratch[t];
    for (int64_t r = ra; r < rb; ++r) {
      const int64_t oy = (r % ty) * 2, at = 2 * (r - ra) * sx;
      float* o = out + ((img * g.k + k) * g.ho + oy) * g.wo;
      std::copy(y0 + at, y0 + at + g.wo, o);
      if (oy + 1 < g.ho) std::copy(y1 + at, y1 + at + g.wo, o + g.wo);
    }
    ra = rb;
  }
}

// channels_last: V[xi][t][c] and M[xi][t][k], t = (r - r0) * tiles_x + j, every pixel a run of channels,
// so the transforms are loops over channels.

// Input transform of the tiles [t0, t1) of a block starting at tile row r0. zero: C zeros; e: 16 C floats.
FASTSEG_WINOGRAD_TARGET void input_transform_cl(const float* x, const Conv3x3& g, int64_t r0, int64_t t0, int64_t t1,
                                                float* V, int64_t ld, const float* zero, float* e) {
  const int64_t tx = g.tiles_x(), ty = g.tiles_y(), C = g.c, plane = plane_stride(ld, C);
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t r = r0 + t / tx, j = t % tx, img = r / ty;
    const int64_t y0 = (r % ty) * 2 - g.qh, x0 = 2 * j - g.qw;
    for (int i = 0; i < 4; ++i) {  // d B, row by row: e[(4 i + col) C + c]
      const int64_t iy = y0 + i;
      const float* d[4];
      for (int b = 0; b < 4; ++b) d[b] = pixel_or(x, img, iy, x0 + b, g.h, g.w, C, zero);
      float* ei = e + 4 * i * C;
      times_b(ei, ei + C, ei + 2 * C, ei + 3 * C, d[0], d[1], d[2], d[3], C);
    }
    bt_times(V + t * C, plane, e, C);
  }
}

// Output transform of the tiles [t0, t1): y = A^T M A + bias, ReLU, into out [N][Ho][Wo][K]. s: 8 K floats.
FASTSEG_WINOGRAD_TARGET void output_transform_cl(const float* M, const Conv3x3& g, int64_t r0, int64_t t0, int64_t t1,
                                                 int64_t ld, const float* bias, const float* zero, bool relu,
                                                 float* out, float* s) {
  const int64_t tx = g.tiles_x(), ty = g.tiles_y(), K = g.k, plane = plane_stride(ld, K);
  const float* __restrict__ b = bias ? bias : zero;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t r = r0 + t / tx, j = t % tx, img = r / ty, oy = (r % ty) * 2, ox = 2 * j;
    const float* m = M + t * K;
    for (int col = 0; col < 4; ++col)  // A^T M: s[(4 i + col) K + k]
      times_at(s + col * K, s + (4 + col) * K, m + col * plane, m + (4 + col) * plane, m + (8 + col) * plane,
               m + (12 + col) * plane, K);
    for (int i = 0; i < 2 && oy + i < g.ho; ++i) {  // (A^T M) A
      const float* __restrict__ q0 = s + 4 * i * K;
      const float* __restrict__ q1 = q0 + K;
      const float* __restrict__ q2 = q0 + 2 * K;
      const float* __restrict__ q3 = q0 + 3 * K;
      float* __restrict__ o0 = out + ((img * g.ho + oy + i) * g.wo + ox) * K;
      for (int64_t k = 0; k < K; ++k) {
        const float v = q0[k] + q1[k] + q2[k] + b[k];
        o0[k] = relu && v < 0.f ? 0.f : v;  // v < 0 is false for NaN: NaN stays NaN
      }
      if (ox + 1 < g.wo) {
        float* __restrict__ o1 = o0 + K;
        for (int64_t k = 0; k < K; ++k) {
          const float v = q1[k] - q2[k] - q3[k] + b[k];
          o1[k] = relu && v < 0.f ? 0.f : v;
        }
      }
    }
  }
}

// A block's transformed tiles in workspace slot 0: the input side (V, 16 C ld_max floats), the output side
// (M or D, 16 K ld_max) and a pixel of zeros (channels_last padding, no bias).
struct TileSpace {
  float* in;
  float* out;
  const float* zero;
};
TileSpace tile_space(const Conv3x3& g, int64_t ld_max) {
  float* in = workspace(0, 16 * (plane_stride(ld_max, g.c) + plane_stride(ld_max, g.k)) + std::max(g.c, g.k));
  float* out = in + 16 * plane_stride(ld_max, g.c);
  float* zero = out + 16 * plane_stride(ld_max, g.k);
  std::fill(zero, zero + std::max(g.c, g.k), 0.f);
  return {in, out, zero};
}

// Tile rows per block: V and M (or D) take at most ~24 MB. In the suite's harness (three inputs in turn),
// DeconvNet 256 x 56 x 56 NCHW forward: 6 MB blocks 31.7 ms, 12 MB 28.5 ms, 24 MB 24.5 ms (more tiles per
// GEMM).
int64_t block_rows(const Conv3x3& g, int64_t sx) {
  const int64_t per_tile_row = 16 * (g.c + g.k) * sx * static_cast<int64_t>(sizeof(float));
  return std::clamp<int64_t>((int64_t(24) << 20) / per_tile_row, 1, g.n * g.tiles_y());
}

// out = conv2d(x, kernel, padding (qh, qw)) + bias, ReLU, with the kernel given by the transformed weight
// T [16][C or K][K or C]: rotated = false: kernel[k][c] = T[xi][k][c] (T is [16][K][C]); rotated = true:
// kernel[k][c] is the 180-degree rotation of the 3x3 kernel whose transform is T[xi][c][k] (T is
// [16][C][K]).
void winograd_conv3x3(const at::Tensor& x, const float* tp, bool rotated, const float* bias, bool relu,
                      const Conv3x3& g, bool channels_last, at::Tensor& out) {
  // Tile columns per tile row in V and M: NCHW keeps one extra (see Conv3x3).
  const int64_t sx = channels_last ? g.tiles_x() : g.stride_x(), rows_total = g.n * g.tiles_y();
  // Blocks of tile rows, one after the other, each in three parallel passes: the input transform (by
  // channel in NCHW, by tile in channels_last), the 16 GEMMs by transform index xi (a thread then reads
  // only its share of the transformed weight), the output transform (by output channel, by tile). More
  // tiles per block make the GEMMs faster (70 -> 90 GFLOP/s a core from 49 to 280 columns, 512 channels);
  // block_rows bounds the block's V and M.
  const int64_t block = block_rows(g, sx), ld_max = block * sx;
  const TileSpace space = tile_space(g, ld_max);
  float *vp = space.in, *mp = space.out;
  const float* zero = space.zero;
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  for (int64_t r0 = 0; r0 < rows_total; r0 += block) {
    const int64_t r1 = std::min(rows_total, r0 + block), ld = (r1 - r0) * sx;
    if (channels_last)
      at::parallel_for(0, ld, 8, [&](int64_t begin, int64_t end) {
        std::vector<float> e(16 * g.c);
        input_transform_cl(xp, g, r0, begin, end, vp, ld, zero, e.data());
      });
    else
      at::parallel_for(0, g.c, 1, [&](int64_t begin, int64_t end) {
        std::vector<float> scratch(input_scratch(g, r1 - r0));
        for (int64_t c = begin; c < end; ++c) input_transform(xp, g, c, r0, r1, vp, ld, scratch.data());
      });
    at::parallel_for(0, 16, 1, [&](int64_t begin, int64_t end) {
      for (int64_t xi = begin; xi < end; ++xi) {
        const float* v = vp + xi * plane_stride(ld, g.c);
        float* m = mp + xi * plane_stride(ld, g.k);
        // The kernel's transform: rotated: T[swap(xi)] is [C][K] row-major; else T[xi] is [K][C] row-major.
        const float* u = rotated ? tp + (kSwap[xi / 4] * 4 + kSwap[xi % 4]) * g.c * g.k : tp + xi * g.k * g.c;
        if (channels_last)  // column-major: M[xi]^T (K x ld) = U^T (K x C) V[xi]^T (C x ld)
          sgemm(!rotated, false, g.k, ld, g.c, u, rotated ? g.k : g.c, v, g.c, m, g.k);
        else  // column-major: M[xi]^T (ld x K) = V[xi]^T (ld x C) U (C x K)
          sgemm(false, rotated, ld, g.k, g.c, v, ld, u, rotated ? g.k : g.c, m, ld);
      }
    });
    if (channels_last)
      at::parallel_for(0, ld, 8, [&](int64_t begin, int64_t end) {
        std::vector<float> scratch(8 * g.k);
        output_transform_cl(mp, g, r0, begin, end, ld, bias, zero, relu, op, scratch.data());
      });
    else
      at::parallel_for(0, g.k, 1, [&](int64_t begin, int64_t end) {
        std::vector<float> scratch(output_scratch(g, r1 - r0));
        for (int64_t k = begin; k < end; ++k) output_transform(mp, g, k, r0, r1, ld, bias, relu, op, scratch.data());
      });
  }
}

// The weight gradient is the adjoint of the forward's tile algebra: with M = U . V per tile and
// y = A^T M A, the gradient of U[xi] is sum over tiles of V[xi] D[xi], D = A dY A^T (the output gradient's
// 2x2 tile spread to 4x4, zero outside the output), and that of the 3x3 kernel g is G^T dU G. Again 16
// GEMMs (now summed over the tiles) where a direct sum takes 36 products per tile and channel pair.

// D = A dY A^T from the tile's output gradient y (2x2): by rows u = A y (u0 = y0, u1 = y0 + y1,
// u2 = y0 - y1, u3 = -y1), then by columns the same. dst: the 4 rows of D's row r; a, b: u[r][0], u[r][1].
FASTSEG_WINOGRAD_TARGET inline void spread_row(float* __restrict__ d0, float* __restrict__ d1, float* __restrict__ d2,
                                               float* __restrict__ d3, const float* __restrict__ a,
                                               const float* __restrict__ b, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    d0[j] = a[j];
    d1[j] = a[j] + b[j];
    d2[j] = a[j] - b[j];
    d3[j] = -b[j];
  }
}

// Rows 1-3 of u = A y for n tiles (row 0 is y's row 0), y_i_col: the tiles' output gradient at (i, col);
// u: 6 n floats, u[r][col] at u + (2 (r - 1) + col) n.
FASTSEG_WINOGRAD_TARGET inline void spread_columns(const float* __restrict__ y00, const float* __restrict__ y01,
                                                   const float* __restrict__ y10, const float* __restrict__ y11,
                                                   float* u, int64_t n) {
  float* __restrict__ u10 = u;
  float* __restrict__ u11 = u + n;
  float* __restrict__ u20 = u + 2 * n;
  float* __restrict__ u21 = u + 3 * n;
  float* __restrict__ u30 = u + 4 * n;
  float* __restrict__ u31 = u + 5 * n;
  for (int64_t j = 0; j < n; ++j) {
    u10[j] = y00[j] + y10[j];
    u11[j] = y01[j] + y11[j];
    u20[j] = y00[j] - y10[j];
    u21[j] = y01[j] - y11[j];
    u30[j] = -y10[j];
    u31[j] = -y11[j];
  }
}

// D = A y A^T for n tiles into D's rows d + xi plane: y_i_col, the tiles' output gradient at (i, col);
// u: 6 n floats of scratch.
FASTSEG_WINOGRAD_TARGET void a_y_at(float* d, int64_t plane, const float* y00, const float* y01, const float* y10,
                                    const float* y11, float* u, int64_t n) {
  spread_columns(y00, y01, y10, y11, u, n);
  const float* rows_u[4][2] = {{y00, y01}, {u, u + n}, {u + 2 * n, u + 3 * n}, {u + 4 * n, u + 5 * n}};
  for (int r = 0; r < 4; ++r)
    spread_row(d + 4 * r * plane, d + (4 * r + 1) * plane, d + (4 * r + 2) * plane, d + (4 * r + 3) * plane,
               rows_u[r][0], rows_u[r][1], n);
}

// Scratch floats of grad_output_transform for a segment of up to `rows` tile rows.
int64_t grad_output_scratch(const Conv3x3& g, int64_t rows) {
  return 2 * rows * g.padded_width() + 10 * rows * g.stride_x();
}

// NCHW: D[xi][k][t] for output channel k over the tile rows [r0, r1), t as in V (the extra column reads
// padding, so its D is zero and it adds nothing).
FASTSEG_WINOGRAD_TARGET void grad_output_transform(const float* gy, const Conv3x3& g, int64_t k, int64_t r0,
                                                   int64_t r1, float* D, int64_t ld, float* scratch) {
  const int64_t ty = g.tiles_y(), sx = g.stride_x(), width = g.padded_width(), plane = plane_stride(ld, g.k);
  for (int64_t ra = r0; ra < r1;) {
    const int64_t img = ra / ty, rb = std::min(r1, (img + 1) * ty), rows = rb - ra, n_t = rows * sx;
    // q_i: output row 2 s + i of tile row s at [s width, (s + 1) width), zero past the output.
    float* q = scratch;
    float* y = q + 2 * rows * width;  // the tiles' 4 values, then u
    float* u = y + 4 * n_t;
    const float* plane_y = gy + (img * g.k + k) * g.ho * g.wo;
    for (int i = 0; i < 2; ++i)
      for (int64_t s = 0; s < rows; ++s) {
        float* row = q + (i * rows + s) * width;
        const int64_t oy = 2 * ((ra % ty) + s) + i;
        const int64_t valid = oy < g.ho ? g.wo : 0;
        std::copy(plane_y + oy * g.wo, plane_y + oy * g.wo + valid, row);
        std::fill(row + valid, row + width, 0.f);
      }
    for (int i = 0; i < 2; ++i) {  // deinterleave: y[(2 i + col) n_t + t]
      const float* __restrict__ src = q + i * rows * width;
      float* __restrict__ a = y + 2 * i * n_t;
      float* __restrict__ b = a + n_t;
      for (int64_t t = 0; t < n_t; ++t) {
        a[t] = src[2 * t];
        b[t] = src[2 * t + 1];
      }
    }
    a_y_at(D + k * ld + (ra - r0) * sx, plane, y, y + n_t, y + 2 * n_t, y + 3 * n_t, u, n_t);
    ra = rb;
  }
}

// channels_last: D[xi][t][k] for the tiles [t0, t1) of a block starting at tile row r0. y: 4 K floats of
// scratch, u: 6 K.
FASTSEG_WINOGRAD_TARGET void grad_output_transform_cl(const float* gy, const Conv3x3& g, int64_t r0, int64_t t0,
                                                      int64_t t1, float* D, int64_t ld, const float* zero,
                                                      float* scratch) {
  const int64_t tx = g.tiles_x(), ty = g.tiles_y(), K = g.k, plane = plane_stride(ld, K);
  float* u = scratch;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t r = r0 + t / tx, j = t % tx, img = r / ty, oy = (r % ty) * 2, ox = 2 * j;
    const float* y[4];  // (i, col) -> y[2 i + col]
    for (int i = 0; i < 2; ++i)
      for (int col = 0; col < 2; ++col)
        y[2 * i + col] = pixel_or(gy, img, oy + i, ox + col, g.ho, g.wo, K, zero);
    a_y_at(D + t * K, plane, y[0], y[1], y[2], y[3], u, K);
  }
}

// dW[ci][co] = rot180(G^T dU[.][ci][co] G) = G^T dU' G, dU' = dU at the rotated index (see the top).
FASTSEG_WINOGRAD_TARGET void untransform_weight_row(const float* dU, int64_t ci, int64_t cin, int64_t cout,
                                                    float* __restrict__ z, float* dw) {
  // z[(3 a + c) cout + co] = sum_r G[r][a] dU'[r][c]  (G^T dU', 3 x 4)
  for (int c = 0; c < 4; ++c) {
    const float* x0 = dU + ((kSwap[0] * 4 + kSwap[c]) * cin + ci) * cout;
    const float* x1 = dU + ((kSwap[1] * 4 + kSwap[c]) * cin + ci) * cout;
    const float* x2 = dU + ((kSwap[2] * 4 + kSwap[c]) * cin + ci) * cout;
    const float* x3 = dU + ((kSwap[3] * 4 + kSwap[c]) * cin + ci) * cout;
    float* z0 = z + c * cout;
    float* z1 = z + (4 + c) * cout;
    float* z2 = z + (8 + c) * cout;
    for (int64_t co = 0; co < cout; ++co) {
      z0[co] = x0[co] + 0.5f * (x1[co] + x2[co]);
      z1[co] = 0.5f * (x1[co] - x2[co]);
      z2[co] = 0.5f * (x1[co] + x2[co]) + x3[co];
    }
  }
  float* out = dw + ci * cout * 9;
  for (int a = 0; a < 3; ++a) {  // (G^T dU') G
    const float* q0 = z + 4 * a * cout;
    const float* q1 = q0 + cout;
    const float* q2 = q0 + 2 * cout;
    const float* q3 = q0 + 3 * cout;
    for (int64_t co = 0; co < cout; ++co) {
      out[co * 9 + 3 * a] = q0[co] + 0.5f * (q1[co] + q2[co]);
      out[co * 9 + 3 * a + 1] = 0.5f * (q1[co] - q2[co]);
      out[co * 9 + 3 * a + 2] = 0.5f * (q1[co] + q2[co]) + q3[co];
    }
  }
}

// The weight gradient of the transposed convolution whose forward is conv2d(x, K) with geometry g
// (K = rot180(W^T)): dW [C][K][3][3].
void winograd_grad_weight3x3(const at::Tensor& x, const at::Tensor& gy, const Conv3x3& g, bool channels_last,
                             at::Tensor& dw) {
  const int64_t sx = channels_last ? g.tiles_x() : g.stride_x(), rows_total = g.n * g.tiles_y();
  const int64_t block = block_rows(g, sx), ld_max = block * sx;
  const TileSpace space = tile_space(g, ld_max);
  float *vp = space.in, *dp = space.out;
  const float* zero = space.zero;
  at::Tensor own;
  float* up = weight_space(16 * g.c * g.k, x.options(), own);  // dU[xi][c][k]
  const float* xp = x.data_ptr<float>();
  const float* yp = gy.data_ptr<float>();
  for (int64_t r0 = 0; r0 < rows_total; r0 += block) {
    const int64_t r1 = std::min(rows_total, r0 + block), ld = (r1 - r0) * sx;
    if (channels_last) {
      at::parallel_for(0, ld, 8, [&](int64_t begin, int64_t end) {
        std::vector<float> scratch(16 * std::max(g.c, g.k));
        input_transform_cl(xp, g, r0, begin, end, vp, ld, zero, scratch.data());
        grad_output_transform_cl(yp, g, r0, begin, end, dp, ld, zero, scratch.data());
      });
    } else {
      at::parallel_for(0, g.c + g.k, 1, [&](int64_t begin, int64_t end) {
        std::vector<float> scratch(std::max(input_scratch(g, r1 - r0), grad_output_scratch(g, r1 - r0)));
        for (int64_t i = begin; i < end; ++i) {
          if (i < g.c)
            input_transform(xp, g, i, r0, r1, vp, ld, scratch.data());
          else
            grad_output_transform(yp, g, i - g.c, r0, r1, dp, ld, scratch.data());
        }
      });
    }
    const float beta = r0 == 0 ? 0.f : 1.f;  // the first block writes dU, the others add to it
    at::parallel_for(0, 16, 1, [&](int64_t begin, int64_t end) {
      for (int64_t xi = begin; xi < end; ++xi) {
        const float* v = vp + xi * plane_stride(ld, g.c);
        const float* d = dp + xi * plane_stride(ld, g.k);
        float* u = up + xi * g.c * g.k;  // column-major: dU[xi]^T (K x C) += D (K x ld) V^T (ld x C)
        if (channels_last)  // D: column-major K x ld; V: column-major C x ld
          sgemm(false, true, g.k, g.c, ld, d, g.k, v, g.c, u, g.k, beta);
        else  // D: column-major ld x K; V: column-major ld x C
          sgemm(true, false, g.k, g.c, ld, d, ld, v, ld, u, g.k, beta);
      }
    });
  }
  float* dwp = dw.data_ptr<float>();
  at::parallel_for(0, g.c, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> z(12 * g.k);
    for (int64_t ci = begin; ci < end; ++ci) untransform_weight_row(up, ci, g.c, g.k, z.data(), dwp);
  });
}

// The plain convolution the transposed one is: conv2d(x, rot180(W^T), padding 2 - p).
Conv3x3 forward_geometry(const ConvT2dParams& p) {
  return {p.n, p.cin, p.h, p.w, p.cout, p.ho, p.wo, 2 - p.ph, 2 - p.pw};
}

}  // namespace

bool winograd_conv_transpose2d_fits(const at::Tensor& input, const ConvT2dParams& p) {
  return winograd::available() && input.scalar_type() == at::kFloat && p.kh == 3 && p.kw == 3 && p.sh == 1 &&
         p.sw == 1 && p.dh == 1 && p.dw == 1 && p.groups == 1 && p.ph <= 2 && p.pw <= 2 && p.oph == 0 && p.opw == 0;
}

at::Tensor winograd_conv_transpose2d_weight(const at::Tensor& weight) {
  at::Tensor T = at::empty({16, weight.size(0), weight.size(1)}, weight.options());
  transform_weight(weight, T.data_ptr<float>());
  return T;
}

at::Tensor winograd_conv_transpose2d_forward(const at::Tensor& input, const at::Tensor& weight,
                                             const at::Tensor& transformed,
                                             const at::Tensor& bias, const ConvT2dParams& p, bool relu,
                                             at::MemoryFormat fmt) {
  const at::Tensor x = input.contiguous(fmt);
  at::Tensor out = at::empty({p.n, p.cout, p.ho, p.wo}, input.options().memory_format(fmt));
  const Conv3x3 g = forward_geometry(p);
  at::Tensor own;
  const float* tp = transformed_weight(weight, transformed, own);
  winograd_conv3x3(x, tp, /*rotated=*/true, bias.defined() ? bias.data_ptr<float>() : nullptr, relu, g,
                   fmt == at::MemoryFormat::ChannelsLast, out);
  return out;
}

at::Tensor winograd_conv_transpose2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                                const at::Tensor& transformed,
                                                const ConvT2dParams& p, at::MemoryFormat fmt) {
  const at::Tensor gy = grad_output.contiguous(fmt);
  at::Tensor grad_input = at::empty({p.n, p.cin, p.h, p.w}, grad_output.options().memory_format(fmt));
  const Conv3x3 g{p.n, p.cout, p.ho, p.wo, p.cin, p.h, p.w, p.ph, p.pw};
  at::Tensor own;
  const float* tp = transformed_weight(weight, transformed, own);
  winograd_conv3x3(gy, tp, /*rotated=*/false, nullptr, false, g, fmt == at::MemoryFormat::ChannelsLast,
                   grad_input);
  return grad_input;
}

at::Tensor winograd_conv_transpose2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                                 const ConvT2dParams& p, at::MemoryFormat fmt) {
  const at::Tensor x = input.contiguous(fmt), gy = grad_output.contiguous(fmt);
  at::Tensor dw = at::empty({p.cin, p.cout, 3, 3}, input.options());
  const Conv3x3 g = forward_geometry(p);
  winograd_grad_weight3x3(x, gy, g, fmt == at::MemoryFormat::ChannelsLast, dw);
  return dw;
}

}  // namespace fastseg
