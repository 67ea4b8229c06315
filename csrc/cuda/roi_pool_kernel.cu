// CUDA kernels of fastseg::roi_pool and fastseg::roi_pool_backward (schemas: csrc/roi_pool.cpp; bins:
// csrc/roi_pool.h, shared with the CPU kernel). Forward: one thread per output element, reading the
// map through its strides. Backward, default: atomicAdd of each bin's gradient at its argmax into a
// compute-type accumulator. Backward, deterministic: one thread per (image, channel) plane walks the
// RoIs of its image (grouped by a stable sort, index order) and adds without atomics: bit-identical
// run to run.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>

#include "roi_align.h"
#include "roi_pool.h"

namespace fastseg {
namespace {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535LL * 32));
}

template <typename T, typename A>
__global__ void roi_pool_forward_kernel(const T* __restrict__ x, const A* __restrict__ rois, int64_t K,
                                        int64_t N, int64_t C, int64_t H, int64_t W, int64_t sn, int64_t sc,
                                        int64_t sh, int64_t sw, A scale, int64_t PH, int64_t PW,
                                        T* __restrict__ out, int32_t* __restrict__ argmax) {
  const int64_t bins = PH * PW, total = K * C * bins;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = idx % bins, c = (idx / bins) % C, k = idx / (C * bins);
    const A* r = rois + 5 * k;
    const int64_t n = static_cast<int64_t>(r[0]);
    if (n < 0 || n >= N) {
      out[idx] = static_cast<T>(0);
      argmax[idx] = -1;
      continue;
    }
    const PoolBin bin = roi_pool_bin<A>(r[1], r[2], r[3], r[4], scale, b / PW, b % PW, PH, PW, H, W);
    A best = bin.empty ? A(0) : static_cast<A>(-FLT_MAX);
    int32_t arg = -1;
    const T* plane = x + n * sn + c * sc;
    for (int64_t h = bin.hstart; h < bin.hend; ++h)
      for (int64_t w = bin.wstart; w < bin.wend; ++w) {
        const A v = static_cast<A>(plane[h * sh + w * sw]);
        if (v > best) best = v, arg = static_cast<int32_t>(h * W + w);
      }
    out[idx] = static_cast<T>(best);
    argmax[idx] = arg;
  }
}

template <typename T, typename A>
__global__ void roi_pool_backward_atomic_kernel(const T* __restrict__ grad, const int32_t* __restrict__ argmax,
                                                const A* __restrict__ rois, int64_t K, int64_t N, int64_t C,
                                                int64_t HW, int64_t bins, A* __restrict__ acc) {
  const int64_t total = K * C * bins;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = (idx / bins) % C, k = idx / (C * bins);
    const int64_t n = static_cast<int64_t>(rois[5 * k]);
    const int32_t a = argmax[idx];
    if (n < 0 || n >= N || a < 0 || a >= HW) continue;
    atomicAdd(acc + (n * C + c) * HW + a, static_cast<A>(grad[idx]));
  }
}

template <typename T, typename A>
__global__ void roi_pool_backward_det_kernel(const T* __restrict__ grad, const int32_t* __restrict__ argmax,
                                             const int64_t* __restrict__ order,
                                             const int64_t* __restrict__ image_start, int64_t N, int64_t C,
                                             int64_t HW, int64_t bins, A* __restrict__ acc) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < N * C;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = idx / C, c = idx % C;
    A* plane = acc + idx * HW;
    for (int64_t j = image_start[n]; j < image_start[n + 1]; ++j) {
      const int64_t off = (order[j] * C + c) * bins;
      for (int64_t q = 0; q < bins; ++q) {
        const int32_t a = argmax[off + q];
        if (a >= 0 && a < HW) plane[a] += static_cast<A>(grad[off + q]);
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor> roi_pool_cuda(const at::Tensor& input, const at::Tensor& rois,
                                                 double spatial_scale, int64_t ph, int64_t pw) {
  const char* op = "roi_pool";
  check_feature(op, input, input);
  check_rois(op, rois, input.device());
  check_pooled(op, ph, pw);
  c10::cuda::CUDAGuard guard(input.device());
  const int64_t K = rois.size(0), N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  at::Tensor out = at::empty({K, C, ph, pw}, input.options());
  at::Tensor argmax = at::empty({K, C, ph, pw}, input.options().dtype(at::kInt));
  if (out.numel() == 0) return {out, argmax};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_pool_cuda", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    const at::Tensor r = rois.to(c10::CppTypeToScalarType<A>::value).contiguous();
    roi_pool_forward_kernel<T, A><<<blocks_for(out.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        input.data_ptr<T>(), r.data_ptr<A>(), K, N, C, H, W, input.stride(0), input.stride(1), input.stride(2),
        input.stride(3), static_cast<A>(spatial_scale), ph, pw, out.data_ptr<T>(), argmax.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, argmax};
}

at::Tensor roi_pool_backward_cuda(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& rois,
                                  const at::Tensor& argmax, bool deterministic) {
  const char* op = "roi_pool_backward";
  check_feature(op, input, input);
  check_rois(op, rois, input.device());
  c10::cuda::CUDAGuard guard(input.device());
  const int64_t K = rois.size(0), N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == K && grad.size(1) == C, op, ": grad must have shape [", K, ", ",
              C, ", ph, pw], got ", grad.sizes());
  TORCH_CHECK(argmax.sizes() == grad.sizes() && argmax.scalar_type() == at::kInt, op,
              ": argmax must be an int32 tensor shaped like grad, got ", argmax.sizes());
  const at::ScalarType ct = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor acc = at::zeros({N, C, H, W}, input.options().dtype(ct));
  const int64_t bins = grad.size(2) * grad.size(3);
  if (K > 0 && C > 0 && bins > 0 && H * W > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_pool_backward_cuda", [&] {
      using T = scalar_t;
      using A = at::opmath_type<T>;
      const at::Tensor g = grad.to(input.scalar_type()).contiguous();
      const at::Tensor a = argmax.contiguous();
      const at::Tensor r = rois.to(c10::CppTypeToScalarType<A>::value).contiguous();
      auto stream = at::cuda::getCurrentCUDAStream();
      if (!deterministic) {
        roi_pool_backward_atomic_kernel<T, A><<<blocks_for(g.numel()), kThreads, 0, stream>>>(
            g.data_ptr<T>(), a.data_ptr<int32_t>(), r.data_ptr<A>(), K, N, C, H * W, bins, acc.data_ptr<A>());
      } else {
        at::Tensor n = r.select(1, 0).to(at::kLong);
        const at::Tensor key = at::where(n.lt(0).logical_or(n.ge(N)), at::full_like(n, N), n);
        const auto sorted = at::sort(key, /*stable=*/true, /*dim=*/0, /*descending=*/false);
        const at::Tensor order = std::get<1>(sorted).contiguous();
        const at::Tensor starts =
            at::searchsorted(std::get<0>(sorted).contiguous(), at::arange(N + 1, key.options())).contiguous();
        roi_pool_backward_det_kernel<T, A><<<blocks_for(N * C), kThreads, 0, stream>>>(
            g.data_ptr<T>(), a.data_ptr<int32_t>(), order.data_ptr<int64_t>(), starts.data_ptr<int64_t>(), N, C,
            H * W, bins, acc.data_ptr<A>());
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  at::Tensor res = acc.to(input.scalar_type());
  const bool cl = input.is_contiguous(at::MemoryFormat::ChannelsLast) && !input.is_contiguous();
  return cl ? res.contiguous(at::MemoryFormat::ChannelsLast) : res;
}

}  // namespace
}  // namespace fastseg

TORCH_LIBRARY_IMPL(fastseg, CUDA, m) {
  m.impl("roi_pool", &fastseg::roi_pool_cuda);
  m.impl("roi_pool_backward", &fastseg::roi_pool_backward_cuda);
}
