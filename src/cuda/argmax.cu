// Greedy selection on the GPU: a cluster of blocks per row (sm_90; one block elsewhere or for
// short rows), each block a contiguous share of the columns, each thread the best of its columns
// (groups of four, 16-byte loads when the rows allow, several in flight), then warp shuffles and
// a fixed tree over the warps, then the cluster's first block over the blocks' bests in rank order
// (distributed shared memory). The larger value wins, equal values the lower index (the CPU's
// first maximum); every thread starts from column 0, so a NaN there keeps its place and a NaN
// anywhere else never wins, as on the CPU. So the result never depends on how the columns were
// dealt out. Launched overlapped (common.cuh).
#include <cooperative_groups.h>

#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace mamba2::cuda {

namespace {

constexpr int kThreads = 1024;
constexpr int kMaxParts = 8;       // blocks a row (a portable cluster)
constexpr int64_t kPartCols = 4096;  // a row takes another doubling of blocks past this many columns each

__device__ __forceinline__ bool better(float v, int64_t i, float bv, int64_t bi) {
  return v > bv || (v == bv && i < bi);  // a NaN never wins, nor loses its place: as on the CPU
}

// Grid (parts, rows), clusters of `parts` along x: block p takes columns [p·span, (p+1)·span).
template <bool vec>
__global__ void __launch_bounds__(kThreads) argmax_kernel(const float* x, int64_t ld, int64_t cols, int64_t span,
                                                          int32_t* out) {
  TRACE_KERNEL;
  start_next();
  wait_for_previous();
  const float* row = x + int64_t(blockIdx.y) * ld;
  const int64_t c0 = int64_t(blockIdx.x) * span, c1 = min(cols, c0 + span);
  float bv = row[0];
  int64_t bi = 0;
  constexpr int kUnroll = 4;
  for (int64_t base = c0 + int64_t(threadIdx.x) * 4; base < c1; base += int64_t(kThreads) * 4 * kUnroll) {
    float v[kUnroll][4];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = base + int64_t(u) * kThreads * 4;
      if (vec && c + 4 <= c1) {
        const float4 q = *reinterpret_cast<const float4*>(row + c);
        v[u][0] = q.x, v[u][1] = q.y, v[u][2] = q.z, v[u][3] = q.w;
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) v[u][e] = c + e < c1 ? row[c + e] : -INFINITY;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t c = base + int64_t(u) * kThreads * 4 + e;
        if (c < c1 && better(v[u][e], c, bv, bi)) {
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
    vals[0] = bv;
    idx[0] = bi;
  }
  if (gridDim.x == 1) {
    if (threadIdx.x == 0) out[blockIdx.y] = int32_t(bi);
    return;
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  auto cluster = cooperative_groups::this_cluster();
  cluster.sync();
  if (cluster.block_rank() == 0 && threadIdx.x == 0) {
    for (unsigned b = 1; b < gridDim.x; ++b) {
      const float ov = *cluster.map_shared_rank(&vals[0], b);
      const int64_t oi = *cluster.map_shared_rank(&idx[0], b);
      if (better(ov, oi, bv, bi)) {
        bv = ov;
        bi = oi;
      }
    }
    out[blockIdx.y] = int32_t(bi);
  }
  cluster.sync();  // the others' bests stay until the first block has read them
#endif
}

}  // namespace

void argmax_rows(const float* x, int64_t ld, int64_t n, int64_t cols, int32_t* out) {
  if (n == 0) return;
  int parts = 1;
  if (compute_major() >= 9)
    while (parts < kMaxParts && cols > parts * kPartCols) parts *= 2;
  const int64_t span = ceil_div(ceil_div(cols, int64_t(parts)), int64_t(4)) * 4;  // whole float4s
  const bool vec = aligned16(x, ld, 4);
  auto* kernel = vec ? argmax_kernel<true> : argmax_kernel<false>;
  constexpr int64_t kMaxRows = 65535;  // a grid's y
  for (int64_t r0 = 0; r0 < n; r0 += kMaxRows) {
    const dim3 grid(unsigned(parts), unsigned(std::min(kMaxRows, n - r0)));
    launch_overlapped_clustered(unsigned(parts), kernel, grid, kThreads, 0, "argmax", x + r0 * ld, ld, cols, span,
                                out + r0);
  }
}

}  // namespace mamba2::cuda
