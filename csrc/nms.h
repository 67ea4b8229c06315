// Declarations and input checks shared by the CPU and CUDA NMS kernels.
#pragma once

#include <ATen/ATen.h>

#include <cmath>

namespace fastseg {

// The checks every NMS kernel runs first, so that a direct call of torch.ops.fastseg.* gets the same
// clear message as the Python API. `idxs` is undefined for plain nms.
inline void check_nms_inputs(const char* op, const at::Tensor& boxes, const at::Tensor& scores,
                             const at::Tensor& idxs, double iou_threshold) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, op,
              ": boxes must be a 2-D tensor of shape [N, 4], got shape ", boxes.sizes());
  TORCH_CHECK(scores.dim() == 1, op, ": scores must be a 1-D tensor of shape [N], got shape ",
              scores.sizes());
  TORCH_CHECK(boxes.size(0) == scores.size(0), op,
              ": boxes and scores must have the same length, got ", boxes.size(0), " boxes and ",
              scores.size(0), " scores");
  TORCH_CHECK(at::isFloatingType(boxes.scalar_type()), op,
              ": boxes must be a floating-point tensor, got ", boxes.scalar_type());
  TORCH_CHECK(at::isFloatingType(scores.scalar_type()), op,
              ": scores must be a floating-point tensor, got ", scores.scalar_type());
  TORCH_CHECK(boxes.device() == scores.device(), op,
              ": boxes and scores must be on the same device, got ", boxes.device(), " and ",
              scores.device());
  if (idxs.defined()) {
    TORCH_CHECK(idxs.dim() == 1 && idxs.size(0) == boxes.size(0), op,
                ": idxs must be a 1-D tensor with one class index per box (", boxes.size(0),
                "), got shape ", idxs.sizes());
    TORCH_CHECK(at::isIntegralType(idxs.scalar_type(), /*includeBool=*/true), op,
                ": idxs must be an integer tensor, got ", idxs.scalar_type());
    TORCH_CHECK(idxs.device() == boxes.device(), op,
                ": idxs must be on the same device as boxes, got ", idxs.device(), " and ",
                boxes.device());
  }
  TORCH_CHECK(!std::isnan(iou_threshold) && iou_threshold >= 0.0, op,
              ": iou_threshold must be a number >= 0, got ", iou_threshold);
}

}  // namespace fastseg
