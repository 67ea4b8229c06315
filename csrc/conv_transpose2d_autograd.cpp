// Autograd of fastseg::conv_transpose2d (CPU and CUDA kernels), in C++.
//
// Why not torch.library.register_autograd from Python like the other ops: the Python autograd layer
// costs ~25 us on the forward and ~140 us on a forward + backward (setup_context, the autograd.Function
// machinery), measured on FCN's 21-channel layers, whose whole forward + backward takes ~400 us in
// PyTorch. Here it is a plain C++ autograd node, as cheap as PyTorch's own convolution node.
// The Triton ops keep the Python registration (fastseg/ops/conv_transpose2d.py: make_backward), which
// this formula mirrors.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "conv_transpose2d.h"

namespace fastseg {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor forward_below_autograd(const at::Tensor& input, const at::Tensor& weight,
                                  const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef output_padding, int64_t groups,
                                  at::IntArrayRef dilation, bool relu) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastseg::conv_transpose2d", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                                         at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t,
                                         at::IntArrayRef, bool)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(input, weight, bias, stride, padding, output_padding, groups, dilation, relu);
}

class ConvTranspose2dFunction : public torch::autograd::Function<ConvTranspose2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const c10::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef output_padding, int64_t groups, at::IntArrayRef dilation, bool relu) {
    at::Tensor out = forward_below_autograd(input, weight, bias, stride, padding, output_padding, groups,
                                            dilation, relu);
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["output_padding"] = output_padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    // The output is saved only for the fused ReLU's mask.
    ctx->save_for_backward({input, weight, relu ? out : at::Tensor()});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("fastseg::conv_transpose2d_backward", "")
                         .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                             const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef,
                             at::IntArrayRef, at::IntArrayRef, int64_t, at::IntArrayRef)>();
    const variable_list saved = ctx->get_saved_variables();
    at::Tensor grad = grads[0];
    if (saved[2].defined()) grad = at::where(saved[2] > 0, grad, 0);  // no gradient where ReLU clamped
    const std::vector<int64_t> stride = ctx->saved_data["stride"].toIntVector(),
                               padding = ctx->saved_data["padding"].toIntVector(),
                               output_padding = ctx->saved_data["output_padding"].toIntVector(),
                               dilation = ctx->saved_data["dilation"].toIntVector();
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    at::Tensor gi, gw, gb;
    if (at::GradMode::is_enabled()) {
      // create_graph=True (double backward, gradient penalties): the gradients must be differentiable
      // themselves, which fastseg's backward kernels are not; PyTorch's convolution_backward is. On the CPU,
      // degenerate layers go to it in NCHW (its channels_last backward is unsound on them: see
      // onednn_channels_last_backward_unsafe), the gradients then made PyTorch's formats (differentiably).
      at::Tensor g = grad, x = saved[0], w = saved[1];
      const bool nchw = x.device().is_cpu() &&
                        onednn_channels_last_backward_unsafe(check_conv_transpose2d(
                            "conv_transpose2d", x, w, stride, padding, output_padding, groups, dilation));
      if (nchw) g = with_nchw_strides(g), x = with_nchw_strides(x), w = with_nchw_strides(w);
      std::tie(gi, gw, gb) = at::convolution_backward(
          g, x, w, std::vector<int64_t>{saved[1].size(1) * groups}, stride, padding, dilation,
          /*transposed=*/true, output_padding, groups, {true, true, has_bias});
      if (nchw) {
        const at::MemoryFormat fmt = conv_memory_format(saved[0], saved[1]);
        gi = gi.contiguous(fmt), gw = gw.contiguous(fmt);
      }
    } else {
      std::tie(gi, gw, gb) = op.call(grad, saved[0], saved[1], stride, padding, output_padding, groups, dilation);
    }
    // One gradient per forward argument: input, weight, bias, then none for the six non-tensors.
    return {gi, gw, has_bias ? gb : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

at::Tensor conv_transpose2d_autograd(const at::Tensor& input, const at::Tensor& weight,
                                     const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef output_padding, int64_t groups,
                                     at::IntArrayRef dilation, bool relu) {
  const bool bias_grad = bias.has_value() && bias->defined() && bias->requires_grad();
  if (!at::GradMode::is_enabled() || !(input.requires_grad() || weight.requires_grad() || bias_grad))
    return forward_below_autograd(input, weight, bias, stride, padding, output_padding, groups, dilation, relu);
  return ConvTranspose2dFunction::apply(input, weight, bias, stride, padding, output_padding, groups, dilation,
                                        relu);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg, Autograd, m) { m.impl("conv_transpose2d", &conv_transpose2d_autograd); }

}  // namespace fastseg
