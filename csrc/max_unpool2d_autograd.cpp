// Autograd of fastseg::max_unpool2d (CPU and CUDA kernels), in C++: the Python autograd layer of
// torch.library.register_autograd cost ~40 us a forward + backward, a quarter of DeconvNet's smallest
// unpooling (see conv_transpose2d_autograd.cpp, measured there first). The gradient is
// fastseg::max_unpool2d_backward (a gather). The Triton op keeps the Python registration.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

namespace fastseg {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor unpool_below_autograd(const at::Tensor& input, const at::Tensor& indices, at::IntArrayRef output_size) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastseg::max_unpool2d", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(input, indices, output_size);
}

class MaxUnpool2dFunction : public torch::autograd::Function<MaxUnpool2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& indices,
                            at::IntArrayRef output_size) {
    ctx->save_for_backward({indices});
    return unpool_below_autograd(input, indices, output_size);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("fastseg::max_unpool2d_backward", "")
                         .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
    const at::Tensor indices = ctx->get_saved_variables()[0];
    if (at::GradMode::is_enabled()) {
      // create_graph=True (double backward): the gradient must be differentiable, so it is the same
      // gather in ATen ops (fastseg/ops/max_unpool2d.py: unpool_grad) instead of the kernel.
      const at::Tensor& g = grads[0];
      const int64_t n = indices.size(0), c = indices.size(1), h = indices.size(2), w = indices.size(3);
      if (g.size(2) * g.size(3) == 0) return {at::zeros(indices.sizes(), g.options()), at::Tensor(), at::Tensor()};
      const at::Tensor gi = g.reshape({n, c, g.size(2) * g.size(3)}).gather(2, indices.reshape({n, c, h * w}));
      return {gi.view({n, c, h, w}), at::Tensor(), at::Tensor()};
    }
    return {op.call(grads[0], indices), at::Tensor(), at::Tensor()};
  }
};

at::Tensor max_unpool2d_autograd(const at::Tensor& input, const at::Tensor& indices, at::IntArrayRef output_size) {
  if (!at::GradMode::is_enabled() || !input.requires_grad()) return unpool_below_autograd(input, indices, output_size);
  return MaxUnpool2dFunction::apply(input, indices, output_size);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg, Autograd, m) { m.impl("max_unpool2d", &max_unpool2d_autograd); }

}  // namespace fastseg
