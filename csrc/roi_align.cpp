// Schemas of the RoIAlign ops. Kernels: cpu/roi_align_kernel.cpp, cuda/roi_align_kernel.cu; fake
// kernels and autograd are registered from Python (fastseg/ops/roi_align.py, fastseg/ops/poolers.py).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastseg, m) {
  // torchvision's roi_align: rois [K, 5] (batch index, x1, y1, x2, y2) -> [K, C, ph, pw]. max_mode
  // takes the max of the bilinear samples of a bin instead of their mean (mmcv's pool_mode="max").
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
      "int sampling_ratio, bool aligned, bool max_mode=False) -> Tensor");
  // Gradient w.r.t. input. `input` gives the shape, dtype and memory format (and, in max mode, the
  // values that decide the argmax). `deterministic`: bit-identical results run to run (the CPU
  // kernel always is; on CUDA it selects the atomics-free kernel).
  m.def(
      "roi_align_backward(Tensor grad, Tensor input, Tensor rois, float spatial_scale, "
      "int pooled_height, int pooled_width, int sampling_ratio, bool aligned, bool max_mode, "
      "bool deterministic) -> Tensor");
  // All pyramid levels in one launch: RoI k is pooled from features[levels[k]] with
  // spatial_scales[levels[k]].
  m.def(
      "multi_level_roi_align(Tensor[] features, Tensor rois, Tensor levels, float[] spatial_scales, "
      "int pooled_height, int pooled_width, int sampling_ratio, bool aligned, bool max_mode=False) "
      "-> Tensor");
  m.def(
      "multi_level_roi_align_backward(Tensor grad, Tensor[] features, Tensor rois, Tensor levels, "
      "float[] spatial_scales, int pooled_height, int pooled_width, int sampling_ratio, bool aligned, "
      "bool max_mode, bool deterministic) -> Tensor[]");
}
