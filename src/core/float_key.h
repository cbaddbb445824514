// Floats as 32-bit keys that sort as they do: one definition for the host's sampler (a radix sort
// of scores) and the GPU's top-k (a radix select), so that both order and tie the same way.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define MAMBA2_HOST_DEVICE __host__ __device__
#else
#define MAMBA2_HOST_DEVICE
#endif

namespace mamba2 {

// Ascending as unsigned, as the floats ascend; -0 and +0 are one key, a NaN lies below all.
MAMBA2_HOST_DEVICE inline uint32_t float_order_key(float f) {
  if (f != f) return 0;
  if (f == 0.0f) f = 0.0f;
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The float of a key (for keys of floats: float_order_key(f) gives f back, -0 as +0).
MAMBA2_HOST_DEVICE inline float float_of_order_key(uint32_t key) {
  const uint32_t u = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

}  // namespace mamba2
