// CPU NMS and batched NMS.
//
// Same results as torchvision's CPU loop (same IoU arithmetic, csrc/box_iou.h), but:
// - structure-of-arrays in a vectorisable, branch-free inner loop (the compiler emits AVX2/AVX-512
//   clones, picked at run time);
// - pruning of pairs that cannot overlap: boxes are also ordered by x1, so a kept box only visits the
//   window of boxes whose x-extent meets its own (exact: a pair with no x-overlap has IoU 0, and 0 is
//   never > a threshold >= 0);
// - batched NMS runs the classes in parallel, one NMS per class, instead of a Python loop.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "box_iou.h"
#include "cpu/clones.h"
#include "cpu/radix_sort.h"
#include "nms.h"

namespace fastseg {
namespace {

// Boxes of one NMS problem in a "window order" (by x1, or by score when pruning is off): coordinates,
// areas, score rank, alive flag. int32 flags keep the inner loop at one lane width.
template <typename T>
struct Soa {
  std::vector<T> x1, y1, x2, y2, area;
  std::vector<int32_t> rank, alive;
  void resize(int64_t n) {
    x1.resize(n), y1.resize(n), x2.resize(n), y2.resize(n), area.resize(n);
    rank.resize(n), alive.assign(n, 1);
  }
};

// Kills, in [lo, hi), every box ranked after `r` whose IoU with box (ax1..a_area) exceeds thr.
template <typename T>
FASTSEG_CLONES void suppress(const T* __restrict x1, const T* __restrict y1, const T* __restrict x2,
                             const T* __restrict y2, const T* __restrict area,
                             const int32_t* __restrict rank, int32_t* __restrict alive, int64_t lo,
                             int64_t hi, T ax1, T ay1, T ax2, T ay2, T a_area, int32_t r, T thr) {
  for (int64_t k = lo; k < hi; ++k) {
    const T iou = nms_iou(ax1, ay1, ax2, ay2, a_area, x1[k], y1[k], x2[k], y2[k], area[k]);
    const int32_t kill = (iou > thr) & (rank[k] > r);
    alive[k] &= kill ^ 1;
  }
}

#ifndef FASTSEG_NMS_MIN_PRUNE
#define FASTSEG_NMS_MIN_PRUNE 512
#endif

// Greedy NMS of n boxes given in score order (x1[i].. of rank i). Writes keep[i] = 1 for kept ranks.
template <typename T>
void nms_ranked(const T* x1, const T* y1, const T* x2, const T* y2, int64_t n, T thr, uint8_t* keep) {
  // The x-ordering pays from a few dozen boxes on; NaN coordinates break it. Else: the full scan.
  bool finite_order = n >= FASTSEG_NMS_MIN_PRUNE;
  for (int64_t i = 0; i < n && finite_order; ++i)
    finite_order = !(std::isnan(x1[i]) || std::isnan(x2[i]));

  // pos[i]: where rank i sits in window order. Ties in x1 may go either way: pruning stays exact.
  std::vector<int32_t> pos(n);
  if (finite_order) {
    std::vector<std::pair<T, int32_t>> by_x1(n);
    for (int64_t i = 0; i < n; ++i) by_x1[i] = {x1[i], static_cast<int32_t>(i)};
    std::sort(by_x1.begin(), by_x1.end());
    for (int64_t k = 0; k < n; ++k) pos[k] = by_x1[k].second;
  } else {
    std::iota(pos.begin(), pos.end(), 0);
  }
  Soa<T> s;
  s.resize(n);
  for (int64_t k = 0; k < n; ++k) {
    const int32_t i = pos[k];
    s.x1[k] = x1[i], s.y1[k] = y1[i], s.x2[k] = x2[i], s.y2[k] = y2[i];
    s.area[k] = box_area(x1[i], y1[i], x2[i], y2[i]);
    s.rank[k] = i;
  }
  for (int64_t k = 0; k < n; ++k) pos[s.rank[k]] = static_cast<int32_t>(k);
  // max_x2[k] = max(x2[0..k]) is non-decreasing, so the boxes ending left of a box form a prefix.
  std::vector<T> max_x2(finite_order ? n : 0);
  for (int64_t k = 0; k < static_cast<int64_t>(max_x2.size()); ++k)
    max_x2[k] = k == 0 ? s.x2[0] : std::max(max_x2[k - 1], s.x2[k]);

  for (int64_t i = 0; i < n; ++i) {
    const int32_t p = pos[i];
    keep[i] = static_cast<uint8_t>(s.alive[p]);
    if (!s.alive[p]) continue;
    int64_t lo = i + 1, hi = n;  // score order: everything ranked after i
    if (finite_order) {
      // Window order by x1: a box can only overlap if x1 < ax2 and x2 > ax1.
      lo = std::upper_bound(max_x2.begin(), max_x2.end(), s.x1[p]) - max_x2.begin();
      hi = std::lower_bound(s.x1.begin(), s.x1.end(), s.x2[p]) - s.x1.begin();
    }
    if (lo < hi)
      suppress<T>(s.x1.data(), s.y1.data(), s.x2.data(), s.y2.data(), s.area.data(), s.rank.data(),
                  s.alive.data(), lo, hi, s.x1[p], s.y1[p], s.x2[p], s.y2[p], s.area[p],
                  static_cast<int32_t>(i), thr);
  }
}

// Ids sorted by decreasing score, ties lower id first (torch.sort(stable=True, descending=True)).
template <typename S>
std::vector<int32_t> score_order(const S* scores, int64_t n) {
  using K = decltype(descending_key(S()));
  std::vector<std::pair<K, int32_t>> a(n);
  for (int64_t i = 0; i < n; ++i) a[i] = {descending_key(scores[i]), static_cast<int32_t>(i)};
  radix_sort_stable(a);
  std::vector<int32_t> order(n);
  for (int64_t r = 0; r < n; ++r) order[r] = a[r].second;
  return order;
}

std::vector<int32_t> score_order(const at::Tensor& scores) {
  if (scores.scalar_type() == at::kDouble) {
    const at::Tensor s = scores.contiguous();
    return score_order(s.data_ptr<double>(), s.size(0));
  }
  const at::Tensor s = scores.to(at::kFloat).contiguous();  // fp16/bf16 convert exactly
  return score_order(s.data_ptr<float>(), s.size(0));
}

// Boxes in compute precision, [N, 4] contiguous: fp64 stays fp64, the rest is upcast (exactly) to fp32.
at::Tensor compute_boxes(const at::Tensor& boxes) {
  return boxes.to(boxes.scalar_type() == at::kDouble ? at::kDouble : at::kFloat).contiguous();
}

// Structure of arrays [x1 | y1 | x2 | y2] of the boxes ids[0..n).
template <typename T>
std::vector<T> gather_soa(const T* b, const std::vector<int32_t>& ids) {
  const size_t n = ids.size();
  std::vector<T> s(4 * n);
  for (size_t k = 0; k < n; ++k)
    for (size_t c = 0; c < 4; ++c) s[c * n + k] = b[4 * static_cast<int64_t>(ids[k]) + c];
  return s;
}

// The ids flagged in keep, in the order of ids, as an int64 tensor.
at::Tensor kept_ids(const std::vector<int32_t>& ids, const std::vector<uint8_t>& keep,
                    const at::TensorOptions& options) {
  int64_t count = 0;
  for (uint8_t k : keep) count += k;
  at::Tensor out = at::empty({count}, options.dtype(at::kLong));
  int64_t* o = out.data_ptr<int64_t>();
  for (size_t r = 0; r < ids.size(); ++r)
    if (keep[r]) *o++ = ids[r];
  return out;
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_inputs("nms", boxes, scores, at::Tensor(), iou_threshold);
  const int64_t n = boxes.size(0);
  TORCH_CHECK(n < (int64_t(1) << 31), "nms: at most 2^31 - 1 boxes are supported, got ", n);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const std::vector<int32_t> order = score_order(scores);
  const at::Tensor b = compute_boxes(boxes);
  std::vector<uint8_t> keep(n);
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "nms_cpu", [&] {
    const std::vector<scalar_t> s = gather_soa(b.data_ptr<scalar_t>(), order);
    nms_ranked<scalar_t>(s.data(), s.data() + n, s.data() + 2 * n, s.data() + 3 * n, n,
                         nms_threshold<scalar_t>(iou_threshold), keep.data());
  });
  return kept_ids(order, keep, boxes.options());
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                           double iou_threshold) {
  check_nms_inputs("batched_nms", boxes, scores, idxs, iou_threshold);
  const int64_t n = boxes.size(0);
  TORCH_CHECK(n < (int64_t(1) << 31), "batched_nms: at most 2^31 - 1 boxes are supported, got ", n);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  // Group by class, by score within a class: a stable sort by class of the score order.
  const std::vector<int32_t> order = score_order(scores);
  const at::Tensor cls_t = idxs.to(at::kLong).contiguous();
  const int64_t* cls = cls_t.data_ptr<int64_t>();
  std::vector<std::pair<uint64_t, int32_t>> by_class(n);
  for (int64_t r = 0; r < n; ++r) by_class[r] = {ascending_key(cls[order[r]]), order[r]};
  radix_sort_stable(by_class);
  std::vector<int32_t> grouped(n);
  std::vector<int64_t> starts{0};
  for (int64_t k = 0; k < n; ++k) {
    grouped[k] = by_class[k].second;
    if (k > 0 && by_class[k].first != by_class[k - 1].first) starts.push_back(k);
  }
  starts.push_back(n);
  const int64_t n_classes = static_cast<int64_t>(starts.size()) - 1;

  const at::Tensor b = compute_boxes(boxes);
  std::vector<uint8_t> keep(n);
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "batched_nms_cpu", [&] {
    const std::vector<scalar_t> s = gather_soa(b.data_ptr<scalar_t>(), grouped);
    const scalar_t thr = nms_threshold<scalar_t>(iou_threshold);
    const scalar_t *x1 = s.data(), *y1 = x1 + n, *x2 = y1 + n, *y2 = x2 + n;
    // Grain 1: classes vary in size, and each is a whole NMS.
    at::parallel_for(0, n_classes, 1, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        const int64_t a = starts[g], m = starts[g + 1] - a;
        nms_ranked<scalar_t>(x1 + a, y1 + a, x2 + a, y2 + a, m, thr, keep.data() + a);
      }
    });
  });
  // Back to the global order: decreasing score, ties lower index first.
  std::vector<uint8_t> kept_by_id(n), kept_by_rank(n);
  for (int64_t k = 0; k < n; ++k) kept_by_id[grouped[k]] = keep[k];
  for (int64_t r = 0; r < n; ++r) kept_by_rank[r] = kept_by_id[order[r]];
  return kept_ids(order, kept_by_rank, boxes.options());
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg, CPU, m) {
  m.impl("nms", &nms_cpu);
  m.impl("batched_nms", &batched_nms_cpu);
}

}  // namespace fastseg
