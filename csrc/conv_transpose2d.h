// Declarations and input checks shared by the CPU and CUDA transposed-convolution kernels.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <vector>

namespace fastseg {

struct ConvT2dParams {
  int64_t sh, sw, ph, pw, oph, opw, dh, dw, groups;
  int64_t n, cin, h, w, cout, cout_g, cin_g, kh, kw, ho, wo;
  // kernel == stride and no dilation: every output pixel receives exactly one tap, so the op is one
  // GEMM per group followed by a pixel-shuffle-like scatter (U-Net's k2 s2 up-convolution).
  // No output element (an empty batch, or an output with no rows or columns): nothing to compute.
  bool empty_output() const { return n == 0 || ho == 0 || wo == 0; }
  bool shuffle() const { return kh == sh && kw == sw && (dh == 1 || kh == 1) && (dw == 1 || kw == 1); }
};

// The checks every kernel runs first, so that a direct call of torch.ops.fastseg.* gets the same clear
// message as the Python API (which raises ValueError before getting here).
inline ConvT2dParams check_conv_transpose2d(const char* op, const at::Tensor& input,
                                            const at::Tensor& weight, at::IntArrayRef stride,
                                            at::IntArrayRef padding, at::IntArrayRef output_padding,
                                            int64_t groups, at::IntArrayRef dilation) {
  TORCH_CHECK(input.dim() == 4, op, ": input must be a 4-D tensor [N, C_in, H, W], got shape ",
              input.sizes());
  TORCH_CHECK(weight.dim() == 4, op, ": weight must be a 4-D tensor [C_in, C_out / groups, kH, kW], got shape ",
              weight.sizes());
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && output_padding.size() == 2 && dilation.size() == 2,
              op, ": stride, padding, output_padding and dilation must have 2 values each");
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), op, ": input must be floating point, got ",
              input.scalar_type());
  TORCH_CHECK(weight.scalar_type() == input.scalar_type(), op, ": weight must have the dtype of input (",
              input.scalar_type(), "), got ", weight.scalar_type());
  TORCH_CHECK(weight.device() == input.device(), op, ": weight must be on the device of input (",
              input.device(), "), got ", weight.device());
  TORCH_CHECK(groups >= 1, op, ": groups must be >= 1, got ", groups);
  TORCH_CHECK(input.size(1) > 0 && input.size(1) % groups == 0, op,
              ": input channels must be a positive multiple of groups (", groups, "), got ", input.size(1));
  TORCH_CHECK(weight.size(0) == input.size(1), op, ": weight.size(0) must equal the input channels (",
              input.size(1), "), got weight of shape ", weight.sizes());
  TORCH_CHECK(weight.size(1) > 0 && weight.size(2) > 0 && weight.size(3) > 0, op,
              ": weight must have non-empty output-channel and kernel dimensions, got shape ", weight.sizes());
  for (int i = 0; i < 2; ++i) {
    TORCH_CHECK(stride[i] >= 1, op, ": stride must be >= 1, got ", stride);
    TORCH_CHECK(dilation[i] >= 1, op, ": dilation must be >= 1, got ", dilation);
    TORCH_CHECK(padding[i] >= 0, op, ": padding must be >= 0, got ", padding);
    TORCH_CHECK(output_padding[i] >= 0 && output_padding[i] < std::max(stride[i], dilation[i]), op,
                ": output_padding must be >= 0 and smaller than stride or dilation, got ", output_padding,
                " with stride ", stride, " and dilation ", dilation);
  }
  ConvT2dParams p;
  p.sh = stride[0], p.sw = stride[1], p.ph = padding[0], p.pw = padding[1];
  p.oph = output_padding[0], p.opw = output_padding[1], p.dh = dilation[0], p.dw = dilation[1];
  p.groups = groups;
  p.n = input.size(0), p.cin = input.size(1), p.h = input.size(2), p.w = input.size(3);
  p.cout_g = weight.size(1), p.cout = p.cout_g * groups, p.cin_g = p.cin / groups;
  p.kh = weight.size(2), p.kw = weight.size(3);
  p.ho = (p.h - 1) * p.sh - 2 * p.ph + p.dh * (p.kh - 1) + p.oph + 1;
  p.wo = (p.w - 1) * p.sw - 2 * p.pw + p.dw * (p.kw - 1) + p.opw + 1;
  // As PyTorch: an empty image is refused unless the batch is empty, and an output with no rows or no
  // columns is a valid (empty) answer.
  TORCH_CHECK(p.n == 0 || (p.h > 0 && p.w > 0), op,
              ": input must have a non-empty image unless the batch is empty, got shape ", input.sizes());
  TORCH_CHECK(p.ho >= 0 && p.wo >= 0, op, ": the output size would be ", p.ho, " x ", p.wo, " for input ",
              input.sizes(), ": padding is too large");
  return p;
}

// The backward ops' checks (CPU and CUDA): the forward's, and grad_output shaped like the output, with
// the input's dtype and device.
inline ConvT2dParams check_conv_transpose2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                                     const at::Tensor& weight, at::IntArrayRef stride,
                                                     at::IntArrayRef padding, at::IntArrayRef output_padding,
                                                     int64_t groups, at::IntArrayRef dilation) {
  const ConvT2dParams p = check_conv_transpose2d("conv_transpose2d_backward", input, weight, stride, padding,
                                                 output_padding, groups, dilation);
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == p.n && grad_output.size(1) == p.cout &&
                  grad_output.size(2) == p.ho && grad_output.size(3) == p.wo,
              "conv_transpose2d_backward: grad_output must have shape [", p.n, ", ", p.cout, ", ", p.ho, ", ", p.wo,
              "], got ", grad_output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type() && grad_output.device() == input.device(),
              "conv_transpose2d_backward: grad_output must have the dtype and device of input");
  return p;
}

inline void check_bias(const char* op, const at::Tensor& bias, const at::Tensor& input, int64_t cout) {
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == cout, op, ": bias must have shape [", cout, "], got ",
              bias.sizes());
  TORCH_CHECK(bias.scalar_type() == input.scalar_type() && bias.device() == input.device(), op,
              ": bias must have the dtype and device of input");
}

// PyTorch's choice of the output memory format (mkldnn/cudnn_conv_suggest_memory_format).
inline at::MemoryFormat conv_memory_format(const at::Tensor& input, const at::Tensor& weight) {
  return input.suggest_memory_format() == at::MemoryFormat::ChannelsLast ||
                 weight.suggest_memory_format() == at::MemoryFormat::ChannelsLast
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

// t with NCHW's strides, so that PyTorch picks its NCHW kernels: .contiguous() keeps the channels_last strides
// of a tensor both formats describe (a 1x1 weight [Cin, Cout, 1, 1], a 1x1 image), and PyTorch's oneDNN
// calls take such a tensor for channels_last (suggest_memory_format).
inline at::Tensor with_nchw_strides(const at::Tensor& t) {
  if (t.is_contiguous() && t.suggest_memory_format() == at::MemoryFormat::Contiguous) return t;
  return at::empty(t.sizes(), t.options()).copy_(t);
}

// Whether, along one dimension, every output pixel receives a tap and every tap reaches an output pixel
// (input pixel i puts tap t at i * s + t * d - pad). Not so where the kernel spans less than the stride,
// where output_padding exceeds padding (the last output_padding - padding pixels), on tiny images with
// large padding (taps that land outside).
inline bool dense_dimension(int64_t k, int64_t d, int64_t s, int64_t pad, int64_t in, int64_t out) {
  std::vector<char> reached(out, 0);
  for (int64_t t = 0; t < k; ++t) {
    bool lands = false;
    for (int64_t i = 0; i < in; ++i) {
      const int64_t o = i * s + t * d - pad;
      if (o >= 0 && o < out) reached[o] = 1, lands = true;
    }
    if (!lands) return false;
  }
  return std::all_of(reached.begin(), reached.end(), [](char r) { return r != 0; });
}

// PyTorch's oneDNN backward on channels_last tensors is unsound on layers with output pixels no tap reaches
// or taps that reach no output pixel: it corrupts the heap (a segfault or a glibc abort, at once or calls
// later; fp32 and bf16, e.g. [3, 4, 7, 8] -> 7, 1x1, stride 2, output_padding 1) or returns bf16 gradients
// with elements of uninitialised memory, torch 2.14.1, PyTorch's own F.conv_transpose2d on channels_last
// tensors included. Its NCHW backward of the same layers is sound (random layers under glibc's heap
// checks: benchmarks/notes/conv_transpose2d.md, section 31). Where such a layer would go to oneDNN (the CPU
// backward's oneDNN routes, the double backward of conv_transpose2d_autograd.cpp), it goes in NCHW (with NCHW
// strides: with_nchw_strides), whatever its format. Checked only there: O(input size * kernel).
inline bool onednn_channels_last_backward_unsafe(const ConvT2dParams& p) {
  return !dense_dimension(p.kh, p.dh, p.sh, p.ph, p.h, p.ho) ||
         !dense_dimension(p.kw, p.dw, p.sw, p.pw, p.w, p.wo);
}

// fp32 NCHW kernel-2 stride-2 transposed convolution as one GEMM pass with a pixel-shuffle epilogue
// (csrc/cpu/conv_transpose2d_k2.cpp). Writes `out` (contiguous [N, Cout, 2H, 2W]) and returns true, or
// returns false untouched when the call does not fit it (other configurations, dtypes, no AVX-512).
bool conv_transpose2d_k2_nchw(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                              const ConvT2dParams& p, bool relu, at::Tensor& out);

// fp32 direct kernels for layers with few channels (csrc/cpu/conv_transpose2d_direct.cpp): whether a call
// fits them (groups 1, no dilation, fp32, AVX-512), the forward into `out` (NCHW or channels_last,
// allocated by the caller), the input gradient into `grad_input` (likewise) and the weight gradient.
bool direct_conv_transpose2d_fits(const at::Tensor& input, const ConvT2dParams& p);
void direct_conv_transpose2d_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                                     const ConvT2dParams& p, bool relu, at::Tensor& out);
void direct_conv_transpose2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                        const ConvT2dParams& p, at::Tensor& grad_input);
at::Tensor direct_conv_transpose2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                               const ConvT2dParams& p);

// fp32 3x3 stride-1 layers by Winograd's F(2x2, 3x3) (csrc/cpu/conv_transpose2d_winograd.cpp): whether a
// call fits it (3x3, stride 1, no dilation, groups 1, padding <= 2, fp32, AVX2), the transformed weight
// ([16, Cin, Cout], for the packed-weight cache), the forward and the input gradient in memory format `fmt`
// (NCHW or channels_last), from the cached transformed weight or, when it is undefined, from the weight,
// and the weight gradient.
bool winograd_conv_transpose2d_fits(const at::Tensor& input, const ConvT2dParams& p);
at::Tensor winograd_conv_transpose2d_weight(const at::Tensor& weight);
at::Tensor winograd_conv_transpose2d_forward(const at::Tensor& input, const at::Tensor& weight,
                                             const at::Tensor& transformed,
                                             const at::Tensor& bias, const ConvT2dParams& p, bool relu,
                                             at::MemoryFormat fmt);
at::Tensor winograd_conv_transpose2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                                 const ConvT2dParams& p, at::MemoryFormat fmt);
at::Tensor winograd_conv_transpose2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                                const at::Tensor& transformed,
                                                const ConvT2dParams& p, at::MemoryFormat fmt);

// fp32 kernel-4 stride-2 layers by Winograd's F(2x2, 2x2) on each sub-pixel phase
// (csrc/cpu/conv_transpose2d_winograd_k4s2.cpp): whether a call fits it (4x4, stride 2, no dilation,
// groups 1, fp32, AVX2), the transformed weight ([36, Cin, Cout], for the packed-weight cache), the forward
// and the input gradient (from the cached transformed weight or, when it is undefined, from the weight) and
// the weight gradient. They return channels_last tensors (grad_weight contiguous) whatever the input's format.
bool winograd_k4s2_conv_transpose2d_fits(const at::Tensor& input, const ConvT2dParams& p);
at::Tensor winograd_k4s2_conv_transpose2d_weight(const at::Tensor& weight);
at::Tensor winograd_k4s2_conv_transpose2d_forward(const at::Tensor& input, const at::Tensor& weight,
                                                  const at::Tensor& transformed, const at::Tensor& bias,
                                                  const ConvT2dParams& p, bool relu);
at::Tensor winograd_k4s2_conv_transpose2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                                     const at::Tensor& transformed, const ConvT2dParams& p);
at::Tensor winograd_k4s2_conv_transpose2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                                      const ConvT2dParams& p);

}  // namespace fastseg
