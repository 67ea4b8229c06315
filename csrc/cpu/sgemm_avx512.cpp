// A single-threaded fp32 GEMM for AVX-512 CPUs (see sgemm_avx512.h).
//
// Why not the BLAS: ATen's sgemm (MKL) ran the kernel == stride backward's two GEMMs at 135-190 GFLOP/s on
// this 2-core box, where a register tile reaches 200-215 (the FMA peak is ~220); and its calls each fork
// their own threads. Here every thread runs its own slice with no fork inside (benchmarks/notes/
// conv_transpose2d.md, section 27).
//
// Goto's loop order: blocks of kKC x kNC of B (512 KB, L2), and per 8 rows of A a register tile of
// 8 x 32 of C in 16 zmm registers (the NCHW k2 s2 kernel's tile, conv_transpose2d_k2.cpp), A's 8 values
// broadcast from wherever A lies, two vectors of B a step.
#include "sgemm_avx512.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FASTSEG_SGEMM_AVX512 1
// GCC 12 reports the deliberately undefined operand inside _mm512_max_ps and the shuffles (_mm512_undefined_ps) as
// uninitialized (as in conv_transpose2d_direct.cpp).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace fastseg {
namespace avx512 {

namespace {
constexpr int64_t kMR = 8;    // rows of C in a register tile
constexpr int64_t kNR = 32;   // columns of C in a register tile: two 16-lane vectors
constexpr int64_t kKC = 256;  // depth of a block of B
constexpr int64_t kNC = 512;  // columns of a block of B
}  // namespace

int64_t packed_b_size(int64_t k, int64_t n) { return (n + kNR - 1) / kNR * kNR * k; }

#ifdef FASTSEG_SGEMM_AVX512
namespace {
// dst[i * ld_dst + j] = src[j * ld_src + i] for a 16 x 16 block: B's columns (contiguous along the depth)
// into rows of a packed panel. Four rounds of shuffles, as a scalar loop of 256 strided stores measured
// 6.9% of the NCHW U-Net 128 -> 64 training step (benchmarks/notes/conv_transpose2d.md, section 30).
__attribute__((target("avx512f"))) void transpose16(const float* src, int64_t ld_src, float* dst, int64_t ld_dst) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * ld_src);
  for (int i = 0; i < 16; i += 2) {  // 32-bit pairs of rows i, i + 1
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int g = 0; g < 16; g += 4) {  // 64-bit: r[g + c] lane l = column 4l + c of rows g..g+3
    r[g + 0] = _mm512_shuffle_ps(t[g + 0], t[g + 2], 0x44);
    r[g + 1] = _mm512_shuffle_ps(t[g + 0], t[g + 2], 0xEE);
    r[g + 2] = _mm512_shuffle_ps(t[g + 1], t[g + 3], 0x44);
    r[g + 3] = _mm512_shuffle_ps(t[g + 1], t[g + 3], 0xEE);
  }
  for (int c = 0; c < 4; ++c) {  // 128-bit lanes: gather lane l of r[c], r[4 + c], r[8 + c], r[12 + c]
    const __m512 v0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88), v1 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xDD);
    const __m512 v2 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
    const __m512 v3 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xDD);
    _mm512_storeu_ps(dst + (0 + c) * ld_dst, _mm512_shuffle_f32x4(v0, v2, 0x88));
    _mm512_storeu_ps(dst + (8 + c) * ld_dst, _mm512_shuffle_f32x4(v0, v2, 0xDD));
    _mm512_storeu_ps(dst + (4 + c) * ld_dst, _mm512_shuffle_f32x4(v1, v3, 0x88));
    _mm512_storeu_ps(dst + (12 + c) * ld_dst, _mm512_shuffle_f32x4(v1, v3, 0xDD));
  }
}
}  // namespace
#endif

void pack_b(int64_t k, int64_t n, const float* b, int64_t b_rs, int64_t b_cs, float* packed, int64_t panel_begin,
            int64_t panel_end) {
  for (int64_t jp = panel_begin; jp < panel_end; ++jp) {
    float* dst = packed + jp * k * kNR;
    const int64_t j0 = jp * kNR, nj = std::min(kNR, n - j0);
    for (int64_t p = 0; p < k; ++p) std::fill(dst + p * kNR + nj, dst + (p + 1) * kNR, 0.f);
    if (b_cs == 1) {
      for (int64_t p = 0; p < k; ++p) std::copy(b + p * b_rs + j0, b + p * b_rs + j0 + nj, dst + p * kNR);
      continue;
    }
    int64_t p_done = 0, j_done = 0;  // rows and columns the 16 x 16 transposes wrote
#ifdef FASTSEG_SGEMM_AVX512
    if (b_rs == 1 && available()) {  // columns contiguous: 16 x 16 blocks transposed in registers
      p_done = k / 16 * 16, j_done = nj / 16 * 16;
      for (int64_t jj = 0; jj < j_done; jj += 16)
        for (int64_t p = 0; p < p_done; p += 16) transpose16(b + (j0 + jj) * b_cs + p, b_cs, dst + p * kNR + jj, kNR);
    }
#endif
    for (int64_t j = 0; j < nj; ++j) {  // the rest column by column: reads run along B's contiguous dimension
      const float* src = b + (j0 + j) * b_cs;
      for (int64_t p = j < j_done ? p_done : 0; p < k; ++p) dst[p * kNR + j] = src[p * b_rs];
    }
  }
}

#ifdef FASTSEG_SGEMM_AVX512

bool available() {
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  return avx512;
}

namespace {

// C tile (rows <= 8 of it stored, columns masked by m0 | m1) (+)= A (8 x kc; A(i, p) = a[i * a_rs + p * a_cs])
// B (kc x 32; row p at b + p * ldb). kFullB: all 32 columns of B are there (packed, or in place and not the
// last panel); otherwise B's loads are masked too.
// bias: the tile's 32 column values added to every row (or nullptr); relu: max(0, .) before the store.
template <bool kAccumulate, bool kFullB>
__attribute__((target("avx512f"))) void tile(int64_t kc, const float* a, int64_t a_rs, int64_t a_cs, const float* b,
                                             int64_t ldb, float* c, int64_t ldc, int64_t rows, __mmask16 m0,
                                             __mmask16 m1, const float* bias, bool relu) {
  __m512 acc[kMR][2];
#pragma GCC unroll 8
  for (int i = 0; i < kMR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kc; ++p, a += a_cs, b += ldb) {
    const __m512 b0 = kFullB ? _mm512_loadu_ps(b) : _mm512_maskz_loadu_ps(m0, b);
    const __m512 b1 = kFullB ? _mm512_loadu_ps(b + 16) : _mm512_maskz_loadu_ps(m1, b + 16);
#pragma GCC unroll 8
    for (int i = 0; i < kMR; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i * a_rs]);
      acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < kMR; ++i) {
    if (i >= rows) break;
    float* ci = c + i * ldc;
    __m512 v0 = acc[i][0], v1 = acc[i][1];
    if (kAccumulate) {
      v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, ci));
      v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, ci + 16));
    }
    if (bias) {
      v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, bias));
      v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, bias + 16));
    }
    if (relu) {  // max(0, v) keeps NaN (a NaN second operand is returned)
      v0 = _mm512_max_ps(_mm512_setzero_ps(), v0);
      v1 = _mm512_max_ps(_mm512_setzero_ps(), v1);
    }
    _mm512_mask_storeu_ps(ci, m0, v0);
    _mm512_mask_storeu_ps(ci + 16, m1, v1);
  }
}

using Tile = void (*)(int64_t, const float*, int64_t, int64_t, const float*, int64_t, float*, int64_t, int64_t,
                      __mmask16, __mmask16, const float*, bool);

}  // namespace

void sgemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t a_rs, int64_t a_cs, const float* b, int64_t ldb,
           bool b_packed, float* c, int64_t ldc, bool accumulate) {
  sgemm_rows(m, n, k, a, a_rs, a_cs, b, ldb, b_packed, Rows{c, ldc}, accumulate);
}

void sgemm_rows(int64_t m, int64_t n, int64_t k, const float* a, int64_t a_rs, int64_t a_cs, const float* b,
                int64_t ldb, bool b_packed, const Rows& out, bool accumulate) {
  if (out.group_rows % kMR != 0) throw std::invalid_argument("fastseg: avx512::sgemm_rows: group_rows % 8 != 0");
  // Row i of C; tiles of 8 rows never straddle a group.
  auto row = [&](int64_t i) {
    return out.c + (i / out.group_rows) * out.group_stride + (i % out.group_rows) * out.ldc;
  };
  if (k == 0 && !accumulate) {  // an empty sum (no channels to reduce): C = bias (or 0), then the ReLU
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) row(i)[j] = std::max(out.bias ? out.bias[j] : 0.f, out.relu ? 0.f : -INFINITY);
    return;
  }
  // The last (short) row panel's A, zero-padded to 8 rows: tile() reads all 8 rows of A.
  alignas(64) float tail[kMR * kKC];
  for (int64_t jc = 0; jc < n; jc += kNC) {
    const int64_t nc = std::min(kNC, n - jc);
    for (int64_t pc = 0; pc < k; pc += kKC) {
      const int64_t kc = std::min(kKC, k - pc);
      const bool acc = accumulate || pc > 0;
      const bool relu = out.relu && pc + kc == k;  // on the last depth block only
      // A read in place along its rows (a_cs == 1: the input pixels of the channels_last forward): the next
      // row panel's A is prefetched while this one's tiles run. Its first reads came from memory, broadcast
      // from 8 rows at once, and stalled: U-Net 128 -> 64 (depth 128, A cold) 3.55-3.66 -> 3.12-3.15 ms in
      // a loop of its own (benchmarks/notes/conv_transpose2d.md, section 30).
      const bool prefetch_a = a_cs == 1;
      const int64_t row_lines = (kc + 15) / 16, a_lines = kMR * row_lines;  // 64-byte lines of a row panel's A
      for (int64_t i0 = 0; i0 < m; i0 += kMR) {
        const int64_t rows = std::min(kMR, m - i0);
        const float* ap = a + i0 * a_rs + pc * a_cs;
        int64_t rs = a_rs, cs = a_cs;
        if (rows < kMR) {
          for (int64_t p = 0; p < kc; ++p)
            for (int64_t i = 0; i < kMR; ++i) tail[p * kMR + i] = i < rows ? ap[i * a_rs + p * a_cs] : 0.f;
          ap = tail, rs = 1, cs = kMR;
        }
        const int64_t panels = (nc + kNR - 1) / kNR;
        for (int64_t j0 = jc; j0 < jc + nc; j0 += kNR) {
          if (prefetch_a && i0 + 2 * kMR <= m) {  // this tile's share of the next row panel's A lines
            const int64_t jp = (j0 - jc) / kNR;
            const float* next = a + (i0 + kMR) * a_rs + pc;
            for (int64_t l = jp * a_lines / panels; l < (jp + 1) * a_lines / panels; ++l)
              _mm_prefetch(reinterpret_cast<const char*>(next + (l / row_lines) * a_rs + (l % row_lines) * 16),
                           _MM_HINT_T0);
          }
          const int64_t cols = std::min(kNR, n - j0);
          const __mmask16 m0 = cols >= 16 ? 0xffff : (1u << cols) - 1;
          const __mmask16 m1 = cols >= 32 ? 0xffff : cols > 16 ? (1u << (cols - 16)) - 1 : 0;
          const bool full = b_packed || cols == kNR;
          const float* bp = b_packed ? b + (j0 / kNR) * k * kNR + pc * kNR : b + pc * ldb + j0;
          const Tile f = acc ? (full ? &tile<true, true> : &tile<true, false>)
                             : (full ? &tile<false, true> : &tile<false, false>);
          f(kc, ap, rs, cs, bp, b_packed ? kNR : ldb, row(i0) + j0, out.ldc, rows, m0, m1,
            out.bias && !acc ? out.bias + j0 : nullptr, relu);
        }
      }
    }
  }
}

__attribute__((target("avx512f"))) void deinterleave2(const float* src, float* even, float* odd, int64_t n) {
  const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 a = _mm512_loadu_ps(src + 2 * i), b = _mm512_loadu_ps(src + 2 * i + 16);
    _mm512_storeu_ps(even + i, _mm512_permutex2var_ps(a, ie, b));
    _mm512_storeu_ps(odd + i, _mm512_permutex2var_ps(a, io, b));
  }
  for (; i < n; ++i) even[i] = src[2 * i], odd[i] = src[2 * i + 1];
}

__attribute__((target("avx512f"))) float sum(const float* x, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_add_ps(acc0, _mm512_loadu_ps(x + i));
    acc1 = _mm512_add_ps(acc1, _mm512_loadu_ps(x + i + 16));
  }
  for (; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? 0xffff : (1u << (n - i)) - 1;
    acc0 = _mm512_add_ps(acc0, _mm512_maskz_loadu_ps(m, x + i));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

#else

bool available() { return false; }

float sum(const float*, int64_t) {
  throw std::logic_error("fastseg: avx512::sum called on a CPU without AVX-512 (check avx512::available())");
}

void deinterleave2(const float*, float*, float*, int64_t) {
  throw std::logic_error("fastseg: avx512::deinterleave2 called on a CPU without AVX-512 (check avx512::available())");
}

void sgemm(int64_t, int64_t, int64_t, const float*, int64_t, int64_t, const float*, int64_t, bool, float*, int64_t,
           bool) {
  throw std::logic_error("fastseg: avx512::sgemm called on a CPU without AVX-512 (check avx512::available())");
}

void sgemm_rows(int64_t, int64_t, int64_t, const float*, int64_t, int64_t, const float*, int64_t, bool, const Rows&,
                bool) {
  throw std::logic_error("fastseg: avx512::sgemm_rows called on a CPU without AVX-512 (check avx512::available())");
}

#endif

}  // namespace avx512
}  // namespace fastseg
