// Greedy selection on the GPU: one block per row, each thread the best of its strided columns,
// then a fixed tree; the larger value wins, equal values the lower index (the CPU's first
// maximum), so the result never depends on the launch. Launched overlapped (common.cuh).
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace mamba2::cuda {

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ bool better(float v, int64_t i, float bv, int64_t bi) {
  return v > bv || (v == bv && i < bi);  // a NaN never wins, nor loses its place: as on the CPU
}

__global__ void argmax_kernel(const float* x, int64_t ld, int64_t cols, int32_t* out) {
  start_next();
  wait_for_previous();
  const float* row = x + int64_t(blockIdx.x) * ld;
  float bv = row[0];
  int64_t bi = 0;
  for (int64_t i = threadIdx.x; i < cols; i += kThreads)
    if (better(row[i], i, bv, bi)) {
      bv = row[i];
      bi = i;
    }
  __shared__ float vals[kThreads];
  __shared__ int64_t idx[kThreads];
  vals[threadIdx.x] = bv;
  idx[threadIdx.x] = bi;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half && better(vals[threadIdx.x + half], idx[threadIdx.x + half], vals[threadIdx.x], idx[threadIdx.x])) {
      vals[threadIdx.x] = vals[threadIdx.x + half];
      idx[threadIdx.x] = idx[threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = int32_t(idx[0]);
}

}  // namespace

void argmax_rows(const float* x, int64_t ld, int64_t n, int64_t cols, int32_t* out) {
  if (n == 0) return;
  launch_overlapped(argmax_kernel, unsigned(n), kThreads, 0, "argmax", x, ld, cols, out);
}

}  // namespace mamba2::cuda
