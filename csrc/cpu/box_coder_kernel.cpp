// CPU kernels of fastseg::box_decode and fastseg::box_encode (schemas: csrc/box_coder.cpp).
//
// One pass over the boxes, parallel (at::parallel_for), with the per-box maths of csrc/box_ops.h
// (torchvision's op sequence, rounded to the tensor dtype after each op). The decode loop has no
// branches and a branch-free exp (fast_expf), so for fp32 the compiler vectorises it; target_clones
// picks the AVX-512 / AVX2 clone at run time.
#include <ATen/ATen.h>
#include <algorithm>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "box_checks.h"
#include "cpu/clones.h"

// Lets the vectoriser if-convert the selects of fast_expf / decode_box (evaluating both sides). It
// changes no rounding (FP contraction stays off); it only drops the assumption that FP exceptions
// trap, which PyTorch never enables. Without it the decode loop stays scalar.
#pragma GCC optimize("no-trapping-math")
#include "box_ops.h"

namespace fastseg {
namespace {

// Boxes per block of the decode loop: the block is transposed to structure-of-arrays on the stack
// (8 arrays of 256 floats, 8 KiB: L1) so that the maths loop is a plain elementwise loop the compiler
// vectorises; decoding straight from the interleaved [N, 4] layout stayed scalar (44 ns per box).
constexpr int64_t kDecodeBlock = 256;

template <typename T, bool kClip>
FASTSEG_CLONES void decode_rows(const T* __restrict codes, const T* __restrict boxes, T* __restrict out,
                                int64_t lo, int64_t hi, int64_t k, const typename OpMath<T>::type* w,
                                typename OpMath<T>::type clip, typename OpMath<T>::type cw,
                                typename OpMath<T>::type ch) {
  using A = typename OpMath<T>::type;
  const A w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
  // Rows are (box, class) pairs r = i * k + c, each with 4 codes and the 4 coordinates of box i.
  A c[4][kDecodeBlock], b[4][kDecodeBlock], o[4][kDecodeBlock];
  for (int64_t r0 = lo; r0 < hi; r0 += kDecodeBlock) {
    const int64_t len = std::min(kDecodeBlock, hi - r0);
    for (int64_t j = 0; j < len; ++j) {
      const T* cp = codes + 4 * (r0 + j);
      const T* bp = boxes + 4 * (k == 1 ? r0 + j : (r0 + j) / k);
      for (int q = 0; q < 4; ++q) {
        c[q][j] = static_cast<A>(cp[q]);
        b[q][j] = static_cast<A>(bp[q]);
      }
    }
    for (int64_t j = 0; j < len; ++j) {
      decode_box<T, false, kClip>(c[0][j], c[1][j], c[2][j], c[3][j], b[0][j], b[1][j], b[2][j],
                                  b[3][j], w0, w1, w2, w3, clip, cw, ch, o[0][j], o[1][j], o[2][j],
                                  o[3][j]);
    }
    for (int64_t j = 0; j < len; ++j) {
      T* op = out + 4 * (r0 + j);
      for (int q = 0; q < 4; ++q) op[q] = static_cast<T>(o[q][j]);
    }
  }
}

template <typename T, bool kClip>
void decode_all(const T* codes, const T* boxes, T* out, int64_t n, int64_t k,
                const typename OpMath<T>::type* w, typename OpMath<T>::type clip,
                typename OpMath<T>::type cw, typename OpMath<T>::type ch) {
  at::parallel_for(0, n * k, 8192, [&](int64_t begin, int64_t end) {
    decode_rows<T, kClip>(codes, boxes, out, begin, end, k, w, clip, cw, ch);
  });
}

at::Tensor box_decode_cpu(const at::Tensor& rel_codes, const at::Tensor& boxes,
                          at::ArrayRef<double> weights, double bbox_xform_clip,
                          at::OptionalIntArrayRef image_size) {
  check_box_decode_inputs(rel_codes, boxes, weights, image_size);
  const at::Tensor codes = rel_codes.contiguous();
  const at::Tensor b = boxes.contiguous();
  at::Tensor out = at::empty_like(codes);
  const int64_t n = codes.size(0), k = codes.size(1) / 4;
  if (n == 0 || k == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, codes.scalar_type(), "box_decode_cpu", [&] {
    using A = typename OpMath<scalar_t>::type;
    // PyTorch's CPU `tensor / python_float` divides by the weight in opmath (no reciprocal);
    // clamp(max=) and clip_boxes_to_image's clamp round their scalars to the tensor dtype.
    const A w[4] = {static_cast<A>(weights[0]), static_cast<A>(weights[1]),
                    static_cast<A>(weights[2]), static_cast<A>(weights[3])};
    const A clip = static_cast<A>(static_cast<scalar_t>(bbox_xform_clip));
    const scalar_t* cp = codes.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    if (image_size.has_value()) {
      const A ch = static_cast<A>(static_cast<scalar_t>((*image_size)[0]));
      const A cw = static_cast<A>(static_cast<scalar_t>((*image_size)[1]));
      decode_all<scalar_t, true>(cp, bp, op, n, k, w, clip, cw, ch);
    } else {
      decode_all<scalar_t, false>(cp, bp, op, n, k, w, clip, A(0), A(0));
    }
  });
  return out;
}

at::Tensor box_encode_cpu(const at::Tensor& reference_boxes, const at::Tensor& proposals,
                          at::ArrayRef<double> weights) {
  check_box_encode_inputs(reference_boxes, proposals, weights);
  const at::Tensor ref = reference_boxes.contiguous();
  const at::Tensor prop = proposals.contiguous();
  at::Tensor out = at::empty_like(ref);
  const int64_t n = ref.size(0);
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ref.scalar_type(), "box_encode_cpu", [&] {
    using A = typename OpMath<scalar_t>::type;
    // torchvision makes the weights a tensor of the boxes' dtype.
    const A w[4] = {static_cast<A>(static_cast<scalar_t>(weights[0])),
                    static_cast<A>(static_cast<scalar_t>(weights[1])),
                    static_cast<A>(static_cast<scalar_t>(weights[2])),
                    static_cast<A>(static_cast<scalar_t>(weights[3]))};
    const scalar_t* rp = ref.const_data_ptr<scalar_t>();
    const scalar_t* pp = prop.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, 2048, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) encode_box<scalar_t>(rp + 4 * i, pp + 4 * i, w, op + 4 * i);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg, CPU, m) {
  m.impl("box_decode", &box_decode_cpu);
  m.impl("box_encode", &box_encode_cpu);
}

}  // namespace fastseg
