// Input checks shared by the CPU and CUDA max-unpooling kernels.
#pragma once

#include <ATen/ATen.h>

namespace fastseg {

// The checks every kernel runs first (a direct call of torch.ops.fastseg.max_unpool2d gets a clear
// message too; the Python API raises ValueError before getting here).
inline void check_max_unpool2d(const at::Tensor& input, const at::Tensor& indices, at::IntArrayRef output_size) {
  TORCH_CHECK(input.dim() == 4, "max_unpool2d: input must be a 4-D tensor [N, C, H, W], got shape ", input.sizes());
  TORCH_CHECK(indices.sizes() == input.sizes(), "max_unpool2d: indices must have the shape of input (",
              input.sizes(), "), got ", indices.sizes());
  TORCH_CHECK(indices.scalar_type() == at::kLong, "max_unpool2d: indices must be int64, got ", indices.scalar_type());
  TORCH_CHECK(indices.device() == input.device(), "max_unpool2d: indices must be on the device of input (",
              input.device(), "), got ", indices.device());
  TORCH_CHECK(output_size.size() == 2 && output_size[0] >= 0 && output_size[1] >= 0,
              "max_unpool2d: output_size must be 2 sizes >= 0, got ", output_size);
}

// The backward's checks: grad_output [N, C, H_out, W_out] with the indices' N, C and device.
inline void check_max_unpool2d_backward(const at::Tensor& grad_output, const at::Tensor& indices) {
  TORCH_CHECK(grad_output.dim() == 4 && indices.dim() == 4 && grad_output.size(0) == indices.size(0) &&
                  grad_output.size(1) == indices.size(1),
              "max_unpool2d_backward: grad_output must be [N, C, H_out, W_out] with the N, C of indices ",
              indices.sizes(), ", got ", grad_output.sizes());
  TORCH_CHECK(indices.scalar_type() == at::kLong, "max_unpool2d_backward: indices must be int64, got ",
              indices.scalar_type());
  TORCH_CHECK(indices.device() == grad_output.device(), "max_unpool2d_backward: indices must be on the device of ",
              "grad_output (", grad_output.device(), "), got ", indices.device());
}

// The message for an index outside the output plane (PyTorch raises too).
[[noreturn]] inline void bad_unpool_index(int64_t index, at::IntArrayRef output_size) {
  TORCH_CHECK(false, "max_unpool2d: indices must lie in [0, H_out * W_out) of the ", output_size[0], " x ",
              output_size[1], " output plane, got ", index);
}

}  // namespace fastseg
