// Depthwise causal conv + bias + SiLU over one sequence (prefill, and its backward) and the
// one-token form (decode). Backward: d_in is overwritten, d_w and d_bias accumulate (+=); the
// sequence boundary is the `state` the forward started from (zeros for a fresh sequence), so
// packed sequences never exchange gradient.
#include <cstring>
#include <vector>

#include "cpu/common.h"
#include "cpu/kernels.h"

namespace mamba2::cpu {

namespace {

// Taps as (K, C) so that the inner loops run over contiguous channels.
template <class T>
std::vector<T> taps_by_position(const T* w, int64_t C, int64_t K) {
  std::vector<T> wt(static_cast<size_t>(K * C));
  for (int64_t c = 0; c < C; ++c)
    for (int64_t j = 0; j < K; ++j) wt[size_t(j * C + c)] = w[c * K + j];
  return wt;
}

constexpr int64_t kBand = 64;

}  // namespace

template <class T>
void causal_conv1d_forward(const T* in, int64_t ldin, const T* w, const T* bias, T* out, int64_t ldo, T* state,
                           int64_t L, int64_t C, int64_t K) {
  const std::vector<T> wt = taps_by_position(w, C, K);
  // Input row at position src (negative: from the state).
  auto input = [&](const T* old_state, int64_t src) { return src < 0 ? old_state + (K - 1 + src) * C : in + src * ldin; };
  const std::vector<T> old_state(state, state + (K - 1) * C);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < L; ++t) {
    T* o = out + t * ldo;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) o[c] = bias[c];
    for (int64_t j = 0; j < K; ++j) {
      const T* xi = input(old_state.data(), t - (K - 1) + j);
      const T* wj = wt.data() + j * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] += wj[c] * xi[c];
    }
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) o[c] = silu(o[c]);
  }
  for (int64_t j = 0; j < K - 1; ++j)
    std::memcpy(state + j * C, input(old_state.data(), L - (K - 1) + j), size_t(C) * sizeof(T));
}

// pre[t] = bias + Σ_j w[:, j]∘in[t-(K-1)+j] (summed as the forward does), d_pre = d_out∘silu'(pre);
// d_in[s] = Σ_j w[:, j]∘d_pre[s+(K-1)-j] over outputs inside the sequence;
// d_w[c, j] += Σ_t d_pre[t, c]·in[t-(K-1)+j, c];  d_bias += Σ_t d_pre[t].
template <class T>
void causal_conv1d_backward(const T* in, int64_t ldin, const T* w, const T* bias, const T* state, const T* d_out,
                            int64_t lddo, T* d_in, int64_t lddi, T* d_w, T* d_bias, int64_t L, int64_t C, int64_t K) {
  const std::vector<T> wt = taps_by_position(w, C, K);
  const std::vector<T> zeros(state ? 0 : static_cast<size_t>((K - 1) * C), T(0));
  const T* old_state = state ? state : zeros.data();
  auto input = [&](int64_t src) { return src < 0 ? old_state + (K - 1 + src) * C : in + src * ldin; };
  std::vector<T> d_pre(static_cast<size_t>(L * C));
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < L; ++t) {
    T* dp = d_pre.data() + t * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) dp[c] = bias[c];
    for (int64_t j = 0; j < K; ++j) {
      const T* xi = input(t - (K - 1) + j);
      const T* wj = wt.data() + j * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) dp[c] += wj[c] * xi[c];
    }
    const T* go = d_out + t * lddo;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) dp[c] = go[c] * silu_grad(dp[c]);
  }
#pragma omp parallel for schedule(static)
  for (int64_t s = 0; s < L; ++s) {
    T* di = d_in + s * lddi;
    std::fill_n(di, C, T(0));
    for (int64_t j = 0; j < K; ++j) {
      const int64_t t = s + (K - 1) - j;
      if (t >= L) continue;
      const T* dp = d_pre.data() + t * C;
      const T* wj = wt.data() + j * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) di[c] += wj[c] * dp[c];
    }
  }
#pragma omp parallel for schedule(static)
  for (int64_t c0 = 0; c0 < C; c0 += kBand) {
    const int64_t c1 = std::min(C, c0 + kBand);
    std::vector<double> acc(static_cast<size_t>((K + 1) * kBand), 0.0);  // K taps, then the bias
    for (int64_t t = 0; t < L; ++t) {
      const T* dp = d_pre.data() + t * C;
      for (int64_t j = 0; j < K; ++j) {
        const T* xi = input(t - (K - 1) + j);
        double* a = acc.data() + j * kBand;
        for (int64_t c = c0; c < c1; ++c) a[c - c0] += double(dp[c]) * double(xi[c]);
      }
      double* ab = acc.data() + K * kBand;
      for (int64_t c = c0; c < c1; ++c) ab[c - c0] += double(dp[c]);
    }
    for (int64_t c = c0; c < c1; ++c) {
      for (int64_t j = 0; j < K; ++j) d_w[c * K + j] += T(acc[size_t(j * kBand + c - c0)]);
      d_bias[c] += T(acc[size_t(K * kBand + c - c0)]);
    }
  }
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

template void causal_conv1d_forward<float>(const float*, int64_t, const float*, const float*, float*, int64_t, float*,
                                           int64_t, int64_t, int64_t);
template void causal_conv1d_forward<double>(const double*, int64_t, const double*, const double*, double*, int64_t,
                                            double*, int64_t, int64_t, int64_t);
template void causal_conv1d_backward<float>(const float*, int64_t, const float*, const float*, const float*,
                                            const float*, int64_t, float*, int64_t, float*, float*, int64_t, int64_t,
                                            int64_t);
template void causal_conv1d_backward<double>(const double*, int64_t, const double*, const double*, const double*,
                                             const double*, int64_t, double*, int64_t, double*, double*, int64_t,
                                             int64_t, int64_t);

}  // namespace mamba2::cpu
