// CPU transposed 2-D convolution, forward and backward.
//
// kernel == stride, no dilation (U-Net's k2 s2 up-convolution, the Hourglass' k2 s2 upsampling): every
// output pixel receives exactly one kernel tap, so the op is ONE GEMM per group,
//     Y[(ky, kx, co), pixel] = W^T[(co, ky, kx), ci] @ X[ci, pixel]        (NCHW)
//     Y[pixel, (ky, kx, co)] = X[pixel, ci] @ W[ci, (ky, kx, co)]          (channels_last)
// through ATen's BLAS (at::mm: MKL/oneDNN sgemm; fp32 on AVX-512: the fused kernels named below), followed
// by a parallel pixel-shuffle-like scatter that fuses the crop of `padding`, the rows added by
// `output_padding`, the bias and the ReLU. There is
// no zero-insertion and no col2im accumulation. The backward gathers grad_output into the same [pixel,
// (ky, kx, co)] matrix and runs two GEMMs: grad_input = G @ W^T, grad_weight = X^T @ G (fp32 on AVX-512:
// our own sgemm, csrc/cpu/sgemm_avx512.cpp, faster than the BLAS's on these shapes).
//
// Other kernels on layers with <= 64 channels (FCN's k4 s2 p1 and k16 s8 p4 score upsampling, fp32,
// groups 1, no dilation): the direct AVX-512 kernels of conv_transpose2d_direct.cpp, forward and backward.
// 3x3 stride-1 layers with >= 96 channels (DeconvNet's decoder, fp32): Winograd's F(2x2, 3x3)
// (conv_transpose2d_winograd.cpp), forward and both gradients, 16 products per 2x2 tile where a direct
// convolution takes 36. Kernel-4 stride-2 layers with >= 128 channels (the Hourglass, fp32): F(2x2, 2x2) on
// each sub-pixel phase (conv_transpose2d_winograd_k4s2.cpp), 9 products where a direct one takes 16.
// Everything else (other wide layers, dilation, groups, fp16/bf16) goes to at::convolution /
// at::convolution_backward, i.e. to the same oneDNN deconvolution PyTorch runs: on wide layers it runs
// near the FMA peak, and it beat every GEMM-based formulation tried here (dense conv2d of the s*s
// phases + pixel shuffle was 1.2-4x slower; benchmarks/notes/conv_transpose2d.md).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/native/ConvUtils.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cmath>
#include <type_traits>
#include <vector>

#include "conv_transpose2d.h"
#include "packed_weights.h"
#include "sgemm_avx512.h"

namespace fastseg {
namespace {

// at::mm_out into a view (mm_out wants an lvalue; the views here are temporaries).
inline void mm_into(at::Tensor out, const at::Tensor& a, const at::Tensor& b) { at::mm_out(out, a, b); }

// Bias and ReLU in the op-math type (float for fp16/bf16, the type itself otherwise); NaN stays NaN.
template <typename T>
using Acc = at::opmath_type<T>;
template <typename T>
inline T epilogue(Acc<T> v, bool relu) {
  return static_cast<T>(relu && !(v > Acc<T>(0)) && !std::isnan(v) ? Acc<T>(0) : v);
}

// NCHW scatter. y: [N, Cout, kh, kw, H, W] (GEMM output); out: [N, Cout, Ho, Wo] contiguous.
template <typename T>
void scatter_nchw(const T* y, const T* bias, T* out, const ConvT2dParams& p, bool relu) {
  const int64_t rows = p.n * p.cout * p.ho;
  const int64_t plane = p.h * p.w, k = p.kh * p.kw;
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> src(p.wo);  // offset of each output column in a (ky) slab, -1: bias only
    int64_t cached_kx_plane = -1;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t oy = r % p.ho, nc = r / p.ho, c = nc % p.cout;
      const Acc<T> b = bias ? static_cast<Acc<T>>(bias[c]) : Acc<T>(0);
      T* o = out + r * p.wo;
      const int64_t qy = oy + p.ph, iy = qy / p.kh, ky = qy % p.kh;
      if (iy >= p.h) {  // a row added by output_padding: nothing but the bias
        for (int64_t ox = 0; ox < p.wo; ++ox) o[ox] = epilogue<T>(b, relu);
        continue;
      }
      if (cached_kx_plane < 0) {
        for (int64_t ox = 0; ox < p.wo; ++ox) {
          const int64_t qx = ox + p.pw, ix = qx / p.kw, kx = qx % p.kw;
          src[ox] = ix < p.w ? kx * plane + ix : -1;
        }
        cached_kx_plane = 0;
      }
      const T* ys = y + (nc * k + ky * p.kw) * plane + iy * p.w;
      for (int64_t ox = 0; ox < p.wo; ++ox) {
        const int64_t s = src[ox];
        o[ox] = epilogue<T>(s >= 0 ? static_cast<Acc<T>>(ys[s]) + b : b, relu);
      }
    }
  });
}

// channels_last scatter. y: [groups, N*H*W, kh, kw, Cout_g]; out: [N, Ho, Wo, Cout] contiguous.
template <typename T>
void scatter_nhwc(const T* y, const T* bias, T* out, const ConvT2dParams& p, bool relu) {
  const int64_t rows = p.n * p.ho;
  const int64_t npix = p.n * p.h * p.w, k = p.kh * p.kw;
  at::parallel_for(0, rows, 4, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t oy = r % p.ho, n = r / p.ho;
      const int64_t qy = oy + p.ph, iy = qy / p.kh, ky = qy % p.kh;
      for (int64_t ox = 0; ox < p.wo; ++ox) {
        T* o = out + (r * p.wo + ox) * p.cout;
        const int64_t qx = ox + p.pw, ix = qx / p.kw, kx = qx % p.kw;
        const bool inside = iy < p.h && ix < p.w;
        const int64_t pix = (n * p.h + iy) * p.w + ix;
        for (int64_t g = 0; g < p.groups; ++g) {
          T* og = o + g * p.cout_g;
          const T* bg = bias ? bias + g * p.cout_g : nullptr;
          if (inside) {
            const T* ys = y + ((g * npix + pix) * k + ky * p.kw + kx) * p.cout_g;
            for (int64_t c = 0; c < p.cout_g; ++c)
              og[c] = epilogue<T>(static_cast<Acc<T>>(ys[c]) + (bg ? static_cast<Acc<T>>(bg[c]) : Acc<T>(0)), relu);
          } else {
            for (int64_t c = 0; c < p.cout_g; ++c) og[c] = epilogue<T>(bg ? static_cast<Acc<T>>(bg[c]) : Acc<T>(0), relu);
          }
        }
      }
    }
  });
}

// NCHW gather of input rows [iy0, iy1) of images [n0, n1) of grad_output gy (all images) into g:
// [Cout, kh, kw, n1 - n0, iy1 - iy0, W] (zeros where padding cropped the tap), the (co, ky, kx) rows `ld`
// apart (0: packed, (n1 - n0) * (iy1 - iy0) * W).
template <typename T>
void gather_nchw(const T* gy, T* g, const ConvT2dParams& p, int64_t n0, int64_t n1, int64_t iy0, int64_t iy1,
                 int64_t ld = 0) {
  const int64_t rows = iy1 - iy0, images = n1 - n0;
  if (ld == 0) ld = images * rows * p.w;
  // fp32 kernel-2 stride-2 rows with no column padding (ox = 2 ix + kx, all inside the row): split by
  // vector permutes; the scalar stride-2 loop was 11.5% of the NCHW U-Net 128 -> 64 training step
  // (benchmarks/notes/conv_transpose2d.md, section 30).
  const bool fast_k2 = std::is_same_v<T, float> && p.kw == 2 && p.sw == 2 && p.pw == 0 && avx512::available();
  at::parallel_for(0, p.cout * p.kh * images * rows, 16, [&](int64_t begin, int64_t end) {  // rows (c, ky, n, iy)
    for (int64_t r = begin; r < end; ++r) {
      const int64_t iy = iy0 + r % rows, t = r / rows, m = t % images, u = t / images, ky = u % p.kh, c = u / p.kh;
      const int64_t oy = iy * p.kh + ky - p.ph;
      for (int64_t kx = 0; kx < p.kw; ++kx) {
        T* dst = g + ((c * p.kh + ky) * p.kw + kx) * ld + (m * rows + iy - iy0) * p.w;
        if (oy < 0 || oy >= p.ho) {
          std::fill(dst, dst + p.w, T(0));
          continue;
        }
        const T* src = gy + (((n0 + m) * p.cout + c) * p.ho + oy) * p.wo;
        if (fast_k2) {  // both taps of the row at once (kx == 0 here: the loop breaks after it)
          // The next channel's row: each channel's rows of a block are a few KB of their own, too short
          // for the hardware's stream prefetch to get ahead of (the backward by pixels, 3-5% faster).
          if (c + 1 < p.cout)
            for (int64_t l = 0; l < p.wo; l += 16) __builtin_prefetch(src + p.ho * p.wo + l, 0, 3);
          avx512::deinterleave2(reinterpret_cast<const float*>(src), reinterpret_cast<float*>(dst),
                                reinterpret_cast<float*>(dst + ld), p.w);
          break;
        }
        for (int64_t ix = 0; ix < p.w; ++ix) {
          const int64_t ox = ix * p.kw + kx - p.pw;
          dst[ix] = ox >= 0 && ox < p.wo ? src[ox] : T(0);
        }
      }
    }
  });
}

// channels_last gather of grad_output into g: [groups, P, kh, kw, Cout_g] for the P = (row1 - row0) * W
// input pixels of input rows [row0, row1) (rows: (n, iy)), group gr at g + gr * group_stride pixels.
template <typename T>
void gather_nhwc(const T* gy, T* g, const ConvT2dParams& p, int64_t row0, int64_t row1, int64_t group_stride) {
  const int64_t k = p.kh * p.kw;
  at::parallel_for(row0, row1, 4, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t iy = r % p.h, n = r / p.h;
      for (int64_t ix = 0; ix < p.w; ++ix) {
        const int64_t pix = (r - row0) * p.w + ix;
        for (int64_t ky = 0; ky < p.kh; ++ky) {
          const int64_t oy = iy * p.kh + ky - p.ph;
          for (int64_t kx = 0; kx < p.kw; ++kx) {
            const int64_t ox = ix * p.kw + kx - p.pw;
            const bool inside = oy >= 0 && oy < p.ho && ox >= 0 && ox < p.wo;
            const T* src = gy + ((n * p.ho + oy) * p.wo + ox) * p.cout;
            for (int64_t gr = 0; gr < p.groups; ++gr) {
              T* dst = g + ((gr * group_stride + pix) * k + ky * p.kw + kx) * p.cout_g;
              if (inside)
                std::copy(src + gr * p.cout_g, src + (gr + 1) * p.cout_g, dst);
              else
                std::fill(dst, dst + p.cout_g, T(0));
            }
          }
        }
      }
    }
  });
}

// How many of `rows` input rows (of `row_bytes` gathered grad_output each) the k == s backward gathers at
// a time: ~2 MB, which stays in cache from the gather to both GEMMs, in one buffer reused block after
// block (the whole gathered grad_output at once, 16.8 MB on U-Net's 128 -> 64 layer, was a fresh mmap
// that page-faulted in on every call).
int64_t gather_block_rows(int64_t row_bytes, int64_t rows) {
  return std::clamp<int64_t>((int64_t(2) << 20) / row_bytes, 1, rows);
}

// The NCHW k == s backward by pixels (shuffle_backward_nchw_by_pixels): the largest weight, in floats, it
// takes (each thread keeps a weight gradient of its own), and the bytes of its blocks.
constexpr int64_t kByPixelsWeight = int64_t(64) << 10;
constexpr int64_t kByPixelsBlock = int64_t(384) << 10;

// Whether the k == s kernels on avx512::sgemm take this call: fp32, groups 1, an AVX-512 CPU.
bool avx512_sgemm_fits(const at::Tensor& input, const ConvT2dParams& p) {
  return p.groups == 1 && input.scalar_type() == at::kFloat && avx512::available();
}

// The k == s route runs fp16/bf16 in fp32 and rounds each result once, as PyTorch's oneDNN routine
// does: a 16-bit GEMM result rounded before the bias is added loses what the bias cancels (0.5 + 2^-12
// rounds to 0.5, and the bias -0.5 then leaves 0, not 2^-12), and a weight gradient summed block by
// block in 16 bits loses the small blocks.
bool reduced_precision(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

// weight [Cin, Cout_g, kh, kw] -> [groups, Cin_g, kh * kw * Cout_g] (the channels_last GEMM's B).
at::Tensor weight_khwc(const at::Tensor& weight, const ConvT2dParams& p) {
  return weight.reshape({p.groups, p.cin_g, p.cout_g, p.kh * p.kw}).permute({0, 1, 3, 2}).contiguous()
      .view({p.groups, p.cin_g, p.kh * p.kw * p.cout_g});
}

// The channels_last k == s forward for fp32, groups 1, no padding or output_padding, on AVX-512 CPUs, widths a
// multiple of 8: for each tap row ky, ONE GEMM of the input's pixels [N*H*W, Cin] by the weight's columns
// [Cin, (kx, co)], each input row's W pixels stored straight into output row iy * kh + ky (the kw * Cout
// values of a pixel are contiguous there), bias and ReLU on the store (avx512::sgemm_rows). oneDNN's
// deconvolution ran 7-15% below its own 1x1 convolution of the same GEMM on the Zen 5 box
// (benchmarks/notes/conv_transpose2d.md, section 29). Returns false where it does not fit.
// Images up to 128 pixels wide: 1.02-1.35x of oneDNN's there (64-pixel-wide ones 0.88-1.0x until the
// sgemm prefetched its A rows: section 30); on 256-pixel-wide ones both read the same (0.97-0.98x, memory
// bound), and those keep oneDNN's routine.
constexpr int64_t kShuffleForwardMaxWidthNhwc = 128;
bool shuffle_forward_nhwc_avx512_fits(const at::Tensor& input, const ConvT2dParams& p) {
  return p.shuffle() && avx512_sgemm_fits(input, p) && p.ph == 0 && p.pw == 0 && p.oph == 0 && p.opw == 0 &&
         p.w % 8 == 0 && p.w <= kShuffleForwardMaxWidthNhwc;
}
bool shuffle_forward_nhwc_avx512(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& b,
                                 const ConvT2dParams& p, bool relu, at::Tensor& out) {
  if (!shuffle_forward_nhwc_avx512_fits(input, p)) return false;
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);  // [N*H*W, Cin]
  const at::Tensor wk = weight_khwc(weight, p);                           // [Cin, (ky, kx, co)]
  const int64_t nk = p.kw * p.cout, kn = p.kh * nk, panel = avx512::packed_b_size(p.cin, nk);
  at::Tensor packed = at::empty({p.kh * panel}, x.options());
  float* bp = packed.data_ptr<float>();
  const float* ws = wk.data_ptr<float>();
  const int64_t panels = (nk + 31) / 32;
  at::parallel_for(0, p.kh * panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {  // B of tap row ky: columns [ky * nk, (ky + 1) * nk) of wk
      const int64_t ky = t / panels, j = t % panels;
      avx512::pack_b(p.cin, nk, ws + ky * nk, kn, 1, bp + ky * panel, j, j + 1);
    }
  });
  std::vector<float> bias_k;  // bias[(kx, co)] = bias[co]
  if (b.defined())
    for (int64_t kx = 0; kx < p.kw; ++kx) bias_k.insert(bias_k.end(), b.data_ptr<float>(), b.data_ptr<float>() + p.cout);
  const float* xs = x.data_ptr<float>();
  float* os = out.data_ptr<float>();
  const int64_t out_row = p.wo * p.cout;  // floats in one output row
  // Blocks of ~256 KB of input rows, every tap row of a block while it is in L2: tap row by tap row over a
  // thread's whole share read its input from memory once per tap row (U-Net 128 -> 64, 4 MB a thread:
  // 0.82-0.88x of oneDNN; section 29).
  const int64_t block = std::max<int64_t>(1, (int64_t(256) << 10) / (p.w * p.cin * 4));
  at::parallel_for(0, p.n * p.h, 1, [&](int64_t begin, int64_t end) {  // input rows (n, iy)
    for (int64_t r0 = begin; r0 < end; r0 += block) {
      const int64_t r1 = std::min(end, r0 + block);
      for (int64_t ky = 0; ky < p.kh; ++ky) {
        avx512::Rows rows{os + (r0 * p.kh + ky) * out_row, nk, p.w, p.kh * out_row,
                          bias_k.empty() ? nullptr : bias_k.data(), relu};
        avx512::sgemm_rows((r1 - r0) * p.w, nk, p.cin, xs + r0 * p.w * p.cin, p.cin, 1, bp + ky * panel, 0, true,
                           rows, false);
      }
    }
  });
  return true;
}

at::Tensor shuffle_forward(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                           const ConvT2dParams& p, bool relu, at::MemoryFormat fmt) {
  if (reduced_precision(input)) {
    const c10::optional<at::Tensor> b32 =
        bias.has_value() && bias->defined() ? c10::optional<at::Tensor>(bias->to(at::kFloat)) : c10::nullopt;
    return shuffle_forward(input.to(at::kFloat), weight.to(at::kFloat), b32, p, relu, fmt).to(input.scalar_type());
  }
  const int64_t k = p.kh * p.kw, plane = p.h * p.w;
  at::Tensor out = at::empty({p.n, p.cout, p.ho, p.wo}, input.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  if (fmt == at::MemoryFormat::Contiguous && conv_transpose2d_k2_nchw(input, weight, b, p, relu, out)) return out;
  if (fmt == at::MemoryFormat::ChannelsLast && shuffle_forward_nhwc_avx512(input, weight, b, p, relu, out)) return out;
  at::Tensor y;
  if (fmt == at::MemoryFormat::Contiguous) {
    const at::Tensor x = input.contiguous();
    const at::Tensor w = weight.contiguous().view({p.cin, p.cout_g * k});
    y = at::empty({p.n, p.cout * k, plane}, input.options());
    for (int64_t n = 0; n < p.n; ++n)
      for (int64_t g = 0; g < p.groups; ++g)
        mm_into(y[n].narrow(0, g * p.cout_g * k, p.cout_g * k),
                   w.narrow(0, g * p.cin_g, p.cin_g).t(), x[n].view({p.cin, plane}).narrow(0, g * p.cin_g, p.cin_g));
  } else {
    const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast).permute({0, 2, 3, 1})
                             .reshape({p.n * plane, p.cin});
    const at::Tensor w = weight_khwc(weight, p);
    y = at::empty({p.groups, p.n * plane, k * p.cout_g}, input.options());
    for (int64_t g = 0; g < p.groups; ++g)
      mm_into(y[g], p.groups == 1 ? x : x.narrow(1, g * p.cin_g, p.cin_g), w[g]);
  }
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "conv_transpose2d_cpu", [&] {
    const scalar_t* bp = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
    if (fmt == at::MemoryFormat::Contiguous)
      scatter_nchw<scalar_t>(y.data_ptr<scalar_t>(), bp, out.data_ptr<scalar_t>(), p, relu);
    else
      scatter_nhwc<scalar_t>(y.data_ptr<scalar_t>(), bp, out.data_ptr<scalar_t>(), p, relu);
  });
  return out;
}

// The channels_last k == s backward for fp32, groups 1, on AVX-512 CPUs: the same gathered blocks, both
// GEMMs on avx512::sgemm, each split between the threads by rows of its result (8-row panels): grad_input
// by pixels, grad_weight by input channels. x: the input as [N*H*W, Cin]; w: weight_khwc's [Cin, k*Cout];
// gi: grad_input as [N*H*W, Cin]; gw: [Cin, k*Cout], written. MKL's sgemm ran these at 135-190 GFLOP/s
// (benchmarks/notes/conv_transpose2d.md, section 27).
void shuffle_backward_nhwc_avx512(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& w,
                                  const ConvT2dParams& p, at::Tensor& gi, at::Tensor& gw) {
  const int64_t kn = p.kh * p.kw * p.cout;  // columns of the gathered grad_output: (ky, kx, co)
  // grad_input = G W^T: B(q, ci) = w[ci][q], packed once.
  at::Tensor packed = at::empty({avx512::packed_b_size(kn, p.cin)}, x.options());
  float* wp = packed.data_ptr<float>();
  at::parallel_for(0, (p.cin + 31) / 32, 1, [&](int64_t begin, int64_t end) {
    avx512::pack_b(kn, p.cin, w.data_ptr<float>(), 1, kn, wp, begin, end);
  });
  const int64_t rows = p.n * p.h;
  const int64_t block = gather_block_rows(p.w * kn * 4, rows);
  at::Tensor buffer = at::empty({block * p.w * kn}, x.options());
  float* g = buffer.data_ptr<float>();
  const float* xs = x.data_ptr<float>();
  float* gis = gi.data_ptr<float>();
  float* gws = gw.data_ptr<float>();
  for (int64_t row0 = 0; row0 < rows; row0 += block) {
    const int64_t row1 = std::min(rows, row0 + block), pix0 = row0 * p.w, npix = (row1 - row0) * p.w;
    gather_nhwc<float>(gy.data_ptr<float>(), g, p, row0, row1, block * p.w);
    at::parallel_for(0, (npix + 7) / 8, 1, [&](int64_t begin, int64_t end) {
      const int64_t i0 = begin * 8, i1 = std::min(npix, end * 8);
      avx512::sgemm(i1 - i0, p.cin, kn, g + i0 * kn, kn, 1, wp, 0, true, gis + (pix0 + i0) * p.cin, p.cin, false);
    });
    // grad_weight += X^T G: A(ci, pix) = x[pix][ci], B = G in place.
    at::parallel_for(0, (p.cin + 7) / 8, 1, [&](int64_t begin, int64_t end) {
      const int64_t c0 = begin * 8, c1 = std::min(p.cin, end * 8);
      avx512::sgemm(c1 - c0, kn, npix, xs + pix0 * p.cin + c0, 1, p.cin, g, kn, false, gws + c0 * kn, kn, row0 > 0);
    });
  }
}

// The NCHW k == s backward for fp32, groups 1, on AVX-512 CPUs, in ~2 MB blocks of gathered grad_output:
// whole images where one image's rows take less (images [n0, n1), all rows), else rows of one image.
// Per block, G [k*Cout, pixels] (gather_nchw, columns (image, pixel)), and both GEMMs split between the
// threads by input channels: grad_input = W G image by image, each thread's W rows in ~256 KB chunks that
// every image of the block reuses from L2; grad_weight += X G^T, X's rows of the block side by side
// (copied where the block holds several images), G^T packed, the result in the weight's own layout.
// Blocks of one 8x8 image made the weight gradient's GEMMs 64 deep and read its 8 MB result once per image,
// and the weight gradient computed transposed cost an 8 MB transposing copy (U-Net 1024 -> 512: 0.57x of
// oneDNN's backward; benchmarks/notes/conv_transpose2d.md, section 30).
// x: the input (contiguous); w: [Cin, Cout * k]; gi: grad_input (contiguous); gw: [Cin, Cout * k], written.
void shuffle_backward_nchw_avx512(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& w,
                                  const ConvT2dParams& p, at::Tensor& gi, at::Tensor& gw) {
  const int64_t kn = p.kh * p.kw * p.cout, plane = p.h * p.w;
  // Rows (n, iy) of a block: ~2 MB of G, and of X's copy where a block holds several images (a layer with
  // far more input channels than k * Cout would otherwise copy hundreds of MB of X).
  const int64_t block_rows = gather_block_rows(std::max(kn, p.cin) * p.w * 4, p.n * p.h);
  const int64_t images = std::max<int64_t>(1, block_rows / p.h), rows = std::min(p.h, block_rows);
  const int64_t span = rows * p.w;  // one image's pixels in a block
  at::Tensor buffer = at::empty({kn * images * span}, x.options());
  at::Tensor packed_g = at::empty({images * avx512::packed_b_size(kn, span)}, x.options());   // G, image by image
  at::Tensor packed_gt = at::empty({avx512::packed_b_size(images * span, kn)}, x.options());  // G^T
  at::Tensor x_block = at::empty({images > 1 ? p.cin * images * span : 0}, x.options());
  float* g = buffer.data_ptr<float>();
  float* gp = packed_g.data_ptr<float>();
  float* gtp = packed_gt.data_ptr<float>();
  const float* ws = w.data_ptr<float>();
  const float* xs = x.data_ptr<float>();
  const int64_t w_chunk = std::max<int64_t>(8, ((int64_t(256) << 10) / (kn * 4)) / 8 * 8);  // rows of W
  for (int64_t n0 = 0; n0 < p.n; n0 += images) {
    const int64_t n1 = std::min(p.n, n0 + images), ni = n1 - n0;
    for (int64_t iy0 = 0; iy0 < p.h; iy0 += rows) {
      const int64_t iy1 = std::min(p.h, iy0 + rows), pix0 = iy0 * p.w, np = (iy1 - iy0) * p.w, npix = ni * np;
      const int64_t np_packed = avx512::packed_b_size(kn, np), panels = (np + 31) / 32, gt_panels = (kn + 31) / 32;
      gather_nchw<float>(gy.data_ptr<float>(), g, p, n0, n1, iy0, iy1);
      // Two loops, each split evenly: in one, the threads' shares had the cheap copies or the transposes.
      at::parallel_for(0, ni * panels, 1, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {  // G of image m, B(q, pix) = g[q][m * np + pix]: 32-pixel panel j
          const int64_t m = t / panels, j = t % panels;
          avx512::pack_b(kn, np, g + m * np, npix, 1, gp + m * np_packed, j, j + 1);
        }
      });
      at::parallel_for(0, gt_panels, 1, [&](int64_t begin, int64_t end) {  // G^T (B(pix, q) = g[q][pix])
        avx512::pack_b(npix, kn, g, 1, npix, gtp, begin, end);
      });
      at::parallel_for(0, (p.cin + 7) / 8, 1, [&](int64_t begin, int64_t end) {
        const int64_t c0 = begin * 8, c1 = std::min(p.cin, end * 8);
        for (int64_t cc = c0; cc < c1; cc += w_chunk) {
          const int64_t cc1 = std::min(c1, cc + w_chunk);
          for (int64_t m = 0; m < ni; ++m)
            avx512::sgemm(cc1 - cc, np, kn, ws + cc * kn, kn, 1, gp + m * np_packed, 0, true,
                          gi.data_ptr<float>() + ((n0 + m) * p.cin + cc) * plane + pix0, plane, false);
        }
        // A(ci, (m, pix)) = x[n0 + m][ci][pix0 + pix]: in place for one image, else this thread's rows copied.
        const float* a = xs + (n0 * p.cin + c0) * plane + pix0;
        int64_t a_rs = plane;
        if (ni > 1) {
          float* dst = x_block.data_ptr<float>() + c0 * npix;
          for (int64_t c = c0; c < c1; ++c)
            for (int64_t m = 0; m < ni; ++m) {
              const float* src = xs + ((n0 + m) * p.cin + c) * plane + pix0;
              std::copy(src, src + np, dst + (c - c0) * npix + m * np);
            }
          a = dst, a_rs = npix;
        }
        avx512::sgemm(c1 - c0, kn, npix, a, a_rs, 1, gtp, 0, true, gw.data_ptr<float>() + c0 * kn, kn,
                      n0 > 0 || iy0 > 0);
      });
    }
  }
}

// The NCHW k == s backward for fp32 layers with a small weight (shuffle_backward_nchw_by_pixels_fits: U-Net's
// 128 -> 64), split by pixels instead of channels: each thread takes its own blocks of an image's input rows
// and runs everything on a block in its own L2-sized buffers, with no barrier between blocks: the gather of
// G [k*Cout, pixels] (once; both GEMMs read it in place), grad_input = W G, the bias gradient (G's row sums)
// and grad_weight^T += G X^T into the thread's own accumulator (X^T packed: Cin = 2 Cout on U-Net's layers,
// half of G's k*Cout rows). The accumulators are summed at the end.
// The channel split above gathers and packs G three times in ~2 MB blocks (L3) and meets at four barriers a
// block: on U-Net 128 -> 64 gather 1.8, packs 2.1, GEMMs 6.3, bias 0.44 ms of 10.7
// (benchmarks/notes/conv_transpose2d.md, section 32).
// x: the input (contiguous); w: [Cin, Cout * k]; gi: grad_input (contiguous); gw: [Cin, Cout * k], written;
// gb: [Cout], written unless undefined (every output pixel must then be reached: output_padding <= padding).
bool shuffle_backward_nchw_by_pixels_fits(const ConvT2dParams& p) {
  return p.kh * p.kw * p.cout * p.cin <= kByPixelsWeight;
}

void shuffle_backward_nchw_by_pixels(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& w,
                                     const ConvT2dParams& p, at::Tensor& gi, at::Tensor& gw, at::Tensor gb) {
  const int64_t k = p.kh * p.kw, kn = k * p.cout, plane = p.h * p.w;
  // Rows of a block: G and X^T's pack in ~kByPixelsBlock bytes, beside W and the accumulator.
  const int64_t rows = std::clamp<int64_t>(kByPixelsBlock / ((kn + p.cin) * p.w * 4), 1, p.h);
  const int64_t per_image = (p.h + rows - 1) / rows, blocks = p.n * per_image;
  // G's rows 16 floats further apart than a block's pixels: a multiple of 4 KB apart, every row of a
  // depth step would fall into the same L1 sets.
  const int64_t ldg = rows * p.w + 16, x_packed = avx512::packed_b_size(rows * p.w, p.cin);
  const int64_t threads = at::get_num_threads();
  at::Tensor g_buffer = at::empty({threads, kn * ldg}, x.options());
  at::Tensor x_buffer = at::empty({threads, x_packed}, x.options());
  at::Tensor gwt = at::zeros({threads, kn, p.cin}, x.options());  // grad_weight^T of each thread's blocks
  at::Tensor gbq = at::zeros({threads, kn}, x.options());         // grad_output summed per (co, ky, kx)
  const float* gys = gy.data_ptr<float>();
  const float* xs = x.data_ptr<float>();
  const float* ws = w.data_ptr<float>();
  float* gis = gi.data_ptr<float>();
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    const int64_t t = at::get_thread_num();
    float* g = g_buffer.data_ptr<float>() + t * kn * ldg;
    float* xp = x_buffer.data_ptr<float>() + t * x_packed;
    float* acc = gwt.data_ptr<float>() + t * kn * p.cin;
    float* bsum = gbq.data_ptr<float>() + t * kn;
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n = b / per_image, iy0 = b % per_image * rows, iy1 = std::min(p.h, iy0 + rows);
      const int64_t pix0 = iy0 * p.w, np = (iy1 - iy0) * p.w;
      gather_nchw<float>(gys, g, p, n, n + 1, iy0, iy1, ldg);  // in this thread: inside a parallel region
      if (gb.defined())
        for (int64_t q = 0; q < kn; ++q) bsum[q] += avx512::sum(g + q * ldg, np);
      const float* xn = xs + n * p.cin * plane + pix0;
      avx512::pack_b(np, p.cin, xn, 1, plane, xp, 0, (p.cin + 31) / 32);  // B(pix, ci) = x[n][ci][pix]
      avx512::sgemm(p.cin, np, kn, ws, kn, 1, g, ldg, false, gis + n * p.cin * plane + pix0, plane, false);
      avx512::sgemm(kn, p.cin, np, g, ldg, 1, xp, 0, true, acc, p.cin, true);
    }
  });
  gw.view({p.cin, kn}).copy_(gwt.sum(0).t());
  if (gb.defined()) gb.copy_(gbq.sum(0).view({p.cout, k}).sum(1));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> shuffle_backward(const at::Tensor& grad_out, const at::Tensor& input,
                                                                const at::Tensor& weight, const ConvT2dParams& p,
                                                                at::MemoryFormat fmt) {
  if (reduced_precision(input)) {
    auto r = shuffle_backward(grad_out.to(at::kFloat), input.to(at::kFloat), weight.to(at::kFloat), p, fmt);
    return {std::get<0>(r).to(input.scalar_type()), std::get<1>(r).to(weight.scalar_type()),
            std::get<2>(r).to(input.scalar_type())};
  }
  const int64_t k = p.kh * p.kw, plane = p.h * p.w;
  const bool by_pixels =
      fmt == at::MemoryFormat::Contiguous && avx512_sgemm_fits(input, p) && shuffle_backward_nchw_by_pixels_fits(p);
  // The split by pixels sums the bias gradient from its gathered blocks where they hold every output pixel.
  const bool bias_from_blocks = by_pixels && p.oph <= p.ph && p.opw <= p.pw;
  at::Tensor grad_bias = bias_from_blocks ? at::empty({p.cout}, grad_out.options()) : grad_out.sum({0, 2, 3});
  at::Tensor grad_input = at::empty({p.n, p.cin, p.h, p.w}, input.options().memory_format(fmt));
  at::Tensor grad_weight;
  if (by_pixels) {
    grad_weight = at::empty({p.cin, p.cout, p.kh, p.kw}, input.options());
    shuffle_backward_nchw_by_pixels(grad_out.contiguous(), input.contiguous(),
                                    weight.contiguous().view({p.cin, p.cout * k}), p, grad_input, grad_weight,
                                    bias_from_blocks ? grad_bias : at::Tensor());
    return {grad_input, grad_weight, grad_bias};
  }
  if (fmt == at::MemoryFormat::Contiguous) {
    const at::Tensor gy = grad_out.contiguous();
    const at::Tensor x = input.contiguous();
    const at::Tensor w = weight.contiguous().view({p.cin, p.cout_g * k});
    if (avx512_sgemm_fits(input, p)) {
      grad_weight = at::empty({p.cin, p.cout, p.kh, p.kw}, input.options());
      shuffle_backward_nchw_avx512(gy, x, w, p, grad_input, grad_weight);
      return {grad_input, grad_weight, grad_bias};
    }
    // Blocks of one image's input rows.
    const int64_t block = gather_block_rows(p.cout * k * p.w * static_cast<int64_t>(input.element_size()), p.h);
    at::Tensor g = at::empty({p.cout * k * block * p.w}, input.options());  // [Cout * k, rows * W] per block
    grad_weight = at::zeros({p.cin, p.cout_g * k}, input.options());
    for (int64_t n = 0; n < p.n; ++n) {
      const at::Tensor xn = x[n].view({p.cin, plane});
      const at::Tensor gin = grad_input[n].view({p.cin, plane});
      for (int64_t iy0 = 0; iy0 < p.h; iy0 += block) {
        const int64_t iy1 = std::min(p.h, iy0 + block), npix = (iy1 - iy0) * p.w;
        AT_DISPATCH_FLOATING_TYPES(
            input.scalar_type(), "conv_transpose2d_backward_cpu",
            [&] { gather_nchw<scalar_t>(gy.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), p, n, n + 1, iy0, iy1); });
        const at::Tensor gb = g.narrow(0, 0, p.cout * k * npix).view({p.cout * k, npix});
        const at::Tensor xb = xn.narrow(1, iy0 * p.w, npix);
        const at::Tensor gib = gin.narrow(1, iy0 * p.w, npix);
        for (int64_t gr = 0; gr < p.groups; ++gr) {
          const at::Tensor gg = gb.narrow(0, gr * p.cout_g * k, p.cout_g * k);
          mm_into(gib.narrow(0, gr * p.cin_g, p.cin_g), w.narrow(0, gr * p.cin_g, p.cin_g), gg);
          grad_weight.narrow(0, gr * p.cin_g, p.cin_g).addmm_(xb.narrow(0, gr * p.cin_g, p.cin_g), gg.t());
        }
      }
    }
    grad_weight = grad_weight.view({p.cin, p.cout_g, p.kh, p.kw});
  } else {
    const at::Tensor gy = grad_out.contiguous(at::MemoryFormat::ChannelsLast);
    const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast).permute({0, 2, 3, 1})
                             .reshape({p.n * plane, p.cin});
    const at::Tensor w = weight_khwc(weight, p);
    at::Tensor gi = grad_input.permute({0, 2, 3, 1}).view({p.n * plane, p.cin});  // shares grad_input's storage
    if (avx512_sgemm_fits(input, p)) {
      at::Tensor gw = at::empty({p.cin, k * p.cout}, input.options());
      shuffle_backward_nhwc_avx512(gy, x, w, p, gi, gw);
      grad_weight = gw.view({p.cin, p.kh, p.kw, p.cout}).permute({0, 3, 1, 2});  // channels_last strides
      return {grad_input, grad_weight, grad_bias};
    }
    // Blocks of input rows across images.
    const int64_t rows = p.n * p.h;
    const int64_t block = gather_block_rows(p.w * k * p.cout * static_cast<int64_t>(input.element_size()), rows);
    at::Tensor g = at::empty({p.groups, block * p.w, k * p.cout_g}, input.options());
    at::Tensor gw = at::zeros({p.groups, p.cin_g, k * p.cout_g}, input.options());
    for (int64_t row0 = 0; row0 < rows; row0 += block) {
      const int64_t row1 = std::min(rows, row0 + block), pix0 = row0 * p.w, npix = (row1 - row0) * p.w;
      AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "conv_transpose2d_backward_cpu",
                                      [&] {
                                        gather_nhwc<scalar_t>(gy.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), p,
                                                              row0, row1, block * p.w);
                                      });
      const at::Tensor gb = g.narrow(1, 0, npix), xb = x.narrow(0, pix0, npix);
      at::Tensor gib = gi.narrow(0, pix0, npix);
      for (int64_t gr = 0; gr < p.groups; ++gr) {
        const at::Tensor xg = p.groups == 1 ? xb : xb.narrow(1, gr * p.cin_g, p.cin_g);
        if (p.groups == 1)
          mm_into(gib, gb[gr], w[gr].t());
        else
          gib.narrow(1, gr * p.cin_g, p.cin_g).copy_(at::mm(gb[gr], w[gr].t()));
        gw[gr].addmm_(xg.t(), gb[gr]);
      }
    }
    grad_weight = gw.view({p.groups, p.cin_g, p.kh, p.kw, p.cout_g}).permute({0, 1, 4, 2, 3})
                      .reshape({p.cin, p.cout_g, p.kh, p.kw});
  }
  return {grad_input, grad_weight, grad_bias};
}

// How a call runs (measured in benchmarks/notes/conv_transpose2d.md):
// - every forward that runs oneDNN's deconvolution uses the packed weight when the cache has it
//   (packed_weights.h), the same routine without PyTorch's per-call weight reorder.
// - forward, channels_last: oneDNN's deconvolution (at::convolution, what PyTorch runs), except
//   kernel == stride fp32 layers with unpadded images up to 128 pixels wide on AVX-512: one GEMM per tap
//   row stored straight into the output rows (shuffle_forward_nhwc_avx512, 1.09-1.34x oneDNN's). Our
//   kernel == stride GEMM + scatter measured 0.7-1.0x of oneDNN: it writes the output twice.
// - forward, NCHW, kernel == stride: the fused k2 s2 GEMM + pixel-shuffle kernel (conv_transpose2d_k2.cpp,
//   1.1-4.9x oneDNN), or GEMM + scatter where it does not fit.
// - forward and backward, kernel != stride, <= 64 channels, fp32: the direct
//   kernels (FCN 16x16 k4 s2: 1.6-2x oneDNN forward, 1.7-2x forward + backward).
// - forward and backward, fp32, 3x3 stride 1 with >= 96 channels: Winograd F(2x2, 3x3) (DeconvNet); 4x4
//   stride 2 with >= 128 channels: Winograd F(2x2, 2x2) per phase (the Hourglass).
// - forward, NCHW, other kernels: oneDNN's NCHW deconvolution is much slower than its channels_last one
//   on layers with few channels, more than the two layout copies cost, so those run in channels_last
//   and are copied back; wide layers run oneDNN's NCHW directly.
// - backward, kernel == stride: our gather + two GEMMs in cache-sized blocks (fp32 on AVX-512 CPUs:
//   avx512::sgemm), channels_last (1.1-1.9x oneDNN's backward) and NCHW: every fp32 layer on AVX-512
//   (fwd+bwd 1.2-1.8x on the Zen 5 box, 0.99x on 2 x 512 x 4 x 4, where oneDNN's read 0.74-0.83x: section
//   30), else those with <= 64 channels on a side (U-Net 128 -> 64); oneDNN on the other NCHW layers.
//   fp32 NCHW layers with a weight of <= 64K floats on AVX-512 (U-Net 128 -> 64) split by pixels between
//   the threads, the others by input channels (section 32).
//   Other backward: oneDNN (at::convolution_backward), through channels_last on NCHW layers with <= 40
//   channels on a side (the forward takes that path up to 64); in NCHW, either format, on degenerate
//   layers, where its channels_last backward is unsound (onednn_channels_last_backward_unsafe).
enum class Route {
  kShuffle, kOneDnn, kOneDnnViaChannelsLast, kShuffleViaChannelsLast, kDirect, kWinograd, kOneDnnViaNchw
};

constexpr int64_t kDirectMaxChannels = 64;
constexpr int64_t kDirectMaxChannels3x3 = 32;

// Layers with few enough channels for the direct kernels (conv_transpose2d_direct.cpp) to beat oneDNN. 3x3
// stride-1 layers only up to 32: with 48-64 channels the direct backward measured 0.7-0.95x of oneDNN's
// (DeconvNet's 64-channel 224x224 layer 58-67 ms against 38-39; benchmarks/notes/conv_transpose2d.md,
// section 25).
bool direct(const at::Tensor& input, const ConvT2dParams& p) {
  const bool k3s1 = p.kh == 3 && p.kw == 3 && p.sh == 1 && p.sw == 1;
  return std::max(p.cin, p.cout) <= (k3s1 ? kDirectMaxChannels3x3 : kDirectMaxChannels) &&
         direct_conv_transpose2d_fits(input, p);
}

// 3x3 stride-1 layers with at least 96 channels on each side (DeconvNet's decoder) by Winograd's
// F(2x2, 3x3), kernel-4 stride-2 layers (the Hourglass) with at least 128 by F(2x2, 2x2) per phase, both
// memory formats. Measured against oneDNN with glibc keeping its memory (no page faults on either side;
// benchmarks/notes/conv_transpose2d.md, section 25): 3x3 from 96 channels on 1.1-1.7x, with 32-64
// channels 0.4-0.9x (the transforms' cost grows with the tiles, the saved products with the channels);
// k4 s2 from 128 channels on 1.0-1.4x, with 96 0.96-1.0x, and 0.8-0.9x in NCHW on a single 8x8 image
// (16 tiles a phase: GEMMs too small to pay for the layout copies).
constexpr int64_t kWinogradMinChannels = 96;
constexpr int64_t kWinogradK4S2MinChannels = 128;
constexpr int64_t kWinogradK4S2MinTilesNchw = 32;
bool winograd(const at::Tensor& input, const ConvT2dParams& p, at::MemoryFormat fmt) {
  const int64_t channels = std::min(p.cin, p.cout);
  if (channels >= kWinogradMinChannels && winograd_conv_transpose2d_fits(input, p)) return true;
  const int64_t tiles = p.n * ((p.ho + 3) / 4) * ((p.wo + 3) / 4);  // 2x2 tiles of one phase
  return channels >= kWinogradK4S2MinChannels && winograd_k4s2_conv_transpose2d_fits(input, p) &&
         (fmt == at::MemoryFormat::ChannelsLast || tiles >= kWinogradK4S2MinTilesNchw);
}

// The Winograd-transformed weight kept in the packed-weight cache as oneDNN's packed form is (packed by
// forward calls only: see packed_weights.h), or an undefined tensor.
at::Tensor cached_winograd_weight(const at::Tensor& weight, bool may_pack) {
  return packed_weight(weight, {2}, [&] { return winograd_conv_transpose2d_weight(weight); }, may_pack);
}
at::Tensor cached_winograd_k4s2_weight(const at::Tensor& weight, bool may_pack) {
  return packed_weight(weight, {3}, [&] { return winograd_k4s2_conv_transpose2d_weight(weight); }, may_pack);
}

// A channels_last result in memory format fmt, with that format's strides even where both formats' strides
// would do (1x1 images, on which .contiguous(fmt) keeps the channels_last ones).
at::Tensor from_channels_last(const at::Tensor& t, at::MemoryFormat fmt) {
  if (fmt == at::MemoryFormat::ChannelsLast) return t;
  return at::empty(t.sizes(), t.options().memory_format(fmt)).copy_(t);
}

// A route forced by an environment variable (read once: getenv on every call measured in the per-call
// overhead of the small FCN layers), or -1.
int forced_route(const char* name) {
  const char* force = std::getenv(name);
  return force && *force ? std::atoi(force) : -1;
}

Route forward_route(const at::Tensor& input, const ConvT2dParams& p, at::MemoryFormat fmt) {
  static const int force = forced_route("FASTSEG_CONV_TRANSPOSE2D_CPU_ROUTE");  // for measurements only
  if (force >= 0) return static_cast<Route>(force);
  if (p.shuffle())
    return fmt == at::MemoryFormat::ChannelsLast && !shuffle_forward_nhwc_avx512_fits(input, p) ? Route::kOneDnn
                                                                                             : Route::kShuffle;
  if (winograd(input, p, fmt)) return Route::kWinograd;
  if (direct(input, p)) return Route::kDirect;
  if (fmt == at::MemoryFormat::ChannelsLast) return Route::kOneDnn;
  return std::min(p.cin, p.cout) <= 64 ? Route::kOneDnnViaChannelsLast : Route::kOneDnn;
}

constexpr int64_t kBackwardViaChannelsLastMaxChannels = 40;
Route backward_route(const at::Tensor& input, const ConvT2dParams& p, at::MemoryFormat fmt) {
  static const int force = forced_route("FASTSEG_CONV_TRANSPOSE2D_CPU_BWD_ROUTE");
  if (force >= 0) return static_cast<Route>(force);
  if (winograd(input, p, fmt)) return Route::kWinograd;
  if (!p.shuffle() && direct(input, p)) return Route::kDirect;
  if (fmt == at::MemoryFormat::ChannelsLast) return p.shuffle() ? Route::kShuffle : Route::kOneDnn;
  // NCHW, kernel != stride: oneDNN's NCHW backward is ~2x slower than its channels_last one on
  // few-channel layers (FCN's 21 classes: 379 vs 181 us), far more than copying such small tensors
  // costs; from ~40 channels on, the copies cost more than they save (DeconvNet's 64-channel 3x3 layers on
  // the Zen 5 box: 0.68-0.84x of PyTorch's fwd+bwd through channels_last, 1.02-1.07x as called; 48
  // channels 0.88-0.92x against 0.96-1.09x; 40 channels a tie: section 30).
  // NCHW k == s (U-Net): our gather + GEMMs in blocks, on avx512::sgemm wherever it runs, else (with the
  // BLAS's GEMMs) on layers with <= 64 channels on a side (U-Net 128 -> 64 fwd+bwd 38 -> 35 ms in the
  // harness); oneDNN's NCHW backward on the others (256 -> 128 with the BLAS: 20.4 vs 24-27 ms; the round
  // trip through channels_last was slower still).
  if (p.shuffle())
    return std::min(p.cin, p.cout) <= 64 || avx512_sgemm_fits(input, p) ? Route::kShuffle : Route::kOneDnn;
  return std::min(p.cin, p.cout) <= kBackwardViaChannelsLastMaxChannels ? Route::kOneDnnViaChannelsLast
                                                                          : Route::kOneDnn;
}

// PyTorch's oneDNN deconvolution with the weight packed once (packed_weights.h: the per-call reorder is
// 0.2-1.8 ms of the wide layers' 5-20 ms), or an undefined tensor when no packed weight is at hand (not
// fp32, a torch without these mkldnn ops, or the cache has none yet).
at::Tensor packed_onednn_forward(const at::Tensor& input, const at::Tensor& weight,
                                 const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef output_padding, int64_t groups,
                                 at::IntArrayRef dilation, bool relu) {
  using Reorder = at::Tensor(const at::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                             int64_t, at::OptionalIntArrayRef);
  using Pointwise = at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                               at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t,
                               c10::string_view, c10::List<c10::optional<at::Scalar>>,
                               c10::optional<c10::string_view>);
  static const auto reorder = c10::Dispatcher::singleton().findSchema(
      {"mkldnn::_reorder_convolution_transpose_weight", ""});
  static const auto pointwise = c10::Dispatcher::singleton().findSchema(
      {"mkldnn::_convolution_transpose_pointwise", ""});
  if (input.scalar_type() != at::kFloat || !reorder || !pointwise) return at::Tensor();
  // Only where PyTorch itself runs oneDNN: it does not take every configuration (output_padding >= stride).
  using at::native::ConvBackend;
  if (at::native::select_conv_backend(input, weight, bias, c10::fromIntArrayRefSlow(stride),
                                      c10::fromIntArrayRefSlow(padding), c10::fromIntArrayRefSlow(dilation),
                                      /*transposed=*/true, c10::fromIntArrayRefSlow(output_padding),
                                      c10::SymInt(groups), c10::nullopt) != ConvBackend::MkldnnTranspose)
    return at::Tensor();
  std::vector<int64_t> key{1, groups, input.suggest_memory_format() == at::MemoryFormat::ChannelsLast};
  for (at::IntArrayRef a : {stride, padding, output_padding, dilation, input.sizes()})
    key.insert(key.end(), a.begin(), a.end());
  const at::Tensor packed = packed_weight(weight, std::move(key), [&] {
    return reorder->typed<Reorder>().call(weight, padding, output_padding, stride, dilation, groups, input.sizes());
  });
  if (!packed.defined()) return packed;
  return pointwise->typed<Pointwise>().call(input, packed, bias, padding, output_padding, stride, dilation, groups,
                                            relu ? "relu" : "none", c10::List<c10::optional<at::Scalar>>(),
                                            c10::nullopt);
}

// oneDNN's deconvolution (what PyTorch runs), with the packed weight when the cache has it.
at::Tensor onednn_forward(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding,
                          int64_t groups, at::IntArrayRef dilation, bool relu) {
  at::Tensor out =
      packed_onednn_forward(input, weight, bias, stride, padding, output_padding, groups, dilation, relu);
  if (out.defined()) return out;
  out = at::convolution(input, weight, bias, stride, padding, dilation, /*transposed=*/true, output_padding, groups);
  if (relu) out.relu_();
  return out;
}

at::Tensor conv_transpose2d_cpu(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding,
                                int64_t groups, at::IntArrayRef dilation, bool relu) {
  const ConvT2dParams p =
      check_conv_transpose2d("conv_transpose2d", input, weight, stride, padding, output_padding, groups, dilation);
  if (bias.has_value() && bias->defined()) check_bias("conv_transpose2d", *bias, input, p.cout);
  const at::MemoryFormat fmt = conv_memory_format(input, weight);
  if (p.empty_output()) return at::empty({p.n, p.cout, p.ho, p.wo}, input.options().memory_format(fmt));
  const at::MemoryFormat cl = at::MemoryFormat::ChannelsLast;
  switch (forward_route(input, p, fmt)) {
    case Route::kDirect:
      if (direct_conv_transpose2d_fits(input, p)) {
        at::Tensor out = at::empty({p.n, p.cout, p.ho, p.wo}, input.options().memory_format(fmt));
        const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
        direct_conv_transpose2d_forward(input, weight, b, p, relu, out);
        return out;
      }
      break;
    case Route::kShuffle:
      if (p.shuffle()) return shuffle_forward(input, weight, bias, p, relu, fmt);
      break;
    case Route::kShuffleViaChannelsLast:
      if (p.shuffle()) return shuffle_forward(input, weight, bias, p, relu, cl).contiguous(fmt);
      break;
    case Route::kWinograd: {
      const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
      if (winograd_conv_transpose2d_fits(input, p))
        return winograd_conv_transpose2d_forward(input, weight, cached_winograd_weight(weight, true), b, p, relu,
                                                 fmt);
      if (winograd_k4s2_conv_transpose2d_fits(input, p))
        return from_channels_last(
            winograd_k4s2_conv_transpose2d_forward(input, weight, cached_winograd_k4s2_weight(weight, true), b, p, relu),
            fmt);
      break;
    }
    case Route::kOneDnnViaChannelsLast:
      return onednn_forward(input.contiguous(cl), weight, bias, stride, padding, output_padding, groups, dilation,
                            relu)
          .contiguous(fmt);
    default:
      break;
  }
  // .contiguous: the fake kernel's promise (a no-op where oneDNN already chose it).
  return onednn_forward(input, weight, bias, stride, padding, output_padding, groups, dilation, relu).contiguous(fmt);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_routes(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef output_padding, int64_t groups, at::IntArrayRef dilation) {
  const ConvT2dParams p = check_conv_transpose2d_backward(grad_output, input, weight, stride, padding,
                                                          output_padding, groups, dilation);
  const at::MemoryFormat fmt = conv_memory_format(input, weight);
  if (p.empty_output())  // no output element: every gradient is zero
    return {at::zeros_like(input).contiguous(fmt), at::zeros_like(weight).contiguous(), at::zeros({p.cout}, input.options())};
  const at::MemoryFormat cl = at::MemoryFormat::ChannelsLast;
  Route route = backward_route(input, p, fmt);
  const bool onednn = route == Route::kOneDnn || route == Route::kOneDnnViaChannelsLast;
  if (onednn && onednn_channels_last_backward_unsafe(p)) route = Route::kOneDnnViaNchw;
  if (route == Route::kDirect && direct_conv_transpose2d_fits(input, p)) {
    const at::Tensor g = grad_output.contiguous(cl);  // what the direct kernels read
    at::Tensor grad_input = at::empty({p.n, p.cin, p.h, p.w}, input.options().memory_format(fmt));
    direct_conv_transpose2d_grad_input(g, weight, p, grad_input);
    return {grad_input, direct_conv_transpose2d_grad_weight(g, input, p), g.sum({0, 2, 3})};
  }
  if (route == Route::kShuffle && p.shuffle()) return shuffle_backward(grad_output, input, weight, p, fmt);
  if (route == Route::kWinograd && winograd_conv_transpose2d_fits(input, p)) {
    const at::Tensor g = grad_output.contiguous(fmt);  // what both gradients read (copied once, if at all)
    return {winograd_conv_transpose2d_grad_input(g, weight, cached_winograd_weight(weight, false), p, fmt),
            winograd_conv_transpose2d_grad_weight(g, input, p, fmt), g.sum({0, 2, 3})};
  }
  if (route == Route::kWinograd && winograd_k4s2_conv_transpose2d_fits(input, p)) {
    const at::Tensor g = grad_output.contiguous(cl);  // what both gradients read
    const at::Tensor cached = cached_winograd_k4s2_weight(weight, false);
    return {from_channels_last(winograd_k4s2_conv_transpose2d_grad_input(g, weight, cached, p), fmt),
            winograd_k4s2_conv_transpose2d_grad_weight(g, input, p), g.sum({0, 2, 3})};
  }
  if (route == Route::kShuffleViaChannelsLast && p.shuffle()) {
    auto r = shuffle_backward(grad_output.contiguous(cl), input.contiguous(cl), weight, p, cl);
    return {std::get<0>(r).contiguous(fmt), std::get<1>(r), std::get<2>(r)};
  }
  if (route == Route::kOneDnnViaChannelsLast) {
    auto r = at::convolution_backward(grad_output.contiguous(cl), input.contiguous(cl), weight.contiguous(cl),
                                      std::vector<int64_t>{p.cout}, stride, padding, dilation, /*transposed=*/true,
                                      output_padding, groups, {true, true, true});
    return {std::get<0>(r).contiguous(fmt), std::get<1>(r).contiguous(), std::get<2>(r)};
  }
  if (route == Route::kOneDnnViaNchw) {
    auto r = at::convolution_backward(with_nchw_strides(grad_output), with_nchw_strides(input),
                                      with_nchw_strides(weight), std::vector<int64_t>{p.cout}, stride, padding,
                                      dilation, /*transposed=*/true, output_padding, groups, {true, true, true});
    return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};  // in PyTorch's formats: the caller's .contiguous
  }
  auto r = at::convolution_backward(grad_output, input, weight, std::vector<int64_t>{p.cout}, stride, padding,
                                    dilation, /*transposed=*/true, output_padding, groups, {true, true, true});
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
}


// The layouts the fake kernel promises, PyTorch's: grad_input and grad_weight in the forward's memory format
// (channels_last if the input or the weight is).
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_transpose2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef output_padding, int64_t groups, at::IntArrayRef dilation) {
  auto r = backward_routes(grad_output, input, weight, stride, padding, output_padding, groups, dilation);
  const at::MemoryFormat fmt = conv_memory_format(input, weight);
  return {std::get<0>(r).contiguous(fmt), std::get<1>(r).contiguous(fmt), std::get<2>(r)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg, CPU, m) {
  m.impl("conv_transpose2d", &conv_transpose2d_cpu);
  m.impl("conv_transpose2d_backward", &conv_transpose2d_backward_cpu);
}

}  // namespace fastseg
