// CPU kernel of fastseg::grid_anchors (schema: csrc/anchors.cpp): all pyramid levels into one
// preallocated [sum H*W*A, 4] tensor, parallel over grid rows of all levels. The per-element maths
// (int32 shift, conversion, rounding) is anchor_coord in csrc/box_ops.h, shared with the CUDA kernel.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "box_checks.h"
#include "box_ops.h"

namespace fastseg {
namespace {

at::Tensor grid_anchors_cpu(at::TensorList cell_anchors, at::IntArrayRef grid_sizes,
                            at::IntArrayRef strides) {
  check_grid_anchors_inputs(cell_anchors, grid_sizes, strides);
  const int64_t levels = static_cast<int64_t>(cell_anchors.size());
  std::vector<at::Tensor> cells(levels);
  std::vector<int64_t> start(levels + 1, 0), row_start(levels + 1, 0);
  for (int64_t l = 0; l < levels; ++l) {
    cells[l] = cell_anchors[l].contiguous();
    const int64_t h = grid_sizes[2 * l], w = grid_sizes[2 * l + 1], a = cells[l].size(0);
    start[l + 1] = start[l] + h * w * a;
    row_start[l + 1] = row_start[l] + h;
  }
  at::Tensor out = at::empty({start[levels], 4}, cells[0].options());
  if (start[levels] == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "grid_anchors_cpu", [&] {
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    // One task per grid row (of any level): rows of a level are W * A anchors, a few KiB.
    at::parallel_for(0, row_start[levels], 16, [&](int64_t begin, int64_t end) {
      int64_t l = 0;
      for (int64_t r = begin; r < end; ++r) {
        while (r >= row_start[l + 1]) ++l;
        const int64_t y = r - row_start[l];
        const int64_t w = grid_sizes[2 * l + 1], a_n = cells[l].size(0);
        const scalar_t* cell = cells[l].const_data_ptr<scalar_t>();
        const int32_t sy = anchor_shift(y, strides[2 * l]);
        scalar_t* p = o + 4 * (start[l] + y * w * a_n);
        for (int64_t x = 0; x < w; ++x) {
          const int32_t sx = anchor_shift(x, strides[2 * l + 1]);
          for (int64_t a = 0; a < a_n; ++a, p += 4) {
            p[0] = anchor_coord<scalar_t>(sx, cell[4 * a + 0]);
            p[1] = anchor_coord<scalar_t>(sy, cell[4 * a + 1]);
            p[2] = anchor_coord<scalar_t>(sx, cell[4 * a + 2]);
            p[3] = anchor_coord<scalar_t>(sy, cell[4 * a + 3]);
          }
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg, CPU, m) { m.impl("grid_anchors", &grid_anchors_cpu); }

}  // namespace fastseg
