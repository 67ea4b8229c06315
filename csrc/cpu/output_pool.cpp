// The output pool (see output_pool.h for why).
#include "output_pool.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>

#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace fastseg {
namespace {

constexpr size_t kMinBytes = size_t(1) << 20;   // smaller blocks: glibc's heap reuses them already
constexpr size_t kMaxPooled = size_t(256) << 20;
constexpr size_t kAlign = 64;                   // the block's size is kept in its first 64 bytes

bool enabled() {
  static const bool on = [] {
    const char* v = std::getenv("FASTSEG_OUTPUT_POOL");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  return on;
}

class Pool final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    const size_t size = (n + 4095) / 4096 * 4096;
    void* raw = take(size);
    if (raw == nullptr) {
      raw = std::aligned_alloc(kAlign, size + kAlign);
      if (raw == nullptr) throw std::bad_alloc();
      *static_cast<size_t*>(raw) = size;
    }
    void* data = static_cast<char*>(raw) + kAlign;
    return {data, data, &give_back, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  size_t bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return pooled_;
  }

  size_t release() {
    std::lock_guard<std::mutex> lock(mutex_);
    const size_t bytes = pooled_;
    for (auto& [size, blocks] : free_)
      for (void* raw : blocks) std::free(raw);
    free_.clear();
    pooled_ = 0;
    return bytes;
  }

 private:
  void* take(size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.find(size);
    if (it == free_.end() || it->second.empty()) return nullptr;
    void* raw = it->second.back();
    it->second.pop_back();
    pooled_ -= size;
    return raw;
  }

  static void give_back(void* data) {
    void* raw = static_cast<char*>(data) - kAlign;
    const size_t size = *static_cast<size_t*>(raw);
    Pool& p = pool();
    {
      std::lock_guard<std::mutex> lock(p.mutex_);
      if (p.pooled_ + size <= kMaxPooled) {
        p.free_[size].push_back(raw);
        p.pooled_ += size;
        return;
      }
    }
    std::free(raw);
  }

 public:
  static Pool& pool() {
    static Pool* p = new Pool();  // never destroyed: tensors may outlive static destruction
    return *p;
  }

 private:
  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_;  // by size, each block mapped and faulted in
  size_t pooled_ = 0;
};

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options, at::MemoryFormat fmt) {
  size_t bytes = options.dtype().itemsize();
  for (int64_t s : sizes) bytes *= static_cast<size_t>(s);
  if (!enabled() || bytes < kMinBytes || options.device().type() != c10::DeviceType::CPU)
    return at::empty(sizes, options.memory_format(fmt));
  at::Tensor out = at::detail::empty_generic(sizes, &Pool::pool(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                             c10::typeMetaToScalarType(options.dtype()), fmt);
  if (at::globalContext().deterministicAlgorithms() && at::globalContext().deterministicFillUninitializedMemory() &&
      out.is_floating_point())
    out.fill_(std::numeric_limits<double>::quiet_NaN());
  return out;
}

int64_t release_output_pool() { return static_cast<int64_t>(Pool::pool().release()); }

int64_t output_pool_bytes() { return static_cast<int64_t>(Pool::pool().bytes()); }

}  // namespace fastseg
