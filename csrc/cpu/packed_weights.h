// A cache of weights packed into oneDNN's blocked layout (csrc/cpu/packed_weights.cpp).
//
// Why: PyTorch's oneDNN deconvolution reorders the weight into oneDNN's blocked layout on every call.
// Measured on this box (benchmarks/notes/conv_transpose2d.md, section 13) that reorder is 0.2-1.8 ms of
// a 5-20 ms call on the bundled networks' wide layers; with the packed weight kept, the same oneDNN
// primitive ran 1.02-1.6x faster on one weight called again and again, 0.99-1.2x in the benchmark
// harness (three 9 MB weights in turn: the byte comparison below then reads from memory, not cache).
// Inference and benchmark loops call a layer again and again with the same weight, training changes it
// every step.
//
// Correctness does not rest on the version counter (writes through `.data` or a NumPy view do not bump
// it): a packed weight is used only when the weight's bytes equal the copy taken when it was packed.
// The version counter only decides when packing is worth it: a weight is packed the second time the same
// memory arrives unchanged (same address and version), so a training step, which changes the weight
// between calls, never pays for a copy. FASTSEG_WEIGHT_CACHE=0 turns the cache off.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <vector>

namespace fastseg {

// The packed form of `weight` for the call described by `key` (everything besides the weight's bytes that
// the packed form depends on: which op, sizes, strides, dtype, the op's parameters, the input's shape),
// or an undefined tensor when the cache has none (the caller then runs the unpacked path). `pack` builds
// the packed form; it runs at most once per call. With may_pack = false the cache is only looked up: a
// backward pass, which in training sees each weight once, should not pay for the copy.
at::Tensor packed_weight(const at::Tensor& weight, std::vector<int64_t> key, const std::function<at::Tensor()>& pack,
                         bool may_pack = true);

}  // namespace fastseg
