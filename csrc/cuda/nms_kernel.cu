// CUDA kernels of fastseg::nms and fastseg::batched_nms (schemas: csrc/nms.cpp).
//
// Semantics (identical to csrc/cpu/nms_kernel.cpp and to torchvision's CPU nms): boxes are ranked by
// decreasing score, ties by lower index (a stable descending sort; NaN scores sort as torch sorts
// them). Walking that ranking greedily, box b is kept unless an already kept box a has
//     nms_iou(a, b) > iou_threshold                                          (csrc/box_iou.h)
// The result is the int64 indices of the kept boxes in ranking order. batched_nms does the same, but
// a box only suppresses boxes of its own class idxs[i]; it is ONE pass over all classes (no
// coordinate-offset trick): boxes are grouped by class, each class a contiguous run in score order,
// and pairs of different classes are never compared.
//
// Arithmetic: double for fp64 boxes, float for fp32/fp16/bf16 (reduced precisions convert exactly).
// The threshold is rounded down to T on the host (fastseg::nms_threshold) so that `iou > thr_T` in T
// equals torchvision's `iou > thr_double`. Build with --fmad=false: an FMA would change rounding.
//
// Algorithm (the classic bitmask NMS, with the greedy walk kept on the device):
//   1. sort; gather the boxes in ranking order into a contiguous [N, 4] tensor of T.
//   2. nms_mask_kernel: grid (column block, row block) of 64-box blocks, upper triangle only. Thread
//      t of block (cb, rb) compares row box i = 64*rb + t with the <= 64 column boxes of block cb
//      (staged in shared memory) and writes mask[i][cb], bit k set when box j = 64*cb + k has
//      j > i, j in the class run of i (batched) and nms_iou(i, j) > thr. Words below the diagonal
//      (cb < rb), and in batched mode the words of column blocks past the class run of the row
//      block, are never written nor read: the mask is allocated with at::empty.
//   3. nms_reduce_kernel: ONE block walks the row blocks in order. `removed` (one bit per box, in
//      shared memory when it fits, else global scratch) holds the boxes suppressed so far. Per row
//      block: warp 0 stages the 64 diagonal words; lane 0 resolves the 64 rows sequentially (row k
//      is kept if its removed bit is clear; a kept row ORs its diagonal word into the current word);
//      the warp writes the 64 keep flags; then all threads OR the masks of the block's kept rows into
//      the removed words of the later column blocks (each thread owns distinct words, so no atomics;
//      in batched mode only words below the class end of the block's last row, all of them written).
//   4. at::nonzero on the keep flags (indexed by rank in the global score order): the single host
//      sync of the op, unavoidable because the output size is data dependent.
//
// Memory: the mask is N * ceil(N / 64) * 8 bytes (N = 100k: 1.25 GB), of which only the upper
// triangle is written.

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>

#include "box_iou.h"
#include "nms.h"

namespace fastseg {
namespace {

using u64 = unsigned long long;

// Boxes per block of the bitmask: one 64-bit word per (row box, column block).
constexpr int kBlock = 64;
// Threads of the single-block reduction: the OR phase reads ceil(N/64) - rb words per kept row, so
// more threads mean fewer sequential loads (N = 100k: 1563 words, 2 per thread at 1024).
constexpr int kReduceThreads = 1024;
// Kept rows whose mask words one thread loads at once in the reduction's OR phase (divides 64).
constexpr int kOrChunk = 8;
constexpr u64 kOrChunkMask = (1ULL << kOrChunk) - 1;
static_assert(kBlock % kOrChunk == 0 && kOrChunk < 64, "kOrChunk must divide 64");
// `removed` lives in dynamic shared memory up to this many words (40 KiB, leaving room for the
// static shared arrays under the 48 KiB default limit): N <= 327,680 boxes; global scratch beyond.
constexpr int64_t kMaxSharedRemovedWords = 40 * 1024 / 8;
// gridDim.y limit of the mask kernel's (column block, row block) grid.
constexpr int64_t kMaxGridBlocks = 65535;

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// class_end[i] = one past the last position of the class run that holds position i, for classes
// sorted ascending: the first p > i with cls[p] != cls[i] (upper bound of cls[i] in cls[i+1:n]).
__global__ void class_end_kernel(int64_t n, const int64_t* __restrict__ cls,
                                 int64_t* __restrict__ class_end) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t v = cls[i];
  int64_t lo = i + 1, hi = n;  // answer in [lo, hi]
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (cls[mid] > v) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  class_end[i] = lo;
}

// One block per (column block, row block) pair with column block >= row block; 64 threads, one per
// row box. `boxes` is [n, 4] in ranking order; `class_end` (BATCHED only) as above.
template <typename T, bool BATCHED>
__global__ void __launch_bounds__(kBlock)
    nms_mask_kernel(int64_t n, int64_t col_blocks, const T* __restrict__ boxes,
                    const int64_t* __restrict__ class_end, T threshold, u64* __restrict__ mask) {
  const int64_t cb = blockIdx.x;
  const int64_t rb = blockIdx.y;
  if (cb < rb) return;  // lower triangle: never read
  const int64_t r0 = rb * kBlock;
  const int64_t c0 = cb * kBlock;
  const int row_size = static_cast<int>((n - r0) < kBlock ? (n - r0) : kBlock);
  const int col_size = static_cast<int>((n - c0) < kBlock ? (n - c0) : kBlock);
  if (BATCHED && cb > rb && class_end[r0 + row_size - 1] <= c0) {
    return;  // no row of this block shares a class with a column of that block (block-uniform)
  }

  __shared__ T s_box[kBlock][5];  // x1, y1, x2, y2, area of the column boxes
  const int t = threadIdx.x;
  if (t < col_size) {
    const T* b = boxes + (c0 + t) * 4;
    const T x1 = b[0], y1 = b[1], x2 = b[2], y2 = b[3];
    s_box[t][0] = x1;
    s_box[t][1] = y1;
    s_box[t][2] = x2;
    s_box[t][3] = y2;
    s_box[t][4] = box_area<T>(x1, y1, x2, y2);
  }
  __syncthreads();
  if (t >= row_size) return;

  const int64_t i = r0 + t;
  const T* a = boxes + i * 4;
  const T ax1 = a[0], ay1 = a[1], ax2 = a[2], ay2 = a[3];
  const T a_area = box_area<T>(ax1, ay1, ax2, ay2);
  // Columns j = c0 + k with i < j < row_end.
  const int64_t row_end = BATCHED ? class_end[i] : n;
  const int64_t lim = row_end - c0;
  const int k_end = lim < col_size ? (lim < 0 ? 0 : static_cast<int>(lim)) : col_size;
  const int k_begin = (cb == rb) ? t + 1 : 0;
  u64 bits = 0;
  for (int k = k_begin; k < k_end; ++k) {
    if (nms_iou<T>(ax1, ay1, ax2, ay2, a_area, s_box[k][0], s_box[k][1], s_box[k][2], s_box[k][3],
                   s_box[k][4]) > threshold) {
      bits |= 1ULL << k;
    }
  }
  mask[i * col_blocks + cb] = bits;
}

// The greedy walk over the bitmask, in ONE block of kReduceThreads threads.
//   class_end:  BATCHED only; row i's mask words w are valid for w < ceil(class_end[i] / 64).
//   rank:       optional; keep flag of ranking position p is written to keep[rank[p]] (batched: the
//               rank of that box in the global score order), else to keep[p].
//   removed_global: scratch of col_blocks words, or nullptr to use dynamic shared memory.
template <bool BATCHED>
__global__ void __launch_bounds__(kReduceThreads)
    nms_reduce_kernel(int64_t n, int64_t col_blocks, const u64* __restrict__ mask,
                      const int64_t* __restrict__ class_end, const int64_t* __restrict__ rank,
                      u64* removed_global, uint8_t* __restrict__ keep) {
  extern __shared__ u64 s_removed_dyn[];
  __shared__ u64 s_diag[kBlock];         // diagonal words of the current row block
  __shared__ int64_t s_word_end[kBlock];  // per row: one past its last valid mask word
  __shared__ u64 s_kept;                  // kept rows of the current row block
  u64* removed = removed_global != nullptr ? removed_global : s_removed_dyn;
  const int tid = threadIdx.x;

  for (int64_t w = tid; w < col_blocks; w += blockDim.x) removed[w] = 0;
  __syncthreads();

  for (int64_t rb = 0; rb < col_blocks; ++rb) {
    const int64_t r0 = rb * kBlock;
    const int row_size = static_cast<int>((n - r0) < kBlock ? (n - r0) : kBlock);

    if (tid < 32) {  // warp 0: stage, walk, write flags
      for (int k = tid; k < row_size; k += 32) {
        const int64_t i = r0 + k;
        s_diag[k] = mask[i * col_blocks + rb];
        s_word_end[k] = BATCHED ? ceil_div(class_end[i], kBlock) : col_blocks;
      }
      __syncwarp();
      u64 kept = 0;
      if (tid == 0) {
        u64 cur = removed[rb];
        for (int k = 0; k < row_size; ++k) {
          if (!((cur >> k) & 1ULL)) {
            kept |= 1ULL << k;
            cur |= s_diag[k];
          }
        }
        s_kept = kept;
      }
      kept = __shfl_sync(0xffffffffu, kept, 0);
      for (int k = tid; k < row_size; k += 32) {
        const int64_t p = r0 + k;
        keep[rank != nullptr ? rank[p] : p] = static_cast<uint8_t>((kept >> k) & 1ULL);
      }
    }
    __syncthreads();

    // OR the masks of the kept rows into the removed words of later column blocks. Row s_word_end
    // is nondecreasing in k (class runs are sorted), so the last row bounds the whole block; a row's
    // words past its own s_word_end are written (zero) when below the block's bound, so the per-row
    // test only saves loads. The rows go kOrChunk at a time with branch-free, independent loads, so
    // that a thread has up to kOrChunk loads in flight instead of one dependent load per kept row.
    const u64 kept = s_kept;
    if (kept != 0) {
      const int64_t w_end = s_word_end[row_size - 1];
      const int64_t safe_word = r0 * col_blocks + rb;
      for (int64_t w = rb + 1 + tid; w < w_end; w += blockDim.x) {
        u64 acc = removed[w];
        for (int k0 = 0; k0 < row_size; k0 += kOrChunk) {
          if (((kept >> k0) & kOrChunkMask) == 0) continue;
          u64 v[kOrChunk];
          bool take[kOrChunk];
#pragma unroll
          for (int u = 0; u < kOrChunk; ++u) {
            const int k = k0 + u;  // k < 64 since k0 is a multiple of kOrChunk and 64 % kOrChunk == 0
            take[u] = k < row_size && ((kept >> k) & 1ULL) && (!BATCHED || w < s_word_end[k]);
            // Branch-free: a row not taken loads the block's first diagonal word instead (always
            // written, in bounds, cached) and is masked out below.
            v[u] = mask[take[u] ? (r0 + k) * col_blocks + w : safe_word];
          }
#pragma unroll
          for (int u = 0; u < kOrChunk; ++u) acc |= take[u] ? v[u] : 0ULL;
        }
        removed[w] = acc;
      }
    }
    __syncthreads();
  }
}

}  // namespace
}  // namespace fastseg

namespace fastseg {
namespace {

// Steps 2 and 3 for boxes already in ranking order ([n, 4], T, contiguous, n >= 1). Returns uint8
// keep flags of length n: flag of ranking position p at rank[p] if `rank` is defined, else at p.
template <typename T>
at::Tensor nms_keep_flags(const at::Tensor& ranked_boxes, const at::Tensor& class_end,
                          const at::Tensor& rank, double iou_threshold, const char* op) {
  const int64_t n = ranked_boxes.size(0);
  const int64_t col_blocks = ceil_div(n, kBlock);
  TORCH_CHECK(col_blocks <= kMaxGridBlocks, op, ": at most ", kMaxGridBlocks * kBlock,
              " boxes are supported by the CUDA kernel, got ", n);
  const bool batched = class_end.defined();
  const T threshold = nms_threshold<T>(iou_threshold);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  // Only the upper triangle (and, batched, the blocks that classes reach) is written and read.
  at::Tensor mask = at::empty({n * col_blocks}, ranked_boxes.options().dtype(at::kLong));
  u64* mask_ptr = reinterpret_cast<u64*>(mask.data_ptr<int64_t>());
  const T* boxes_ptr = ranked_boxes.data_ptr<T>();
  const int64_t* class_end_ptr = batched ? class_end.data_ptr<int64_t>() : nullptr;
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(col_blocks));
  if (batched) {
    nms_mask_kernel<T, true>
        <<<grid, kBlock, 0, stream>>>(n, col_blocks, boxes_ptr, class_end_ptr, threshold, mask_ptr);
  } else {
    nms_mask_kernel<T, false>
        <<<grid, kBlock, 0, stream>>>(n, col_blocks, boxes_ptr, class_end_ptr, threshold, mask_ptr);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  at::Tensor keep = at::empty({n}, ranked_boxes.options().dtype(at::kByte));
  const bool shared_removed = col_blocks <= kMaxSharedRemovedWords;
  at::Tensor removed_scratch;
  if (!shared_removed) {
    removed_scratch = at::empty({col_blocks}, ranked_boxes.options().dtype(at::kLong));
  }
  u64* removed_ptr =
      shared_removed ? nullptr : reinterpret_cast<u64*>(removed_scratch.data_ptr<int64_t>());
  const size_t smem = shared_removed ? static_cast<size_t>(col_blocks) * sizeof(u64) : 0;
  const int64_t* rank_ptr = rank.defined() ? rank.data_ptr<int64_t>() : nullptr;
  if (batched) {
    nms_reduce_kernel<true><<<1, kReduceThreads, smem, stream>>>(
        n, col_blocks, mask_ptr, class_end_ptr, rank_ptr, removed_ptr, keep.data_ptr<uint8_t>());
  } else {
    nms_reduce_kernel<false><<<1, kReduceThreads, smem, stream>>>(
        n, col_blocks, mask_ptr, class_end_ptr, rank_ptr, removed_ptr, keep.data_ptr<uint8_t>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return keep;
}

// The boxes of `order` as a contiguous [n, 4] tensor of the compute type (double for fp64, else
// float: fp16/bf16 upcast exactly). index_select reads non-contiguous inputs and returns a
// contiguous result.
at::Tensor ranked_boxes_of(const at::Tensor& boxes, const at::Tensor& order) {
  const at::ScalarType ct = boxes.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return boxes.index_select(0, order).to(ct).contiguous();
}

at::Tensor keep_flags_dispatch(const at::Tensor& ranked, const at::Tensor& class_end,
                               const at::Tensor& rank, double iou_threshold, const char* op) {
  if (ranked.scalar_type() == at::kDouble) {
    return nms_keep_flags<double>(ranked, class_end, rank, iou_threshold, op);
  }
  return nms_keep_flags<float>(ranked, class_end, rank, iou_threshold, op);
}

// Stable descending sort of the scores: ranking position -> original index (int64).
at::Tensor score_order(const at::Tensor& scores) {
  return std::get<1>(at::sort(scores, /*stable=*/true, /*dim=*/0, /*descending=*/true)).contiguous();
}

void check_cuda(const char* op, const at::Tensor& boxes) {
  TORCH_CHECK(boxes.is_cuda(), op, ": the CUDA kernel needs boxes on a CUDA device, got ",
              boxes.device());
}

}  // namespace

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_inputs("nms", boxes, scores, at::Tensor(), iou_threshold);
  check_cuda("nms", boxes);
  c10::cuda::CUDAGuard device_guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));

  const at::Tensor order = score_order(scores);
  const at::Tensor ranked = ranked_boxes_of(boxes, order);
  const at::Tensor keep = keep_flags_dispatch(ranked, at::Tensor(), at::Tensor(), iou_threshold, "nms");
  // The one host sync: the number of kept boxes. nonzero is ascending, i.e. in ranking order.
  const at::Tensor kept_ranks = at::nonzero(keep).select(1, 0);
  return order.index_select(0, kept_ranks);
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                            const at::Tensor& idxs, double iou_threshold) {
  check_nms_inputs("batched_nms", boxes, scores, idxs, iou_threshold);
  check_cuda("batched_nms", boxes);
  c10::cuda::CUDAGuard device_guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));

  // Global ranking (score desc, ties lower index), then a stable sort by class: each class is a
  // contiguous run in ranking order. by_class[p] = global rank of class-grouped position p.
  const at::Tensor order = score_order(scores);
  const at::Tensor cls_ranked = idxs.to(at::kLong).index_select(0, order);
  auto cls_sorted_and_perm = at::sort(cls_ranked, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor cls_sorted = std::get<0>(cls_sorted_and_perm).contiguous();
  const at::Tensor by_class = std::get<1>(cls_sorted_and_perm).contiguous();
  const at::Tensor order_by_class = order.index_select(0, by_class);
  const at::Tensor ranked = ranked_boxes_of(boxes, order_by_class);

  at::Tensor class_end = at::empty({n}, cls_sorted.options());
  {
    constexpr int threads = 256;
    const int64_t blocks = ceil_div(n, threads);
    class_end_kernel<<<static_cast<unsigned>(blocks), threads, 0,
                       at::cuda::getCurrentCUDAStream()>>>(n, cls_sorted.data_ptr<int64_t>(),
                                                           class_end.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // Keep flags indexed by global rank, so that nonzero yields the kept boxes in global order.
  const at::Tensor keep =
      keep_flags_dispatch(ranked, class_end, by_class, iou_threshold, "batched_nms");
  const at::Tensor kept_ranks = at::nonzero(keep).select(1, 0);  // the one host sync
  return order.index_select(0, kept_ranks);
}

}  // namespace fastseg

TORCH_LIBRARY_IMPL(fastseg, CUDA, m) {
  m.impl("nms", &fastseg::nms_cuda);
  m.impl("batched_nms", &fastseg::batched_nms_cuda);
}
