// Schemas of the box coder ops (torchvision's BoxCoder). Kernels: cpu/box_coder_kernel.cpp,
// cuda/box_coder_kernel.cu; fake kernels are registered from Python (fastseg/ops/box_coder.py).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastseg, m) {
  // BoxCoder.decode_single: rel_codes [N, 4K] against boxes [N, 4] (same dtype) -> [N, 4K]; with
  // image_size = (height, width) the boxes are also clipped to the image (clip_boxes_to_image).
  m.def(
      "box_decode(Tensor rel_codes, Tensor boxes, float[] weights, float bbox_xform_clip, "
      "int[]? image_size=None) -> Tensor");
  // BoxCoder.encode_single: [N, 4] targets of proposals relative to reference_boxes.
  m.def("box_encode(Tensor reference_boxes, Tensor proposals, float[] weights) -> Tensor");
}
