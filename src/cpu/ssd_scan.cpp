// Chunked SSD (Mamba-2 paper §6) on the CPU. Per chunk of Q tokens and head h of group g:
//   a[t]   = Σ_{s≤t in chunk} dt[s]·A                        (double: differences stay exact)
//   Y      = (CBᵀ ∘ exp(a[t]-a[s]) ∘ dt[s], s ≤ t) @ X       intra-chunk, masked matmul
//   Y[t]  += exp(a[t]) · C[t] @ stateᵀ                       contribution of earlier chunks
//   Y     += D·X
//   state  = exp(a[Q-1]) · state + (X ∘ exp(a[Q-1]-a[s])·dt[s])ᵀ @ B
// Every exponent is a difference a[t]-a[s] with s ≤ t, or a[t] itself, hence ≤ 0.
// Heads run in parallel inside a chunk; chunks run in order because the state passes between them.
#include <cblas.h>
#include <omp.h>

#include <cmath>
#include <vector>

#include "cpu/common.h"
#include "cpu/kernels.h"

namespace mamba2::cpu {

namespace {

// The masked matmul is lower block-triangular: row block i only needs column blocks ≤ i.
constexpr int64_t kRowBlock = 64;

struct HeadScratch {
  std::vector<double> a;  // (Q) in-chunk cumulative dt·A
  std::vector<float> dt;  // (Q) this head's dt
  std::vector<float> diff;
  std::vector<float> M;   // (Q, Q)
  std::vector<float> Cs;  // (Q, N) C scaled by exp(a[t])
  std::vector<float> Xw;  // (Q, P) X scaled by exp(a[Q-1]-a[s])·dt[s]
  HeadScratch(int64_t Q, int64_t N, int64_t P)
      : a(size_t(Q)), dt(size_t(Q)), diff(size_t(Q)), M(size_t(Q * Q)), Cs(size_t(Q * N)), Xw(size_t(Q * P)) {}
};

}  // namespace

void ssd_scan_forward(const SsdParams& p, const float* x, int64_t ldx, const float* B, int64_t ldb,
                      const float* C, int64_t ldc, const float* dt_raw, int64_t lddt, float* y, int64_t ldy,
                      float* state, int64_t L, int64_t chunk_size) {
  const int64_t H = p.nheads, P = p.headdim, G = p.ngroups, N = p.d_state;
  const int64_t Q = std::min(chunk_size, L);
  const int64_t heads_per_group = H / G;

  std::vector<float> CB(size_t(G * Q * Q));  // (G, Lc, Lc) for the current chunk
  std::vector<HeadScratch> scratch;
  for (int i = 0; i < omp_get_max_threads(); ++i) scratch.emplace_back(Q, N, P);

  for (int64_t c0 = 0; c0 < L; c0 += Q) {
    const int64_t Lc = std::min(Q, L - c0);
    for (int64_t g = 0; g < G; ++g)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(Lc), int(Lc), int(N), 1.0f, C + c0 * ldc + g * N,
                  int(ldc), B + c0 * ldb + g * N, int(ldb), 0.0f, CB.data() + g * Q * Q, int(Lc));

#pragma omp parallel for schedule(static)
    for (int64_t h = 0; h < H; ++h) {
      HeadScratch& s = scratch[size_t(omp_get_thread_num())];
      const int64_t g = h / heads_per_group;
      const double A = -std::exp(double(p.A_log[h]));
      double acc = 0.0;
      for (int64_t t = 0; t < Lc; ++t) {
        s.dt[size_t(t)] = dt_activation(dt_raw[(c0 + t) * lddt + h], p.dt_bias[h], p.dt_min, p.dt_max);
        acc += double(s.dt[size_t(t)]) * A;
        s.a[size_t(t)] = acc;
      }
      const float* cb = CB.data() + g * Q * Q;
      const double* a = s.a.data();
      const float* dt = s.dt.data();
      for (int64_t t = 0; t < Lc; ++t) {
        float* row = s.M.data() + t * Lc;
        const float* cbt = cb + t * Lc;
        const double at = a[t];
        float* diff = s.diff.data();
#pragma omp simd
        for (int64_t j = 0; j <= t; ++j) diff[j] = float(at - a[j]);
#pragma omp simd
        for (int64_t j = 0; j <= t; ++j) row[j] = cbt[j] * exp_nonpos(diff[j]) * dt[j];
        const int64_t block_end = std::min(Lc, (t / kRowBlock + 1) * kRowBlock);
        for (int64_t j = t + 1; j < block_end; ++j) row[j] = 0.0f;
      }
      const float* xh = x + c0 * ldx + h * P;
      float* yh = y + c0 * ldy + h * P;
      float* sh = state + h * P * N;
      const float* Cg = C + c0 * ldc + g * N;
      const float* Bg = B + c0 * ldb + g * N;
      for (int64_t r0 = 0; r0 < Lc; r0 += kRowBlock) {
        const int64_t rows = std::min(kRowBlock, Lc - r0), cols = std::min(Lc, r0 + kRowBlock);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rows), int(P), int(cols), 1.0f,
                    s.M.data() + r0 * Lc, int(Lc), xh, int(ldx), 0.0f, yh + r0 * ldy, int(ldy));
      }
      for (int64_t t = 0; t < Lc; ++t) {
        const float decay = exp_nonpos(float(a[t]));
        const float* ct = Cg + t * ldc;
        float* cs = s.Cs.data() + t * N;
#pragma omp simd
        for (int64_t n = 0; n < N; ++n) cs[n] = decay * ct[n];
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(Lc), int(P), int(N), 1.0f, s.Cs.data(), int(N), sh,
                  int(N), 1.0f, yh, int(ldy));
      const float Dh = p.D[h];
      const double a_last = a[Lc - 1];
      for (int64_t t = 0; t < Lc; ++t) {
        const float* xt = xh + t * ldx;
        float* yt = yh + t * ldy;
        float* xw = s.Xw.data() + t * P;
        const float wt = exp_nonpos(float(a_last - a[t])) * dt[t];
#pragma omp simd
        for (int64_t q = 0; q < P; ++q) {
          yt[q] += Dh * xt[q];
          xw[q] = wt * xt[q];
        }
      }
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(P), int(N), int(Lc), 1.0f, s.Xw.data(), int(P), Bg,
                  int(ldb), exp_nonpos(float(a_last)), sh, int(N));
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
