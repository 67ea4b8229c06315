// Schema of max unpooling (DeconvNet's "switches"). Kernels: cpu/max_unpool2d_kernel.cpp,
// cuda/max_unpool2d_kernel.cu; autograd: max_unpool2d_autograd.cpp; fake kernels are registered from
// Python (fastseg/ops/max_unpool2d.py).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastseg, m) {
  // torch.nn.functional.max_unpool2d on a 4-D input once the output size is known: zeros of
  // [N, C, output_size] with out[n, c].flat[indices[n, c, h, w]] = input[n, c, h, w]; the output has the
  // input's memory format. Where two indices of a plane coincide the later one (in h, w order) wins on
  // the CPU, as in PyTorch; on CUDA either may.
  m.def("max_unpool2d(Tensor input, Tensor indices, int[2] output_size) -> Tensor");
  // Its gradient: grad_input[n, c, h, w] = grad_output[n, c].flat[indices[n, c, h, w]] (a gather, as in
  // PyTorch), in the memory format of `indices`.
  m.def("max_unpool2d_backward(Tensor grad_output, Tensor indices) -> Tensor");
}
