// CUDA kernels of the sigmoid focal loss (schemas: csrc/sigmoid_focal_loss.cpp). The per-element maths
// is focal_loss.h, the very code the CPU kernels run (fp32 for fp32/fp16/bf16, fp64 for fp64).
//
// One pass per op, no host sync:
// - forward "none": each thread reads x and t and writes the loss (kItems elements per thread,
//   coalesced: element base + k * blockDim.x + threadIdx.x);
// - forward "mean"/"sum": the same, but each block writes one partial sum (warp shuffles, then shared
//   memory); a second one-block kernel adds the partials in a fixed order in double, applies the mean,
//   the scale and the normaliser (read on the device), and writes the 0-dim result. Deterministic: the
//   grid depends only on the size;
// - backward: reads x, t and the incoming gradient (one scalar on the device for mean/sum) and writes
//   the gradient, recomputing the terms.
// The labels form reads logits [N, C] and labels [N]: element i is row i / C, class i % C, and the
// target is (class == label); rows labelled ignore_index give 0. No one-hot tensor exists.
//
// Traffic per element (fp32): forward 8 bytes read (+4 written for "none"), backward 8 read + 4 written
// (+4 read for "none"): the floor of a loss whose gradient is recomputed rather than stored.

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>

#include "focal_loss.h"

namespace fastseg {
namespace {

constexpr int kThreads = 256;
// Elements per thread: 4 independent loads in flight per thread, 1024 per block.
constexpr int kItems = 4;
constexpr int64_t kPerBlock = int64_t(kThreads) * kItems;
constexpr int kFinishThreads = 1024;

int64_t blocks_for(int64_t n) { return (n + kPerBlock - 1) / kPerBlock; }

template <typename acc_t>
__device__ acc_t block_sum(acc_t v) {
  __shared__ acc_t warp_sums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  acc_t s = 0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kThreads / 32; ++w) s += warp_sums[w];  // fixed order
  }
  return s;  // valid in thread 0
}

// ---- plain form -------------------------------------------------------------------------------------

template <int G, typename scalar_t, bool REDUCE>
__global__ void __launch_bounds__(kThreads)
    focal_fwd_kernel(int64_t n, const scalar_t* __restrict__ x, const scalar_t* __restrict__ t,
                     scalar_t* __restrict__ out, at::opmath_type<scalar_t>* __restrict__ partial,
                     at::opmath_type<scalar_t> alpha, at::opmath_type<scalar_t> gamma) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kPerBlock + threadIdx.x;
  acc_t xs[kItems], ts[kItems];
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    const int64_t i = base + int64_t(k) * kThreads;
    xs[k] = i < n ? static_cast<acc_t>(x[i]) : acc_t(0);
    ts[k] = i < n ? static_cast<acc_t>(t[i]) : acc_t(0);
  }
  acc_t s = 0;
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    const int64_t i = base + int64_t(k) * kThreads;
    const acc_t l = focal_loss_value<G>(xs[k], ts[k], alpha, gamma);
    if (REDUCE) {
      if (i < n) s += l;
    } else if (i < n) {
      out[i] = static_cast<scalar_t>(l);
    }
  }
  if (REDUCE) {
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
  }
}

// grad_scalar != nullptr: every element's incoming gradient is grad_scalar[0] * g_scale.
template <int G, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    focal_bwd_kernel(int64_t n, const scalar_t* __restrict__ grad, const scalar_t* __restrict__ grad_scalar,
                     double g_scale, const scalar_t* __restrict__ x, const scalar_t* __restrict__ t,
                     scalar_t* __restrict__ out, at::opmath_type<scalar_t> alpha,
                     at::opmath_type<scalar_t> gamma) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kPerBlock + threadIdx.x;
  const acc_t gs = grad_scalar != nullptr
                       ? static_cast<acc_t>(static_cast<acc_t>(grad_scalar[0]) * static_cast<acc_t>(g_scale))
                       : acc_t(0);
  acc_t xs[kItems], ts[kItems], gs_[kItems];
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    const int64_t i = base + int64_t(k) * kThreads;
    xs[k] = i < n ? static_cast<acc_t>(x[i]) : acc_t(0);
    ts[k] = i < n ? static_cast<acc_t>(t[i]) : acc_t(0);
    gs_[k] = grad_scalar != nullptr ? gs : (i < n ? static_cast<acc_t>(grad[i]) : acc_t(0));
  }
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    const int64_t i = base + int64_t(k) * kThreads;
    if (i < n) out[i] = static_cast<scalar_t>(gs_[k] * focal_loss_grad<G>(xs[k], ts[k], alpha, gamma));
  }
}

// ---- labels form ------------------------------------------------------------------------------------

template <int G, typename scalar_t, bool REDUCE>
__global__ void __launch_bounds__(kThreads)
    focal_labels_fwd_kernel(int64_t n, int64_t cols, const scalar_t* __restrict__ x,
                            const int64_t* __restrict__ labels, int64_t ignore_index,
                            const at::opmath_type<scalar_t>* __restrict__ normalizer, double scale,
                            scalar_t* __restrict__ out, at::opmath_type<scalar_t>* __restrict__ partial,
                            at::opmath_type<scalar_t> alpha, at::opmath_type<scalar_t> gamma) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kPerBlock + threadIdx.x;
  acc_t factor = static_cast<acc_t>(scale);
  if (!REDUCE && normalizer != nullptr) factor = factor / normalizer[0];
  acc_t s = 0;
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    const int64_t i = base + int64_t(k) * kThreads;
    if (i < n) {
      const int64_t row = i / cols, col = i - row * cols;
      const int64_t label = labels[row];
      const acc_t tv = col == label ? acc_t(1) : acc_t(0);
      const acc_t l = label == ignore_index
                          ? acc_t(0)
                          : focal_loss_value<G>(static_cast<acc_t>(x[i]), tv, alpha, gamma);
      if (REDUCE) {
        s += l;
      } else {
        out[i] = static_cast<scalar_t>(l * factor);
      }
    }
  }
  if (REDUCE) {
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
  }
}

template <int G, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    focal_labels_bwd_kernel(int64_t n, int64_t cols, const scalar_t* __restrict__ grad,
                            const scalar_t* __restrict__ grad_scalar, double g_scale,
                            const scalar_t* __restrict__ x, const int64_t* __restrict__ labels,
                            int64_t ignore_index, const at::opmath_type<scalar_t>* __restrict__ normalizer,
                            scalar_t* __restrict__ out, at::opmath_type<scalar_t> alpha,
                            at::opmath_type<scalar_t> gamma) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kPerBlock + threadIdx.x;
  acc_t factor = static_cast<acc_t>(g_scale);
  if (normalizer != nullptr) factor = factor / normalizer[0];
  const acc_t gs = grad_scalar != nullptr ? static_cast<acc_t>(grad_scalar[0]) * factor : acc_t(0);
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    const int64_t i = base + int64_t(k) * kThreads;
    if (i < n) {
      const int64_t row = i / cols, col = i - row * cols;
      const int64_t label = labels[row];
      const acc_t tv = col == label ? acc_t(1) : acc_t(0);
      const acc_t g = grad_scalar != nullptr ? gs : static_cast<acc_t>(grad[i]) * factor;
      out[i] = label == ignore_index
                   ? scalar_t(0)
                   : static_cast<scalar_t>(g * focal_loss_grad<G>(static_cast<acc_t>(x[i]), tv, alpha, gamma));
    }
  }
}

// Sum of the partials in a fixed order (deterministic), in double; mean; * scale / normalizer.
template <typename scalar_t>
__global__ void __launch_bounds__(kFinishThreads)
    focal_finish_kernel(int64_t blocks, const at::opmath_type<scalar_t>* __restrict__ partial, double divisor,
                        double scale, const at::opmath_type<scalar_t>* __restrict__ normalizer,
                        scalar_t* __restrict__ out) {
  __shared__ double sums[kFinishThreads];
  double s = 0;
  for (int64_t b = threadIdx.x; b < blocks; b += kFinishThreads) s += static_cast<double>(partial[b]);
  sums[threadIdx.x] = s;
  __syncthreads();
  for (int w = kFinishThreads / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) sums[threadIdx.x] += sums[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    double r = sums[0] / divisor * scale;  // divisor: n for mean (n == 0: nan, as torch), else 1
    if (normalizer != nullptr) r = r / static_cast<double>(normalizer[0]);
    out[0] = static_cast<scalar_t>(r);
  }
}

// ---- host side --------------------------------------------------------------------------------------

template <typename Fn>
void dispatch_gamma(double gamma, Fn&& fn) {
  if (gamma == 0.0) {
    fn(std::integral_constant<int, 0>());
  } else if (gamma == 1.0) {
    fn(std::integral_constant<int, 1>());
  } else if (gamma == 2.0) {
    fn(std::integral_constant<int, 2>());
  } else {
    fn(std::integral_constant<int, -1>());
  }
}

#define FASTSEG_DISPATCH_FOCAL_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

void check_cuda(const char* op, const at::Tensor& t) {
  TORCH_CHECK(t.is_cuda(), op, ": the CUDA kernel needs tensors on a CUDA device, got ", t.device());
}

template <typename scalar_t>
void launch_finish(int64_t blocks, const at::Tensor& partial, double divisor, double scale,
                   const at::Tensor& normalizer, at::Tensor& out, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  focal_finish_kernel<scalar_t><<<1, kFinishThreads, 0, stream>>>(
      blocks, partial.data_ptr<acc_t>(), divisor, scale,
      normalizer.defined() ? normalizer.data_ptr<acc_t>() : nullptr, out.data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor sigmoid_focal_loss_cuda(const at::Tensor& inputs_, const at::Tensor& targets_, double alpha,
                                   double gamma, int64_t reduction) {
  check_focal_inputs("sigmoid_focal_loss", inputs_, targets_, alpha, gamma, reduction);
  check_cuda("sigmoid_focal_loss", inputs_);
  c10::cuda::CUDAGuard guard(inputs_.device());
  const at::Tensor inputs = inputs_.contiguous();
  const at::Tensor targets = targets_.to(inputs.scalar_type()).contiguous();
  const int64_t n = inputs.numel();
  const bool reduce = reduction != kFocalNone;
  at::Tensor out = reduce ? at::empty({}, inputs.options()) : at::empty_like(inputs);
  const int64_t blocks = blocks_for(n);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  FASTSEG_DISPATCH_FOCAL_TYPES(inputs.scalar_type(), "sigmoid_focal_loss_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor partial;
    if (reduce) partial = at::empty({std::max<int64_t>(blocks, 1)}, inputs.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    dispatch_gamma(gamma, [&](auto g) {
      constexpr int G = decltype(g)::value;
      if (blocks == 0) return;
      if (reduce) {
        focal_fwd_kernel<G, scalar_t, true><<<blocks, kThreads, 0, stream>>>(
            n, inputs.data_ptr<scalar_t>(), targets.data_ptr<scalar_t>(), nullptr, partial.data_ptr<acc_t>(),
            static_cast<acc_t>(alpha), static_cast<acc_t>(gamma));
      } else {
        focal_fwd_kernel<G, scalar_t, false><<<blocks, kThreads, 0, stream>>>(
            n, inputs.data_ptr<scalar_t>(), targets.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), nullptr,
            static_cast<acc_t>(alpha), static_cast<acc_t>(gamma));
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    if (reduce) {
      launch_finish<scalar_t>(blocks, partial, reduction == kFocalMean ? static_cast<double>(n) : 1.0, 1.0,
                              at::Tensor(), out, stream);
    }
  });
  return out;
}

at::Tensor sigmoid_focal_loss_backward_cuda(const at::Tensor& grad_, const at::Tensor& inputs_,
                                            const at::Tensor& targets_, double alpha, double gamma,
                                            int64_t reduction) {
  check_focal_inputs("sigmoid_focal_loss_backward", inputs_, targets_, alpha, gamma, reduction);
  check_focal_grad("sigmoid_focal_loss_backward", grad_, inputs_, reduction);
  check_cuda("sigmoid_focal_loss_backward", inputs_);
  c10::cuda::CUDAGuard guard(inputs_.device());
  const at::Tensor inputs = inputs_.contiguous();
  const at::Tensor targets = targets_.to(inputs.scalar_type()).contiguous();
  const at::Tensor grad = grad_.to(inputs.scalar_type()).contiguous();
  const int64_t n = inputs.numel();
  const bool reduce = reduction != kFocalNone;
  at::Tensor out = at::empty_like(inputs);
  const int64_t blocks = blocks_for(n);
  if (blocks == 0) return out;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  FASTSEG_DISPATCH_FOCAL_TYPES(inputs.scalar_type(), "sigmoid_focal_loss_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_gamma(gamma, [&](auto g) {
      constexpr int G = decltype(g)::value;
      focal_bwd_kernel<G, scalar_t><<<blocks, kThreads, 0, stream>>>(
          n, reduce ? nullptr : grad.data_ptr<scalar_t>(), reduce ? grad.data_ptr<scalar_t>() : nullptr,
          reduction == kFocalMean ? 1.0 / static_cast<double>(n) : 1.0, inputs.data_ptr<scalar_t>(),
          targets.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), static_cast<acc_t>(alpha),
          static_cast<acc_t>(gamma));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

// The normaliser as a one-element tensor of the compute type (a device op, no sync), or undefined.
at::Tensor normalizer_of(const c10::optional<at::Tensor>& normalizer, at::ScalarType acc) {
  if (!normalizer.has_value() || !normalizer->defined()) return at::Tensor();
  return normalizer->reshape({1}).to(acc).contiguous();
}

at::Tensor sigmoid_focal_loss_with_labels_cuda(const at::Tensor& logits_, const at::Tensor& labels_, double alpha,
                                               double gamma, const c10::optional<at::Tensor>& normalizer_,
                                               double scale, int64_t ignore_index, int64_t reduction) {
  check_focal_labels_inputs("sigmoid_focal_loss_with_labels", logits_, labels_, alpha, gamma, normalizer_,
                            reduction);
  check_cuda("sigmoid_focal_loss_with_labels", logits_);
  c10::cuda::CUDAGuard guard(logits_.device());
  const at::Tensor logits = logits_.contiguous();
  const at::Tensor labels = labels_.to(at::kLong).contiguous();
  const int64_t cols = logits.size(1), n = logits.numel();
  const bool reduce = reduction != kFocalNone;
  at::Tensor out = reduce ? at::empty({}, logits.options()) : at::empty_like(logits);
  const int64_t blocks = blocks_for(n);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  FASTSEG_DISPATCH_FOCAL_TYPES(logits.scalar_type(), "sigmoid_focal_loss_with_labels_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::ScalarType acc_type = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor normalizer = normalizer_of(normalizer_, acc_type);
    const acc_t* norm_ptr = normalizer.defined() ? normalizer.data_ptr<acc_t>() : nullptr;
    at::Tensor partial;
    if (reduce) partial = at::empty({std::max<int64_t>(blocks, 1)}, logits.options().dtype(acc_type));
    dispatch_gamma(gamma, [&](auto g) {
      constexpr int G = decltype(g)::value;
      if (blocks == 0) return;
      if (reduce) {
        focal_labels_fwd_kernel<G, scalar_t, true><<<blocks, kThreads, 0, stream>>>(
            n, cols, logits.data_ptr<scalar_t>(), labels.data_ptr<int64_t>(), ignore_index, norm_ptr, scale,
            nullptr, partial.data_ptr<acc_t>(), static_cast<acc_t>(alpha), static_cast<acc_t>(gamma));
      } else {
        focal_labels_fwd_kernel<G, scalar_t, false><<<blocks, kThreads, 0, stream>>>(
            n, cols, logits.data_ptr<scalar_t>(), labels.data_ptr<int64_t>(), ignore_index, norm_ptr, scale,
            out.data_ptr<scalar_t>(), nullptr, static_cast<acc_t>(alpha), static_cast<acc_t>(gamma));
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    if (reduce) {
      launch_finish<scalar_t>(blocks, partial, reduction == kFocalMean ? static_cast<double>(n) : 1.0, scale,
                              normalizer, out, stream);
    }
  });
  return out;
}

at::Tensor sigmoid_focal_loss_with_labels_backward_cuda(const at::Tensor& grad_, const at::Tensor& logits_,
                                                        const at::Tensor& labels_, double alpha, double gamma,
                                                        const c10::optional<at::Tensor>& normalizer_,
                                                        double scale, int64_t ignore_index, int64_t reduction) {
  check_focal_labels_inputs("sigmoid_focal_loss_with_labels_backward", logits_, labels_, alpha, gamma,
                            normalizer_, reduction);
  check_focal_grad("sigmoid_focal_loss_with_labels_backward", grad_, logits_, reduction);
  check_cuda("sigmoid_focal_loss_with_labels_backward", logits_);
  c10::cuda::CUDAGuard guard(logits_.device());
  const at::Tensor logits = logits_.contiguous();
  const at::Tensor labels = labels_.to(at::kLong).contiguous();
  const at::Tensor grad = grad_.to(logits.scalar_type()).contiguous();
  const int64_t cols = logits.size(1), n = logits.numel();
  const bool reduce = reduction != kFocalNone;
  at::Tensor out = at::empty_like(logits);
  const int64_t blocks = blocks_for(n);
  if (blocks == 0) return out;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  FASTSEG_DISPATCH_FOCAL_TYPES(logits.scalar_type(), "sigmoid_focal_loss_with_labels_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor normalizer = normalizer_of(normalizer_, c10::CppTypeToScalarType<acc_t>::value);
    const double g_scale = reduction == kFocalMean ? scale / static_cast<double>(n) : scale;
    dispatch_gamma(gamma, [&](auto g) {
      constexpr int G = decltype(g)::value;
      focal_labels_bwd_kernel<G, scalar_t><<<blocks, kThreads, 0, stream>>>(
          n, cols, reduce ? nullptr : grad.data_ptr<scalar_t>(), reduce ? grad.data_ptr<scalar_t>() : nullptr,
          g_scale, logits.data_ptr<scalar_t>(), labels.data_ptr<int64_t>(), ignore_index,
          normalizer.defined() ? normalizer.data_ptr<acc_t>() : nullptr, out.data_ptr<scalar_t>(),
          static_cast<acc_t>(alpha), static_cast<acc_t>(gamma));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

}  // namespace
}  // namespace fastseg

TORCH_LIBRARY_IMPL(fastseg, CUDA, m) {
  m.impl("sigmoid_focal_loss", &fastseg::sigmoid_focal_loss_cuda);
  m.impl("sigmoid_focal_loss_backward", &fastseg::sigmoid_focal_loss_backward_cuda);
  m.impl("sigmoid_focal_loss_with_labels", &fastseg::sigmoid_focal_loss_with_labels_cuda);
  m.impl("sigmoid_focal_loss_with_labels_backward", &fastseg::sigmoid_focal_loss_with_labels_backward_cuda);
}
