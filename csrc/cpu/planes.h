// Helpers of the plane-by-plane CPU kernels (RoIAlign and RoIPool on NCHW maps): a task owns one
// (image, channel) plane and serves every RoI of the image from it while it sits in L2.
#pragma once

#include <cstdint>

namespace fastseg {

// Pulls the plane this thread reads next into L2 while it works on the current one: the RoIs read a
// plane in random order, and without this every first touch of a line waits for memory (measured on
// RoIAlign: 91 -> 77 ms for 1,000 RoIs on a 2x256x200x272 map).
template <typename S>
inline void prefetch_plane(const S* p, int64_t size) {
  const char* b = reinterpret_cast<const char*>(p);
  for (int64_t off = 0; off < size * static_cast<int64_t>(sizeof(S)); off += 64) __builtin_prefetch(b + off, 0, 2);
}

}  // namespace fastseg
