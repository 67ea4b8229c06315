// CUDA kernels of fastseg::box_decode and fastseg::box_encode (schemas: csrc/box_coder.cpp): one
// thread per (box, class) code group, a single fused pass with the per-box maths of csrc/box_ops.h.
// PyTorch's CUDA `tensor / python_float` multiplies by the reciprocal, so the decode does the same
// (kRecip) to match torchvision on the GPU.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "box_checks.h"
#include "box_ops.h"

namespace fastseg {
namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t n) { return std::min<int64_t>((n + kThreads - 1) / kThreads, 65535 * 8); }

template <typename T, bool kClip>
__global__ void box_decode_kernel(const T* __restrict__ codes, const T* __restrict__ boxes,
                                  T* __restrict__ out, int64_t rows, int64_t k,
                                  typename OpMath<T>::type w0, typename OpMath<T>::type w1,
                                  typename OpMath<T>::type w2, typename OpMath<T>::type w3,
                                  typename OpMath<T>::type clip, typename OpMath<T>::type cw,
                                  typename OpMath<T>::type ch) {
  using A = typename OpMath<T>::type;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < rows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const T* c = codes + 4 * r;
    const T* b = boxes + 4 * (r / k);
    A x1, y1, x2, y2;
    decode_box<T, true, kClip>(static_cast<A>(c[0]), static_cast<A>(c[1]), static_cast<A>(c[2]),
                               static_cast<A>(c[3]), static_cast<A>(b[0]), static_cast<A>(b[1]),
                               static_cast<A>(b[2]), static_cast<A>(b[3]), w0, w1, w2, w3, clip, cw,
                               ch, x1, y1, x2, y2);
    T* o = out + 4 * r;
    o[0] = static_cast<T>(x1);
    o[1] = static_cast<T>(y1);
    o[2] = static_cast<T>(x2);
    o[3] = static_cast<T>(y2);
  }
}

template <typename T>
__global__ void box_encode_kernel(const T* __restrict__ ref, const T* __restrict__ prop,
                                  T* __restrict__ out, int64_t n, typename OpMath<T>::type w0,
                                  typename OpMath<T>::type w1, typename OpMath<T>::type w2,
                                  typename OpMath<T>::type w3) {
  using A = typename OpMath<T>::type;
  const A w[4] = {w0, w1, w2, w3};
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    encode_box<T>(ref + 4 * i, prop + 4 * i, w, out + 4 * i);
  }
}

at::Tensor box_decode_cuda(const at::Tensor& rel_codes, const at::Tensor& boxes,
                           at::ArrayRef<double> weights, double bbox_xform_clip,
                           at::OptionalIntArrayRef image_size) {
  check_box_decode_inputs(rel_codes, boxes, weights, image_size);
  TORCH_CHECK(rel_codes.is_cuda(), "box_decode: the CUDA kernel needs CUDA tensors, got ",
              rel_codes.device());
  c10::cuda::CUDAGuard guard(rel_codes.device());
  const at::Tensor codes = rel_codes.contiguous();
  const at::Tensor b = boxes.contiguous();
  at::Tensor out = at::empty_like(codes);
  const int64_t n = codes.size(0), k = codes.size(1) / 4, rows = n * k;
  if (rows == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, codes.scalar_type(), "box_decode_cuda", [&] {
    using A = typename OpMath<scalar_t>::type;
    const A w0 = A(1) / static_cast<A>(weights[0]), w1 = A(1) / static_cast<A>(weights[1]);
    const A w2 = A(1) / static_cast<A>(weights[2]), w3 = A(1) / static_cast<A>(weights[3]);
    const A clip = static_cast<A>(static_cast<scalar_t>(bbox_xform_clip));
    auto stream = at::cuda::getCurrentCUDAStream();
    if (image_size.has_value()) {
      const A ch = static_cast<A>(static_cast<scalar_t>((*image_size)[0]));
      const A cw = static_cast<A>(static_cast<scalar_t>((*image_size)[1]));
      box_decode_kernel<scalar_t, true><<<blocks_for(rows), kThreads, 0, stream>>>(
          codes.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), rows, k, w0,
          w1, w2, w3, clip, cw, ch);
    } else {
      box_decode_kernel<scalar_t, false><<<blocks_for(rows), kThreads, 0, stream>>>(
          codes.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), rows, k, w0,
          w1, w2, w3, clip, A(0), A(0));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor box_encode_cuda(const at::Tensor& reference_boxes, const at::Tensor& proposals,
                           at::ArrayRef<double> weights) {
  check_box_encode_inputs(reference_boxes, proposals, weights);
  TORCH_CHECK(reference_boxes.is_cuda(), "box_encode: the CUDA kernel needs CUDA tensors, got ",
              reference_boxes.device());
  c10::cuda::CUDAGuard guard(reference_boxes.device());
  const at::Tensor ref = reference_boxes.contiguous();
  const at::Tensor prop = proposals.contiguous();
  at::Tensor out = at::empty_like(ref);
  const int64_t n = ref.size(0);
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ref.scalar_type(), "box_encode_cuda", [&] {
    using A = typename OpMath<scalar_t>::type;
    auto wt = [&](int i) { return static_cast<A>(static_cast<scalar_t>(weights[i])); };
    box_encode_kernel<scalar_t><<<blocks_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        ref.const_data_ptr<scalar_t>(), prop.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), n, wt(0),
        wt(1), wt(2), wt(3));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg, CUDA, m) {
  m.impl("box_decode", &box_decode_cuda);
  m.impl("box_encode", &box_encode_cuda);
}

}  // namespace fastseg
