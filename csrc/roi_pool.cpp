// Schemas of the RoIPool ops. Kernels: cpu/roi_pool_kernel.cpp, cuda/roi_pool_kernel.cu; fake kernels
// and autograd are registered from Python (fastseg/ops/roi_pool.py).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastseg, m) {
  // torchvision's roi_pool: the max of each bin and its position (h * W + w in the map, -1 for an
  // empty bin), int32, for the backward.
  m.def(
      "roi_pool(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width) "
      "-> (Tensor, Tensor)");
  // grad_input[n, c].flat[argmax] += grad, in a fixed order (deterministic, no atomics, on the CPU;
  // on CUDA when `deterministic`). `input` gives the shape, dtype and memory format.
  m.def(
      "roi_pool_backward(Tensor grad, Tensor input, Tensor rois, Tensor argmax, bool deterministic) "
      "-> Tensor");
}
