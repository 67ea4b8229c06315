// CPU fp32 kernel-4 stride-2 transposed convolution (the Stacked Hourglass' k4 s2 p1 upsampling) by
// Winograd's minimal filtering F(2x2, 2x2) on each sub-pixel phase: forward, input gradient and weight
// gradient.
//
// Output row oy = 2 iy - p + ky. The output rows of one parity r (oy = 2 m + r, a "phase") receive only the
// two taps ky = k0 + 2 a, k0 = (r + p) % 2, a in {0, 1}, from input rows iy = m + c - a, c = (r + p - k0) / 2.
// So each phase is a 2-tap correlation of the input,
//     y_r[m] = x[m + c - 1] g[0] + x[m + c] g[1],        g = (w[k0 + 2], w[k0]),
// and in 2-D each of the 4 phases (ry, rx) is a 2x2 convolution of the input with its own taps. F(2x2, 2x2)
// computes 2x2 outputs of one from a 3x3 input patch d with 9 products per channel pair where the direct
// sum takes 16:
//     V = B^T d B,   U = G g G^T,   y = A^T (sum_c U V) A,
//     B^T = [1 -1 0; 0 1 0; 0 -1 1],  G = [1 0; 1 1; 0 1],  A^T = [1 1 0; 0 1 1].
// Every coefficient is 0 or +-1: no rounding besides that of the sums themselves.
// The input gradient runs the same phases backwards: grad_x[iy] = sum_r sum_a gy[2 (iy - c + a) + r] g'[a]
// with g' = (w[k0], w[k0 + 2]), g reversed, whose transform is U at the index rotated by 180 degrees; the
// sum over the 4 phases and the output channels is one GEMM reduction. The weight gradient is the adjoint
// of the forward's tile algebra (as in conv_transpose2d_winograd.cpp): dU = sum over tiles V (A gy A^T),
// dg = G^T dU G.
//
// All three run in channels_last, where a pixel is a run of channels and every transform a loop over
// channels; NCHW tensors are copied in and out (benchmarks/notes/conv_transpose2d.md, section 24).
// Tiles are 2x2 outputs of one phase; tile t of a block covers the 4 phases' tiles at the same place.
// Transformed tiles: V[phase][xi][t][channel], phase = 2 ry + rx, xi = 3 * row + column of the 3x3 transform.
// The transformed weight: T[q][xi][ci][co], q = 2 k0y + k0x (which taps; the phase depends on the padding).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "conv_transpose2d.h"
#include "winograd_gemm.h"

namespace fastseg {
namespace {

using winograd::pixel_or;
using winograd::plane_stride;
using winograd::sgemm;

// The first tap k0 and the input shift c of phase r in a dimension padded by p (see the top).
inline int64_t tap0(int64_t r, int64_t p) { return (r + p) & 1; }
inline int64_t shift(int64_t r, int64_t p) { return (r + p - tap0(r, p)) / 2; }

// Which taps (q = 2 k0y + k0x) phase ph = 2 ry + rx uses.
inline int64_t taps_of(int64_t ph, int64_t py, int64_t px) { return 2 * tap0(ph / 2, py) + tap0(ph % 2, px); }

struct Geometry {
  int64_t n, c, k, h, w, ho, wo, py, px;
  // Tiles of the forward and the weight gradient: 2x2 outputs of each phase (the phase of parity 0 has the
  // most rows).
  int64_t out_tiles_y() const { return (ho + 3) / 4; }
  int64_t out_tiles_x() const { return (wo + 3) / 4; }
  // Tiles of the input gradient: 2x2 input pixels.
  int64_t in_tiles_y() const { return (h + 1) / 2; }
  int64_t in_tiles_x() const { return (w + 1) / 2; }
};

// The loops below read and write runs of n channels through arrays of pointers (the pixels of a patch, the
// 9 planes of a transform); no two of them overlap, which `ivdep` tells the vectoriser.

// v[xi] = (B^T d B)[xi] for one 3x3 patch: d[3 a + b] its pixels, runs of n floats. Rows e0 = d0 - d1,
// e1 = d1, e2 = d2 - d1, then the same on the columns.
FASTSEG_WINOGRAD_TARGET void transform_patch(const float* const* d, float* const* v, int64_t n) {
  const float *d0 = d[0], *d1 = d[1], *d2 = d[2], *d3 = d[3], *d4 = d[4], *d5 = d[5], *d6 = d[6], *d7 = d[7],
              *d8 = d[8];
  float *v0 = v[0], *v1 = v[1], *v2 = v[2], *v3 = v[3], *v4 = v[4], *v5 = v[5], *v6 = v[6], *v7 = v[7], *v8 = v[8];
#pragma GCC ivdep
  for (int64_t j = 0; j < n; ++j) {
    const float e0 = d0[j] - d3[j], e1 = d1[j] - d4[j], e2 = d2[j] - d5[j];
    const float e3 = d3[j], e4 = d4[j], e5 = d5[j];
    const float e6 = d6[j] - d3[j], e7 = d7[j] - d4[j], e8 = d8[j] - d5[j];
    v0[j] = e0 - e1;
    v1[j] = e1;
    v2[j] = e2 - e1;
    v3[j] = e3 - e4;
    v4[j] = e4;
    v5[j] = e5 - e4;
    v6[j] = e6 - e7;
    v7[j] = e7;
    v8[j] = e8 - e7;
  }
}

// y[2 a + b] = (A^T m A)[a][b] + bias, ReLU, for one tile: m[xi] its 9 transformed runs of n floats, y the
// tile's 4 pixels. Rows s0 = m0 + m1, s1 = m1 + m2, then the same on the columns.
FASTSEG_WINOGRAD_TARGET void untransform_tile(const float* const* m, const float* bias, bool relu, float* const* y,
                                              int64_t n) {
  const float *m0 = m[0], *m1 = m[1], *m2 = m[2], *m3 = m[3], *m4 = m[4], *m5 = m[5], *m6 = m[6], *m7 = m[7],
              *m8 = m[8];
  float *y0 = y[0], *y1 = y[1], *y2 = y[2], *y3 = y[3];
  const float lo = relu ? 0.f : -std::numeric_limits<float>::infinity();
#pragma GCC ivdep
  for (int64_t j = 0; j < n; ++j) {
    const float s0 = m0[j] + m3[j], s1 = m1[j] + m4[j], s2 = m2[j] + m5[j];
    const float s3 = m3[j] + m6[j], s4 = m4[j] + m7[j], s5 = m5[j] + m8[j];
    const float bj = bias[j];
    // max(lo, v) written as a comparison that keeps NaN (v < lo is false for NaN)
    const float a = s0 + s1 + bj, b = s1 + s2 + bj, c = s3 + s4 + bj, e = s4 + s5 + bj;
    y0[j] = a < lo ? lo : a;
    y1[j] = b < lo ? lo : b;
    y2[j] = c < lo ? lo : c;
    y3[j] = e < lo ? lo : e;
  }
}

// D[xi] = (A y A^T)[xi] for one tile's output gradient y[2 a + b] (2x2): rows u0 = y0, u1 = y0 + y1,
// u2 = y1, then the same on the columns.
FASTSEG_WINOGRAD_TARGET void spread_tile(const float* const* y, float* const* D, int64_t n) {
  const float *y00 = y[0], *y01 = y[1], *y10 = y[2], *y11 = y[3];
  float *D0 = D[0], *D1 = D[1], *D2 = D[2], *D3 = D[3], *D4 = D[4], *D5 = D[5], *D6 = D[6], *D7 = D[7], *D8 = D[8];
#pragma GCC ivdep
  for (int64_t j = 0; j < n; ++j) {
    const float u10 = y00[j] + y10[j], u11 = y01[j] + y11[j];
    D0[j] = y00[j];
    D1[j] = y00[j] + y01[j];
    D2[j] = y01[j];
    D3[j] = u10;
    D4[j] = u10 + u11;
    D5[j] = u11;
    D6[j] = y10[j];
    D7[j] = y10[j] + y11[j];
    D8[j] = y11[j];
  }
}

// The 9 planes of a transformed tile: base + xi * plane.
struct Planes {
  float* p[9];
  Planes(float* base, int64_t plane) {
    for (int xi = 0; xi < 9; ++xi) p[xi] = base + xi * plane;
  }
};

// T[q][xi][ci][co] = (G g G^T)[xi], g[a][b] = w[ci][co][k0y + 2 (1 - a)][k0x + 2 (1 - b)], q = 2 k0y + k0x.
void transform_weight(const at::Tensor& weight, float* tp) {
  const at::Tensor w = weight.contiguous();
  const int64_t cin = w.size(0), cout = w.size(1);
  const float* wp = w.data_ptr<float>();
  at::parallel_for(0, cin, 4, [&](int64_t begin, int64_t end) {
    for (int64_t ci = begin; ci < end; ++ci)
      for (int q = 0; q < 4; ++q) {
        const int k0y = q / 2, k0x = q % 2;
        float* t = tp + (q * 9 * cin + ci) * cout;  // + xi * cin * cout + co
        for (int64_t co = 0; co < cout; ++co) {
          const float* src = wp + (ci * cout + co) * 16;
          float g[2][2];
          for (int a = 0; a < 2; ++a)
            for (int b = 0; b < 2; ++b) g[a][b] = src[(k0y + 2 * (1 - a)) * 4 + k0x + 2 * (1 - b)];
          const float r[3][2] = {{g[0][0], g[0][1]}, {g[0][0] + g[1][0], g[0][1] + g[1][1]}, {g[1][0], g[1][1]}};
          for (int a = 0; a < 3; ++a) {
            t[(3 * a) * cin * cout + co] = r[a][0];
            t[(3 * a + 1) * cin * cout + co] = r[a][0] + r[a][1];
            t[(3 * a + 2) * cin * cout + co] = r[a][1];
          }
        }
      }
  });
}

// dW[ci][co][k0y + 2 (1 - a)][k0x + 2 (1 - b)] = (G^T dT[q] G)[a][b], the adjoint of transform_weight.
void untransform_weight(const float* dT, int64_t cin, int64_t cout, float* dwp) {
  at::parallel_for(0, cin, 4, [&](int64_t begin, int64_t end) {
    for (int64_t ci = begin; ci < end; ++ci)
      for (int q = 0; q < 4; ++q) {
        const int k0y = q / 2, k0x = q % 2;
        const float* t = dT + (q * 9 * cin + ci) * cout;
        for (int64_t co = 0; co < cout; ++co) {
          float u[9];
          for (int xi = 0; xi < 9; ++xi) u[xi] = t[xi * cin * cout + co];
          float* dst = dwp + (ci * cout + co) * 16;
          for (int a = 0; a < 2; ++a) {
            const float z0 = u[3 * a] + u[3 * (a + 1)], z1 = u[3 * a + 1] + u[3 * (a + 1) + 1],
                        z2 = u[3 * a + 2] + u[3 * (a + 1) + 2];
            dst[(k0y + 2 * (1 - a)) * 4 + k0x + 2] = z0 + z1;
            dst[(k0y + 2 * (1 - a)) * 4 + k0x] = z1 + z2;
          }
        }
      }
  });
}

// The forward's input transform of the block's tiles [t0, t1) (tile t at tile row r0 + t / tiles_x,
// column t % tiles_x), all 4 phases: V[ph][xi][t][c], planes `plane` floats apart. x: [N][H][W][C];
// zero: C zeros.
FASTSEG_WINOGRAD_TARGET void input_transform(const float* x, const Geometry& g, int64_t r0, int64_t t0, int64_t t1,
                                             float* V, int64_t plane, const float* zero) {
  const int64_t tx = g.out_tiles_x(), ty = g.out_tiles_y(), C = g.c;
  for (int ph = 0; ph < 4; ++ph)  // phase by phase: 9 planes written at a time, not 36
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r = r0 + t / tx, img = r / ty, i = r % ty, j = t % tx;
      const int64_t sy = 2 * i + shift(ph / 2, g.py) - 1, sx = 2 * j + shift(ph % 2, g.px) - 1;
      const float* d[9];
      for (int a = 0; a < 3; ++a)
        for (int b = 0; b < 3; ++b) {
          const int64_t iy = sy + a, ix = sx + b;
          d[3 * a + b] = pixel_or(x, img, iy, ix, g.h, g.w, C, zero);
        }
      transform_patch(d, Planes(V + ph * 9 * plane + t * C, plane).p, C);
    }
}

// The forward's output transform of the tiles [t0, t1): out[N][Ho][Wo][K] = A^T M A + bias, ReLU.
// bias: K floats (zeros without one); s: 4 K floats of scratch (the pixels past the output).
FASTSEG_WINOGRAD_TARGET void output_transform(const float* M, const Geometry& g, int64_t r0, int64_t t0, int64_t t1,
                                              int64_t plane, const float* bias, bool relu, float* out, float* s) {
  const int64_t tx = g.out_tiles_x(), ty = g.out_tiles_y(), K = g.k;
  for (int ph = 0; ph < 4; ++ph)  // phase by phase: 9 planes written at a time, not 36
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r = r0 + t / tx, img = r / ty, i = r % ty, j = t % tx;
      float* y[4];
      for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b) {
          const int64_t oy = 2 * (2 * i + a) + ph / 2, ox = 2 * (2 * j + b) + ph % 2;
          y[2 * a + b] = pixel_or(out, img, oy, ox, g.ho, g.wo, K, s + (2 * a + b) * K);
        }
      untransform_tile(Planes(const_cast<float*>(M) + ph * 9 * plane + t * K, plane).p, bias, relu, y, K);
    }
}

// The input gradient's transform of grad_output for the input tiles [t0, t1) (2x2 input pixels): per phase,
// the 3x3 patch gy[2 (2 i - c + a) + ry][2 (2 j - c' + b) + rx]: V[ph][xi][t][k]. zero: K zeros.
FASTSEG_WINOGRAD_TARGET void grad_output_transform(const float* gy, const Geometry& g, int64_t r0, int64_t t0,
                                                   int64_t t1, float* V, int64_t plane, const float* zero) {
  const int64_t tx = g.in_tiles_x(), ty = g.in_tiles_y(), K = g.k;
  for (int ph = 0; ph < 4; ++ph)  // phase by phase: 9 planes written at a time, not 36
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r = r0 + t / tx, img = r / ty, i = r % ty, j = t % tx;
      const int64_t ry = ph / 2, rx = ph % 2;
      const int64_t my = 2 * i - shift(ry, g.py), mx = 2 * j - shift(rx, g.px);
      const float* d[9];
      for (int a = 0; a < 3; ++a)
        for (int b = 0; b < 3; ++b) {
          const int64_t oy = 2 * (my + a) + ry, ox = 2 * (mx + b) + rx;
          d[3 * a + b] = pixel_or(gy, img, oy, ox, g.ho, g.wo, K, zero);
        }
      transform_patch(d, Planes(V + ph * 9 * plane + t * K, plane).p, K);
    }
}

// The input gradient's output transform: grad_x[N][H][W][C] = A^T M A of M[xi][t][c]. zero: C zeros;
// s: 4 C floats of scratch.
FASTSEG_WINOGRAD_TARGET void grad_input_transform(const float* M, const Geometry& g, int64_t r0, int64_t t0,
                                                  int64_t t1, int64_t plane, const float* zero, float* gx, float* s) {
  const int64_t tx = g.in_tiles_x(), ty = g.in_tiles_y(), C = g.c;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t r = r0 + t / tx, img = r / ty, i = r % ty, j = t % tx;
    float* y[4];
    for (int a = 0; a < 2; ++a)
      for (int b = 0; b < 2; ++b) {
        const int64_t iy = 2 * i + a, ix = 2 * j + b;
        y[2 * a + b] = pixel_or(gx, img, iy, ix, g.h, g.w, C, s + (2 * a + b) * C);
      }
    untransform_tile(Planes(const_cast<float*>(M) + t * C, plane).p, zero, false, y, C);
  }
}

// The weight gradient's transform of grad_output on the forward's tiles: D[ph][xi][t][k] = A y A^T, y the
// tile's 2x2 output gradient (zero outside the output). zero: K zeros.
FASTSEG_WINOGRAD_TARGET void spread_transform(const float* gy, const Geometry& g, int64_t r0, int64_t t0, int64_t t1,
                                              float* D, int64_t plane, const float* zero) {
  const int64_t tx = g.out_tiles_x(), ty = g.out_tiles_y(), K = g.k;
  for (int ph = 0; ph < 4; ++ph)  // phase by phase: 9 planes written at a time, not 36
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r = r0 + t / tx, img = r / ty, i = r % ty, j = t % tx;
      const float* y[4];
      for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b) {
          const int64_t oy = 2 * (2 * i + a) + ph / 2, ox = 2 * (2 * j + b) + ph % 2;
          y[2 * a + b] = pixel_or(gy, img, oy, ox, g.ho, g.wo, K, zero);
        }
      spread_tile(y, Planes(D + ph * 9 * plane + t * K, plane).p, K);
    }
}

Geometry geometry(const ConvT2dParams& p) { return {p.n, p.cin, p.cout, p.h, p.w, p.ho, p.wo, p.ph, p.pw}; }

// The transformed weight: the cached one, else transformed into workspace slot 1 (or `own`).
const float* transformed_weight(const at::Tensor& weight, const at::Tensor& cached, at::Tensor& own) {
  if (cached.defined()) return cached.data_ptr<float>();
  float* tp = winograd::weight_space(36 * weight.size(0) * weight.size(1), weight.options(), own);
  transform_weight(weight, tp);
  return tp;
}

// Runs fn(begin, end, scratch) over the tiles [0, n) on the intra-op threads, with `scratch` floats of
// per-chunk scratch.
template <typename Fn>
void parallel_tiles(int64_t n, int64_t scratch, const Fn& fn) {
  at::parallel_for(0, n, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> s(scratch);
    fn(begin, end, s.data());
  });
}

// The blocks of tile rows a pass runs one after the other (rows_total rows of tiles_x tiles, spread evenly
// over the blocks), such that a block's transformed tiles, in_planes planes of in_c channels a tile and
// out_planes planes of out_c, take at most ~24 MB; and their space in workspace slot 0, followed by a run of
// zeros (the padding's pixels, the missing bias).
struct Blocks {
  int64_t tiles_x, rows_total, rows;
  float* in;
  float* out;
  const float* zero;
  // The tiles of the block that starts at tile row r0.
  int64_t tiles(int64_t r0) const { return (std::min(rows_total, r0 + rows) - r0) * tiles_x; }
};
Blocks make_blocks(int64_t rows_total, int64_t tiles_x, int64_t in_planes, int64_t in_c, int64_t out_planes,
                   int64_t out_c) {
  const int64_t per_row = (in_planes * in_c + out_planes * out_c) * tiles_x * static_cast<int64_t>(sizeof(float));
  const int64_t most = std::clamp<int64_t>((int64_t(24) << 20) / per_row, 1, rows_total);
  const int64_t count = (rows_total + most - 1) / most, rows = (rows_total + count - 1) / count;
  const int64_t in = in_planes * plane_stride(rows * tiles_x, in_c);
  const int64_t out = out_planes * plane_stride(rows * tiles_x, out_c);
  const int64_t zeros = std::max(in_c, out_c);
  float* p = winograd::workspace(0, in + out + zeros);
  std::fill(p + in + out, p + in + out + zeros, 0.f);
  return {tiles_x, rows_total, rows, p, p + in, p + in + out};
}

}  // namespace

bool winograd_k4s2_conv_transpose2d_fits(const at::Tensor& input, const ConvT2dParams& p) {
  return winograd::available() && input.scalar_type() == at::kFloat && p.kh == 4 && p.kw == 4 && p.sh == 2 &&
         p.sw == 2 && p.dh == 1 && p.dw == 1 && p.groups == 1;
}

at::Tensor winograd_k4s2_conv_transpose2d_weight(const at::Tensor& weight) {
  at::Tensor T = at::empty({36, weight.size(0), weight.size(1)}, weight.options());
  transform_weight(weight, T.data_ptr<float>());
  return T;
}

at::Tensor winograd_k4s2_conv_transpose2d_forward(const at::Tensor& input, const at::Tensor& weight,
                                                  const at::Tensor& transformed, const at::Tensor& bias,
                                                  const ConvT2dParams& p, bool relu) {
  const at::MemoryFormat cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor x = input.contiguous(cl);
  at::Tensor out = at::empty({p.n, p.cout, p.ho, p.wo}, input.options().memory_format(cl));
  const Geometry g = geometry(p);
  at::Tensor own;
  const float* tp = transformed_weight(weight, transformed, own);
  const Blocks blocks = make_blocks(g.n * g.out_tiles_y(), g.out_tiles_x(), 36, g.c, 36, g.k);
  float *vp = blocks.in, *mp = blocks.out;
  const float* xp = x.data_ptr<float>();
  const float* bp = bias.defined() ? bias.data_ptr<float>() : blocks.zero;
  float* op = out.data_ptr<float>();
  for (int64_t r0 = 0; r0 < blocks.rows_total; r0 += blocks.rows) {
    const int64_t ld = blocks.tiles(r0);
    const int64_t vplane = plane_stride(ld, g.c), mplane = plane_stride(ld, g.k);
    parallel_tiles(ld, 0, [&](int64_t t0, int64_t t1, float*) {
      input_transform(xp, g, r0, t0, t1, vp, vplane, blocks.zero);
    });
    // 36 GEMMs, one per phase and transform index: column-major M[ph][xi] (K x ld) = U (K x C) V (C x ld),
    // U = T[taps][xi] read as [C][K] row-major.
    at::parallel_for(0, 36, 1, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) {
        const int64_t ph = e / 9, xi = e % 9;
        const float* u = tp + (taps_of(ph, g.py, g.px) * 9 + xi) * g.c * g.k;
        sgemm(false, false, g.k, ld, g.c, u, g.k, vp + e * vplane, g.c, mp + e * mplane, g.k);
      }
    });
    parallel_tiles(ld, 4 * g.k, [&](int64_t t0, int64_t t1, float* s) {
      output_transform(mp, g, r0, t0, t1, mplane, bp, relu, op, s);
    });
  }
  return out;
}

at::Tensor winograd_k4s2_conv_transpose2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                                     const at::Tensor& transformed, const ConvT2dParams& p) {
  const at::MemoryFormat cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor gy = grad_output.contiguous(cl);
  at::Tensor grad_input = at::empty({p.n, p.cin, p.h, p.w}, grad_output.options().memory_format(cl));
  const Geometry g = geometry(p);
  at::Tensor own;
  const float* tp = transformed_weight(weight, transformed, own);
  const Blocks blocks = make_blocks(g.n * g.in_tiles_y(), g.in_tiles_x(), 36, g.k, 9, g.c);
  float *vp = blocks.in, *mp = blocks.out;
  const float* yp = gy.data_ptr<float>();
  float* gp = grad_input.data_ptr<float>();
  for (int64_t r0 = 0; r0 < blocks.rows_total; r0 += blocks.rows) {
    const int64_t ld = blocks.tiles(r0), half = (ld + 1) / 2;
    const int64_t vplane = plane_stride(ld, g.k), mplane = plane_stride(ld, g.c);
    parallel_tiles(ld, 0, [&](int64_t t0, int64_t t1, float*) {
      grad_output_transform(yp, g, r0, t0, t1, vp, vplane, blocks.zero);
    });
    // Per transform index, the sum over the 4 phases (4 GEMMs into one M), split in two halves of the tiles:
    // column-major M[xi] (C x n) += U' (C x K) V[ph][xi] (K x n), U' = T[taps][8 - xi] ([C][K] row-major,
    // the transposed operand), 8 - xi the index rotated by 180 degrees.
    at::parallel_for(0, 18, 1, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) {
        const int64_t xi = e / 2, first = (e % 2) * half, n = std::min(ld, first + half) - first;
        if (n <= 0) continue;
        for (int64_t ph = 0; ph < 4; ++ph) {
          const float* u = tp + (taps_of(ph, g.py, g.px) * 9 + 8 - xi) * g.c * g.k;
          sgemm(true, false, g.c, n, g.k, u, g.k, vp + (ph * 9 + xi) * vplane + first * g.k, g.k,
                mp + xi * mplane + first * g.c, g.c, ph == 0 ? 0.f : 1.f);
        }
      }
    });
    parallel_tiles(ld, 4 * g.c, [&](int64_t t0, int64_t t1, float* s) {
      grad_input_transform(mp, g, r0, t0, t1, mplane, blocks.zero, gp, s);
    });
  }
  return grad_input;
}

at::Tensor winograd_k4s2_conv_transpose2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                                      const ConvT2dParams& p) {
  const at::MemoryFormat cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor x = input.contiguous(cl), gy = grad_output.contiguous(cl);
  const Geometry g = geometry(p);
  at::Tensor own;
  float* up = winograd::weight_space(36 * g.c * g.k, input.options(), own);  // dT[q][xi][c][k]
  const Blocks blocks = make_blocks(g.n * g.out_tiles_y(), g.out_tiles_x(), 36, g.c, 36, g.k);
  float *vp = blocks.in, *dp = blocks.out;
  const float* xp = x.data_ptr<float>();
  const float* yp = gy.data_ptr<float>();
  for (int64_t r0 = 0; r0 < blocks.rows_total; r0 += blocks.rows) {
    const int64_t ld = blocks.tiles(r0);
    const int64_t vplane = plane_stride(ld, g.c), dplane = plane_stride(ld, g.k);
    parallel_tiles(ld, 0, [&](int64_t t0, int64_t t1, float*) {
      input_transform(xp, g, r0, t0, t1, vp, vplane, blocks.zero);
      spread_transform(yp, g, r0, t0, t1, dp, dplane, blocks.zero);
    });
    // column-major dT[taps][xi] (K x C) += D[ph][xi] (K x ld) V[ph][xi]^T (ld x C); the first block writes.
    at::parallel_for(0, 36, 1, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) {
        const int64_t ph = e / 9, xi = e % 9;
        float* u = up + (taps_of(ph, g.py, g.px) * 9 + xi) * g.c * g.k;
        sgemm(false, true, g.k, g.c, ld, dp + e * dplane, g.k, vp + e * vplane, g.c, u, g.k,
              r0 == 0 ? 0.f : 1.f);
      }
    });
  }
  at::Tensor dw = at::empty({p.cin, p.cout, 4, 4}, input.options());
  untransform_weight(up, g.c, g.k, dw.data_ptr<float>());
  return dw;
}

}  // namespace fastseg
