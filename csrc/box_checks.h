// Input checks shared by the CPU and CUDA kernels of the anchor, box-coder and pairwise-IoU ops, so a
// direct call of torch.ops.fastseg.* gets the same clear message as the Python API.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

namespace fastseg {

inline void check_grid_anchors_inputs(at::TensorList cell_anchors, at::IntArrayRef grid_sizes,
                                      at::IntArrayRef strides) {
  const int64_t levels = static_cast<int64_t>(cell_anchors.size());
  TORCH_CHECK(levels > 0, "grid_anchors: cell_anchors must hold one tensor per feature map, got none");
  TORCH_CHECK(static_cast<int64_t>(grid_sizes.size()) == 2 * levels,
              "grid_anchors: grid_sizes must hold (height, width) for each of the ", levels,
              " levels (", 2 * levels, " ints), got ", grid_sizes.size());
  TORCH_CHECK(static_cast<int64_t>(strides.size()) == 2 * levels,
              "grid_anchors: strides must hold (stride_h, stride_w) for each of the ", levels,
              " levels (", 2 * levels, " ints), got ", strides.size());
  for (int64_t l = 0; l < levels; ++l) {
    const at::Tensor& c = cell_anchors[l];
    TORCH_CHECK(c.dim() == 2 && c.size(1) == 4, "grid_anchors: cell_anchors[", l,
                "] must have shape [A, 4], got ", c.sizes());
    TORCH_CHECK(at::isFloatingType(c.scalar_type()), "grid_anchors: cell_anchors[", l,
                "] must be floating point, got ", c.scalar_type());
    TORCH_CHECK(c.scalar_type() == cell_anchors[0].scalar_type() &&
                    c.device() == cell_anchors[0].device(),
                "grid_anchors: all cell_anchors must share dtype and device, got ", c.scalar_type(),
                " on ", c.device(), " at level ", l, " and ", cell_anchors[0].scalar_type(), " on ",
                cell_anchors[0].device(), " at level 0");
    TORCH_CHECK(grid_sizes[2 * l] >= 0 && grid_sizes[2 * l + 1] >= 0,
                "grid_anchors: grid sizes must be >= 0, got (", grid_sizes[2 * l], ", ",
                grid_sizes[2 * l + 1], ") at level ", l);
  }
}

// rel_codes [N, 4K], boxes [N, 4], same floating dtype and device; weights 4 non-zero numbers.
inline void check_box_decode_inputs(const at::Tensor& rel_codes, const at::Tensor& boxes,
                                    at::ArrayRef<double> weights,
                                    at::OptionalIntArrayRef image_size) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4,
              "box_decode: boxes must have shape [N, 4], got ", boxes.sizes());
  TORCH_CHECK(rel_codes.dim() == 2 && rel_codes.size(0) == boxes.size(0) && rel_codes.size(1) % 4 == 0,
              "box_decode: rel_codes must have shape [N, 4 * K] with N = boxes.size(0) = ",
              boxes.size(0), ", got ", rel_codes.sizes());
  TORCH_CHECK(at::isFloatingType(rel_codes.scalar_type()),
              "box_decode: rel_codes must be floating point, got ", rel_codes.scalar_type());
  TORCH_CHECK(boxes.scalar_type() == rel_codes.scalar_type(),
              "box_decode: boxes must have the dtype of rel_codes (", rel_codes.scalar_type(),
              "), got ", boxes.scalar_type());
  TORCH_CHECK(boxes.device() == rel_codes.device(),
              "box_decode: boxes and rel_codes must be on the same device, got ", boxes.device(),
              " and ", rel_codes.device());
  TORCH_CHECK(weights.size() == 4, "box_decode: weights must hold 4 numbers, got ", weights.size());
  if (image_size.has_value()) {
    TORCH_CHECK(image_size->size() == 2, "box_decode: image_size must be (height, width), got ",
                image_size->size(), " values");
  }
}

inline void check_box_encode_inputs(const at::Tensor& reference_boxes, const at::Tensor& proposals,
                                    at::ArrayRef<double> weights) {
  TORCH_CHECK(reference_boxes.dim() == 2 && reference_boxes.size(1) == 4,
              "box_encode: reference_boxes must have shape [N, 4], got ", reference_boxes.sizes());
  TORCH_CHECK(proposals.dim() == 2 && proposals.size(1) == 4 &&
                  proposals.size(0) == reference_boxes.size(0),
              "box_encode: proposals must have shape [N, 4] with N = reference_boxes.size(0) = ",
              reference_boxes.size(0), ", got ", proposals.sizes());
  TORCH_CHECK(at::isFloatingType(reference_boxes.scalar_type()),
              "box_encode: reference_boxes must be floating point, got ",
              reference_boxes.scalar_type());
  TORCH_CHECK(proposals.scalar_type() == reference_boxes.scalar_type(),
              "box_encode: proposals must have the dtype of reference_boxes (",
              reference_boxes.scalar_type(), "), got ", proposals.scalar_type());
  TORCH_CHECK(proposals.device() == reference_boxes.device(),
              "box_encode: reference_boxes and proposals must be on the same device, got ",
              reference_boxes.device(), " and ", proposals.device());
  TORCH_CHECK(weights.size() == 4, "box_encode: weights must hold 4 numbers, got ", weights.size());
}

// boxes1 [N, 4] and boxes2 [M, 4], or [B, N, 4] and [B, M, 4]; same floating dtype and device.
inline void check_pairwise_inputs(const char* op, const at::Tensor& boxes1, const at::Tensor& boxes2,
                                  double eps) {
  TORCH_CHECK((boxes1.dim() == 2 || boxes1.dim() == 3) && boxes1.size(-1) == 4, op,
              ": boxes1 must have shape [N, 4] or [B, N, 4], got ", boxes1.sizes());
  TORCH_CHECK(boxes2.dim() == boxes1.dim() && boxes2.size(-1) == 4 &&
                  (boxes1.dim() == 2 || boxes2.size(0) == boxes1.size(0)),
              op, ": boxes2 must have shape ", boxes1.dim() == 2 ? "[M, 4]" : "[B, M, 4] (same B)",
              " to match boxes1 of shape ", boxes1.sizes(), ", got ", boxes2.sizes());
  TORCH_CHECK(at::isFloatingType(boxes1.scalar_type()), op,
              ": boxes1 must be floating point, got ", boxes1.scalar_type());
  TORCH_CHECK(boxes2.scalar_type() == boxes1.scalar_type(), op,
              ": boxes2 must have the dtype of boxes1 (", boxes1.scalar_type(), "), got ",
              boxes2.scalar_type());
  TORCH_CHECK(boxes1.device() == boxes2.device(), op,
              ": boxes1 and boxes2 must be on the same device, got ", boxes1.device(), " and ",
              boxes2.device());
  TORCH_CHECK(!std::isnan(eps), op, ": eps must be a number, got nan");
}

// Output of the pairwise ops: torchvision upcasts fp16/bf16 to fp32 and returns fp32.
inline at::ScalarType pairwise_out_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline std::vector<int64_t> pairwise_out_shape(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  if (boxes1.dim() == 2) return {boxes1.size(0), boxes2.size(0)};
  return {boxes1.size(0), boxes1.size(1), boxes2.size(1)};
}

}  // namespace fastseg
