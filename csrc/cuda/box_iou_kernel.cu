// CUDA kernels of the pairwise IoU ops (schemas: csrc/box_iou_ops.cpp): one thread per output
// element (b, i, j), j fastest so that the stores and the loads of boxes2 coalesce; the per-box
// terms are recomputed per pair (cheaper than a second pass for these few flops) with the same
// helpers as the CPU kernel (box_terms, pair_iou in csrc/box_ops.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <type_traits>

#include "box_checks.h"
#include "box_ops.h"

namespace fastseg {
namespace {

constexpr int kThreads = 256;

template <IouKind K, typename T>
__global__ void pairwise_kernel(const T* __restrict__ b1, const T* __restrict__ b2,
                                typename OpMath<T>::type* __restrict__ out, int64_t n, int64_t m,
                                int64_t total, typename OpMath<T>::type eps) {
  using A = typename OpMath<T>::type;
  using R = std::conditional_t<(K == IouKind::kIoU || K == IouKind::kGIoU), T, A>;
  constexpr bool kAtan = K == IouKind::kCIoU;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = idx % m;
    const int64_t bi = idx / m;  // b * n + i
    const int64_t b = bi / n;
    const T* p = b1 + 4 * bi;
    const T* q = b2 + 4 * (b * m + j);
    const BoxTerms<A> s = box_terms<A>(static_cast<A>(p[0]), static_cast<A>(p[1]),
                                       static_cast<A>(p[2]), static_cast<A>(p[3]), kAtan);
    const BoxTerms<A> t = box_terms<A>(static_cast<A>(q[0]), static_cast<A>(q[1]),
                                       static_cast<A>(q[2]), static_cast<A>(q[3]), kAtan);
    out[idx] = pair_iou<K, R, A>(s.x1, s.y1, s.x2, s.y2, s.area, s.cx, s.cy, s.atan_wh, t.x1, t.y1,
                                 t.x2, t.y2, t.area, t.cx, t.cy, t.atan_wh, eps);
  }
}

template <IouKind K>
at::Tensor pairwise_cuda(const char* op, const at::Tensor& boxes1, const at::Tensor& boxes2,
                         double eps) {
  check_pairwise_inputs(op, boxes1, boxes2, eps);
  TORCH_CHECK(boxes1.is_cuda(), op, ": the CUDA kernel needs CUDA tensors, got ", boxes1.device());
  c10::cuda::CUDAGuard guard(boxes1.device());
  const bool batched = boxes1.dim() == 3;
  const at::Tensor b1 = (batched ? boxes1 : boxes1.unsqueeze(0)).contiguous();
  const at::Tensor b2 = (batched ? boxes2 : boxes2.unsqueeze(0)).contiguous();
  at::Tensor out = at::empty({b1.size(0), b1.size(1), b2.size(1)},
                             boxes1.options().dtype(pairwise_out_dtype(boxes1.scalar_type())));
  const int64_t total = out.numel();
  if (total > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b1.scalar_type(), "pairwise_box_iou_cuda", [&] {
      using A = typename OpMath<scalar_t>::type;
      const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, 65535 * 8);
      pairwise_kernel<K, scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0,
                                     at::cuda::getCurrentCUDAStream()>>>(
          b1.const_data_ptr<scalar_t>(), b2.const_data_ptr<scalar_t>(), out.mutable_data_ptr<A>(), b1.size(1),
          b2.size(1), total, static_cast<A>(eps));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return batched ? out : out.squeeze(0);
}

at::Tensor box_iou_cuda(const at::Tensor& b1, const at::Tensor& b2) {
  return pairwise_cuda<IouKind::kIoU>("box_iou", b1, b2, 0.0);
}
at::Tensor generalized_box_iou_cuda(const at::Tensor& b1, const at::Tensor& b2) {
  return pairwise_cuda<IouKind::kGIoU>("generalized_box_iou", b1, b2, 0.0);
}
at::Tensor distance_box_iou_cuda(const at::Tensor& b1, const at::Tensor& b2, double eps) {
  return pairwise_cuda<IouKind::kDIoU>("distance_box_iou", b1, b2, eps);
}
at::Tensor complete_box_iou_cuda(const at::Tensor& b1, const at::Tensor& b2, double eps) {
  return pairwise_cuda<IouKind::kCIoU>("complete_box_iou", b1, b2, eps);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg, CUDA, m) {
  m.impl("box_iou", &box_iou_cuda);
  m.impl("generalized_box_iou", &generalized_box_iou_cuda);
  m.impl("distance_box_iou", &distance_box_iou_cuda);
  m.impl("complete_box_iou", &complete_box_iou_cuda);
}

}  // namespace fastseg
