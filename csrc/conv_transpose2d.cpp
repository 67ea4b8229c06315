// Schemas of the transposed 2-D convolution. Kernels: cpu/conv_transpose2d_kernel.cpp,
// cuda/conv_transpose2d_kernel.cu; autograd: conv_transpose2d_autograd.cpp; fake kernels are registered
// from Python (fastseg/ops/conv_transpose2d.py).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastseg, m) {
  // torch.nn.functional.conv_transpose2d on a 4-D input, plus an optional fused ReLU after the bias.
  // The output is channels_last when the input or the weight is (PyTorch's rule).
  m.def("conv_transpose2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
        "int[2] output_padding, int groups, int[2] dilation, bool relu) -> Tensor");
  // Gradients of conv_transpose2d (without the ReLU: the caller masks grad_output) with respect to
  // input, weight and bias (the bias gradient is returned even when the forward had no bias).
  m.def("conv_transpose2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, "
        "int[2] padding, int[2] output_padding, int groups, int[2] dilation) -> (Tensor, Tensor, Tensor)");
}
