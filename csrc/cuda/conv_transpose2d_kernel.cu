// CUDA transposed 2-D convolution, forward and backward.
//
// kernel == stride, no dilation (U-Net k2 s2, Hourglass k2 s2): every output pixel receives exactly one
// kernel tap, so the op is one GEMM per group on cuBLAS through ATen (tensor cores for fp16/bf16):
//     NCHW:           Y[n][(co, ky, kx), pixel] = W^T[(co, ky, kx), ci] @ X[n][ci, pixel]
//     channels_last:  Y[pixel, (ky, kx, co)]    = X[pixel, ci] @ W[ci, (ky, kx, co)]
// followed by one scatter kernel that fuses the crop of `padding`, the rows and columns added by
// `output_padding` (bias only), the bias and the ReLU. No zero insertion, no col2im atomics. The
// backward gathers grad_output into the same matrix (zeros where padding cropped a tap) and runs
// grad_input = W @ G and grad_weight = X @ G^T.
//
// Every other configuration runs cuDNN's deconvolution through at::convolution (what PyTorch runs);
// the ReLU is then applied in place. Not measured on a GPU yet (no GPU on the development machine):
// see benchmarks/notes/conv_transpose2d.md.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "conv_transpose2d.h"

namespace fastseg {
namespace {

constexpr int kThreads = 256;

inline int blocks_for(int64_t n) {
  return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535LL * 8));
}

template <typename T>
__device__ __forceinline__ T epilogue(at::opmath_type<T> v, bool relu) {
  return static_cast<T>(relu && !(v > 0) && !isnan(static_cast<float>(v)) ? at::opmath_type<T>(0) : v);
}

// out[n, c, oy, ox] (NCHW) or out[n, oy, ox, c] (channels_last) from the GEMM result y.
// NCHW y: [N, Cout, kh, kw, H, W]; channels_last y: [groups, N*H*W, kh, kw, Cout_g].
template <typename T, bool CL>
__global__ void scatter_kernel(const T* __restrict__ y, const T* __restrict__ bias, T* __restrict__ out,
                               ConvT2dParams p, bool relu) {
  using acc_t = at::opmath_type<T>;
  const int64_t total = p.n * p.cout * p.ho * p.wo;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, c, oy, ox;
    if (CL) {
      c = i % p.cout;
      int64_t t = i / p.cout;
      ox = t % p.wo, t /= p.wo;
      oy = t % p.ho, n = t / p.ho;
    } else {
      ox = i % p.wo;
      int64_t t = i / p.wo;
      oy = t % p.ho, t /= p.ho;
      c = t % p.cout, n = t / p.cout;
    }
    const int64_t qy = oy + p.ph, qx = ox + p.pw;
    const int64_t iy = qy / p.kh, ky = qy % p.kh, ix = qx / p.kw, kx = qx % p.kw;
    acc_t v = bias ? static_cast<acc_t>(bias[c]) : acc_t(0);
    if (iy < p.h && ix < p.w) {
      if (CL) {
        const int64_t g = c / p.cout_g, co = c % p.cout_g;
        const int64_t pix = (n * p.h + iy) * p.w + ix;
        v += static_cast<acc_t>(y[((g * p.n * p.h * p.w + pix) * p.kh * p.kw + ky * p.kw + kx) * p.cout_g + co]);
      } else {
        v += static_cast<acc_t>(y[(((n * p.cout + c) * p.kh + ky) * p.kw + kx) * p.h * p.w + iy * p.w + ix]);
      }
    }
    out[i] = epilogue<T>(v, relu);
  }
}

// The inverse map: g (laid out as y above) from grad_output, zero where padding cropped the tap.
template <typename T, bool CL>
__global__ void gather_kernel(const T* __restrict__ gy, T* __restrict__ g, ConvT2dParams p) {
  const int64_t k = p.kh * p.kw, npix = p.n * p.h * p.w;
  const int64_t total = npix * k * p.cout;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, c, iy, ix, ky, kx;
    if (CL) {  // i over [groups, N*H*W, kh, kw, Cout_g]
      const int64_t co = i % p.cout_g;
      int64_t t = i / p.cout_g;
      kx = t % p.kw, t /= p.kw;
      ky = t % p.kh, t /= p.kh;
      const int64_t pix = t % npix, gr = t / npix;
      c = gr * p.cout_g + co;
      ix = pix % p.w, iy = (pix / p.w) % p.h, n = pix / (p.w * p.h);
    } else {  // i over [N, Cout, kh, kw, H, W]
      ix = i % p.w;
      int64_t t = i / p.w;
      iy = t % p.h, t /= p.h;
      kx = t % p.kw, t /= p.kw;
      ky = t % p.kh, t /= p.kh;
      c = t % p.cout, n = t / p.cout;
    }
    const int64_t oy = iy * p.kh + ky - p.ph, ox = ix * p.kw + kx - p.pw;
    T v = T(0);
    if (oy >= 0 && oy < p.ho && ox >= 0 && ox < p.wo)
      v = CL ? gy[((n * p.ho + oy) * p.wo + ox) * p.cout + c] : gy[((n * p.cout + c) * p.ho + oy) * p.wo + ox];
    g[i] = v;
  }
}

// weight [Cin, Cout_g, kh, kw] -> [groups, Cin_g, kh * kw * Cout_g]
at::Tensor weight_khwc(const at::Tensor& weight, const ConvT2dParams& p) {
  return weight.reshape({p.groups, p.cin_g, p.cout_g, p.kh * p.kw}).permute({0, 1, 3, 2}).contiguous()
      .view({p.groups, p.cin_g, p.kh * p.kw * p.cout_g});
}

// The GEMM result y (layouts above).
at::Tensor shuffle_gemm(const at::Tensor& input, const at::Tensor& weight, const ConvT2dParams& p, bool cl) {
  const int64_t k = p.kh * p.kw, plane = p.h * p.w;
  if (!cl) {
    const at::Tensor x = input.contiguous().view({p.n, p.cin, plane});
    const at::Tensor w = weight.contiguous().view({p.cin, p.cout_g * k});
    if (p.groups == 1) return at::matmul(w.t(), x);  // [N, Cout*K, HW], one batched cuBLAS call
    at::Tensor y = at::empty({p.n, p.cout * k, plane}, input.options());
    for (int64_t g = 0; g < p.groups; ++g)
      y.narrow(1, g * p.cout_g * k, p.cout_g * k)
          .copy_(at::matmul(w.narrow(0, g * p.cin_g, p.cin_g).t(), x.narrow(1, g * p.cin_g, p.cin_g)));
    return y;
  }
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast).permute({0, 2, 3, 1}).reshape({p.n * plane, p.cin});
  const at::Tensor w = weight_khwc(weight, p);
  if (p.groups == 1) return at::mm(x, w[0]).unsqueeze(0);
  at::Tensor y = at::empty({p.groups, p.n * plane, k * p.cout_g}, input.options());
  for (int64_t g = 0; g < p.groups; ++g) y[g].copy_(at::mm(x.narrow(1, g * p.cin_g, p.cin_g), w[g]));
  return y;
}

at::Tensor conv_transpose2d_cuda(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                 at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding,
                                 int64_t groups, at::IntArrayRef dilation, bool relu) {
  const ConvT2dParams p =
      check_conv_transpose2d("conv_transpose2d", input, weight, stride, padding, output_padding, groups, dilation);
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) check_bias("conv_transpose2d", *bias, input, p.cout);
  const at::cuda::CUDAGuard guard(input.device());
  const at::MemoryFormat fmt = conv_memory_format(input, weight);
  if (p.empty_output()) return at::empty({p.n, p.cout, p.ho, p.wo}, input.options().memory_format(fmt));
  if (!p.shuffle()) {
    at::Tensor out = at::convolution(input, weight, bias, stride, padding, dilation, /*transposed=*/true,
                                     output_padding, groups);
    if (relu) out.relu_();
    return out.contiguous(fmt);
  }
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  const at::Tensor y = shuffle_gemm(input, weight, p, cl).contiguous();
  at::Tensor out = at::empty({p.n, p.cout, p.ho, p.wo}, input.options().memory_format(fmt));
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  const int64_t total = out.numel();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "conv_transpose2d_cuda", [&] {
    const scalar_t* bp = has_bias ? b.data_ptr<scalar_t>() : nullptr;
    if (cl)
      scatter_kernel<scalar_t, true><<<blocks_for(total), kThreads, 0, stream>>>(
          y.data_ptr<scalar_t>(), bp, out.data_ptr<scalar_t>(), p, relu);
    else
      scatter_kernel<scalar_t, false><<<blocks_for(total), kThreads, 0, stream>>>(
          y.data_ptr<scalar_t>(), bp, out.data_ptr<scalar_t>(), p, relu);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_transpose2d_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef output_padding, int64_t groups, at::IntArrayRef dilation) {
  const ConvT2dParams p = check_conv_transpose2d_backward(grad_output, input, weight, stride, padding,
                                                          output_padding, groups, dilation);
  const at::cuda::CUDAGuard guard(input.device());
  const at::MemoryFormat fmt = conv_memory_format(input, weight);
  if (p.empty_output())  // no output element: every gradient is zero
    return {at::zeros_like(input).contiguous(fmt), at::zeros_like(weight).contiguous(fmt),
            at::zeros({p.cout}, input.options())};
  if (!p.shuffle()) {
    auto r = at::convolution_backward(grad_output, input, weight, std::vector<int64_t>{p.cout}, stride, padding,
                                      dilation, /*transposed=*/true, output_padding, groups, {true, true, true});
    return {std::get<0>(r).contiguous(fmt), std::get<1>(r).contiguous(fmt), std::get<2>(r)};
  }
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  const int64_t k = p.kh * p.kw, plane = p.h * p.w;
  const at::Tensor gy = grad_output.contiguous(fmt);
  at::Tensor g = cl ? at::empty({p.groups, p.n * plane, k * p.cout_g}, input.options())
                    : at::empty({p.n, p.cout * k, plane}, input.options());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "conv_transpose2d_backward_cuda", [&] {
    if (cl)
      gather_kernel<scalar_t, true><<<blocks_for(g.numel()), kThreads, 0, stream>>>(gy.data_ptr<scalar_t>(),
                                                                                    g.data_ptr<scalar_t>(), p);
    else
      gather_kernel<scalar_t, false><<<blocks_for(g.numel()), kThreads, 0, stream>>>(gy.data_ptr<scalar_t>(),
                                                                                     g.data_ptr<scalar_t>(), p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  at::Tensor grad_bias = grad_output.sum({0, 2, 3});
  at::Tensor grad_input, grad_weight;
  if (!cl) {
    const at::Tensor x = input.contiguous().view({p.n, p.cin, plane});
    const at::Tensor w = weight.contiguous().view({p.cin, p.cout_g * k});
    grad_input = at::empty({p.n, p.cin, p.h, p.w}, input.options());
    grad_weight = at::empty({p.cin, p.cout_g * k}, input.options());
    const at::Tensor gi = grad_input.view({p.n, p.cin, plane});
    for (int64_t gr = 0; gr < p.groups; ++gr) {
      const at::Tensor gg = g.narrow(1, gr * p.cout_g * k, p.cout_g * k);      // [N, Cout_g*K, HW]
      const at::Tensor xg = x.narrow(1, gr * p.cin_g, p.cin_g);                 // [N, Cin_g, HW]
      gi.narrow(1, gr * p.cin_g, p.cin_g).copy_(at::matmul(w.narrow(0, gr * p.cin_g, p.cin_g), gg));
      // sum over images of X[n] @ G[n]^T: one GEMM over the (n, pixel) reduction
      const at::Tensor xs = xg.permute({1, 0, 2}).reshape({p.cin_g, p.n * plane});
      const at::Tensor gs = gg.permute({1, 0, 2}).reshape({p.cout_g * k, p.n * plane});
      grad_weight.narrow(0, gr * p.cin_g, p.cin_g).copy_(at::mm(xs, gs.t()));
    }
    grad_weight = grad_weight.view({p.cin, p.cout_g, p.kh, p.kw});
  } else {
    const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast).permute({0, 2, 3, 1}).reshape({p.n * plane, p.cin});
    const at::Tensor w = weight_khwc(weight, p);
    grad_input = at::empty({p.n, p.cin, p.h, p.w}, input.options().memory_format(at::MemoryFormat::ChannelsLast));
    at::Tensor gi = grad_input.permute({0, 2, 3, 1}).view({p.n * plane, p.cin});
    at::Tensor gw = at::empty({p.groups, p.cin_g, k * p.cout_g}, input.options());
    for (int64_t gr = 0; gr < p.groups; ++gr) {
      gi.narrow(1, gr * p.cin_g, p.cin_g).copy_(at::mm(g[gr], w[gr].t()));
      gw[gr].copy_(at::mm(x.narrow(1, gr * p.cin_g, p.cin_g).t(), g[gr]));
    }
    grad_weight = gw.view({p.groups, p.cin_g, p.kh, p.kw, p.cout_g}).permute({0, 1, 4, 2, 3})
                      .reshape({p.cin, p.cout_g, p.kh, p.kw});
  }
  return {grad_input.contiguous(fmt), grad_weight.contiguous(fmt), grad_bias};  // PyTorch's layouts (fake kernel)
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg, CUDA, m) {
  m.impl("conv_transpose2d", &conv_transpose2d_cuda);
  m.impl("conv_transpose2d_backward", &conv_transpose2d_backward_cuda);
}

}  // namespace fastseg
