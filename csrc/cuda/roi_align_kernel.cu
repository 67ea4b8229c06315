// CUDA kernels of fastseg::roi_align, fastseg::multi_level_roi_align and their backward ops
// (schemas: csrc/roi_align.cpp). The per-sample maths is csrc/roi_align.h, shared with the CPU kernel.
//
// Layout: maps are read through their strides (NCHW, channels_last or any view, no copy). One thread
// per output element; when the maps are channels_last the channel is the fastest index (adjacent
// threads read adjacent channels: coalesced) and the output is channels_last too, else the bin is.
// Levels: a LevelTable passed by value holds every level's pointer, sizes, strides and scale, so all
// levels of MultiScaleRoIAlign run in one launch (RoI k reads level levels[k]).
//
// Backward, default: the same threads atomicAdd grad * w / count into a channels-last accumulator
// (compute type: fp32 for fp16/bf16/fp32, fp64 for fp64) holding every level.
// Backward, deterministic (torch.use_deterministic_algorithms(True)): no atomics. A thread owns
// (level, image, band of kBand rows, channel) of the accumulator; RoIs are grouped by (level, image)
// with a stable sort, and the thread walks its group in index order, adding the corners that fall
// in its band. Each element is written by one thread in a fixed order: bit-identical run to run,
// and the only memory beyond the gradient is the sort's O(K).
// Build with --fmad=false: an FMA would change the rounding against the CPU kernel and torchvision.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "roi_align.h"

namespace fastseg {
namespace {

constexpr int kMaxLevels = 8;
constexpr int kThreads = 256;
// Rows per deterministic-backward task: a RoI covers ~14 rows of its level (FPN mapping), so it is
// visited by 2-3 tasks; smaller bands mean more parallelism and more RoI visits. Not tuned on a GPU.
constexpr int64_t kBand = 8;

template <typename T>
struct LevelTable {
  const T* data[kMaxLevels];
  int64_t H[kMaxLevels], W[kMaxLevels];
  int64_t sn[kMaxLevels], sc[kMaxLevels], sh[kMaxLevels], sw[kMaxLevels];
  int64_t acc_off[kMaxLevels];     // offset of the level in the flat channels-last accumulator
  int64_t task_start[kMaxLevels + 1];  // deterministic backward: first (image, band) task of the level
  double scale[kMaxLevels];
  int n;
};

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>(ceil_div(n, kThreads), 65535LL * 32));
}

template <typename T>
LevelTable<T> make_table(const std::vector<at::Tensor>& features, at::ArrayRef<double> scales) {
  TORCH_CHECK(static_cast<int>(features.size()) <= kMaxLevels, "multi_level_roi_align: at most ",
              kMaxLevels, " feature maps are supported on CUDA, got ", features.size());
  LevelTable<T> t{};
  t.n = static_cast<int>(features.size());
  int64_t acc = 0, tasks = 0;
  for (int l = 0; l < t.n; ++l) {
    const at::Tensor& f = features[l];
    t.data[l] = f.data_ptr<T>();
    t.H[l] = f.size(2), t.W[l] = f.size(3);
    t.sn[l] = f.stride(0), t.sc[l] = f.stride(1), t.sh[l] = f.stride(2), t.sw[l] = f.stride(3);
    t.acc_off[l] = acc;
    acc += f.numel();
    t.task_start[l] = tasks;
    tasks += f.size(0) * ceil_div(f.size(2), kBand);
    t.scale[l] = scales[l];
  }
  t.task_start[t.n] = tasks;
  return t;
}

// Output element idx -> (k, bin, c), channel fastest or bin fastest.
struct Index {
  int64_t k, b, c;
};
__device__ __forceinline__ Index split(int64_t idx, int64_t C, int64_t bins, bool c_fastest) {
  Index i;
  if (c_fastest) {
    i.c = idx % C;
    i.b = (idx / C) % bins;
  } else {
    i.b = idx % bins;
    i.c = (idx / bins) % C;
  }
  i.k = idx / (C * bins);
  return i;
}

template <typename T, typename A>
__device__ __forceinline__ A sample_value(const T* base, int64_t sh, int64_t sw, const AxisSample<A>& Y,
                                          const AxisSample<A>& X) {
  const Weights4<A> w = bilinear_weights(Y, X);
  const A v1 = static_cast<A>(base[Y.lo * sh + X.lo * sw]);
  const A v2 = static_cast<A>(base[Y.lo * sh + X.hi * sw]);
  const A v3 = static_cast<A>(base[Y.hi * sh + X.lo * sw]);
  const A v4 = static_cast<A>(base[Y.hi * sh + X.hi * sw]);
  return w.w1 * v1 + w.w2 * v2 + w.w3 * v3 + w.w4 * v4;
}

template <typename T, typename A>
__global__ void roi_align_forward_kernel(LevelTable<T> L, const A* __restrict__ rois,
                                         const int64_t* __restrict__ levels, int64_t K, int64_t N,
                                         int64_t C, int64_t PH, int64_t PW, int64_t sr, bool aligned,
                                         bool max_mode, bool c_fastest, T* __restrict__ out) {
  const int64_t bins = PH * PW, total = K * C * bins;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Index ix = split(idx, C, bins, c_fastest);
    const A* r = rois + 5 * ix.k;
    const int64_t n = static_cast<int64_t>(r[0]);
    const int64_t l = levels ? levels[ix.k] : 0;
    if (n < 0 || n >= N || l < 0 || l >= L.n) {  // checked on the host for CPU inputs only
      out[idx] = static_cast<T>(0);
      continue;
    }
    const A scale = static_cast<A>(L.scale[l]);
    const int64_t ph = ix.b / PW, pw = ix.b % PW;
    const auto gy = axis_geometry<A>(r[2], r[4], scale, PH, sr, aligned);
    const auto gx = axis_geometry<A>(r[1], r[3], scale, PW, sr, aligned);
    const T* base = L.data[l] + n * L.sn[l] + ix.c * L.sc[l];
    A acc = max_mode ? -INFINITY : A(0);
    for (int32_t iy = 0; iy < gy.grid; ++iy) {
      const AxisSample<A> Y = axis_sample<A>(axis_coordinate(gy, ph, iy), L.H[l]);
      for (int32_t jx = 0; jx < gx.grid; ++jx) {
        const AxisSample<A> X = axis_sample<A>(axis_coordinate(gx, pw, jx), L.W[l]);
        const A v = (Y.valid && X.valid) ? sample_value<T, A>(base, L.sh[l], L.sw[l], Y, X) : A(0);
        if (max_mode)
          acc = v > acc ? v : acc;
        else
          acc += v;
      }
    }
    const int32_t cnt = gy.grid * gx.grid;
    if (max_mode)
      out[idx] = static_cast<T>(cnt > 0 ? acc : A(0));
    else
      out[idx] = static_cast<T>(acc / static_cast<A>(cnt > 1 ? cnt : 1));
  }
}

// The argmax sample (iy, jx) of a bin in max mode, or -1 when a sample outside the map (value 0)
// or no sample wins. Same order and comparisons as the forward.
template <typename T, typename A>
__device__ int32_t bin_argmax(const T* base, const LevelTable<T>& L, int64_t l, const AxisGeometry<A>& gy,
                              const AxisGeometry<A>& gx, int64_t ph, int64_t pw) {
  A best = -INFINITY;
  int32_t arg = -1;
  for (int32_t iy = 0; iy < gy.grid; ++iy) {
    const AxisSample<A> Y = axis_sample<A>(axis_coordinate(gy, ph, iy), L.H[l]);
    for (int32_t jx = 0; jx < gx.grid; ++jx) {
      const AxisSample<A> X = axis_sample<A>(axis_coordinate(gx, pw, jx), L.W[l]);
      const bool ok = Y.valid && X.valid;
      const A v = ok ? sample_value<T, A>(base, L.sh[l], L.sw[l], Y, X) : A(0);
      if (v > best) {
        best = v;
        arg = ok ? iy * gx.grid + jx : -1;
      }
    }
  }
  return arg;
}

template <typename T, typename A>
__global__ void roi_align_backward_atomic_kernel(LevelTable<T> L, const A* __restrict__ rois,
                                                 const int64_t* __restrict__ levels,
                                                 const T* __restrict__ grad, int64_t K, int64_t N,
                                                 int64_t C, int64_t PH, int64_t PW, int64_t sr,
                                                 bool aligned, bool max_mode, bool c_fastest,
                                                 A* __restrict__ acc) {
  const int64_t bins = PH * PW, total = K * C * bins;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Index ix = split(idx, C, bins, c_fastest);
    const A* r = rois + 5 * ix.k;
    const int64_t n = static_cast<int64_t>(r[0]);
    const int64_t l = levels ? levels[ix.k] : 0;
    if (n < 0 || n >= N || l < 0 || l >= L.n) continue;
    const A g = static_cast<A>(grad[idx]);
    const A scale = static_cast<A>(L.scale[l]);
    const int64_t ph = ix.b / PW, pw = ix.b % PW;
    const auto gy = axis_geometry<A>(r[2], r[4], scale, PH, sr, aligned);
    const auto gx = axis_geometry<A>(r[1], r[3], scale, PW, sr, aligned);
    const int64_t H = L.H[l], W = L.W[l];
    A* a = acc + L.acc_off[l] + n * H * W * C + ix.c;
    if (max_mode) {
      const int32_t arg = bin_argmax<T, A>(L.data[l] + n * L.sn[l] + ix.c * L.sc[l], L, l, gy, gx, ph, pw);
      if (arg < 0) continue;
      const AxisSample<A> Y = axis_sample<A>(axis_coordinate(gy, ph, arg / gx.grid), H);
      const AxisSample<A> X = axis_sample<A>(axis_coordinate(gx, pw, arg % gx.grid), W);
      const Weights4<A> w = bilinear_weights(Y, X);
      atomicAdd(a + (Y.lo * W + X.lo) * C, g * w.w1);
      atomicAdd(a + (Y.lo * W + X.hi) * C, g * w.w2);
      atomicAdd(a + (Y.hi * W + X.lo) * C, g * w.w3);
      atomicAdd(a + (Y.hi * W + X.hi) * C, g * w.w4);
      continue;
    }
    const int32_t cnt = gy.grid * gx.grid;
    const A count = static_cast<A>(cnt > 1 ? cnt : 1);
    for (int32_t iy = 0; iy < gy.grid; ++iy) {
      const AxisSample<A> Y = axis_sample<A>(axis_coordinate(gy, ph, iy), H);
      if (!Y.valid) continue;
      for (int32_t jx = 0; jx < gx.grid; ++jx) {
        const AxisSample<A> X = axis_sample<A>(axis_coordinate(gx, pw, jx), W);
        if (!X.valid) continue;
        const Weights4<A> w = bilinear_weights(Y, X);
        atomicAdd(a + (Y.lo * W + X.lo) * C, g * w.w1 / count);
        atomicAdd(a + (Y.lo * W + X.hi) * C, g * w.w2 / count);
        atomicAdd(a + (Y.hi * W + X.lo) * C, g * w.w3 / count);
        atomicAdd(a + (Y.hi * W + X.hi) * C, g * w.w4 / count);
      }
    }
  }
}

// Deterministic backward. Thread = (task, c), task = (level, image, band of rows). `order` lists the
// RoIs by (level, image) (stable: index order inside a group), group g = l * N + n spans
// [group_start[g], group_start[g + 1]). grad is channels-last [K, PH, PW, C].
template <typename T, typename A>
__global__ void roi_align_backward_det_kernel(LevelTable<T> L, const A* __restrict__ rois,
                                              const int64_t* __restrict__ order,
                                              const int64_t* __restrict__ group_start,
                                              const T* __restrict__ grad, int64_t N, int64_t C,
                                              int64_t PH, int64_t PW, int64_t sr, bool aligned,
                                              bool max_mode, A* __restrict__ acc) {
  const int64_t total = L.task_start[L.n] * C;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = idx % C, task = idx / C;
    int l = 0;
    while (l + 1 < L.n && task >= L.task_start[l + 1]) ++l;
    const int64_t H = L.H[l], W = L.W[l];
    const int64_t bands = ceil_div(H, kBand);
    const int64_t n = (task - L.task_start[l]) / bands, band = (task - L.task_start[l]) % bands;
    const int64_t y0 = band * kBand, y1 = y0 + kBand < H ? y0 + kBand : H;
    A* a = acc + L.acc_off[l] + n * H * W * C + c;
    const T* base = L.data[l] + n * L.sn[l] + c * L.sc[l];
    const A scale = static_cast<A>(L.scale[l]);
    const int64_t g = l * N + n;
    for (int64_t j = group_start[g]; j < group_start[g + 1]; ++j) {
      const int64_t k = order[j];
      const A* r = rois + 5 * k;
      const auto gy = axis_geometry<A>(r[2], r[4], scale, PH, sr, aligned);
      const auto gx = axis_geometry<A>(r[1], r[3], scale, PW, sr, aligned);
      const int32_t cnt = gy.grid * gx.grid;
      const A count = static_cast<A>(cnt > 1 ? cnt : 1);
      for (int64_t ph = 0; ph < PH; ++ph) {
        for (int64_t pw = 0; pw < PW; ++pw) {
          const A gv = static_cast<A>(grad[((k * PH + ph) * PW + pw) * C + c]);
          if (max_mode) {
            const int32_t arg = bin_argmax<T, A>(base, L, l, gy, gx, ph, pw);
            if (arg < 0) continue;
            const AxisSample<A> Y = axis_sample<A>(axis_coordinate(gy, ph, arg / gx.grid), H);
            const AxisSample<A> X = axis_sample<A>(axis_coordinate(gx, pw, arg % gx.grid), W);
            const Weights4<A> w = bilinear_weights(Y, X);
            if (Y.lo >= y0 && Y.lo < y1) {
              a[(Y.lo * W + X.lo) * C] += gv * w.w1;
              a[(Y.lo * W + X.hi) * C] += gv * w.w2;
            }
            if (Y.hi >= y0 && Y.hi < y1) {
              a[(Y.hi * W + X.lo) * C] += gv * w.w3;
              a[(Y.hi * W + X.hi) * C] += gv * w.w4;
            }
            continue;
          }
          for (int32_t iy = 0; iy < gy.grid; ++iy) {
            const AxisSample<A> Y = axis_sample<A>(axis_coordinate(gy, ph, iy), H);
            const bool lo_in = Y.lo >= y0 && Y.lo < y1, hi_in = Y.hi >= y0 && Y.hi < y1;
            if (!Y.valid || !(lo_in || hi_in)) continue;
            for (int32_t jx = 0; jx < gx.grid; ++jx) {
              const AxisSample<A> X = axis_sample<A>(axis_coordinate(gx, pw, jx), W);
              if (!X.valid) continue;
              const Weights4<A> w = bilinear_weights(Y, X);
              // Corner order and grouping as the CPU kernel and torchvision: (g * w) / count.
              if (lo_in) {
                a[(Y.lo * W + X.lo) * C] += gv * w.w1 / count;
                a[(Y.lo * W + X.hi) * C] += gv * w.w2 / count;
              }
              if (hi_in) {
                a[(Y.hi * W + X.lo) * C] += gv * w.w3 / count;
                a[(Y.hi * W + X.hi) * C] += gv * w.w4 / count;
              }
            }
          }
        }
      }
    }
  }
}

void check_cuda(const char* op, const std::vector<at::Tensor>& features, const at::Tensor& rois,
                const at::Tensor& levels, at::ArrayRef<double> scales, int64_t ph, int64_t pw) {
  TORCH_CHECK(!features.empty(), op, ": at least one feature map is needed");
  for (const auto& f : features) check_feature(op, f, features[0]);
  check_rois(op, rois, features[0].device());
  check_pooled(op, ph, pw);
  TORCH_CHECK(scales.size() == features.size(), op, ": one spatial scale per feature map is needed, got ",
              scales.size(), " for ", features.size(), " maps");
  TORCH_CHECK(features[0].is_cuda(), op, ": expected CUDA tensors, got ", features[0].device());
  if (levels.defined())
    TORCH_CHECK(levels.dim() == 1 && levels.size(0) == rois.size(0) && levels.device() == rois.device(),
                op, ": levels must be a 1-D tensor with one level per RoI on the rois' device, got ",
                levels.sizes());
}

bool is_channels_last(const at::Tensor& f) {
  return f.is_contiguous(at::MemoryFormat::ChannelsLast) && !f.is_contiguous();
}

at::Tensor forward_cuda(const char* op, const std::vector<at::Tensor>& features, const at::Tensor& rois,
                        const at::Tensor& levels, at::ArrayRef<double> scales, int64_t ph, int64_t pw,
                        int64_t sr, bool aligned, bool max_mode) {
  check_cuda(op, features, rois, levels, scales, ph, pw);
  const at::Tensor& f0 = features[0];
  c10::cuda::CUDAGuard guard(f0.device());
  const int64_t K = rois.size(0), N = f0.size(0), C = f0.size(1);
  // Channel-fastest threads (and a channels-last output) when every map is channels-last.
  bool cl = true;
  for (const auto& f : features) cl = cl && is_channels_last(f);
  at::Tensor out = at::empty({K, C, ph, pw}, f0.options().memory_format(
                                                  cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const at::Tensor lv = levels.defined() ? levels.to(at::kLong).contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f0.scalar_type(), "roi_align_cuda", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    const at::Tensor r = rois.to(c10::CppTypeToScalarType<A>::value).contiguous();
    const LevelTable<T> table = make_table<T>(features, scales);
    roi_align_forward_kernel<T, A><<<blocks_for(out.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        table, r.data_ptr<A>(), lv.defined() ? lv.data_ptr<int64_t>() : nullptr, K, N, C, ph, pw, sr, aligned,
        max_mode, cl, out.data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::vector<at::Tensor> backward_cuda(const char* op, const at::Tensor& grad,
                                      const std::vector<at::Tensor>& features, const at::Tensor& rois,
                                      const at::Tensor& levels, at::ArrayRef<double> scales, int64_t ph,
                                      int64_t pw, int64_t sr, bool aligned, bool max_mode,
                                      bool deterministic) {
  check_cuda(op, features, rois, levels, scales, ph, pw);
  const at::Tensor& f0 = features[0];
  c10::cuda::CUDAGuard guard(f0.device());
  const int64_t K = rois.size(0), N = f0.size(0), C = f0.size(1);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == K && grad.size(1) == C && grad.size(2) == ph &&
                  grad.size(3) == pw,
              op, ": grad must have shape [", K, ", ", C, ", ", ph, ", ", pw, "], got ", grad.sizes());
  const at::ScalarType ct = f0.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  int64_t total = 0;
  for (const auto& f : features) total += f.numel();
  at::Tensor acc = at::zeros({total}, f0.options().dtype(ct));
  const at::Tensor lv = levels.defined() ? levels.to(at::kLong).contiguous()
                                         : at::zeros({K}, rois.options().dtype(at::kLong));
  if (K > 0 && C > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f0.scalar_type(), "roi_align_backward_cuda", [&] {
      using T = scalar_t;
      using A = at::opmath_type<T>;
      const at::Tensor r = rois.to(c10::CppTypeToScalarType<A>::value).contiguous();
      const LevelTable<T> table = make_table<T>(features, scales);
      auto stream = at::cuda::getCurrentCUDAStream();
      // grad channels-last ([K, ph, pw, C] in memory): channel-fastest threads read it coalesced.
      const at::Tensor g = grad.to(f0.scalar_type()).contiguous(at::MemoryFormat::ChannelsLast);
      if (!deterministic) {
        roi_align_backward_atomic_kernel<T, A><<<blocks_for(g.numel()), kThreads, 0, stream>>>(
            table, r.data_ptr<A>(), lv.data_ptr<int64_t>(), g.data_ptr<T>(), K, N, C, ph, pw, sr, aligned,
            max_mode, /*c_fastest=*/true, acc.data_ptr<A>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      } else {
        // Group the RoIs by (level, image), index order inside a group (stable sort); invalid batch
        // indices or levels go to a group past the end, never visited. No host sync.
        const int64_t L = static_cast<int64_t>(features.size());
        at::Tensor n = r.select(1, 0).to(at::kLong);
        const at::Tensor bad = n.lt(0).logical_or(n.ge(N)).logical_or(lv.lt(0)).logical_or(lv.ge(L));
        const at::Tensor key = at::where(bad, at::full_like(n, L * N), lv * N + n);
        const auto sorted = at::sort(key, /*stable=*/true, /*dim=*/0, /*descending=*/false);
        const at::Tensor order = std::get<1>(sorted).contiguous();
        const at::Tensor starts =
            at::searchsorted(std::get<0>(sorted).contiguous(), at::arange(L * N + 1, key.options()))
                .contiguous();
        const int64_t threads_needed = table.task_start[table.n] * C;
        if (threads_needed == 0) return;
        roi_align_backward_det_kernel<T, A><<<blocks_for(threads_needed), kThreads, 0, stream>>>(
            table, r.data_ptr<A>(), order.data_ptr<int64_t>(), starts.data_ptr<int64_t>(), g.data_ptr<T>(), N,
            C, ph, pw, sr, aligned, max_mode, acc.data_ptr<A>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
  std::vector<at::Tensor> out;
  int64_t start = 0;
  for (const auto& f : features) {
    at::Tensor a = acc.narrow(0, start, f.numel()).view({f.size(0), f.size(2), f.size(3), C}).permute({0, 3, 1, 2});
    start += f.numel();
    // A copy: the levels share one accumulator, and the outputs may not alias each other.
    at::Tensor o = at::empty(f.sizes(), f.options().memory_format(
                                            is_channels_last(f) ? at::MemoryFormat::ChannelsLast
                                                                : at::MemoryFormat::Contiguous));
    o.copy_(a);
    out.push_back(o);
  }
  return out;
}

at::Tensor roi_align_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t ph,
                          int64_t pw, int64_t sr, bool aligned, bool max_mode) {
  return forward_cuda("roi_align", {input}, rois, at::Tensor(), {spatial_scale}, ph, pw, sr, aligned, max_mode);
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& rois,
                                   double spatial_scale, int64_t ph, int64_t pw, int64_t sr, bool aligned,
                                   bool max_mode, bool deterministic) {
  return backward_cuda("roi_align_backward", grad, {input}, rois, at::Tensor(), {spatial_scale}, ph, pw, sr,
                       aligned, max_mode, deterministic)[0];
}

at::Tensor multi_level_roi_align_cuda(at::TensorList features, const at::Tensor& rois, const at::Tensor& levels,
                                      at::ArrayRef<double> scales, int64_t ph, int64_t pw, int64_t sr,
                                      bool aligned, bool max_mode) {
  return forward_cuda("multi_level_roi_align", features.vec(), rois, levels, scales, ph, pw, sr, aligned,
                      max_mode);
}

std::vector<at::Tensor> multi_level_roi_align_backward_cuda(const at::Tensor& grad, at::TensorList features,
                                                            const at::Tensor& rois, const at::Tensor& levels,
                                                            at::ArrayRef<double> scales, int64_t ph, int64_t pw,
                                                            int64_t sr, bool aligned, bool max_mode,
                                                            bool deterministic) {
  return backward_cuda("multi_level_roi_align_backward", grad, features.vec(), rois, levels, scales, ph, pw, sr,
                       aligned, max_mode, deterministic);
}

}  // namespace
}  // namespace fastseg

TORCH_LIBRARY_IMPL(fastseg, CUDA, m) {
  m.impl("roi_align", &fastseg::roi_align_cuda);
  m.impl("roi_align_backward", &fastseg::roi_align_backward_cuda);
  m.impl("multi_level_roi_align", &fastseg::multi_level_roi_align_cuda);
  m.impl("multi_level_roi_align_backward", &fastseg::multi_level_roi_align_backward_cuda);
}
