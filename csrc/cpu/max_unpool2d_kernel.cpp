// CPU max unpooling. PyTorch zero-fills the whole output and then scatters the values into it: the
// output crosses memory twice. Here a task zero-fills one (image, channel) plane and writes that
// plane's values while it is still in L1/L2, so the output crosses memory once (NCHW; channels_last:
// see unpool_nhwc). Values are written in input order: the later of two equal indices wins, as in
// PyTorch. Measured in benchmarks/notes/conv_transpose2d.md.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>

#include "max_unpool2d.h"

namespace fastseg {
namespace {

// The first index found outside the output plane, reported after the parallel loop.
struct BadIndex {
  std::atomic<bool> seen{false};
  int64_t value = 0;
  void report(int64_t v) {
    if (!seen.exchange(true)) value = v;
  }
  // Scans `count` indices once a loop has seen a bad one among them.
  void find(const int64_t* idx, int64_t count, int64_t out_plane) {
    for (int64_t i = 0; i < count; ++i)
      if (!inside(idx[i], out_plane)) return report(idx[i]);
  }
  static bool inside(int64_t j, int64_t out_plane) {
    return static_cast<uint64_t>(j) < static_cast<uint64_t>(out_plane);
  }
};
// The loops below do not branch on each index (a branch, even never taken, measured 1.3-1.6x slower
// in the gather): a bad index is redirected to position 0, noted, and the call raises afterwards.

// NCHW: planes of `in_plane` values scatter into planes of `out_plane` outputs.
template <typename T>
void unpool_nchw(const T* x, const int64_t* idx, T* out, int64_t planes, int64_t in_plane, int64_t out_plane,
                 BadIndex& bad) {
  const int64_t grain = std::max<int64_t>(1, (16 << 10) / std::max<int64_t>(out_plane, 1));
  at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      T* o = out + p * out_plane;
      std::fill(o, o + out_plane, T(0));
      const T* xs = x + p * in_plane;
      const int64_t* is = idx + p * in_plane;
      bool ok = true;
      for (int64_t i = 0; i < in_plane; ++i) {
        const int64_t j = is[i];
        const bool in = BadIndex::inside(j, out_plane);
        ok &= in;
        o[in ? j : 0] = xs[i];
      }
      if (C10_UNLIKELY(!ok)) bad.find(is, in_plane, out_plane);
    }
  });
}

// channels_last: a plane is strided (one value per pixel), so zero-filling planes per task touched
// every page of the image once per channel block (2-5x slower than PyTorch): the output is zero-filled
// as one block, then tasks of input pixels write all their channels (what PyTorch does). Two equal
// indices of a plane in different tasks may then land in either order, as in PyTorch's channels_last
// kernel; max_pool2d's switches only repeat an index with the same value.
template <typename T>
void unpool_nhwc(const T* x, const int64_t* idx, T* out, int64_t n, int64_t channels, int64_t in_plane,
                 int64_t out_plane, BadIndex& bad) {
  at::parallel_for(0, n * out_plane * channels, 1 << 16,
                   [&](int64_t begin, int64_t end) { std::fill(out + begin, out + end, T(0)); });
  const int64_t grain = std::max<int64_t>(1, (4 << 10) / channels);
  at::parallel_for(0, n * in_plane, grain, [&](int64_t begin, int64_t end) {
    for (int64_t pix = begin; pix < end; ++pix) {
      T* o = out + (pix / in_plane) * out_plane * channels;
      const T* xs = x + pix * channels;
      const int64_t* is = idx + pix * channels;
      bool ok = true;
      for (int64_t c = 0; c < channels; ++c) {
        const int64_t j = is[c];
        const bool in = BadIndex::inside(j, out_plane);
        ok &= in;
        o[(in ? j : 0) * channels + c] = xs[c];
      }
      if (C10_UNLIKELY(!ok)) bad.find(is, channels, out_plane);
    }
  });
}

at::Tensor max_unpool2d_cpu(const at::Tensor& input, const at::Tensor& indices, at::IntArrayRef output_size) {
  check_max_unpool2d(input, indices, output_size);
  const at::MemoryFormat fmt = input.suggest_memory_format();
  const at::Tensor x = input.contiguous(fmt), idx = indices.contiguous(fmt);
  at::Tensor out = at::empty({input.size(0), input.size(1), output_size[0], output_size[1]},
                             input.options().memory_format(fmt));
  const int64_t in_plane = input.size(2) * input.size(3), out_plane = output_size[0] * output_size[1];
  if (out.numel() == 0) return out;  // as PyTorch: nothing is written, so no index is checked
  BadIndex bad;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "max_unpool2d_cpu", [&] {
    if (fmt == at::MemoryFormat::ChannelsLast)
      unpool_nhwc<scalar_t>(x.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), input.size(0),
                            input.size(1), in_plane, out_plane, bad);
    else
      unpool_nchw<scalar_t>(x.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), out.data_ptr<scalar_t>(),
                            input.size(0) * input.size(1), in_plane, out_plane, bad);
  });
  if (bad.seen) bad_unpool_index(bad.value, output_size);
  return out;
}

// The gradient gathers. A row: NCHW one plane (its values read from one output plane), channels_last
// one pixel (its channel c read at channel c of the output pixel its index names).
template <typename T, bool CL>
void unpool_backward(const T* g, const int64_t* idx, T* out, int64_t rows, int64_t row, int64_t channels,
                     int64_t in_plane, int64_t out_plane, BadIndex& bad) {
  at::parallel_for(0, rows, std::max<int64_t>(1, (4 << 10) / std::max<int64_t>(row, 1)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t* __restrict__ is = idx + r * row;
      T* __restrict__ o = out + r * row;
      const T* __restrict__ src = CL ? g + (r / in_plane) * out_plane * channels : g + r * out_plane;
      bool ok = true;
      for (int64_t i = 0; i < row; ++i) {
        const int64_t j = is[i];
        const bool in = BadIndex::inside(j, out_plane);
        ok &= in;
        o[i] = src[(in ? j : 0) * (CL ? channels : 1) + (CL ? i : 0)];
      }
      if (C10_UNLIKELY(!ok)) bad.find(is, row, out_plane);
    }
  });
}

at::Tensor max_unpool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& indices) {
  check_max_unpool2d_backward(grad_output, indices);
  const at::MemoryFormat fmt = indices.suggest_memory_format();
  const at::Tensor g = grad_output.contiguous(fmt), idx = indices.contiguous(fmt);
  at::Tensor grad_input = at::empty(indices.sizes(), grad_output.options().memory_format(fmt));
  const int64_t n = indices.size(0), channels = indices.size(1);
  const int64_t in_plane = indices.size(2) * indices.size(3), out_plane = g.size(2) * g.size(3);
  if (out_plane == 0) return grad_input.zero_();  // an empty output plane received no value
  BadIndex bad;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "max_unpool2d_backward_cpu", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* out = grad_input.data_ptr<scalar_t>();
    if (fmt == at::MemoryFormat::ChannelsLast)
      unpool_backward<scalar_t, true>(gp, idx.data_ptr<int64_t>(), out, n * in_plane, channels, channels, in_plane,
                                      out_plane, bad);
    else
      unpool_backward<scalar_t, false>(gp, idx.data_ptr<int64_t>(), out, n * channels, in_plane, channels, in_plane,
                                       out_plane, bad);
  });
  if (bad.seen) bad_unpool_index(bad.value, {g.size(2), g.size(3)});
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg, CPU, m) {
  m.impl("max_unpool2d", &max_unpool2d_cpu);
  m.impl("max_unpool2d_backward", &max_unpool2d_backward_cpu);
}

}  // namespace fastseg
