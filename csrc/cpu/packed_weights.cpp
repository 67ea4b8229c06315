// The packed-weight cache (see packed_weights.h for why and for the rules).
#include "packed_weights.h"
#include "winograd_gemm.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <list>
#include <mutex>

namespace fastseg {
namespace {

// Bounds: a U-Net's four up-convolutions hold 11 MB of weights, the largest bundled layer 9.4 MB; an entry
// costs its weight (the copy) and its packed form (about the weight's size for oneDNN, 16/9 of it for the
// Winograd transform).
constexpr size_t kMaxEntries = 64;
constexpr int64_t kMaxBytes = int64_t(1) << 30;
constexpr size_t kMaxSightings = 64;

struct Entry {
  std::vector<int64_t> key;
  const void* where;  // the memory it was packed from (compared only, never dereferenced)
  at::Tensor copy;    // the weight's bytes when it was packed
  at::Tensor packed;  // oneDNN's blocked layout
  int64_t bytes;
};

// A weight seen once: packed if the same memory comes back unchanged. Memory, not TensorImpl: a training
// loop may hand over a fresh detach() of the same parameter every call (same memory and version counter).
struct Sighting {
  std::vector<int64_t> key;
  const void* where;  // compared only, never dereferenced
  int64_t version;
};

struct Cache {
  std::mutex mutex;
  std::list<Entry> entries;  // most recently used first
  std::deque<Sighting> sightings;
  int64_t bytes = 0;
};

Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: ops may run during interpreter shutdown
  return *c;
}

bool enabled() {
  static const bool on = [] {
    const char* v = std::getenv("FASTSEG_WEIGHT_CACHE");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  return on;
}

// Whether the n bytes at a and b are equal; both threads compare, each stops at the first difference.
bool same_bytes(const char* a, const char* b, int64_t n) {
  constexpr int64_t kChunk = int64_t(1) << 18;
  std::atomic<bool> differ{false};
  at::parallel_for(0, (n + kChunk - 1) / kChunk, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi && !differ.load(std::memory_order_relaxed); ++c) {
      const int64_t off = c * kChunk;
      if (std::memcmp(a + off, b + off, std::min(kChunk, n - off)) != 0) differ.store(true);
    }
  });
  return !differ.load();
}

// The weight's elements as one block of bytes, or nullptr when they are not one block (a strided view).
const char* block(const at::Tensor& t) {
  return t.is_non_overlapping_and_dense() ? static_cast<const char*>(t.data_ptr()) : nullptr;
}

}  // namespace

at::Tensor packed_weight(const at::Tensor& weight, std::vector<int64_t> key, const std::function<at::Tensor()>& pack,
                         bool may_pack) {
  const char* bytes = block(weight);
  if (!enabled() || bytes == nullptr) return at::Tensor();
  const int64_t n = weight.numel() * static_cast<int64_t>(weight.element_size());
  key.push_back(static_cast<int64_t>(weight.scalar_type()));
  for (int64_t s : weight.sizes()) key.push_back(s);
  for (int64_t s : weight.strides()) key.push_back(s);
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  for (auto it = c.entries.begin(); it != c.entries.end(); ++it) {
    if (it->key != key || !same_bytes(bytes, static_cast<const char*>(it->copy.data_ptr()), n)) continue;
    c.entries.splice(c.entries.begin(), c.entries, it);  // most recently used
    return it->packed;
  }
  if (!may_pack) return at::Tensor();
  // Inference tensors have no version counter; the byte comparison above keeps their hits correct.
  const void* where = bytes;
  const int64_t version = weight.is_inference() ? -1 : static_cast<int64_t>(weight._version());
  auto seen = std::find_if(c.sightings.begin(), c.sightings.end(),
                           [&](const Sighting& s) { return s.where == where && s.key == key; });
  if (seen == c.sightings.end() || seen->version != version) {
    if (seen != c.sightings.end()) c.sightings.erase(seen);
    c.sightings.push_back({std::move(key), where, version});
    if (c.sightings.size() > kMaxSightings) c.sightings.pop_front();
    return at::Tensor();
  }
  c.sightings.erase(seen);
  // This memory's older contents (a weight changed in place between two evaluations) are stale.
  c.entries.remove_if([&](const Entry& e) {
    const bool stale = e.where == where && e.key == key;
    if (stale) c.bytes -= e.bytes;
    return stale;
  });
  at::Tensor packed = pack();
  const int64_t held = n + packed.numel() * static_cast<int64_t>(packed.element_size());  // the copy and packed
  Entry e{std::move(key), where, weight.clone(), std::move(packed), held};
  c.bytes += e.bytes;
  c.entries.push_front(std::move(e));
  while (c.entries.size() > kMaxEntries || (c.bytes > kMaxBytes && c.entries.size() > 1)) {
    c.bytes -= c.entries.back().bytes;
    c.entries.pop_back();
  }
  return c.entries.front().packed;
}

namespace {

// The packed weights, and the Winograd routes' workspaces of the calling thread (winograd_gemm.h).
int64_t clear_packed_weights() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  const int64_t bytes = c.bytes;
  c.entries.clear();
  c.sightings.clear();
  c.bytes = 0;
  return bytes + winograd::release_workspaces();
}

int64_t packed_weight_entries() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return static_cast<int64_t>(c.entries.size());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastseg, m) {
  // Frees the packed weights and the calling thread's Winograd workspaces (fastseg.ops.empty_cache); returns
  // the bytes they held.
  m.def("empty_cache() -> int", &clear_packed_weights);
  // How many packed weights are kept (tests, memory accounting).
  m.def("weight_cache_entries() -> int", &packed_weight_entries);
}

}  // namespace fastseg
