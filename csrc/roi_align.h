// RoIAlign maths shared by the CPU and CUDA kernels (FASTSEG_HD helpers), and the input checks every
// roi_align kernel runs first.
//
// Semantics are torchvision's (torchvision/csrc/ops/cpu/roi_align_kernel.cpp). For RoI k with box
// (x1, y1, x2, y2) in image coordinates and `offset` = 0.5 when aligned else 0:
//     start_w = x1 * scale - offset,  end_w = x2 * scale - offset      (same for h)
//     roi_w = end_w - start_w; if (!aligned) roi_w = max(roi_w, 1)      (same for h)
//     bin_w = roi_w / pooled_w;  grid_w = sampling_ratio > 0 ? sampling_ratio : ceil(roi_w / pooled_w)
//     sample x of bin pw, sub-sample ix:  start_w + pw * bin_w + (ix + .5) * bin_w / grid_w
// and bilinear interpolation that returns 0 for samples outside [-1, size] and clamps the rest to
// the map. Because the sample grid is a product of an x grid and a y grid and the validity test and
// clamping act on each axis alone, the weights are separable: an `AxisSample` is computed once per
// (bin, sub-sample) of each axis and a 2-D weight is the product hy*hx, ly*hx... exactly as
// torchvision forms it, so the sums below round like torchvision's. Build with FP contraction off.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>

#include "box_iou.h"  // FASTSEG_HD

namespace fastseg {

// One sample coordinate along one axis: the two map cells it reads and their weights (`lo_w` for
// cell `lo`, `hi_w` for cell `hi`), or `valid == 0` when the sample lies outside [-1, size]
// (torchvision then contributes 0 for the whole sample).
template <typename T>
struct AxisSample {
  int32_t lo, hi, valid;
  T lo_w, hi_w;
};

template <typename T>
FASTSEG_HD AxisSample<T> axis_sample(T v, int64_t size) {
  AxisSample<T> s;
  if (v < T(-1.0) || v > static_cast<T>(size)) {
    s.lo = s.hi = 0;
    s.valid = 0;
    s.lo_w = s.hi_w = T(0);
    return s;
  }
  if (v <= T(0)) v = T(0);
  int32_t lo = static_cast<int32_t>(v);
  int32_t hi;
  if (lo >= size - 1) {
    hi = lo = static_cast<int32_t>(size - 1);
    v = static_cast<T>(lo);
  } else {
    hi = lo + 1;
  }
  const T l = v - static_cast<T>(lo);
  s.lo = lo;
  s.hi = hi;
  s.valid = 1;
  s.hi_w = l;
  s.lo_w = T(1.) - l;
  return s;
}

// Geometry of one RoI along one axis (torchvision's order of operations).
template <typename T>
struct AxisGeometry {
  T start, bin;
  int32_t grid;
};

template <typename T>
FASTSEG_HD AxisGeometry<T> axis_geometry(T c1, T c2, T scale, int64_t pooled, int64_t sampling_ratio,
                                          bool aligned) {
  const T offset = aligned ? T(0.5) : T(0.0);
  AxisGeometry<T> g;
  g.start = c1 * scale - offset;
  const T end = c2 * scale - offset;
  T size = end - g.start;
  if (!aligned) size = (size < T(1.)) ? T(1.) : size;  // std::max(size, 1)
  g.bin = size / static_cast<T>(pooled);
  g.grid = sampling_ratio > 0 ? static_cast<int32_t>(sampling_ratio)
                              : static_cast<int32_t>(ceil(size / static_cast<T>(pooled)));
  if (g.grid < 0) g.grid = 0;  // a negative extent (aligned, x2 < x1) samples nothing
  return g;
}

// Sample `i` (sub-sample) of bin `p` along an axis, as torchvision computes it.
template <typename T>
FASTSEG_HD T axis_coordinate(const AxisGeometry<T>& g, int64_t p, int64_t i) {
  return g.start + static_cast<T>(p) * g.bin +
         (static_cast<T>(i) + T(.5f)) * g.bin / static_cast<T>(g.grid);
}

// The four 2-D bilinear weights of sample (y, x), in torchvision's order and rounding.
template <typename T>
struct Weights4 {
  T w1, w2, w3, w4;
};

template <typename T>
FASTSEG_HD Weights4<T> bilinear_weights(const AxisSample<T>& y, const AxisSample<T>& x) {
  return {y.lo_w * x.lo_w, y.lo_w * x.hi_w, y.hi_w * x.lo_w, y.hi_w * x.hi_w};
}

// Input checks of every roi_align / roi_pool kernel (the Python API checks first with the same
// words; these guard direct calls of torch.ops.fastseg.*).
inline void check_rois(const char* op, const at::Tensor& rois, const at::Device& device) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, op,
              ": rois must be a 2-D tensor of shape [K, 5] (batch index, x1, y1, x2, y2), got shape ",
              rois.sizes());
  TORCH_CHECK(at::isFloatingType(rois.scalar_type()), op,
              ": rois must be a floating-point tensor, got ", rois.scalar_type());
  TORCH_CHECK(rois.device() == device, op, ": rois must be on the input's device (", device,
              "), got ", rois.device());
}

inline void check_feature(const char* op, const at::Tensor& input, const at::Tensor& first) {
  TORCH_CHECK(input.dim() == 4, op, ": input must be a 4-D tensor [N, C, H, W], got shape ",
              input.sizes());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), op,
              ": input must be a floating-point tensor, got ", input.scalar_type());
  TORCH_CHECK(input.scalar_type() == first.scalar_type() && input.device() == first.device() &&
                  input.size(0) == first.size(0) && input.size(1) == first.size(1),
              op, ": all feature maps must share dtype, device, batch size and channels, got ",
              input.sizes(), " ", input.scalar_type(), " and ", first.sizes(), " ",
              first.scalar_type());
}

inline void check_pooled(const char* op, int64_t pooled_height, int64_t pooled_width) {
  TORCH_CHECK(pooled_height > 0 && pooled_width > 0, op,
              ": output_size must be positive, got (", pooled_height, ", ", pooled_width, ")");
}

}  // namespace fastseg
