// RoIPool maths shared by the CPU and CUDA kernels: the bin of a RoI in map cells, exactly as
// torchvision computes it (torchvision/csrc/ops/cpu/roi_pool_kernel.cpp).
#pragma once

#include <cmath>
#include <cstdint>

#include "box_iou.h"  // FASTSEG_HD

namespace fastseg {

// std::round (half away from zero) of a T, without relying on std:: on the device.
template <typename T>
FASTSEG_HD int64_t round_half_away(T v) {
  return static_cast<int64_t>(round(v));
}

struct PoolBin {
  int64_t hstart, hend, wstart, wend;
  bool empty;
};

// Bin (ph, pw) of RoI (x1, y1, x2, y2) on an H x W map, cells [hstart, hend) x [wstart, wend).
template <typename T>
FASTSEG_HD PoolBin roi_pool_bin(T x1, T y1, T x2, T y2, T scale, int64_t ph, int64_t pw,
                                int64_t pooled_h, int64_t pooled_w, int64_t H, int64_t W) {
  const int64_t start_w = round_half_away(x1 * scale), start_h = round_half_away(y1 * scale);
  const int64_t end_w = round_half_away(x2 * scale), end_h = round_half_away(y2 * scale);
  int64_t rw = end_w - start_w + 1, rh = end_h - start_h + 1;
  rw = rw < 1 ? 1 : rw;
  rh = rh < 1 ? 1 : rh;
  const T bin_h = static_cast<T>(rh) / static_cast<T>(pooled_h);
  const T bin_w = static_cast<T>(rw) / static_cast<T>(pooled_w);
  int64_t hs = static_cast<int64_t>(floor(static_cast<T>(ph) * bin_h));
  int64_t ws = static_cast<int64_t>(floor(static_cast<T>(pw) * bin_w));
  int64_t he = static_cast<int64_t>(ceil(static_cast<T>(ph + 1) * bin_h));
  int64_t we = static_cast<int64_t>(ceil(static_cast<T>(pw + 1) * bin_w));
  auto clip = [](int64_t v, int64_t hi) { return v < 0 ? 0 : (v > hi ? hi : v); };
  PoolBin b;
  b.hstart = clip(hs + start_h, H);
  b.hend = clip(he + start_h, H);
  b.wstart = clip(ws + start_w, W);
  b.wend = clip(we + start_w, W);
  b.empty = b.hend <= b.hstart || b.wend <= b.wstart;
  return b;
}

}  // namespace fastseg
