// Schemas of the soft-NMS ops. Kernels: cpu/soft_nms_kernel.cpp, cuda/soft_nms_kernel.cu; fake kernels
// are registered from Python (fastseg/ops/soft_nms.py). Semantics: fastseg/reference/soft_nms.py.
//
// `method`: 0 naive (hard: score 0 when IoU >= iou_threshold), 1 linear (score * (1 - IoU) when
// IoU >= iou_threshold), 2 gaussian (score * exp(-IoU^2 / sigma), every box) -- mmcv's codes.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastseg, m) {
  // (indices of the kept boxes in the order picked, their decayed scores in the dtype of scores)
  m.def("soft_nms(Tensor boxes, Tensor scores, float iou_threshold, float sigma, float score_threshold, "
        "int method) -> (Tensor, Tensor)");
  // As soft_nms, but a box only decays boxes of its own class idxs[i]; one pass over all classes.
  m.def("batched_soft_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold, float sigma, "
        "float score_threshold, int method) -> (Tensor, Tensor)");
}
