// Schemas of the sigmoid focal-loss ops. Kernels: cpu/sigmoid_focal_loss_kernel.cpp,
// cuda/sigmoid_focal_loss_kernel.cu; fake kernels and autograd are registered from Python
// (fastseg/ops/sigmoid_focal_loss.py). Per-element maths: focal_loss.h.
//
// `reduction`: 0 none (the elementwise loss, shape and dtype of the input), 1 mean, 2 sum (0-dim, the
// input dtype). `alpha` < 0 switches the alpha term off (torchvision's alpha = -1).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastseg, m) {
  // torchvision.ops.sigmoid_focal_loss, in one pass over inputs and targets.
  m.def("sigmoid_focal_loss(Tensor inputs, Tensor targets, float alpha, float gamma, int reduction) -> Tensor");
  // d loss / d inputs given the gradient of the output (0-dim for mean/sum): recomputes the terms from
  // inputs and targets, one pass, nothing saved from the forward.
  m.def("sigmoid_focal_loss_backward(Tensor grad, Tensor inputs, Tensor targets, float alpha, float gamma, "
        "int reduction) -> Tensor");
  // The detection-head form: logits [N, C], labels [N] (int). Label c in [0, C) makes class c the
  // positive, label == ignore_index drops the row, any other label (C by convention) is background
  // (every class negative). The result (per reduction) is multiplied by `scale` and divided by
  // `normalizer` (a one-element tensor read on the device) when given.
  m.def("sigmoid_focal_loss_with_labels(Tensor logits, Tensor labels, float alpha, float gamma, "
        "Tensor? normalizer, float scale, int ignore_index, int reduction) -> Tensor");
  m.def("sigmoid_focal_loss_with_labels_backward(Tensor grad, Tensor logits, Tensor labels, float alpha, "
        "float gamma, Tensor? normalizer, float scale, int ignore_index, int reduction) -> Tensor");
}
