// Schemas of the NMS ops. Kernels: cpu/nms_kernel.cpp, cuda/nms_kernel.cu; fake kernels are
// registered from Python (fastseg/ops/nms.py).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastseg, m) {
  // Indices of the kept boxes, by decreasing score (ties: lower index first).
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  // As nms, but a box only suppresses boxes of its own class idxs[i].
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
}
