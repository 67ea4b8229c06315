// Schemas of the pairwise IoU ops (torchvision.ops.box_iou & co). Kernels: cpu/box_iou_kernel.cpp,
// cuda/box_iou_kernel.cu; fake kernels are registered from Python (fastseg/ops/boxes.py).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastseg, m) {
  // boxes1 [N, 4], boxes2 [M, 4] -> [N, M] (or [B, N, 4], [B, M, 4] -> [B, N, M]); fp32 out for
  // fp16/bf16/fp32 boxes, fp64 for fp64, as torchvision.
  m.def("box_iou(Tensor boxes1, Tensor boxes2) -> Tensor");
  m.def("generalized_box_iou(Tensor boxes1, Tensor boxes2) -> Tensor");
  m.def("distance_box_iou(Tensor boxes1, Tensor boxes2, float eps) -> Tensor");
  m.def("complete_box_iou(Tensor boxes1, Tensor boxes2, float eps) -> Tensor");
}
