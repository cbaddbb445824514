// Chunked SSD (Mamba-2 paper §6) on the CPU. Per chunk of Q tokens and head h of group g:
//   a[t]   = Σ_{s≤t in chunk} dt[s]·A                        (double: differences stay exact)
//   Y      = (CBᵀ ∘ exp(a[t]-a[s]) ∘ dt[s], s ≤ t) @ X       intra-chunk, masked matmul
//   Y[t]  += exp(a[t]) · C[t] @ stateᵀ                       contribution of earlier chunks
//   Y     += D·X
//   state  = exp(a[Q-1]) · state + (X ∘ exp(a[Q-1]-a[s])·dt[s])ᵀ @ B
// Every exponent is a difference a[t]-a[s] with s ≤ t, or a[t] itself, hence ≤ 0.
#include <cblas.h>

#include <cmath>
#include <vector>

#include "cpu/common.h"
#include "cpu/kernels.h"

namespace mamba2::cpu {

void ssd_scan_forward(const SsdParams& p, const float* x, int64_t ldx, const float* B, int64_t ldb,
                      const float* C, int64_t ldc, const float* dt_raw, int64_t lddt, float* y, int64_t ldy,
                      float* state, int64_t L, int64_t chunk_size) {
  const int64_t H = p.nheads, P = p.headdim, G = p.ngroups, N = p.d_state, Q = chunk_size;
  const int64_t heads_per_group = H / G;

  std::vector<float> dt(static_cast<size_t>(L * H));  // (L, H) after softplus and clamp
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < L; ++t)
    for (int64_t h = 0; h < H; ++h)
      dt[size_t(t * H + h)] = dt_activation(dt_raw[t * lddt + h], p.dt_bias[h], p.dt_min, p.dt_max);

  std::vector<float> CB(static_cast<size_t>(G * Q * Q));  // (G, Lc, Lc) for the current chunk
  for (int64_t c0 = 0; c0 < L; c0 += Q) {
    const int64_t Lc = std::min(Q, L - c0);
    for (int64_t g = 0; g < G; ++g)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(Lc), int(Lc), int(N), 1.0f, C + c0 * ldc + g * N,
                  int(ldc), B + c0 * ldb + g * N, int(ldb), 0.0f, CB.data() + g * Q * Q, int(Lc));

#pragma omp parallel
    {
      std::vector<double> a(static_cast<size_t>(Lc));
      std::vector<float> M(static_cast<size_t>(Lc * Lc)), Cs(static_cast<size_t>(Lc * N)), Xw(static_cast<size_t>(Lc * P));
#pragma omp for schedule(static)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t g = h / heads_per_group;
        const double A = -std::exp(double(p.A_log[h]));
        double acc = 0.0;
        for (int64_t t = 0; t < Lc; ++t) {
          acc += double(dt[size_t((c0 + t) * H + h)]) * A;
          a[size_t(t)] = acc;
        }
        const float* cb = CB.data() + g * Q * Q;
        for (int64_t t = 0; t < Lc; ++t) {
          float* row = M.data() + t * Lc;
          for (int64_t s = 0; s <= t; ++s)
            row[s] = cb[t * Lc + s] * std::exp(float(a[size_t(t)] - a[size_t(s)])) * dt[size_t((c0 + s) * H + h)];
          for (int64_t s = t + 1; s < Lc; ++s) row[s] = 0.0f;
        }
        const float* xh = x + c0 * ldx + h * P;
        float* yh = y + c0 * ldy + h * P;
        float* sh = state + h * P * N;
        const float* Cg = C + c0 * ldc + g * N;
        const float* Bg = B + c0 * ldb + g * N;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(Lc), int(P), int(Lc), 1.0f, M.data(), int(Lc), xh,
                    int(ldx), 0.0f, yh, int(ldy));
        for (int64_t t = 0; t < Lc; ++t) {
          const float decay = std::exp(float(a[size_t(t)]));
          for (int64_t n = 0; n < N; ++n) Cs[size_t(t * N + n)] = decay * Cg[t * ldc + n];
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(Lc), int(P), int(N), 1.0f, Cs.data(), int(N), sh,
                    int(N), 1.0f, yh, int(ldy));
        const float Dh = p.D[h];
        const double a_last = a[size_t(Lc - 1)];
        for (int64_t t = 0; t < Lc; ++t) {
          const float* xt = xh + t * ldx;
          float* yt = yh + t * ldy;
          const float wt = std::exp(float(a_last - a[size_t(t)])) * dt[size_t((c0 + t) * H + h)];
          for (int64_t q = 0; q < P; ++q) {
            yt[q] += Dh * xt[q];
            Xw[size_t(t * P + q)] = wt * xt[q];
          }
        }
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(P), int(N), int(Lc), 1.0f, Xw.data(), int(P), Bg,
                    int(ldb), std::exp(float(a_last)), sh, int(N));
      }
    }
  }
}

void ssd_step(const SsdParams& p, const float* x, int64_t ldx, const float* B, int64_t ldb, const float* C,
              int64_t ldc, const float* dt_raw, int64_t lddt, float* y, int64_t ldy, float* states,
              const int64_t* slots, int64_t nb) {
  const int64_t H = p.nheads, P = p.headdim, N = p.d_state, heads_per_group = H / p.ngroups;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < nb; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / heads_per_group;
      const float dt = dt_activation(dt_raw[b * lddt + h], p.dt_bias[h], p.dt_min, p.dt_max);
      const float decay = std::exp(dt * -std::exp(p.A_log[h]));
      const float* Bb = B + b * ldb + g * N;
      const float* Cb = C + b * ldc + g * N;
      const float* xb = x + b * ldx + h * P;
      float* yb = y + b * ldy + h * P;
      float* s = states + (slots[b] * H + h) * P * N;
      for (int64_t q = 0; q < P; ++q) {
        float* sq = s + q * N;
        const float dx = dt * xb[q];
        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
        for (int64_t n = 0; n < N; ++n) {
          sq[n] = sq[n] * decay + dx * Bb[n];
          acc += sq[n] * Cb[n];
        }
        yb[q] = acc + p.D[h] * xb[q];
      }
    }
  }
}

}  // namespace mamba2::cpu
