// CUDA soft-NMS and batched soft-NMS (schemas: csrc/soft_nms.cpp; semantics:
// fastseg/reference/soft_nms.py, the same as csrc/cpu/soft_nms_kernel.cpp).
//
// A GPU soft-NMS: the greedy loop is sequential by nature (each pick depends on all earlier decays),
// so it runs in ONE block of kThreads threads that stays resident for the whole loop, with the work of
// each step spread over the threads:
//   step: every thread walks its boxes i = tid, tid + kThreads, ... that are still alive, decays the
//         score of those of the kept box's class (IoU: box_iou.h, weight: soft_nms.h), drops those whose
//         score falls below score_threshold, and keeps its own best (score, lower index) survivor;
//         a block-wide argmax (warp shuffles, then shared memory) gives the next box to keep; thread 0
//         appends it to the output and marks it dead.
// One pass over the boxes and one block reduction per kept box, no host round trip inside the loop;
// the only host sync is reading the number of kept boxes to size the outputs (data-dependent, as in
// NMS). Scores and alive flags live in global memory (L1/L2-resident for the sizes soft-NMS sees).
// Arithmetic: double for fp64 inputs, float otherwise (fp16/bf16 convert exactly).

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>

#include "box_iou.h"
#include "soft_nms.h"

namespace fastseg {
namespace {

constexpr int kThreads = 1024;

template <typename T>
__device__ __forceinline__ bool ranks_before(T as, int64_t aid, T bs, int64_t bid) {
  // id < 0: no candidate. Higher score first, then lower index.
  if (aid < 0) return false;
  if (bid < 0) return true;
  return as > bs || (as == bs && aid < bid);
}

template <typename T>
__device__ __forceinline__ void warp_best(T& s, int64_t& id) {
  for (int o = 16; o > 0; o >>= 1) {
    const T os = __shfl_down_sync(0xffffffffu, s, o);
    const int64_t oid = __shfl_down_sync(0xffffffffu, id, o);
    if (ranks_before(os, oid, s, id)) s = os, id = oid;
  }
}

template <typename T, bool BATCHED>
__global__ void __launch_bounds__(kThreads)
    soft_nms_kernel(int64_t n, const T* __restrict__ boxes, const T* __restrict__ scores,
                    const int64_t* __restrict__ cls, T iou_threshold, T sigma, T score_threshold, int method,
                    T* __restrict__ work, uint8_t* __restrict__ alive, int64_t* __restrict__ keep,
                    T* __restrict__ kept_scores, int64_t* __restrict__ count) {
  __shared__ T s_warp_score[kThreads / 32];
  __shared__ int64_t s_warp_id[kThreads / 32];
  __shared__ int64_t s_pick;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  // Initial state and first argmax: NaN scores are dropped (they cannot be ranked).
  T best_s = T(0);
  int64_t best_id = -1;
  for (int64_t i = tid; i < n; i += kThreads) {
    const T s = scores[i];
    const bool ok = !isnan(s);
    work[i] = s;
    alive[i] = ok;
    if (ok && ranks_before(s, i, best_s, best_id)) best_s = s, best_id = i;
  }
  int64_t k = 0;
  while (true) {
    // Block argmax of the per-thread candidates.
    warp_best(best_s, best_id);
    if (lane == 0) s_warp_score[warp] = best_s, s_warp_id[warp] = best_id;
    __syncthreads();
    if (tid == 0) {
      T bs = s_warp_score[0];
      int64_t bid = s_warp_id[0];
      for (int w = 1; w < kThreads / 32; ++w)
        if (ranks_before(s_warp_score[w], s_warp_id[w], bs, bid)) bs = s_warp_score[w], bid = s_warp_id[w];
      s_pick = bid;
      if (bid >= 0) {
        keep[k] = bid;
        kept_scores[k] = bs;
        alive[bid] = 0;
      }
    }
    __syncthreads();
    const int64_t p = s_pick;
    if (p < 0) break;
    ++k;
    const T* pb = boxes + 4 * p;
    const T px1 = pb[0], py1 = pb[1], px2 = pb[2], py2 = pb[3];
    const T parea = box_area<T>(px1, py1, px2, py2);
    const int64_t pcls = BATCHED ? cls[p] : 0;
    // Decay, drop, and this thread's next candidate, in one pass.
    best_id = -1;
    for (int64_t i = tid; i < n; i += kThreads) {
      if (i == p || !alive[i]) continue;
      T s = work[i];
      if (!BATCHED || cls[i] == pcls) {
        const T* b = boxes + 4 * i;
        const T iou = nms_iou<T>(px1, py1, px2, py2, parea, b[0], b[1], b[2], b[3], box_area<T>(b[0], b[1], b[2], b[3]));
        s = s * soft_nms_weight<T>(iou, iou_threshold, sigma, method);
        work[i] = s;
      }
      if (!(s >= score_threshold)) {
        alive[i] = 0;
        continue;
      }
      if (ranks_before(s, i, best_s, best_id)) best_s = s, best_id = i;
    }
    // s_warp_* are rewritten only after the __syncthreads at the top of the next iteration's reduce.
    __syncthreads();
  }
  if (tid == 0) count[0] = k;
}

std::tuple<at::Tensor, at::Tensor> soft_nms_cuda_impl(const char* op, const at::Tensor& boxes,
                                                      const at::Tensor& scores, const at::Tensor& idxs,
                                                      double iou_threshold, double sigma, double score_threshold,
                                                      int64_t method) {
  check_soft_nms_inputs(op, boxes, scores, idxs, iou_threshold, sigma, score_threshold, method);
  TORCH_CHECK(boxes.is_cuda(), op, ": the CUDA kernel needs tensors on a CUDA device, got ", boxes.device());
  c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  const bool fp64 = boxes.scalar_type() == at::kDouble || scores.scalar_type() == at::kDouble;
  const at::ScalarType ct = fp64 ? at::kDouble : at::kFloat;
  if (n == 0) {
    return {at::empty({0}, boxes.options().dtype(at::kLong)), at::empty({0}, scores.options())};
  }
  const at::Tensor b = boxes.to(ct).contiguous();
  const at::Tensor s = scores.to(ct).contiguous();
  const at::Tensor c = idxs.defined() ? idxs.to(at::kLong).contiguous() : at::Tensor();
  at::Tensor work = at::empty({n}, s.options());
  at::Tensor alive = at::empty({n}, s.options().dtype(at::kByte));
  at::Tensor keep = at::empty({n}, s.options().dtype(at::kLong));
  at::Tensor kept_scores = at::empty({n}, s.options());
  at::Tensor count = at::empty({1}, s.options().dtype(at::kLong));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(ct, "soft_nms_cuda", [&] {
    auto launch = [&](auto batched) {
      constexpr bool B = decltype(batched)::value;
      soft_nms_kernel<scalar_t, B><<<1, kThreads, 0, stream>>>(
          n, b.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(), B ? c.data_ptr<int64_t>() : nullptr,
          static_cast<scalar_t>(iou_threshold), static_cast<scalar_t>(sigma), static_cast<scalar_t>(score_threshold),
          static_cast<int>(method), work.data_ptr<scalar_t>(), alive.data_ptr<uint8_t>(), keep.data_ptr<int64_t>(),
          kept_scores.data_ptr<scalar_t>(), count.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (c.defined()) {
      launch(std::true_type());
    } else {
      launch(std::false_type());
    }
  });
  const int64_t kept = count.item<int64_t>();  // the one host sync: the output size
  return {keep.slice(0, 0, kept), kept_scores.slice(0, 0, kept).to(scores.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor> soft_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                                                 double iou_threshold, double sigma, double score_threshold,
                                                 int64_t method) {
  return soft_nms_cuda_impl("soft_nms", boxes, scores, at::Tensor(), iou_threshold, sigma, score_threshold, method);
}

std::tuple<at::Tensor, at::Tensor> batched_soft_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                                                         const at::Tensor& idxs, double iou_threshold, double sigma,
                                                         double score_threshold, int64_t method) {
  return soft_nms_cuda_impl("batched_soft_nms", boxes, scores, idxs, iou_threshold, sigma, score_threshold,
                            method);
}

}  // namespace
}  // namespace fastseg

TORCH_LIBRARY_IMPL(fastseg, CUDA, m) {
  m.impl("soft_nms", &fastseg::soft_nms_cuda);
  m.impl("batched_soft_nms", &fastseg::batched_soft_nms_cuda);
}
