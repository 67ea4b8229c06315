// CPU soft-NMS and class-aware batched soft-NMS (semantics: fastseg/reference/soft_nms.py).
//
// The remaining boxes live in a compacted structure of arrays. Each step keeps the box of highest
// current score (ties: lower index), then ONE pass over the remaining boxes decays their scores
// (IoU with csrc/box_iou.h's operations, weight with soft_nms.h's), drops those whose score falls below
// score_threshold by compacting in place, and finds the next maximum on the way -- so a step is one
// read of the survivors, and the set shrinks as boxes fall below the threshold.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "soft_nms.h"

namespace fastseg {
namespace {

template <typename T>
struct Remaining {
  std::vector<T> x1, y1, x2, y2, area, score;
  std::vector<int64_t> id, cls;
};

// (a_score, a_id) ranks before (b_score, b_id): higher score, then lower index.
template <typename T>
inline bool ranks_before(T as, int64_t aid, T bs, int64_t bid) {
  return as > bs || (as == bs && aid < bid);
}

template <typename T>
void soft_nms_loop(const T* boxes, const T* scores, const int64_t* cls, int64_t n, T iou_threshold, T sigma,
                   T score_threshold, int method, std::vector<int64_t>& keep, std::vector<T>& kept_scores) {
  Remaining<T> r;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(scores[i])) continue;  // cannot be ranked: dropped
    const T* b = boxes + 4 * i;
    r.x1.push_back(b[0]), r.y1.push_back(b[1]), r.x2.push_back(b[2]), r.y2.push_back(b[3]);
    r.area.push_back(box_area(b[0], b[1], b[2], b[3]));
    r.score.push_back(scores[i]);
    r.id.push_back(i);
    r.cls.push_back(cls != nullptr ? cls[i] : 0);
  }
  int64_t m = static_cast<int64_t>(r.id.size());
  int64_t best = -1;
  for (int64_t k = 0; k < m; ++k)
    if (best < 0 || ranks_before(r.score[k], r.id[k], r.score[best], r.id[best])) best = k;

  while (m > 0) {
    const T bx1 = r.x1[best], by1 = r.y1[best], bx2 = r.x2[best], by2 = r.y2[best], barea = r.area[best];
    const int64_t bcls = r.cls[best];
    keep.push_back(r.id[best]);
    kept_scores.push_back(r.score[best]);
    // Decay, compact and find the next maximum in one pass over the others.
    int64_t w = 0, next = -1;
    for (int64_t k = 0; k < m; ++k) {
      if (k == best) continue;
      T s = r.score[k];
      if (r.cls[k] == bcls) {
        const T iou = nms_iou(bx1, by1, bx2, by2, barea, r.x1[k], r.y1[k], r.x2[k], r.y2[k], r.area[k]);
        s = s * soft_nms_weight(iou, iou_threshold, sigma, method);
      }
      if (!(s >= score_threshold)) continue;  // below the threshold (or NaN): dropped
      r.x1[w] = r.x1[k], r.y1[w] = r.y1[k], r.x2[w] = r.x2[k], r.y2[w] = r.y2[k], r.area[w] = r.area[k];
      r.score[w] = s, r.id[w] = r.id[k], r.cls[w] = r.cls[k];
      if (next < 0 || ranks_before(s, r.id[w], r.score[next], r.id[next])) next = w;
      ++w;
    }
    m = w;
    best = next;
  }
}

std::tuple<at::Tensor, at::Tensor> soft_nms_impl(const char* op, const at::Tensor& boxes, const at::Tensor& scores,
                                                 const at::Tensor& idxs, double iou_threshold, double sigma,
                                                 double score_threshold, int64_t method) {
  check_soft_nms_inputs(op, boxes, scores, idxs, iou_threshold, sigma, score_threshold, method);
  const int64_t n = boxes.size(0);
  const bool fp64 = boxes.scalar_type() == at::kDouble || scores.scalar_type() == at::kDouble;
  const at::ScalarType ct = fp64 ? at::kDouble : at::kFloat;  // fp16/bf16 convert exactly to fp32
  const at::Tensor b = boxes.to(ct).contiguous();
  const at::Tensor s = scores.to(ct).contiguous();
  const at::Tensor c = idxs.defined() ? idxs.to(at::kLong).contiguous() : at::Tensor();
  std::vector<int64_t> keep;
  at::Tensor kept;
  AT_DISPATCH_FLOATING_TYPES(ct, "soft_nms_cpu", [&] {
    std::vector<scalar_t> kept_scores;
    soft_nms_loop<scalar_t>(b.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(),
                            c.defined() ? c.data_ptr<int64_t>() : nullptr, n, static_cast<scalar_t>(iou_threshold),
                            static_cast<scalar_t>(sigma), static_cast<scalar_t>(score_threshold),
                            static_cast<int>(method), keep, kept_scores);
    kept = at::empty({static_cast<int64_t>(kept_scores.size())}, s.options());
    std::copy(kept_scores.begin(), kept_scores.end(), kept.data_ptr<scalar_t>());
  });
  at::Tensor keep_t = at::empty({static_cast<int64_t>(keep.size())}, boxes.options().dtype(at::kLong));
  std::copy(keep.begin(), keep.end(), keep_t.data_ptr<int64_t>());
  return {keep_t, kept.to(scores.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor> soft_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                                                double iou_threshold, double sigma, double score_threshold,
                                                int64_t method) {
  return soft_nms_impl("soft_nms", boxes, scores, at::Tensor(), iou_threshold, sigma, score_threshold, method);
}

std::tuple<at::Tensor, at::Tensor> batched_soft_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                                                        const at::Tensor& idxs, double iou_threshold, double sigma,
                                                        double score_threshold, int64_t method) {
  TORCH_CHECK(idxs.defined(), "batched_soft_nms: idxs must be a tensor");
  return soft_nms_impl("batched_soft_nms", boxes, scores, idxs, iou_threshold, sigma, score_threshold, method);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg, CPU, m) {
  m.impl("soft_nms", &soft_nms_cpu);
  m.impl("batched_soft_nms", &batched_soft_nms_cpu);
}

}  // namespace fastseg
