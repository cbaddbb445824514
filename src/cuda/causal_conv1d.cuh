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

}  // namespace mamba2::cuda
