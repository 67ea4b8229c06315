// The ops that report and free the memory fastseg's CPU kernels keep between calls: the packed weights
// (packed_weights.h).
#include <torch/library.h>

#include "packed_weights.h"

namespace fastseg {
namespace {

int64_t empty_cache() { return clear_packed_weights(); }
int64_t weight_cache_entries() { return packed_weight_entries(); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastseg, m) {
  // Frees the packed weights; returns their bytes.
  m.def("empty_cache() -> int", &empty_cache);
  // How many packed weights are kept (tests, memory accounting).
  m.def("weight_cache_entries() -> int", &weight_cache_entries);
}

}  // namespace fastseg
