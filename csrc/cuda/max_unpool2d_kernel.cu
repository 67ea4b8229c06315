// CUDA max unpooling and its gradient (a gather). Forward: zero-fill (cudaMemsetAsync through
// at::zeros), then one thread per input value writes it at its index; backward: one thread per
// grad_input value reads grad_output at its index. An index outside the output plane is skipped and
// recorded on the device, and the host raises the error after the launch (one device-to-host copy:
// PyTorch's kernel asserts on the device instead, which kills the CUDA context). Where two indices of a
// plane coincide either value may win, as in PyTorch. Not measured on a GPU yet (no GPU on the
// development machine).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "max_unpool2d.h"

namespace fastseg {
namespace {

constexpr int kThreads = 256;

// Element e of the pooled tensor (input, or grad_input; contiguous in `CL` order) and its index j: the
// forward writes dst[offset] = src[e], the backward dst[e] = src[offset], offset being e's place in the
// unpooled tensor (output, or grad_output).
template <typename T, bool CL, bool Backward>
__global__ void unpool_kernel(const T* __restrict__ src, const int64_t* __restrict__ idx, T* __restrict__ dst,
                              int64_t total, int64_t channels, int64_t in_plane, int64_t out_plane,
                              unsigned long long* bad) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = idx[e];
    if (j < 0 || j >= out_plane) {
      if (atomicCAS(bad + 1, 0ULL, 1ULL) == 0ULL) bad[0] = static_cast<unsigned long long>(j);  // the first seen
      if (Backward) dst[e] = T(0);
      continue;
    }
    int64_t offset;
    if (CL) {  // e = (n * in_plane + q) * C + c
      offset = ((e / (in_plane * channels)) * out_plane + j) * channels + e % channels;
    } else {   // e = (n * C + c) * in_plane + q
      offset = (e / in_plane) * out_plane + j;
    }
    if (Backward)
      dst[e] = src[offset];
    else
      dst[offset] = src[e];
  }
}

// Runs the kernel over the pooled tensor `idx` describes (all three tensors in one memory format, `cl`
// or NCHW) and raises if it met a bad index.
template <bool Backward>
void run_unpool(const at::Tensor& src, const at::Tensor& idx, at::Tensor& dst, bool cl, at::IntArrayRef unpooled_hw) {
  const int64_t total = idx.numel(), in_plane = idx.size(2) * idx.size(3);
  const int64_t out_plane = unpooled_hw[0] * unpooled_hw[1];
  if (total == 0) return;
  at::Tensor bad = at::zeros({2}, idx.options());  // [first bad index, whether there was one]
  auto* flag = reinterpret_cast<unsigned long long*>(bad.data_ptr<int64_t>());
  const int blocks = static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, 65535LL * 8));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "max_unpool2d_cuda", [&] {
    auto kernel = cl ? unpool_kernel<scalar_t, true, Backward> : unpool_kernel<scalar_t, false, Backward>;
    kernel<<<blocks, kThreads, 0, stream>>>(src.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(),
                                            dst.data_ptr<scalar_t>(), total, idx.size(1), in_plane, out_plane, flag);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const at::Tensor host = bad.cpu();
  if (host[1].item<int64_t>()) bad_unpool_index(host[0].item<int64_t>(), unpooled_hw);
}

at::Tensor max_unpool2d_cuda(const at::Tensor& input, const at::Tensor& indices, at::IntArrayRef output_size) {
  check_max_unpool2d(input, indices, output_size);
  c10::cuda::CUDAGuard guard(input.device());
  const at::MemoryFormat fmt = input.suggest_memory_format();
  at::Tensor out = at::zeros({input.size(0), input.size(1), output_size[0], output_size[1]},
                             input.options().memory_format(fmt));
  if (out.numel() == 0) return out;  // as PyTorch: nothing is written, so no index is checked
  run_unpool</*Backward=*/false>(input.contiguous(fmt), indices.contiguous(fmt), out,
                                 fmt == at::MemoryFormat::ChannelsLast, output_size);
  return out;
}

at::Tensor max_unpool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& indices) {
  check_max_unpool2d_backward(grad_output, indices);
  c10::cuda::CUDAGuard guard(grad_output.device());
  const at::MemoryFormat fmt = indices.suggest_memory_format();
  at::Tensor grad_input = at::empty(indices.sizes(), grad_output.options().memory_format(fmt));
  if (grad_output.numel() == 0) return grad_input.zero_();  // an empty output plane received no value
  run_unpool</*Backward=*/true>(grad_output.contiguous(fmt), indices.contiguous(fmt), grad_input,
                                fmt == at::MemoryFormat::ChannelsLast, {grad_output.size(2), grad_output.size(3)});
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg, CUDA, m) {
  m.impl("max_unpool2d", &max_unpool2d_cuda);
  m.impl("max_unpool2d_backward", &max_unpool2d_backward_cuda);
}

}  // namespace fastseg
