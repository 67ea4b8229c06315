// Input checks and per-pair decay of soft-NMS, shared by the CPU and CUDA kernels.
#pragma once

#include <ATen/ATen.h>

#include <cmath>

#include "box_iou.h"

namespace fastseg {

enum SoftNmsMethod : int64_t { kSoftNmsNaive = 0, kSoftNmsLinear = 1, kSoftNmsGaussian = 2 };

// The weight a score is multiplied by, given the IoU with the box just kept (mmcv's rules).
template <typename T>
FASTSEG_HD T soft_nms_weight(T iou, T iou_threshold, T sigma, int method) {
  if (method == kSoftNmsGaussian) {
    // Disjoint boxes (most pairs) have IoU 0 and weight exp(-0) == 1 exactly: skip the exp.
    if (iou == T(0)) return T(1);
#if defined(__CUDA_ARCH__)
    return exp(-(iou * iou) / sigma);
#else
    return std::exp(-(iou * iou) / sigma);
#endif
  }
  if (iou >= iou_threshold) return method == kSoftNmsLinear ? T(1) - iou : T(0);
  return T(1);
}

inline void check_soft_nms_inputs(const char* op, const at::Tensor& boxes, const at::Tensor& scores,
                                  const at::Tensor& idxs, double iou_threshold, double sigma,
                                  double score_threshold, int64_t method) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, op,
              ": boxes must be a 2-D tensor of shape [N, 4], got shape ", boxes.sizes());
  TORCH_CHECK(scores.dim() == 1, op, ": scores must be a 1-D tensor of shape [N], got shape ", scores.sizes());
  TORCH_CHECK(boxes.size(0) == scores.size(0), op, ": boxes and scores must have the same length, got ",
              boxes.size(0), " boxes and ", scores.size(0), " scores");
  TORCH_CHECK(at::isFloatingType(boxes.scalar_type()), op, ": boxes must be a floating-point tensor, got ",
              boxes.scalar_type());
  TORCH_CHECK(at::isFloatingType(scores.scalar_type()), op, ": scores must be a floating-point tensor, got ",
              scores.scalar_type());
  TORCH_CHECK(boxes.device() == scores.device(), op, ": boxes and scores must be on the same device, got ",
              boxes.device(), " and ", scores.device());
  if (idxs.defined()) {
    TORCH_CHECK(idxs.dim() == 1 && idxs.size(0) == boxes.size(0), op,
                ": idxs must be a 1-D tensor with one class index per box (", boxes.size(0), "), got shape ",
                idxs.sizes());
    TORCH_CHECK(at::isIntegralType(idxs.scalar_type(), /*includeBool=*/true), op,
                ": idxs must be an integer tensor, got ", idxs.scalar_type());
    TORCH_CHECK(idxs.device() == boxes.device(), op, ": idxs must be on the same device as boxes, got ",
                idxs.device(), " and ", boxes.device());
  }
  TORCH_CHECK(!std::isnan(iou_threshold) && iou_threshold >= 0.0, op,
              ": iou_threshold must be a number >= 0, got ", iou_threshold);
  TORCH_CHECK(!std::isnan(score_threshold), op, ": score_threshold must be a number, got nan");
  TORCH_CHECK(method == kSoftNmsNaive || method == kSoftNmsLinear || method == kSoftNmsGaussian, op,
              ": method must be 0 (naive), 1 (linear) or 2 (gaussian), got ", method);
  TORCH_CHECK(method != kSoftNmsGaussian || sigma > 0.0, op, ": sigma must be > 0 for the gaussian method, got ",
              sigma);
}

}  // namespace fastseg
