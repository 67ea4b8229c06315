// CUDA kernel of fastseg::grid_anchors (schema: csrc/anchors.cpp): every pyramid level in ONE launch
// and no host sync. The per-level geometry (first output row, grid width, anchors per cell, strides)
// and the cell-anchor pointers travel by value in the kernel's parameter struct, so nothing is
// copied to the device first. One thread per output coordinate (coalesced stores); the maths is
// anchor_coord in csrc/box_ops.h, shared with the CPU kernel.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "box_checks.h"
#include "box_ops.h"

namespace fastseg {
namespace {

// Pyramid levels one launch handles (RetinaNet/FPN use 5; the parameter struct stays < 1 KiB).
constexpr int kMaxLevels = 16;
constexpr int kThreads = 256;

template <typename T>
struct AnchorLevels {
  const T* cell[kMaxLevels];
  int64_t start[kMaxLevels + 1];  // first anchor (output row) of each level; start[levels] = total
  int64_t width[kMaxLevels], per_cell[kMaxLevels], stride_h[kMaxLevels], stride_w[kMaxLevels];
  int levels;
};

template <typename T>
__global__ void grid_anchors_kernel(const AnchorLevels<T> p, T* __restrict__ out, int64_t coords) {
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < coords;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t anchor = idx >> 2;
    const int c = static_cast<int>(idx & 3);
    int l = 0;
    while (l + 1 < p.levels && anchor >= p.start[l + 1]) ++l;
    const int64_t local = anchor - p.start[l];
    const int64_t a = local % p.per_cell[l];
    const int64_t loc = local / p.per_cell[l];
    const int64_t x = loc % p.width[l], y = loc / p.width[l];
    const int32_t shift = (c & 1) ? anchor_shift(y, p.stride_h[l]) : anchor_shift(x, p.stride_w[l]);
    out[idx] = anchor_coord<T>(shift, p.cell[l][4 * a + c]);
  }
}

at::Tensor grid_anchors_cuda(at::TensorList cell_anchors, at::IntArrayRef grid_sizes,
                             at::IntArrayRef strides) {
  check_grid_anchors_inputs(cell_anchors, grid_sizes, strides);
  const int64_t levels = static_cast<int64_t>(cell_anchors.size());
  TORCH_CHECK(cell_anchors[0].is_cuda(), "grid_anchors: the CUDA kernel needs CUDA cell_anchors, got ",
              cell_anchors[0].device());
  TORCH_CHECK(levels <= kMaxLevels, "grid_anchors: at most ", kMaxLevels,
              " pyramid levels are supported, got ", levels);
  c10::cuda::CUDAGuard guard(cell_anchors[0].device());
  std::vector<at::Tensor> cells(levels);
  int64_t total = 0;
  for (int64_t l = 0; l < levels; ++l) {
    cells[l] = cell_anchors[l].contiguous();
    total += grid_sizes[2 * l] * grid_sizes[2 * l + 1] * cells[l].size(0);
  }
  at::Tensor out = at::empty({total, 4}, cells[0].options());
  if (total == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "grid_anchors_cuda", [&] {
    AnchorLevels<scalar_t> p{};
    p.levels = static_cast<int>(levels);
    p.start[0] = 0;
    for (int64_t l = 0; l < levels; ++l) {
      p.cell[l] = cells[l].const_data_ptr<scalar_t>();
      p.width[l] = std::max<int64_t>(grid_sizes[2 * l + 1], 1);
      p.per_cell[l] = std::max<int64_t>(cells[l].size(0), 1);
      p.stride_h[l] = strides[2 * l];
      p.stride_w[l] = strides[2 * l + 1];
      p.start[l + 1] = p.start[l] + grid_sizes[2 * l] * grid_sizes[2 * l + 1] * cells[l].size(0);
    }
    const int64_t coords = 4 * total;
    const int64_t blocks = std::min<int64_t>((coords + kThreads - 1) / kThreads, 65535 * 8);
    grid_anchors_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0,
                                    at::cuda::getCurrentCUDAStream()>>>(p, out.mutable_data_ptr<scalar_t>(),
                                                                        coords);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg, CUDA, m) { m.impl("grid_anchors", &grid_anchors_cuda); }

}  // namespace fastseg
