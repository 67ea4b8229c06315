// CPU kernels of the pairwise IoU ops (schemas: csrc/box_iou_ops.cpp): box_iou, generalized_box_iou,
// distance_box_iou, complete_box_iou.
//
// Per batch: the per-box terms of boxes2 (corners, area, centre, atan(w/h)) are computed once into
// structure-of-arrays, then rows of boxes1 are processed in parallel; the inner loop over boxes2 is
// branch-free (pair_iou in csrc/box_ops.h, the maths shared with CUDA) and vectorised by the compiler
// (target_clones: AVX-512 / AVX2 / baseline, picked at run time). fp16/bf16 compute in fp32 and round
// `rb - lt` to the input dtype where torchvision does; the result is fp32 (fp64 for fp64 boxes).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "box_checks.h"
#include "cpu/clones.h"

// Lets the vectoriser if-convert the NaN-propagating selects of pair_iou; changes no rounding (FP
// contraction stays off). See cpu/box_coder_kernel.cpp.
#pragma GCC optimize("no-trapping-math")
#include "box_ops.h"

namespace fastseg {
namespace {

template <typename A>
struct Soa {
  std::vector<A> x1, y1, x2, y2, area, cx, cy, at;
};

template <IouKind K, typename R, typename A>
FASTSEG_CLONES void iou_row(const BoxTerms<A> a, const A* __restrict x1, const A* __restrict y1,
                            const A* __restrict x2, const A* __restrict y2, const A* __restrict area,
                            const A* __restrict cx, const A* __restrict cy, const A* __restrict at,
                            int64_t m, A eps, A* __restrict out) {
  for (int64_t j = 0; j < m; ++j) {
    out[j] = pair_iou<K, R, A>(a.x1, a.y1, a.x2, a.y2, a.area, a.cx, a.cy, a.atan_wh, x1[j], y1[j],
                               x2[j], y2[j], area[j], cx[j], cy[j], at[j], eps);
  }
}

template <IouKind K, typename T>
void pairwise_cpu_impl(const at::Tensor& b1, const at::Tensor& b2, at::Tensor& out, double eps_d) {
  using A = typename OpMath<T>::type;
  // DIoU/CIoU: torchvision upcasts the boxes first, so nothing is rounded to the input dtype.
  using R = std::conditional_t<(K == IouKind::kIoU || K == IouKind::kGIoU), T, A>;
  constexpr bool kAtan = K == IouKind::kCIoU;
  const int64_t batches = b1.size(0), n = b1.size(1), m = b2.size(1);
  const T* p1 = b1.const_data_ptr<T>();
  const T* p2 = b2.const_data_ptr<T>();
  A* po = out.data_ptr<A>();
  const A eps = static_cast<A>(eps_d);
  for (int64_t bi = 0; bi < batches; ++bi) {
    Soa<A> s;
    for (auto* v : {&s.x1, &s.y1, &s.x2, &s.y2, &s.area, &s.cx, &s.cy, &s.at}) v->resize(m);
    at::parallel_for(0, m, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        const T* q = p2 + 4 * (bi * m + j);
        const BoxTerms<A> t = box_terms<A>(static_cast<A>(q[0]), static_cast<A>(q[1]),
                                           static_cast<A>(q[2]), static_cast<A>(q[3]), kAtan);
        s.x1[j] = t.x1, s.y1[j] = t.y1, s.x2[j] = t.x2, s.y2[j] = t.y2;
        s.area[j] = t.area, s.cx[j] = t.cx, s.cy[j] = t.cy, s.at[j] = t.atan_wh;
      }
    });
    // Rows in parallel; a grain of rows worth ~32k pairs keeps the task overhead negligible.
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(m, 1));
    at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const T* q = p1 + 4 * (bi * n + i);
        const BoxTerms<A> a = box_terms<A>(static_cast<A>(q[0]), static_cast<A>(q[1]),
                                           static_cast<A>(q[2]), static_cast<A>(q[3]), kAtan);
        iou_row<K, R, A>(a, s.x1.data(), s.y1.data(), s.x2.data(), s.y2.data(), s.area.data(),
                         s.cx.data(), s.cy.data(), s.at.data(), m, eps, po + (bi * n + i) * m);
      }
    });
  }
}

template <IouKind K>
at::Tensor pairwise_cpu(const char* op, const at::Tensor& boxes1, const at::Tensor& boxes2,
                        double eps) {
  check_pairwise_inputs(op, boxes1, boxes2, eps);
  const bool batched = boxes1.dim() == 3;
  const at::Tensor b1 = (batched ? boxes1 : boxes1.unsqueeze(0)).contiguous();
  const at::Tensor b2 = (batched ? boxes2 : boxes2.unsqueeze(0)).contiguous();
  at::Tensor out = at::empty({b1.size(0), b1.size(1), b2.size(1)},
                             boxes1.options().dtype(pairwise_out_dtype(boxes1.scalar_type())));
  if (out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b1.scalar_type(), "pairwise_box_iou_cpu", [&] {
      pairwise_cpu_impl<K, scalar_t>(b1, b2, out, eps);
    });
  }
  return batched ? out : out.squeeze(0);
}

at::Tensor box_iou_cpu(const at::Tensor& b1, const at::Tensor& b2) {
  return pairwise_cpu<IouKind::kIoU>("box_iou", b1, b2, 0.0);
}
at::Tensor generalized_box_iou_cpu(const at::Tensor& b1, const at::Tensor& b2) {
  return pairwise_cpu<IouKind::kGIoU>("generalized_box_iou", b1, b2, 0.0);
}
at::Tensor distance_box_iou_cpu(const at::Tensor& b1, const at::Tensor& b2, double eps) {
  return pairwise_cpu<IouKind::kDIoU>("distance_box_iou", b1, b2, eps);
}
at::Tensor complete_box_iou_cpu(const at::Tensor& b1, const at::Tensor& b2, double eps) {
  return pairwise_cpu<IouKind::kCIoU>("complete_box_iou", b1, b2, eps);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg, CPU, m) {
  m.impl("box_iou", &box_iou_cpu);
  m.impl("generalized_box_iou", &generalized_box_iou_cpu);
  m.impl("distance_box_iou", &distance_box_iou_cpu);
  m.impl("complete_box_iou", &complete_box_iou_cpu);
}

}  // namespace fastseg
