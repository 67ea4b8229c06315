// Large outputs of the CPU kernels in memory that stays mapped between calls (output_pool.cpp).
//
// Why: a fresh output of several MB comes from mmap (glibc serves large blocks that way, and trims freed
// ones back to the kernel), so every call page-faults its whole output in, 4 KB at a time. Measured on
// U-Net's 128 -> 64 up-convolution (16.8 MB output): 4,100 faults a call, 9.2 ms instead of 5.4 ms
// (benchmarks/notes/conv_transpose2d.md, section 15). A loop (training, inference, a benchmark) frees
// the previous call's output before the next call; the pool keeps such blocks (at most 256 MB) and hands
// them out again. FASTSEG_OUTPUT_POOL=0 turns it off.
#pragma once

#include <ATen/ATen.h>

namespace fastseg {

// at::empty(sizes, options.memory_format(fmt)) for CPU outputs: from the pool when the output is large.
// Honours torch.utils.deterministic.fill_uninitialized_memory as at::empty does (tests poison outputs).
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options,
                        at::MemoryFormat fmt = at::MemoryFormat::Contiguous);

// Frees the blocks the pool holds; returns their bytes.
int64_t release_output_pool();

// The bytes of the blocks the pool holds.
int64_t output_pool_bytes();

}  // namespace fastseg
