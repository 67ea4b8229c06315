// What the Winograd routes share (csrc/cpu/winograd_gemm.cpp): the sgemm they run their transformed
// products on (fastseg's AVX-512 one where the CPU has AVX-512, else the BLAS's), per-thread workspaces
// and the compiler target of their transform loops.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__)
// The transforms are plain loops over tiles or channels, vectorised by the compiler for AVX2 (the rest
// of the library is built for the x86-64 baseline); the routes are taken only where the CPU has AVX2.
#define FASTSEG_WINOGRAD_TARGET __attribute__((target("avx2")))
#define FASTSEG_WINOGRAD 1
#else
#define FASTSEG_WINOGRAD_TARGET
#endif

namespace fastseg {
namespace winograd {

// Whether the Winograd routes can run here: an x86-64 CPU with AVX2 and the BLAS sgemm found.
bool available();

// Column-major C (m x n) = op(A) (m x k) op(B) (k x n) + beta C, op: the matrix or its transpose. One
// thread: it is called from inside at::parallel_for.
void sgemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
           const float* b, int64_t ldb, float* c, int64_t ldc, float beta = 0.f);

// Pixel (img, y, x) of a channels_last image [N][rows][cols][n]: its run of n channel values, or `outside`
// where (y, x) lies outside the image (zeros for the padding, scratch for outputs past the edge).
template <typename T>
inline T* pixel_or(T* image, int64_t img, int64_t y, int64_t x, int64_t rows, int64_t cols, int64_t n, T* outside) {
  return y >= 0 && y < rows && x >= 0 && x < cols ? image + ((img * rows + y) * cols + x) * n : outside;
}

// Floats from one plane of transformed tiles to the next (ld tiles of n channels): a cache line more than
// they hold. A transform writes 9-16 planes at once; a multiple of 4 KiB apart they fell into the same
// cache sets (benchmarks/notes/conv_transpose2d.md, section 24: a 32-channel layer 2.3 -> 0.66 ms).
inline int64_t plane_stride(int64_t ld, int64_t n) { return ld * n + 16; }

// A buffer of at least n floats, kept by the calling thread and reused by its next calls. Slot 0: a
// block's transformed tiles; slot 1: a transformed weight (or its gradient) that is not cached; slot 2:
// sgemm's packed copy of a transposed A (on AVX-512 CPUs).
float* workspace(int slot, int64_t n);

// Frees the calling thread's workspaces (fastseg.ops.empty_cache); returns the bytes they held.
int64_t release_workspaces();

// n floats for a transformed weight or its gradient: workspace slot 1, or past 64 MB a tensor of their own,
// held by `own`.
float* weight_space(int64_t n, const at::TensorOptions& options, at::Tensor& own);

}  // namespace winograd
}  // namespace fastseg
