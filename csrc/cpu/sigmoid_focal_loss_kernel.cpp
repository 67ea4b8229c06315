// CPU kernels of the sigmoid focal loss (schemas: csrc/sigmoid_focal_loss.cpp, maths: focal_loss.h).
//
// One pass over the data per op:
// - forward: reads inputs and targets once; "none" writes the loss once, "mean"/"sum" write nothing
//   but one partial sum per chunk;
// - backward: reads inputs and targets once more and writes the gradient once, recomputing the
//   per-element terms (cheaper than saving anything: the recomputation is a few dozen vector
//   instructions per 8 elements, a saved tensor would be one more write and read of the whole size).
// The element loops run over chunks of kChunk elements in float (fp16/bf16 converted into stack
// buffers) and are compiled as AVX-512 / AVX2 / baseline clones picked at run time; the exp and log1p
// of focal_loss.h are branch-free polynomials so that the loops vectorise.
//
// Sums are deterministic whatever the thread count: one partial (float lanes, then double) per fixed
// chunk, added in chunk order.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

// The element loops select between values computed on both sides of a condition (x >= 0, the exp
// underflow cut, the log range split); GCC only if-converts those selects, and so vectorises the
// loops, when FP operations may be executed speculatively, i.e. without -ftrapping-math. Nothing here
// reads the FP exception flags, and no result changes. After the ATen headers: only our code.
#pragma GCC optimize("no-trapping-math")
#include "focal_loss.h"
#include "cpu/clones.h"

namespace fastseg {
namespace {

// Elements per chunk: the unit of work, of the partial sums and of the conversion buffers (3 float
// buffers of 4 KiB stay in L1). Chunks per parallel task: kGrain (64k elements, ~0.1 ms of work).
constexpr int64_t kChunk = 1024;
constexpr int64_t kGrain = 64;

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// ---- element loops (vectorised) ------------------------------------------------------------------

template <int G, typename T>
FASTSEG_CLONES void loss_loop(const T* __restrict x, const T* __restrict t, T* __restrict out, int64_t n,
                              T alpha, T gamma) {
  for (int64_t i = 0; i < n; ++i) out[i] = focal_loss_value<G>(x[i], t[i], alpha, gamma);
}

// grad == nullptr: the same scalar grad_scalar for every element (mean/sum).
template <int G, typename T>
FASTSEG_CLONES void grad_loop(const T* __restrict x, const T* __restrict t, const T* __restrict grad,
                              T grad_scalar, T* __restrict out, int64_t n, T alpha, T gamma) {
  if (grad == nullptr) {
    for (int64_t i = 0; i < n; ++i) out[i] = grad_scalar * focal_loss_grad<G>(x[i], t[i], alpha, gamma);
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = grad[i] * focal_loss_grad<G>(x[i], t[i], alpha, gamma);
  }
}

// One row of the labels form, columns [0, n) of a block starting at column c0: class `pos` (relative
// to c0, anything outside [0, n) for none) is the positive one.
template <int G, typename T>
FASTSEG_CLONES void labels_loss_loop(const T* __restrict x, int32_t pos, T* __restrict out, int64_t n,
                                     T alpha, T gamma, T factor) {
  for (int64_t j = 0; j < n; ++j) {
    const T t = static_cast<int32_t>(j) == pos ? T(1) : T(0);
    out[j] = factor * focal_loss_value<G>(x[j], t, alpha, gamma);
  }
}

template <int G, typename T>
FASTSEG_CLONES void labels_grad_loop(const T* __restrict x, int32_t pos, const T* __restrict grad,
                                     T grad_scalar, T* __restrict out, int64_t n, T alpha, T gamma) {
  if (grad == nullptr) {
    for (int64_t j = 0; j < n; ++j) {
      const T t = static_cast<int32_t>(j) == pos ? T(1) : T(0);
      out[j] = grad_scalar * focal_loss_grad<G>(x[j], t, alpha, gamma);
    }
  } else {
    for (int64_t j = 0; j < n; ++j) {
      const T t = static_cast<int32_t>(j) == pos ? T(1) : T(0);
      out[j] = grad[j] * focal_loss_grad<G>(x[j], t, alpha, gamma);
    }
  }
}

// Sum of n values: 16 independent lanes (the compiler vectorises fixed-width lanes; a plain float
// sum is a serial dependency it may not reorder), then double.
template <typename T>
FASTSEG_CLONES double lane_sum(const T* __restrict v, int64_t n) {
  T acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; ++l) acc[l] += v[i + l];
  double s = 0;
  for (; i < n; ++i) s += static_cast<double>(v[i]);
  for (int l = 0; l < 16; ++l) s += static_cast<double>(acc[l]);
  return s;
}

// ---- dtype handling --------------------------------------------------------------------------------

// A view of n elements of a tensor of scalar_t as acc_t: the pointer itself when the types agree,
// else a conversion into `buf`.
template <typename scalar_t>
const acc_t<scalar_t>* as_acc(const scalar_t* p, int64_t n, acc_t<scalar_t>* buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t<scalar_t>>) {
    return p;
  } else {
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<float>(p[i]);
    return buf;
  }
}

template <typename scalar_t>
void store(const acc_t<scalar_t>* v, int64_t n, scalar_t* out) {
  if constexpr (!std::is_same_v<scalar_t, acc_t<scalar_t>>) {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<scalar_t>(v[i]);
  }
}

// Calls fn.template operator()<G>() with G the gamma kind of `gamma` (0, 1, 2 or -1 for any other).
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

int64_t n_chunks(int64_t n) { return (n + kChunk - 1) / kChunk; }

// Sum of per-chunk partials in chunk order (deterministic).
double ordered_sum(const std::vector<double>& partial) {
  double s = 0;
  for (double v : partial) s += v;
  return s;
}

// ---- sigmoid_focal_loss ------------------------------------------------------------------------------

at::Tensor sigmoid_focal_loss_cpu(const at::Tensor& inputs_, const at::Tensor& targets_, double alpha,
                                  double gamma, int64_t reduction) {
  check_focal_inputs("sigmoid_focal_loss", inputs_, targets_, alpha, gamma, reduction);
  const at::Tensor inputs = inputs_.contiguous();
  const at::Tensor targets = targets_.to(inputs.scalar_type()).contiguous();
  const int64_t n = inputs.numel();
  const bool reduce = reduction != kFocalNone;
  at::Tensor out = reduce ? at::empty({}, inputs.options()) : at::empty_like(inputs);
  std::vector<double> partial(reduce ? n_chunks(n) : 0);

  FASTSEG_DISPATCH_FOCAL_TYPES(inputs.scalar_type(), "sigmoid_focal_loss_cpu", [&] {
    using T = acc_t<scalar_t>;
    const scalar_t* x = inputs.data_ptr<scalar_t>();
    const scalar_t* t = targets.data_ptr<scalar_t>();
    scalar_t* o = reduce ? nullptr : out.data_ptr<scalar_t>();
    dispatch_gamma(gamma, [&](auto g) {
      constexpr int G = decltype(g)::value;
      at::parallel_for(0, n_chunks(n), kGrain, [&](int64_t begin, int64_t end) {
        T xb[kChunk], tb[kChunk], ob[kChunk];
        for (int64_t c = begin; c < end; ++c) {
          const int64_t off = c * kChunk, len = std::min(kChunk, n - off);
          const T* xa = as_acc(x + off, len, xb);
          const T* ta = as_acc(t + off, len, tb);
          T* oa = ob;
          if constexpr (std::is_same_v<scalar_t, T>) {
            if (!reduce) oa = o + off;
          }
          loss_loop<G, T>(xa, ta, oa, len, static_cast<T>(alpha), static_cast<T>(gamma));
          if (reduce) {
            partial[c] = lane_sum(oa, len);
          } else {
            store<scalar_t>(oa, len, o + off);
          }
        }
      });
    });
    if (reduce) {
      double s = ordered_sum(partial);
      if (reduction == kFocalMean) s /= static_cast<double>(n);  // n == 0: nan, as torch's mean
      out.fill_(s);
    }
  });
  return out;
}

at::Tensor sigmoid_focal_loss_backward_cpu(const at::Tensor& grad_, const at::Tensor& inputs_,
                                           const at::Tensor& targets_, double alpha, double gamma,
                                           int64_t reduction) {
  check_focal_inputs("sigmoid_focal_loss_backward", inputs_, targets_, alpha, gamma, reduction);
  check_focal_grad("sigmoid_focal_loss_backward", grad_, inputs_, reduction);
  const at::Tensor inputs = inputs_.contiguous();
  const at::Tensor targets = targets_.to(inputs.scalar_type()).contiguous();
  const int64_t n = inputs.numel();
  const bool reduce = reduction != kFocalNone;
  at::Tensor out = at::empty_like(inputs);
  const at::Tensor grad = reduce ? grad_ : grad_.to(inputs.scalar_type()).contiguous();

  FASTSEG_DISPATCH_FOCAL_TYPES(inputs.scalar_type(), "sigmoid_focal_loss_backward_cpu", [&] {
    using T = acc_t<scalar_t>;
    double gs = 0;
    if (reduce) {
      gs = grad.item<double>();  // a CPU tensor: no device sync
      if (reduction == kFocalMean) gs /= static_cast<double>(n);
    }
    const T grad_scalar = static_cast<T>(gs);
    const scalar_t* x = inputs.data_ptr<scalar_t>();
    const scalar_t* t = targets.data_ptr<scalar_t>();
    const scalar_t* gp = reduce ? nullptr : grad.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    dispatch_gamma(gamma, [&](auto g) {
      constexpr int G = decltype(g)::value;
      at::parallel_for(0, n_chunks(n), kGrain, [&](int64_t begin, int64_t end) {
        T xb[kChunk], tb[kChunk], gb[kChunk], ob[kChunk];
        for (int64_t c = begin; c < end; ++c) {
          const int64_t off = c * kChunk, len = std::min(kChunk, n - off);
          const T* xa = as_acc(x + off, len, xb);
          const T* ta = as_acc(t + off, len, tb);
          const T* ga = gp == nullptr ? nullptr : as_acc(gp + off, len, gb);
          T* oa = ob;
          if constexpr (std::is_same_v<scalar_t, T>) oa = o + off;
          grad_loop<G, T>(xa, ta, ga, grad_scalar, oa, len, static_cast<T>(alpha), static_cast<T>(gamma));
          store<scalar_t>(oa, len, o + off);
        }
      });
    });
  });
  return out;
}

// ---- sigmoid_focal_loss_with_labels ---------------------------------------------------------------------

// scale / normalizer, the factor applied to the reduced (or elementwise) loss.
double labels_factor(const c10::optional<at::Tensor>& normalizer, double scale) {
  if (normalizer.has_value() && normalizer->defined()) return scale / normalizer->item<double>();
  return scale;
}

int32_t positive_column(int64_t label, int64_t c0, int64_t n_cols) {
  // Relative to the column block [c0, c0 + n_cols); -1 (no positive) when outside it.
  const int64_t rel = label - c0;
  return (label >= 0 && rel >= 0 && rel < n_cols) ? static_cast<int32_t>(rel) : -1;
}

at::Tensor sigmoid_focal_loss_with_labels_cpu(const at::Tensor& logits_, const at::Tensor& labels_,
                                              double alpha, double gamma,
                                              const c10::optional<at::Tensor>& normalizer, double scale,
                                              int64_t ignore_index, int64_t reduction) {
  check_focal_labels_inputs("sigmoid_focal_loss_with_labels", logits_, labels_, alpha, gamma, normalizer,
                            reduction);
  const at::Tensor logits = logits_.contiguous();
  const at::Tensor labels = labels_.to(at::kLong).contiguous();
  const int64_t rows = logits.size(0), cols = logits.size(1), n = rows * cols;
  const bool reduce = reduction != kFocalNone;
  double factor = labels_factor(normalizer, scale);
  at::Tensor out = reduce ? at::empty({}, logits.options()) : at::empty_like(logits);
  // Tasks of whole rows, about kChunk elements each; each task one partial sum.
  const int64_t rows_per_task = std::max<int64_t>(1, kChunk / std::max<int64_t>(cols, 1));
  const int64_t tasks = (rows + rows_per_task - 1) / rows_per_task;
  std::vector<double> partial(reduce ? tasks : 0);

  FASTSEG_DISPATCH_FOCAL_TYPES(logits.scalar_type(), "sigmoid_focal_loss_with_labels_cpu", [&] {
    using T = acc_t<scalar_t>;
    const scalar_t* x = logits.data_ptr<scalar_t>();
    const int64_t* lab = labels.data_ptr<int64_t>();
    scalar_t* o = reduce ? nullptr : out.data_ptr<scalar_t>();
    // Reductions apply the factor once to the sum; "none" applies it per element.
    const T elem_factor = reduce ? T(1) : static_cast<T>(factor);
    dispatch_gamma(gamma, [&](auto g) {
      constexpr int G = decltype(g)::value;
      at::parallel_for(0, tasks, std::max<int64_t>(1, kGrain / 4), [&](int64_t begin, int64_t end) {
        T xb[kChunk], ob[kChunk];
        for (int64_t task = begin; task < end; ++task) {
          double s = 0;
          const int64_t r_end = std::min(rows, (task + 1) * rows_per_task);
          for (int64_t r = task * rows_per_task; r < r_end; ++r) {
            const int64_t label = lab[r];
            for (int64_t c0 = 0; c0 < cols; c0 += kChunk) {
              const int64_t len = std::min(kChunk, cols - c0), off = r * cols + c0;
              if (label == ignore_index) {
                if (!reduce) std::fill(o + off, o + off + len, scalar_t(0));
                continue;
              }
              const T* xa = as_acc(x + off, len, xb);
              T* oa = ob;
              if constexpr (std::is_same_v<scalar_t, T>) {
                if (!reduce) oa = o + off;
              }
              labels_loss_loop<G, T>(xa, positive_column(label, c0, len), oa, len, static_cast<T>(alpha),
                                     static_cast<T>(gamma), elem_factor);
              if (reduce) {
                s += lane_sum(oa, len);
              } else {
                store<scalar_t>(oa, len, o + off);
              }
            }
          }
          if (reduce) partial[task] = s;
        }
      });
    });
    if (reduce) {
      double s = ordered_sum(partial);
      if (reduction == kFocalMean) s /= static_cast<double>(n);
      out.fill_(s * factor);
    }
  });
  return out;
}

at::Tensor sigmoid_focal_loss_with_labels_backward_cpu(const at::Tensor& grad_, const at::Tensor& logits_,
                                                       const at::Tensor& labels_, double alpha, double gamma,
                                                       const c10::optional<at::Tensor>& normalizer,
                                                       double scale, int64_t ignore_index,
                                                       int64_t reduction) {
  check_focal_labels_inputs("sigmoid_focal_loss_with_labels_backward", logits_, labels_, alpha, gamma,
                            normalizer, reduction);
  check_focal_grad("sigmoid_focal_loss_with_labels_backward", grad_, logits_, reduction);
  const at::Tensor logits = logits_.contiguous();
  const at::Tensor labels = labels_.to(at::kLong).contiguous();
  const int64_t rows = logits.size(0), cols = logits.size(1), n = rows * cols;
  const bool reduce = reduction != kFocalNone;
  const double factor = labels_factor(normalizer, scale);
  at::Tensor out = at::empty_like(logits);
  const at::Tensor grad = reduce ? grad_ : grad_.to(logits.scalar_type()).contiguous();
  const int64_t rows_per_task = std::max<int64_t>(1, kChunk / std::max<int64_t>(cols, 1));
  const int64_t tasks = (rows + rows_per_task - 1) / rows_per_task;

  FASTSEG_DISPATCH_FOCAL_TYPES(logits.scalar_type(), "sigmoid_focal_loss_with_labels_backward_cpu", [&] {
    using T = acc_t<scalar_t>;
    double gs = factor;
    if (reduce) {
      gs *= grad.item<double>();
      if (reduction == kFocalMean) gs /= static_cast<double>(n);
    }
    const T grad_scalar = static_cast<T>(gs);  // "none": the factor, times grad[i] below
    const scalar_t* x = logits.data_ptr<scalar_t>();
    const int64_t* lab = labels.data_ptr<int64_t>();
    const scalar_t* gp = reduce ? nullptr : grad.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    dispatch_gamma(gamma, [&](auto g) {
      constexpr int G = decltype(g)::value;
      at::parallel_for(0, tasks, std::max<int64_t>(1, kGrain / 4), [&](int64_t begin, int64_t end) {
        T xb[kChunk], gb[kChunk], ob[kChunk];
        for (int64_t task = begin; task < end; ++task) {
          const int64_t r_end = std::min(rows, (task + 1) * rows_per_task);
          for (int64_t r = task * rows_per_task; r < r_end; ++r) {
            const int64_t label = lab[r];
            for (int64_t c0 = 0; c0 < cols; c0 += kChunk) {
              const int64_t len = std::min(kChunk, cols - c0), off = r * cols + c0;
              if (label == ignore_index) {
                std::fill(o + off, o + off + len, scalar_t(0));
                continue;
              }
              const T* xa = as_acc(x + off, len, xb);
              T* oa = ob;
              if constexpr (std::is_same_v<scalar_t, T>) oa = o + off;
              if (gp == nullptr) {
                labels_grad_loop<G, T>(xa, positive_column(label, c0, len), nullptr, grad_scalar, oa, len,
                                       static_cast<T>(alpha), static_cast<T>(gamma));
              } else {
                // grad[i] * factor: scale the incoming gradient into the output buffer first.
                const T* ga = as_acc(gp + off, len, gb);
                for (int64_t j = 0; j < len; ++j) ob[j] = ga[j] * grad_scalar;
                T tmp[kChunk];
                labels_grad_loop<G, T>(xa, positive_column(label, c0, len), ob, T(0), tmp, len,
                                       static_cast<T>(alpha), static_cast<T>(gamma));
                std::copy(tmp, tmp + len, oa);
              }
              store<scalar_t>(oa, len, o + off);
            }
          }
        }
      });
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg, CPU, m) {
  m.impl("sigmoid_focal_loss", &sigmoid_focal_loss_cpu);
  m.impl("sigmoid_focal_loss_backward", &sigmoid_focal_loss_backward_cpu);
  m.impl("sigmoid_focal_loss_with_labels", &sigmoid_focal_loss_with_labels_cpu);
  m.impl("sigmoid_focal_loss_with_labels_backward", &sigmoid_focal_loss_with_labels_backward_cpu);
}

}  // namespace fastseg
