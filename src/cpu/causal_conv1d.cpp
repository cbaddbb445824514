#include <cstring>
#include <vector>

#include "cpu/common.h"
#include "cpu/kernels.h"

namespace mamba2::cpu {

namespace {

// Taps as (K, C) so that the inner loops run over contiguous channels.
std::vector<float> taps_by_position(const float* w, int64_t C, int64_t K) {
  std::vector<float> wt(static_cast<size_t>(K * C));
  for (int64_t c = 0; c < C; ++c)
    for (int64_t j = 0; j < K; ++j) wt[size_t(j * C + c)] = w[c * K + j];
  return wt;
}

}  // namespace

void causal_conv1d_forward(const float* in, int64_t ldin, const float* w, const float* bias, float* out,
                           int64_t ldo, float* state, int64_t L, int64_t C, int64_t K) {
  const std::vector<float> wt = taps_by_position(w, C, K);
  // Input row at position src (negative: from the state).
  auto input = [&](const float* old_state, int64_t src) { return src < 0 ? old_state + (K - 1 + src) * C : in + src * ldin; };
  const std::vector<float> old_state(state, state + (K - 1) * C);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < L; ++t) {
    float* o = out + t * ldo;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) o[c] = bias[c];
    for (int64_t j = 0; j < K; ++j) {
      const float* xi = input(old_state.data(), t - (K - 1) + j);
      const float* wj = wt.data() + j * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] += wj[c] * xi[c];
    }
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) o[c] = silu(o[c]);
  }
  for (int64_t j = 0; j < K - 1; ++j)
    std::memcpy(state + j * C, input(old_state.data(), L - (K - 1) + j), size_t(C) * sizeof(float));
}

void causal_conv1d_step(const float* x, int64_t ldx, const float* w, const float* bias, float* out, int64_t ldo,
                        float* states, const int64_t* slots, int64_t nb, int64_t C, int64_t K) {
  const std::vector<float> wt = taps_by_position(w, C, K);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < nb; ++b) {
    float* s = states + slots[b] * (K - 1) * C;
    const float* xb = x + b * ldx;
    float* o = out + b * ldo;
    const float* wlast = wt.data() + (K - 1) * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) o[c] = bias[c] + wlast[c] * xb[c];
    for (int64_t j = 0; j < K - 1; ++j) {
      const float* sj = s + j * C;
      const float* wj = wt.data() + j * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] += wj[c] * sj[c];
    }
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) o[c] = silu(o[c]);
    if (K > 1) {
      std::memmove(s, s + C, size_t((K - 2) * C) * sizeof(float));
      std::memcpy(s + (K - 2) * C, xb, size_t(C) * sizeof(float));
    }
  }
}

}  // namespace mamba2::cpu
