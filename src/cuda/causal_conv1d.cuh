// The conv step of one channel of one sequence, shared by the conv step kernel and the in
// projection's fused epilogue (cuda/linear.cu), so that both give the same bits.
#pragma once
#include "cuda/common.cuh"

namespace mamba2::cuda {

// out = silu(bias + Σ taps · (state, x)), summed in the CPU kernel's order, then the state (the
// sequence's K-1 rows of C channels, oldest first) shifts x in. w: the channel's K taps.
__device__ __forceinline__ float conv_step_channel(float x, const float* w, float bias, float* state, int64_t C,
                                                   int64_t c, int K) {
  float acc = bias + w[K - 1] * x;
  for (int j = 0; j < K - 1; ++j) acc += w[j] * state[j * C + c];
  for (int j = 0; j + 1 < K - 1; ++j) state[j * C + c] = state[(j + 1) * C + c];
  if (K > 1) state[(K - 2) * C + c] = x;
  return silu(acc);
}

// The same step with the taps w (K ≤ N), the bias and the previous inputs `old` (K-1, oldest
// first) in registers: the same operations in the same order, so the same bits; the state row
// still shifts in memory.
template <int N>
__device__ __forceinline__ float conv_step_regs(float x, const float (&w)[N], float bias, const float (&old)[N - 1],
                                                float* state, int64_t C, int64_t c, int K) {
  float last = 0.0f;
#pragma unroll
  for (int j = 0; j < N; ++j)
    if (j == K - 1) last = w[j];
  float acc = bias + last * x;
#pragma unroll
  for (int j = 0; j < N - 1; ++j)
    if (j < K - 1) acc += w[j] * old[j];
#pragma unroll
  for (int j = 0; j < N - 2; ++j)
    if (j + 1 < K - 1) state[j * C + c] = old[j + 1];
  if (K > 1) state[(K - 2) * C + c] = x;
  return silu(acc);
}

}  // namespace mamba2::cuda
