// Greedy selection on the GPU: one block per row, each thread the best of its columns (groups of
// four, 16-byte loads when the rows allow, several in flight), then warp shuffles and a fixed tree
// over the warps; the larger value wins, equal values the lower index (the CPU's first maximum).
// That is a total order, so the result never depends on how the columns were dealt out. Launched
// overlapped (common.cuh).
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace mamba2::cuda {

namespace {

constexpr int kThreads = 1024;

__device__ __forceinline__ bool better(float v, int64_t i, float bv, int64_t bi) {
  return v > bv || (v == bv && i < bi);  // a NaN never wins, nor loses its place: as on the CPU
}

template <bool vec>
__global__ void __launch_bounds__(kThreads) argmax_kernel(const float* x, int64_t ld, int64_t cols, int32_t* out) {
  start_next();
  wait_for_previous();
  const float* row = x + int64_t(blockIdx.x) * ld;
  float bv = row[0];
  int64_t bi = 0;
  constexpr int kUnroll = 4;
  for (int64_t base = int64_t(threadIdx.x) * 4; base < cols; base += int64_t(kThreads) * 4 * kUnroll) {
    float v[kUnroll][4];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = base + int64_t(u) * kThreads * 4;
      if (vec && c + 4 <= cols) {
        const float4 q = *reinterpret_cast<const float4*>(row + c);
        v[u][0] = q.x, v[u][1] = q.y, v[u][2] = q.z, v[u][3] = q.w;
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) v[u][e] = c + e < cols ? row[c + e] : -INFINITY;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t c = base + int64_t(u) * kThreads * 4 + e;
        if (c < cols && better(v[u][e], c, bv, bi)) {
          bv = v[u][e];
          bi = c;
        }
      }
  }
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, off);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, bi, off);
    if (better(ov, oi, bv, bi)) {
      bv = ov;
      bi = oi;
    }
  }
  __shared__ float vals[kThreads / 32];
  __shared__ int64_t idx[kThreads / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    vals[warp] = bv;
    idx[warp] = bi;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kThreads / 32; ++w)
      if (better(vals[w], idx[w], bv, bi)) {
        bv = vals[w];
        bi = idx[w];
      }
    out[blockIdx.x] = int32_t(bi);
  }
}

}  // namespace

void argmax_rows(const float* x, int64_t ld, int64_t n, int64_t cols, int32_t* out) {
  if (n == 0) return;
  const bool vec = reinterpret_cast<uintptr_t>(x) % 16 == 0 && ld % 4 == 0;
  if (vec) launch_overlapped(argmax_kernel<true>, unsigned(n), kThreads, 0, "argmax", x, ld, cols, out);
  else launch_overlapped(argmax_kernel<false>, unsigned(n), kThreads, 0, "argmax", x, ld, cols, out);
}

}  // namespace mamba2::cuda
