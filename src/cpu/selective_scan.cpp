// The Mamba-1 selective scan on the CPU (ops::selective_scan): the recurrence itself, token by token
// per channel, its N (complex: N pairs) states held while the channel walks the sequence. Prefill runs
// the channels in parallel; a channel's work is inherently sequential in t, and at d_inner ≥ 1024
// channels there is far more parallel work than cores, so no chunked form is needed on the CPU.
//
// This file is compiled with -ffp-contract=off (src/CMakeLists.txt): every element's arithmetic is
// then the same roundings whether the compiler vectorises a loop or not and whatever the
// instruction set, and the sum over n runs in a fixed tree of kLanes partial sums. So the scan and
// the step give the same bits for a token, and a sequence's bits never depend on its batch.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/common.h"
#include "cpu/kernels.h"

namespace mamba2::cpu {

namespace {

constexpr int64_t kLanes = 16;

float tree_sum(float (&part)[kLanes]) {
  for (int64_t w = kLanes / 2; w >= 1; w /= 2)
    for (int64_t i = 0; i < w; ++i) part[i] += part[i + w];
  return part[0];
}

// One channel's state and the constants of its recurrence, A's parts in fp32 (as the scan reads them).
struct Channel {
  int64_t N;
  const float* A_re;  // (N) −exp(A_log)
  const float* A_im;  // (N) or null
  float D, bias;
};

// One token of a real channel: h ← exp(δA)·h + δx·B, returns Σ_n C·h.
inline float real_token(const Channel& ch, float* h, const float* Bt, const float* Ct, float delta, float dx) {
  float part[kLanes] = {};
  for (int64_t n0 = 0; n0 < ch.N; n0 += kLanes) {
    const int64_t m = std::min(kLanes, ch.N - n0);
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) {
      const int64_t n = n0 + i;
      const float hn = exp_nonpos(delta * ch.A_re[n]) * h[n] + dx * Bt[n];
      h[n] = hn;
      part[i] += Ct[n] * hn;
    }
  }
  return tree_sum(part);
}

// One token of a complex channel (h, B, C as (re, im) pairs): h ← exp(δA)·h + δx·B, returns
// Re Σ_n C·h. exp(δA) = exp(δ·Re A)·(cos(δ·Im A) + i·sin(δ·Im A)), δ·Re A ≤ 0.
inline float complex_token(const Channel& ch, float* h, const float* Bt, const float* Ct, float delta, float dx) {
  float part[kLanes] = {};
  for (int64_t n0 = 0; n0 < ch.N; n0 += kLanes) {
    const int64_t m = std::min(kLanes, ch.N - n0);
    for (int64_t i = 0; i < m; ++i) {
      const int64_t n = n0 + i;
      const float mag = exp_nonpos(delta * ch.A_re[n]);
      const float angle = delta * ch.A_im[n];
      const float er = mag * std::cos(angle), ei = mag * std::sin(angle);
      const float hr = h[2 * n], hi = h[2 * n + 1];
      const float nr = (er * hr - ei * hi) + dx * Bt[2 * n];
      const float ni = (er * hi + ei * hr) + dx * Bt[2 * n + 1];
      h[2 * n] = nr;
      h[2 * n + 1] = ni;
      part[i] += Ct[2 * n] * nr - Ct[2 * n + 1] * ni;
    }
  }
  return tree_sum(part);
}

// y for one token of one channel: Σ_n C·h (complex: 2·Re) + D·x, gated by silu(z).
inline float token(const Channel& ch, float* h, const float* Bt, const float* Ct, float raw_dt, float x,
                   const float* z) {
  const float delta = dt_activation(raw_dt, ch.bias, 0.0f, INFINITY);
  const float dx = delta * x;
  const float s = ch.A_im ? 2.0f * complex_token(ch, h, Bt, Ct, delta, dx) : real_token(ch, h, Bt, Ct, delta, dx);
  const float y = s + ch.D * x;
  return z ? y * silu(*z) : y;
}

// A channel's A in fp32, −exp(A_log) and Im A.
void load_A(const SelectiveScanParams& p, int64_t d, float* A_re, float* A_im) {
  const int64_t N = p.d_state;
  for (int64_t n = 0; n < N; ++n) {
    A_re[n] = -std::exp(p.A_log[d * N + n]);
    if (p.A_imag) A_im[n] = p.A_imag[d * N + n];
  }
}

int64_t state_width(const SelectiveScanParams& p) { return p.d_state * (p.A_imag ? 2 : 1); }

}  // namespace

void selective_scan_forward(const SelectiveScanParams& p, const float* x, int64_t ldx, const float* dt, int64_t lddt,
                            const float* B, int64_t ldb, const float* C, int64_t ldc, const float* z, int64_t ldz,
                            float* y, int64_t ldy, float* state, int64_t L) {
  const int64_t N = p.d_state, S = state_width(p);
#pragma omp parallel
  {
    std::vector<float> A_re(static_cast<size_t>(N)), A_im(static_cast<size_t>(N)), h(static_cast<size_t>(S));
#pragma omp for schedule(static)
    for (int64_t d = 0; d < p.channels; ++d) {
      load_A(p, d, A_re.data(), A_im.data());
      const Channel ch{N, A_re.data(), p.A_imag ? A_im.data() : nullptr, p.D[d], p.dt_bias[d]};
      float* hd = state + d * S;
      std::copy_n(hd, S, h.data());
      for (int64_t t = 0; t < L; ++t)
        y[t * ldy + d] = token(ch, h.data(), B + t * ldb, C + t * ldc, dt[t * lddt + d], x[t * ldx + d],
                               z ? z + t * ldz + d : nullptr);
      std::copy_n(h.data(), S, hd);
    }
  }
}

void selective_scan_step(const SelectiveScanParams& p, const float* x, int64_t ldx, const float* dt, int64_t lddt,
                         const float* B, int64_t ldb, const float* C, int64_t ldc, const float* z, int64_t ldz,
                         float* y, int64_t ldy, float* states, const int64_t* slots, int64_t nb) {
  const int64_t N = p.d_state, S = state_width(p);
#pragma omp parallel
  {
    std::vector<float> A_re(static_cast<size_t>(N)), A_im(static_cast<size_t>(N));
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < nb; ++b) {
      for (int64_t d = 0; d < p.channels; ++d) {
        load_A(p, d, A_re.data(), A_im.data());
        const Channel ch{N, A_re.data(), p.A_imag ? A_im.data() : nullptr, p.D[d], p.dt_bias[d]};
        float* h = states + slots[b] * p.channels * S + d * S;
        y[b * ldy + d] = token(ch, h, B + b * ldb, C + b * ldc, dt[b * lddt + d], x[b * ldx + d],
                               z ? z + b * ldz + d : nullptr);
      }
    }
  }
}

}  // namespace mamba2::cpu
