// The BLAS sgemm and the per-thread workspaces of the Winograd routes (winograd_gemm.h).
#include "winograd_gemm.h"

#include <dlfcn.h>

#include <memory>

#include "sgemm_avx512.h"

namespace fastseg {
namespace winograd {
namespace {

// The sgemm of the BLAS PyTorch is built with (MKL in the PyTorch wheels), looked up at run time: ATen's
// own gemm wrapper (at::native::cpublas::gemm) is not exported from libtorch_cpu, and at::mm costs a
// dispatch per call. Without it the routes are not taken.
using Sgemm = void(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                   const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                   const float* beta, float* c, const int* ldc);
Sgemm* blas_sgemm() {
  static Sgemm* const f = [] {
    void* lib = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
    return reinterpret_cast<Sgemm*>(lib ? dlsym(lib, "sgemm_") : nullptr);
  }();
  return f;
}

}  // namespace

bool available() {
#ifdef FASTSEG_WINOGRAD
  static const bool ok = __builtin_cpu_supports("avx2") && blas_sgemm() != nullptr;
  return ok;
#else
  return false;
#endif
}

void sgemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
           const float* b, int64_t ldb, float* c, int64_t ldc, float beta) {
  if (avx512::available() && (beta == 0.f || beta == 1.f)) {
    // Column-major C (m x n) is row-major C^T (n x m, rows ldc apart), and C^T = op(B)^T op(A)^T:
    // avx512::sgemm's A is op(B)^T through its strides, its B is op(A)^T, read in place when A is not
    // transposed (rows lda apart) and packed when it is.
    const int64_t a_rs = transpose_b ? 1 : ldb, a_cs = transpose_b ? ldb : 1;
    if (!transpose_a) {
      avx512::sgemm(n, m, k, b, a_rs, a_cs, a, lda, false, c, ldc, beta == 1.f);
    } else {
      float* packed = workspace(2, avx512::packed_b_size(k, m));  // up to a few MB, kept like the others
      avx512::pack_b(k, m, a, 1, lda, packed, 0, (m + 31) / 32);
      avx512::sgemm(n, m, k, b, a_rs, a_cs, packed, 0, true, c, ldc, beta == 1.f);
    }
    return;
  }
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
  const int la = static_cast<int>(lda), lb = static_cast<int>(ldb), lc = static_cast<int>(ldc);
  const float one = 1.f;
  blas_sgemm()(transpose_a ? "T" : "N", transpose_b ? "T" : "N", &mi, &ni, &ki, &one, a, &la, b, &lb, &beta, c, &lc);
}

namespace {

// A thread's two buffers, kept between calls: fresh memory of these sizes (1-24 MB of tiles, a transformed
// weight of up to 64 MB) costs a page fault per 4 KiB on every call once glibc hands it back to the system
// (benchmarks/notes/conv_transpose2d.md, section 17): measured 5.2 ms instead of 1.7 ms for a 512-channel
// 3x3 weight, and it slowed oneDNN's weight gradient run next to it by 4 ms.
struct Workspaces {
  std::unique_ptr<float[]> buffers[3];
  int64_t sizes[3] = {0, 0, 0};
};
Workspaces& workspaces() {
  thread_local Workspaces w;
  return w;
}

}  // namespace

float* workspace(int slot, int64_t n) {
  Workspaces& w = workspaces();
  if (n > w.sizes[slot]) {
    w.buffers[slot].reset();
    w.buffers[slot].reset(new float[n]);
    w.sizes[slot] = n;
  }
  return w.buffers[slot].get();
}

int64_t release_workspaces() {
  Workspaces& w = workspaces();
  const int64_t bytes = (w.sizes[0] + w.sizes[1] + w.sizes[2]) * static_cast<int64_t>(sizeof(float));
  for (int slot = 0; slot < 3; ++slot) {
    w.buffers[slot].reset();
    w.sizes[slot] = 0;
  }
  return bytes;
}

float* weight_space(int64_t n, const at::TensorOptions& options, at::Tensor& own) {
  if (n <= (int64_t(16) << 20)) return workspace(1, n);
  own = at::empty({n}, options);
  return own.data_ptr<float>();
}

}  // namespace winograd
}  // namespace fastseg
