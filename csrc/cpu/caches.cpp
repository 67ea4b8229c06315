// The ops that report and free the memory fastseg's CPU kernels keep between calls: the packed weights
// (packed_weights.h) and the output pool (output_pool.h).
#include <torch/library.h>

#include "output_pool.h"
#include "packed_weights.h"

namespace fastseg {
namespace {

int64_t empty_cache() { return clear_packed_weights() + release_output_pool(); }
int64_t weight_cache_entries() { return packed_weight_entries(); }
int64_t pooled_output_bytes() { return output_pool_bytes(); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastseg, m) {
  // Frees the packed weights and the pooled output blocks; returns their bytes.
  m.def("empty_cache() -> int", &empty_cache);
  // How many packed weights are kept (tests, memory accounting).
  m.def("weight_cache_entries() -> int", &weight_cache_entries);
  // The bytes of the output blocks the pool holds.
  m.def("output_pool_bytes() -> int", &pooled_output_bytes);
}

}  // namespace fastseg
