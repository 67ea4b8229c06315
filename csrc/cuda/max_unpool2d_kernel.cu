// CUDA max unpooling and its gradient (a gather): zero-fill (cudaMemsetAsync through at::zeros), then one thread per input value
// writes it at its index. An index outside the output plane is not written; the kernel records it and
// the host raises the error after the launch (one device-to-host copy: PyTorch's kernel asserts on the
// device instead, which kills the CUDA context). Where two indices of a plane coincide either value
// may win, as in PyTorch. Not measured on a GPU yet (no GPU on the development machine).
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

// Element e of the input (contiguous in `CL` order) goes to plane (n, c) at position idx[e].
template <typename T, bool CL>
__global__ void unpool_kernel(const T* __restrict__ x, const int64_t* __restrict__ idx, T* __restrict__ out,
                              int64_t total, int64_t channels, int64_t in_plane, int64_t out_plane,
                              unsigned long long* bad) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = idx[e];
    if (j < 0 || j >= out_plane) {
      if (atomicCAS(bad + 1, 0ULL, 1ULL) == 0ULL) bad[0] = static_cast<unsigned long long>(j);  // the first seen
      continue;
    }
    if (CL) {  // e = (n * in_plane + q) * C + c
      const int64_t c = e % channels, n = e / (in_plane * channels);
      out[(n * out_plane + j) * channels + c] = x[e];
    } else {   // e = (n * C + c) * in_plane + q
      out[(e / in_plane) * out_plane + j] = x[e];
    }
  }
}

// Gradient: element e of grad_input (contiguous in `CL` order) reads grad_output at its index.
template <typename T, bool CL>
__global__ void unpool_backward_kernel(const T* __restrict__ g, const int64_t* __restrict__ idx, T* __restrict__ out,
                                       int64_t total, int64_t channels, int64_t in_plane, int64_t out_plane,
                                       unsigned long long* bad) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = idx[e];
    if (j < 0 || j >= out_plane) {
      if (atomicCAS(bad + 1, 0ULL, 1ULL) == 0ULL) bad[0] = static_cast<unsigned long long>(j);
      out[e] = T(0);
      continue;
    }
    if (CL) {
      const int64_t c = e % channels, n = e / (in_plane * channels);
      out[e] = g[(n * out_plane + j) * channels + c];
    } else {
      out[e] = g[(e / in_plane) * out_plane + j];
    }
  }
}

at::Tensor max_unpool2d_cuda(const at::Tensor& input, const at::Tensor& indices, at::IntArrayRef output_size) {
  check_max_unpool2d(input, indices, output_size);
  c10::cuda::CUDAGuard guard(input.device());
  const at::MemoryFormat fmt = input.suggest_memory_format();
  const at::Tensor x = input.contiguous(fmt), idx = indices.contiguous(fmt);
  at::Tensor out = at::zeros({input.size(0), input.size(1), output_size[0], output_size[1]},
                             input.options().memory_format(fmt));
  const int64_t total = x.numel(), in_plane = input.size(2) * input.size(3);
  const int64_t out_plane = output_size[0] * output_size[1];
  if (total == 0) return out;
  // bad[0]: the first invalid index seen, bad[1]: whether there was one.
  at::Tensor bad = at::zeros({2}, input.options().dtype(at::kLong));
  auto* flag = reinterpret_cast<unsigned long long*>(bad.data_ptr<int64_t>());
  const int blocks = static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, 65535LL * 8));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "max_unpool2d_cuda", [&] {
    if (fmt == at::MemoryFormat::ChannelsLast)
      unpool_kernel<scalar_t, true><<<blocks, kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), total, input.size(1), in_plane,
          out_plane, flag);
    else
      unpool_kernel<scalar_t, false><<<blocks, kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), total, input.size(1), in_plane,
          out_plane, flag);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const at::Tensor host = bad.cpu();
  if (host[1].item<int64_t>()) bad_unpool_index(host[0].item<int64_t>(), output_size);
  return out;
}

at::Tensor max_unpool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& indices) {
  check_max_unpool2d_backward(grad_output, indices);
  c10::cuda::CUDAGuard guard(grad_output.device());
  const at::MemoryFormat fmt = indices.suggest_memory_format();
  const at::Tensor g = grad_output.contiguous(fmt), idx = indices.contiguous(fmt);
  at::Tensor grad_input = at::empty(indices.sizes(), grad_output.options().memory_format(fmt));
  const int64_t total = idx.numel(), in_plane = indices.size(2) * indices.size(3), out_plane = g.size(2) * g.size(3);
  if (total == 0) return grad_input;
  at::Tensor bad = at::zeros({2}, indices.options());
  auto* flag = reinterpret_cast<unsigned long long*>(bad.data_ptr<int64_t>());
  const int blocks = static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, 65535LL * 8));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "max_unpool2d_backward_cuda", [&] {
    if (fmt == at::MemoryFormat::ChannelsLast)
      unpool_backward_kernel<scalar_t, true><<<blocks, kThreads, 0, stream>>>(
          g.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), grad_input.data_ptr<scalar_t>(), total, indices.size(1),
          in_plane, out_plane, flag);
    else
      unpool_backward_kernel<scalar_t, false><<<blocks, kThreads, 0, stream>>>(
          g.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), grad_input.data_ptr<scalar_t>(), total, indices.size(1),
          in_plane, out_plane, flag);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const at::Tensor host = bad.cpu();
  if (host[1].item<int64_t>()) bad_unpool_index(host[0].item<int64_t>(), {g.size(2), g.size(3)});
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg, CUDA, m) {
  m.impl("max_unpool2d", &max_unpool2d_cuda);
  m.impl("max_unpool2d_backward", &max_unpool2d_backward_cuda);
}

}  // namespace fastseg
