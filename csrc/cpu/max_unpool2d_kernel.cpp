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
};

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
      for (int64_t i = 0; i < in_plane; ++i) {
        const int64_t j = is[i];
        if (j < 0 || j >= out_plane) {
          bad.report(j);
          continue;
        }
        o[j] = xs[i];
      }
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
      for (int64_t c = 0; c < channels; ++c) {
        const int64_t j = is[c];
        if (j < 0 || j >= out_plane) {
          bad.report(j);
          continue;
        }
        o[j * channels + c] = xs[c];
      }
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
  if (out.numel() == 0) {
    TORCH_CHECK(x.numel() == 0, "max_unpool2d: an empty ", output_size, " output plane cannot hold any input");
    return out;
  }
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

// The gradient gathers: NCHW one task per plane, channels_last tasks of input pixels.
at::Tensor max_unpool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& indices) {
  check_max_unpool2d_backward(grad_output, indices);
  const at::MemoryFormat fmt = indices.suggest_memory_format();
  const at::Tensor g = grad_output.contiguous(fmt), idx = indices.contiguous(fmt);
  at::Tensor grad_input = at::empty(indices.sizes(), grad_output.options().memory_format(fmt));
  const int64_t n = indices.size(0), channels = indices.size(1);
  const int64_t in_plane = indices.size(2) * indices.size(3), out_plane = g.size(2) * g.size(3);
  BadIndex bad;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "max_unpool2d_backward_cpu", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const int64_t* ip = idx.data_ptr<int64_t>();
    scalar_t* out = grad_input.data_ptr<scalar_t>();
    // A row: NCHW one plane (its values read from one output plane), channels_last one pixel (its
    // channel c read at channel c of the output pixel its index names).
    const bool cl = fmt == at::MemoryFormat::ChannelsLast;
    const int64_t rows = cl ? n * in_plane : n * channels, row = cl ? channels : in_plane;
    at::parallel_for(0, rows, std::max<int64_t>(1, (4 << 10) / std::max<int64_t>(row, 1)), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const int64_t* is = ip + r * row;
        scalar_t* o = out + r * row;
        const scalar_t* src = cl ? gp + (r / in_plane) * out_plane * channels : gp + r * out_plane;
        const int64_t step = cl ? channels : 1;
        for (int64_t i = 0; i < row; ++i) {
          const int64_t j = is[i];
          if (j < 0 || j >= out_plane) {
            bad.report(j);
            o[i] = scalar_t(0);
            continue;
          }
          o[i] = src[j * step + (cl ? i : 0)];
        }
      }
    });
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
