// Schema of the anchor generator op. Kernels: cpu/anchors_kernel.cpp, cuda/anchors_kernel.cu; the
// fake kernel is registered from Python (fastseg/ops/anchors.py).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastseg, m) {
  // Anchors of every pyramid level, concatenated: level l contributes grid_sizes[2l] *
  // grid_sizes[2l+1] * A_l rows (y, then x, then cell anchor), each
  //   cell_anchors[l][a] + (x * strides[2l+1], y * strides[2l], x * strides[2l+1], y * strides[2l])
  // exactly as torchvision's AnchorGenerator.grid_anchors (int32 shifts). dtype/device: the cells'.
  m.def("grid_anchors(Tensor[] cell_anchors, int[] grid_sizes, int[] strides) -> Tensor");
}
