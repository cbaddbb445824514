// Sampling's candidates under top-k on the GPU (cpu/top_k.cpp is the oracle): one block per row.
// The k-th largest quotient q = x / temperature is found exactly by a radix select over q's bits
// mapped to order-preserving 32-bit keys (8 bits a pass, from the top, counting only the keys that
// match the digits chosen so far), then the columns with q ≥ it are written in column order
// (each thread a contiguous range, placed by a block-wide prefix sum). Counts are integers, so
// the result does not depend on the order of the atomics: deterministic, and each row's alone.
#include "core/float_key.h"
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace mamba2::cuda {

namespace {

constexpr int kThreads = 1024;

__global__ void __launch_bounds__(kThreads) top_k_kernel(const float* x, int64_t ld, int64_t cols, const int32_t* k,
                                                         const float* temperature, int64_t cap, int32_t* ids,
                                                         float* values, int32_t* counts) {
  __shared__ uint32_t hist[256];
  __shared__ uint32_t digit, rank;
  __shared__ int32_t warp_first[kThreads / 32];
  __shared__ int32_t total;
  const int64_t r = blockIdx.x;
  const float* row = x + r * ld;
  const float t = temperature[r];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // The wanted key's rank from the top among the keys matching `prefix` on `mask`.
  uint32_t prefix = 0, mask = 0, wanted = uint32_t(k[r]);
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += kThreads) hist[i] = 0;
    __syncthreads();
    for (int64_t base = 0; base < cols; base += kThreads) {
      const int64_t c = base + threadIdx.x;
      const uint32_t key = c < cols ? float_order_key(row[c] / t) : 0;
      const bool take = c < cols && (key & mask) == prefix;
      const uint32_t bin = (key >> shift) & 255u;
      // One atomic per group of lanes with the same bin: logits crowd into few bins.
      const unsigned takers = __ballot_sync(0xffffffffu, take);
      if (take) {
        const unsigned peers = __match_any_sync(takers, bin);
        if (__ffs(peers) - 1 == lane) atomicAdd(&hist[bin], uint32_t(__popc(peers)));
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      uint32_t above = 0;
      int d = 255;
      for (; d > 0 && above + hist[d] < wanted; --d) above += hist[d];
      digit = uint32_t(d);
      rank = wanted - above;
    }
    __syncthreads();
    prefix |= digit << shift;
    mask |= 255u << shift;
    wanted = rank;
  }
  const float floor = float_of_order_key(prefix);
  const int64_t per = (cols + kThreads - 1) / kThreads, c0 = min(cols, int64_t(threadIdx.x) * per),
                c1 = min(cols, c0 + per);
  int32_t mine = 0;
  for (int64_t c = c0; c < c1; ++c) mine += row[c] / t >= floor;
  int32_t incl = mine;
  for (int off = 1; off < 32; off <<= 1) {
    const int32_t v = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += v;
  }
  if (lane == 31) warp_first[warp] = incl;
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t sum = 0;
    for (int w = 0; w < kThreads / 32; ++w) {
      const int32_t v = warp_first[w];
      warp_first[w] = sum;
      sum += v;
    }
    total = sum;
  }
  __syncthreads();
  if (total > cap) {
    if (threadIdx.x == 0) counts[r] = -1;
    return;
  }
  int64_t at = r * cap + warp_first[warp] + incl - mine;
  for (int64_t c = c0; c < c1; ++c)
    if (row[c] / t >= floor) {
      ids[at] = int32_t(c);
      values[at] = row[c];
      ++at;
    }
  if (threadIdx.x == 0) counts[r] = total;
}

}  // namespace

void top_k_rows(const float* x, int64_t ld, int64_t n, int64_t cols, const int32_t* k, const float* temperature,
                int64_t cap, int32_t* ids, float* values, int32_t* counts) {
  if (n == 0) return;
  top_k_kernel<<<unsigned(n), kThreads, 0, stream()>>>(x, ld, cols, k, temperature, cap, ids, values, counts);
  check_launch("top_k");
}

}  // namespace mamba2::cuda
