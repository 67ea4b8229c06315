// Per-pair box maths shared by the CPU and CUDA kernels, so that the CPU tests exercise the very
// arithmetic the GPU runs.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTSEG_HD __host__ __device__ __forceinline__
#else
#define FASTSEG_HD inline
#endif

namespace fastseg {

// Boxes are (x1, y1, x2, y2). Every function below performs the operations of torchvision's CPU NMS
// (torchvision/csrc/ops/cpu/nms_kernel.cpp) in the same order, so that results are bit-identical to it
// in fp32 and fp64. Reduced precisions are computed in fp32 (their values convert exactly), which is
// what a caller comparing against torchvision on `boxes.float()` expects and avoids fp16 overflow of
// areas. Build with FP contraction off (-ffp-contract=off, nvcc --fmad=false): an FMA changes rounding.

template <typename T>
FASTSEG_HD T box_area(T x1, T y1, T x2, T y2) {
  return (x2 - x1) * (y2 - y1);
}

// IoU of box a (the kept, higher-scored one) with box b; `(a < b) ? b : a` is std::max(a, b) and
// `(b < a) ? b : a` is std::min(a, b), spelled out because std:: is not available on the device and
// their NaN behaviour is part of the contract.
template <typename T>
FASTSEG_HD T nms_iou(T ax1, T ay1, T ax2, T ay2, T a_area, T bx1, T by1, T bx2, T by2, T b_area) {
  const T xx1 = (ax1 < bx1) ? bx1 : ax1;
  const T yy1 = (ay1 < by1) ? by1 : ay1;
  const T xx2 = (bx2 < ax2) ? bx2 : ax2;
  const T yy2 = (by2 < ay2) ? by2 : ay2;
  const T dw = xx2 - xx1;
  const T dh = yy2 - yy1;
  const T w = (T(0) < dw) ? dw : T(0);
  const T h = (T(0) < dh) ? dh : T(0);
  const T inter = w * h;
  return inter / (a_area + b_area - inter);
}

// `iou > threshold` with the threshold a double, as in torchvision, but evaluated in T: for float T,
// x > t  <=>  x > (largest float <= t), so rounding the threshold down keeps the comparison exact.
template <typename T>
inline T nms_threshold(double t) {
  T r = static_cast<T>(t);
  if (static_cast<double>(r) > t) r = std::nextafter(r, -std::numeric_limits<T>::infinity());
  return r;
}

}  // namespace fastseg
