// A single-threaded fp32 GEMM for AVX-512 CPUs (csrc/cpu/sgemm_avx512.cpp), for kernels that run their own
// parallel loop and hand each thread its slice of rows: the kernel == stride backward of the transposed
// convolution. It reads A in place through any strides, and B in place or packed.
#pragma once

#include <cstdint>

namespace fastseg {
namespace avx512 {

// Whether this CPU runs the kernels below (x86-64 with AVX-512F).
bool available();

// Floats pack_b writes for a k x n matrix B.
int64_t packed_b_size(int64_t k, int64_t n);

// B (k x n, B(p, j) = b[p * b_rs + j * b_cs]) in zero-padded panels of 32 columns, [ceil(n / 32)][k][32]:
// panels [panel_begin, panel_end) of them (callers split the panels between threads).
void pack_b(int64_t k, int64_t n, const float* b, int64_t b_rs, int64_t b_cs, float* packed, int64_t panel_begin,
            int64_t panel_end);

// C (m x n, C(i, j) = c[i * ldc + j]) = A B, or C += A B when `accumulate`.
// A(i, p) = a[i * a_rs + p * a_cs], read in place.
// B: packed by pack_b (b_packed), or B(p, j) = b[p * ldb + j] read in place.
void sgemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t a_rs, int64_t a_cs, const float* b, int64_t ldb,
           bool b_packed, float* c, int64_t ldc, bool accumulate);

// Where sgemm_rows stores C and what it applies: row i at c + (i / group_rows) * group_stride +
// (i % group_rows) * ldc (group_rows a multiple of 8; the default: one group), `bias` (n values, or
// nullptr) added to every row unless `accumulate`, then max(0, .) where `relu`.
struct Rows {
  float* c;
  int64_t ldc;
  int64_t group_rows = int64_t(1) << 62;
  int64_t group_stride = 0;
  const float* bias = nullptr;
  bool relu = false;
};

// sgemm with C's rows in groups, a bias and a ReLU: the channels_last kernel == stride forward writes each
// input row's pixels straight into their output row (conv_transpose2d_kernel.cpp).
void sgemm_rows(int64_t m, int64_t n, int64_t k, const float* a, int64_t a_rs, int64_t a_cs, const float* b,
                int64_t ldb, bool b_packed, const Rows& out, bool accumulate);

// even[i] = src[2 i], odd[i] = src[2 i + 1] for i < n: the two taps of a kernel-2 stride-2 row of grad_output
// (the NCHW k == s backward's gather).
void deinterleave2(const float* src, float* even, float* odd, int64_t n);

// x[0] + ... + x[n - 1], in 16 lanes: the bias gradient summed from the gathered grad_output.
float sum(const float* x, int64_t n);

}  // namespace avx512
}  // namespace fastseg
