// Chunked SSD (Mamba-2 paper §6) on the CPU: forward and backward. Per chunk of Q tokens and
// head h of group g:
//   a[t]   = Σ_{s≤t in chunk} dt[s]·A                        (double: differences stay exact)
//   Y      = (CBᵀ ∘ exp(a[t]-a[s]) ∘ dt[s], s ≤ t) @ X       intra-chunk, masked matmul
//   Y[t]  += exp(a[t]) · C[t] @ stateᵀ                       contribution of earlier chunks
//   Y     += D·X
//   state  = exp(a[Q-1]) · state + (X ∘ exp(a[Q-1]-a[s])·dt[s])ᵀ @ B
// Every exponent is a difference a[t]-a[s] with s ≤ t, or a[t] itself, hence ≤ 0.
// Heads run in parallel inside a chunk; chunks run in order because the state passes between them.
//
// Backward: the chunk-start states S0 are recomputed first (the state update alone), then the
// chunks are visited in reverse carrying dS, the gradient of the chunk's end state. With
// E[t,s] = exp(a[t]-a[s]), M = CB∘E∘dt[s] (s ≤ t) and w[s] = exp(a[Q-1]-a[s])·dt[s]:
//   dM  = dY Xᵀ (s ≤ t)         dX = Mᵀ dY + D·dY + w[s]·(dS B[s])       dD += Σ dY∘X
//   dCB = dM∘E∘dt[s]            dC = dCB B + (exp(a[t])·dY) S0           dB = dCBᵀ C + (w[s]·X) dS
//   dS0 = exp(a[Q-1])·dS + (exp(a[t])·dY)ᵀ C                            (the previous chunk's dS)
//   da[t] = Σ_s (dM∘M)[t,s] − Σ_t' (dM∘M)[t',t] + exp(a[t])·dY[t]·(S0 C[t]) + the parts of w and
//           exp(a[Q-1]) through the end state
//   ddt[s] = Σ_t (dM∘E∘CB)[t,s] + (X[s]·dS B[s])·exp(a[Q-1]-a[s]) + A·Σ_{t≥s} da[t]  (a = cumsum dt·A)
//   dA = Σ_s dt[s]·Σ_{t≥s} da[t], dA_log += dA·A; d_dt_raw = ddt·softplus'(v), 0 where the
//   dt_limit clamp binds; d_dt_bias += Σ d_dt_raw.
// A group's dB and dC sum over its heads: one GEMM on the heads' summed dCB, and the state terms
// as one GEMM whose inner dimension runs over the group's (head, headdim) rows.
// Activation gradients (d_x, d_B, d_C, d_dt_raw, d_state0) are overwritten; parameter gradients
// (d_dt_bias, d_A_log, d_D) accumulate (+=). Sums over tokens run in fp32 BLAS or wider.
#include <omp.h>

#include <cmath>
#include <vector>

#include "cpu/blas.h"
#include "cpu/common.h"
#include "cpu/kernels.h"

namespace mamba2::cpu {

namespace {

// The masked matmul is lower block-triangular: row block i only needs column blocks ≤ i.
constexpr int64_t kRowBlock = 64;

template <class T>
struct HeadScratch {
  std::vector<double> a;  // (Q) in-chunk cumulative dt·A
  std::vector<T> dt;      // (Q) this head's dt
  std::vector<T> diff;
  std::vector<T> M;   // (Q, Q)
  std::vector<T> Cs;  // (Q, N) C scaled by exp(a[t])
  std::vector<T> Xw;  // (Q, P) X scaled by exp(a[Q-1]-a[s])·dt[s]
  HeadScratch(int64_t Q, int64_t N, int64_t P)
      : a(size_t(Q)), dt(size_t(Q)), diff(size_t(Q)), M(size_t(Q * Q)), Cs(size_t(Q * N)), Xw(size_t(Q * P)) {}
};

}  // namespace

template <class T>
void ssd_scan_forward(const SsdParamsT<T>& p, const T* x, int64_t ldx, const T* B, int64_t ldb, const T* C,
                      int64_t ldc, const T* dt_raw, int64_t lddt, T* y, int64_t ldy, T* state, int64_t L,
                      int64_t chunk_size) {
  const int64_t H = p.nheads, P = p.headdim, G = p.ngroups, N = p.d_state;
  const int64_t Q = std::min(chunk_size, L);
  const int64_t heads_per_group = H / G;

  std::vector<T> CB(size_t(G * Q * Q));  // (G, Lc, Lc) for the current chunk
  std::vector<HeadScratch<T>> scratch;
  for (int i = 0; i < omp_get_max_threads(); ++i) scratch.emplace_back(Q, N, P);

  for (int64_t c0 = 0; c0 < L; c0 += Q) {
    const int64_t Lc = std::min(Q, L - c0);
    for (int64_t g = 0; g < G; ++g)
      gemm(CblasNoTrans, CblasTrans, Lc, Lc, N, T(1), C + c0 * ldc + g * N, ldc, B + c0 * ldb + g * N, ldb, T(0),
           CB.data() + g * Q * Q, Lc);

#pragma omp parallel for schedule(static)
    for (int64_t h = 0; h < H; ++h) {
      HeadScratch<T>& s = scratch[size_t(omp_get_thread_num())];
      const int64_t g = h / heads_per_group;
      const double A = -std::exp(double(p.A_log[h]));
      double acc = 0.0;
      for (int64_t t = 0; t < Lc; ++t) {
        s.dt[size_t(t)] = dt_activation(dt_raw[(c0 + t) * lddt + h], p.dt_bias[h], p.dt_min, p.dt_max);
        acc += double(s.dt[size_t(t)]) * A;
        s.a[size_t(t)] = acc;
      }
      const T* cb = CB.data() + g * Q * Q;
      const double* a = s.a.data();
      const T* dt = s.dt.data();
      for (int64_t t = 0; t < Lc; ++t) {
        T* row = s.M.data() + t * Lc;
        const T* cbt = cb + t * Lc;
        const double at = a[t];
        T* diff = s.diff.data();
#pragma omp simd
        for (int64_t j = 0; j <= t; ++j) diff[j] = T(at - a[j]);
#pragma omp simd
        for (int64_t j = 0; j <= t; ++j) row[j] = cbt[j] * exp_nonpos(diff[j]) * dt[j];
        const int64_t block_end = std::min(Lc, (t / kRowBlock + 1) * kRowBlock);
        for (int64_t j = t + 1; j < block_end; ++j) row[j] = T(0);
      }
      const T* xh = x + c0 * ldx + h * P;
      T* yh = y + c0 * ldy + h * P;
      T* sh = state + h * P * N;
      const T* Cg = C + c0 * ldc + g * N;
      const T* Bg = B + c0 * ldb + g * N;
      for (int64_t r0 = 0; r0 < Lc; r0 += kRowBlock) {
        const int64_t rows = std::min(kRowBlock, Lc - r0), cols = std::min(Lc, r0 + kRowBlock);
        gemm(CblasNoTrans, CblasNoTrans, rows, P, cols, T(1), s.M.data() + r0 * Lc, Lc, xh, ldx, T(0), yh + r0 * ldy,
             ldy);
      }
      for (int64_t t = 0; t < Lc; ++t) {
        const T decay = exp_nonpos(T(a[t]));
        const T* ct = Cg + t * ldc;
        T* cs = s.Cs.data() + t * N;
#pragma omp simd
        for (int64_t n = 0; n < N; ++n) cs[n] = decay * ct[n];
      }
      gemm(CblasNoTrans, CblasTrans, Lc, P, N, T(1), s.Cs.data(), N, sh, N, T(1), yh, ldy);
      const T Dh = p.D[h];
      const double a_last = a[Lc - 1];
      for (int64_t t = 0; t < Lc; ++t) {
        const T* xt = xh + t * ldx;
        T* yt = yh + t * ldy;
        T* xw = s.Xw.data() + t * P;
        const T wt = exp_nonpos(T(a_last - a[t])) * dt[t];
#pragma omp simd
        for (int64_t q = 0; q < P; ++q) {
          yt[q] += Dh * xt[q];
          xw[q] = wt * xt[q];
        }
      }
      gemm(CblasTrans, CblasNoTrans, P, N, Lc, T(1), s.Xw.data(), P, Bg, ldb, exp_nonpos(T(a_last)), sh, N);
    }
  }
}

namespace {

// dt (after softplus and the clamp) and a = in-chunk cumsum of dt·A of head h over the chunk's
// Lc tokens starting at c0; returns A.
template <class T>
double chunk_decay(const SsdParamsT<T>& p, const T* dt_raw, int64_t lddt, int64_t h, int64_t c0, int64_t Lc, T* dt,
                   double* a) {
  const double A = -std::exp(double(p.A_log[h]));
  double acc = 0.0;
  for (int64_t t = 0; t < Lc; ++t) {
    dt[t] = dt_activation(dt_raw[(c0 + t) * lddt + h], p.dt_bias[h], p.dt_min, p.dt_max);
    acc += double(dt[t]) * A;
    a[t] = acc;
  }
  return A;
}

template <class T>
struct HeadGradScratch {
  std::vector<double> a, da, ddt;  // (Q)
  std::vector<T> dt, diff, col_ddt, col_da;  // (Q)
  std::vector<T> M, dM;            // (Q, Q)
  std::vector<T> Z;                // (Q, P)
  HeadGradScratch(int64_t Q, int64_t P)
      : a(size_t(Q)), da(size_t(Q)), ddt(size_t(Q)), dt(size_t(Q)), diff(size_t(Q)), col_ddt(size_t(Q)),
        col_da(size_t(Q)), M(size_t(Q * Q)), dM(size_t(Q * Q)), Z(size_t(Q * P)) {}
};

}  // namespace

template <class T>
void ssd_scan_backward(const SsdParamsT<T>& p, const T* x, int64_t ldx, const T* B, int64_t ldb, const T* C,
                       int64_t ldc, const T* dt_raw, int64_t lddt, const T* state0, const T* d_y, int64_t lddy,
                       const T* d_state_final, const SsdGradsT<T>& gr, int64_t L, int64_t chunk_size) {
  const int64_t H = p.nheads, P = p.headdim, G = p.ngroups, N = p.d_state;
  const int64_t Q = std::min(chunk_size, L), nchunks = (L + Q - 1) / Q;
  const int64_t hpg = H / G, HP = H * P, HPN = H * P * N;
  std::vector<HeadGradScratch<T>> scratch;
  for (int i = 0; i < omp_get_max_threads(); ++i) scratch.emplace_back(Q, P);

  // Chunk-start states, by the forward's state update.
  std::vector<T> states(size_t(nchunks * HPN), T(0));
  if (state0) std::copy_n(state0, HPN, states.data());
  for (int64_t k = 0; k + 1 < nchunks; ++k) {
    const int64_t c0 = k * Q;
    std::copy_n(states.data() + k * HPN, HPN, states.data() + (k + 1) * HPN);
#pragma omp parallel for schedule(static)
    for (int64_t h = 0; h < H; ++h) {
      HeadGradScratch<T>& s = scratch[size_t(omp_get_thread_num())];
      chunk_decay(p, dt_raw, lddt, h, c0, Q, s.dt.data(), s.a.data());
      const double a_last = s.a[size_t(Q - 1)];
      const T* xh = x + c0 * ldx + h * P;
      for (int64_t t = 0; t < Q; ++t) {
        const T wt = exp_nonpos(T(a_last - s.a[size_t(t)])) * s.dt[size_t(t)];
        T* xw = s.Z.data() + t * P;
#pragma omp simd
        for (int64_t q = 0; q < P; ++q) xw[q] = wt * xh[t * ldx + q];
      }
      gemm(CblasTrans, CblasNoTrans, P, N, Q, T(1), s.Z.data(), P, B + c0 * ldb + (h / hpg) * N, ldb,
           exp_nonpos(T(a_last)), states.data() + (k + 1) * HPN + h * P * N, N);
    }
  }

  std::vector<T> dS_end(static_cast<size_t>(HPN), T(0)), dS_start(static_cast<size_t>(HPN));
  if (d_state_final) std::copy_n(d_state_final, HPN, dS_end.data());
  std::vector<T> CB(size_t(G * Q * Q)), dCB(size_t(H * Q * Q));
  std::vector<T> DYs(size_t(Q * HP)), XW(size_t(Q * HP));  // (Lc, H·P): exp(a[t])·dY, w[s]·X

  for (int64_t k = nchunks - 1; k >= 0; --k) {
    const int64_t c0 = k * Q, Lc = std::min(Q, L - c0);
    const T* S0 = states.data() + k * HPN;
    for (int64_t g = 0; g < G; ++g)
      gemm(CblasNoTrans, CblasTrans, Lc, Lc, N, T(1), C + c0 * ldc + g * N, ldc, B + c0 * ldb + g * N, ldb, T(0),
           CB.data() + g * Q * Q, Lc);

#pragma omp parallel for schedule(static)
    for (int64_t h = 0; h < H; ++h) {
      HeadGradScratch<T>& s = scratch[size_t(omp_get_thread_num())];
      const int64_t g = h / hpg;
      T* dt = s.dt.data();
      double* a = s.a.data();
      double* da = s.da.data();
      double* ddt = s.ddt.data();
      const double A = chunk_decay(p, dt_raw, lddt, h, c0, Lc, dt, a);
      std::fill_n(da, Lc, 0.0);
      std::fill_n(ddt, Lc, 0.0);
      const T* cb = CB.data() + g * Q * Q;
      const T* xh = x + c0 * ldx + h * P;
      const T* dyh = d_y + c0 * lddy + h * P;
      const T* Cg = C + c0 * ldc + g * N;
      const T* Bg = B + c0 * ldb + g * N;
      T* dxh = gr.d_x + c0 * gr.lddx + h * P;
      const T* S0h = S0 + h * P * N;
      const T* dSe = dS_end.data() + h * P * N;
      T* dSs = dS_start.data() + h * P * N;
      T* E = dCB.data() + h * Q * Q;  // the decay matrix, then this head's dCB

      // M (lower triangle, zeros above) and E.
      T* M = s.M.data();
      for (int64_t t = 0; t < Lc; ++t) {
        T* diff = s.diff.data();
        const double at = a[t];
#pragma omp simd
        for (int64_t j = 0; j <= t; ++j) diff[j] = T(at - a[j]);
#pragma omp simd
        for (int64_t j = 0; j <= t; ++j) {
          const T e = exp_nonpos(diff[j]);
          E[t * Lc + j] = e;
          M[t * Lc + j] = cb[t * Lc + j] * e * dt[j];
        }
        std::fill(M + t * Lc + t + 1, M + (t + 1) * Lc, T(0));
        std::fill(E + t * Lc + t + 1, E + (t + 1) * Lc, T(0));
      }

      // Intra-chunk term: dM = dY Xᵀ, then dCB, and the dt and a parts through E and dt[s].
      T* dM = s.dM.data();
      gemm(CblasNoTrans, CblasTrans, Lc, Lc, P, T(1), dyh, lddy, xh, ldx, T(0), dM, Lc);
      T* col_ddt = s.col_ddt.data();
      T* col_da = s.col_da.data();
      std::fill_n(col_ddt, Lc, T(0));
      std::fill_n(col_da, Lc, T(0));
      for (int64_t t = 0; t < Lc; ++t) {
        T row = 0;
        const T* cbt = cb + t * Lc;
        const T* dMt = dM + t * Lc;
        T* Et = E + t * Lc;
#pragma omp simd reduction(+ : row)
        for (int64_t j = 0; j <= t; ++j) {
          const T ge = dMt[j] * Et[j];
          const T c = ge * cbt[j];
          const T m = c * dt[j];  // dM∘M
          col_ddt[j] += c;
          col_da[j] += m;
          row += m;
          Et[j] = ge * dt[j];
        }
        da[t] += double(row);
      }
      for (int64_t j = 0; j < Lc; ++j) {
        da[j] -= double(col_da[j]);
        ddt[j] += double(col_ddt[j]);
      }

      // dX = Mᵀ dY + D·dY; dD.
      gemm(CblasTrans, CblasNoTrans, Lc, P, Lc, T(1), M, Lc, dyh, lddy, T(0), dxh, gr.lddx);
      const T Dh = p.D[h];
      double dD = 0.0;
      for (int64_t t = 0; t < Lc; ++t) {
        T row = 0;
        T* dxt = dxh + t * gr.lddx;
        const T* dyt = dyh + t * lddy;
        const T* xt = xh + t * ldx;
#pragma omp simd reduction(+ : row)
        for (int64_t q = 0; q < P; ++q) {
          dxt[q] += Dh * dyt[q];
          row += dyt[q] * xt[q];
        }
        dD += double(row);
      }

      // Earlier chunks' term exp(a[t])·S0 C[t]: its part of da, and exp(a[t])·dY for dC and dS0.
      T* Z = s.Z.data();
      gemm(CblasNoTrans, CblasTrans, Lc, P, N, T(1), Cg, ldc, S0h, N, T(0), Z, P);
      for (int64_t t = 0; t < Lc; ++t) {
        const T e = exp_nonpos(T(a[t]));
        const T* dyt = dyh + t * lddy;
        const T* zt = Z + t * P;
        T* dys = DYs.data() + t * HP + h * P;
        T dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int64_t q = 0; q < P; ++q) {
          dot += dyt[q] * zt[q];
          dys[q] = e * dyt[q];
        }
        da[t] += double(e * dot);
      }
      const double a_last = a[Lc - 1];
      const T e_last = exp_nonpos(T(a_last));
      T sdot = 0;
#pragma omp simd reduction(+ : sdot)
      for (int64_t i = 0; i < P * N; ++i) {
        sdot += dSe[i] * S0h[i];
        dSs[i] = e_last * dSe[i];
      }
      double da_last = double(e_last * sdot);
      gemm(CblasTrans, CblasNoTrans, P, N, Lc, T(1), DYs.data() + h * P, HP, Cg, ldc, T(1), dSs, N);

      // The end state's term w[s]·X[s] ⊗ B[s]: dX, w's parts of dt and a, and w·X for dB.
      gemm(CblasNoTrans, CblasTrans, Lc, P, N, T(1), Bg, ldb, dSe, N, T(0), Z, P);
      for (int64_t t = 0; t < Lc; ++t) {
        const T el = exp_nonpos(T(a_last - a[t]));
        const T wt = el * dt[t];
        const T* zt = Z + t * P;
        const T* xt = xh + t * ldx;
        T* dxt = dxh + t * gr.lddx;
        T* xw = XW.data() + t * HP + h * P;
        T dw = 0;
#pragma omp simd reduction(+ : dw)
        for (int64_t q = 0; q < P; ++q) {
          dxt[q] += wt * zt[q];
          dw += xt[q] * zt[q];
          xw[q] = wt * xt[q];
        }
        ddt[t] += double(dw * el);
        const double gw = double(dw * wt);
        da_last += gw;
        da[t] -= gw;
      }
      da[Lc - 1] += da_last;

      // a is a cumsum of dt·A: reverse cumsum of da, then through the dt activation.
      double r = 0.0, dA = 0.0, dbias = 0.0;
      for (int64_t t = Lc - 1; t >= 0; --t) {
        r += da[t];
        ddt[t] += A * r;
        dA += double(dt[t]) * r;
      }
      for (int64_t t = 0; t < Lc; ++t) {
        const T g_raw =
            T(ddt[t]) * dt_activation_grad(dt_raw[(c0 + t) * lddt + h], p.dt_bias[h], p.dt_min, p.dt_max);
        gr.d_dt_raw[(c0 + t) * gr.ldddt + h] = g_raw;
        dbias += double(g_raw);
      }
      gr.d_dt_bias[h] += T(dbias);
      gr.d_A_log[h] += T(dA * A);
      gr.d_D[h] += T(dD);
    }

    // Per group: dC and dB from the heads' summed dCB and the stacked state terms.
    if (hpg > 1) {
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < G * Lc; ++i) {
        const int64_t g = i / Lc, t = i % Lc;
        T* dst = dCB.data() + g * hpg * Q * Q + t * Lc;
        for (int64_t hh = 1; hh < hpg; ++hh) {
          const T* src = dCB.data() + (g * hpg + hh) * Q * Q + t * Lc;
#pragma omp simd
          for (int64_t j = 0; j <= t; ++j) dst[j] += src[j];
        }
      }
    }
    for (int64_t g = 0; g < G; ++g) {
      const T* dcb = dCB.data() + g * hpg * Q * Q;
      const T* Bg = B + c0 * ldb + g * N;
      const T* Cg = C + c0 * ldc + g * N;
      T* dCg = gr.d_C + c0 * gr.lddc + g * N;
      T* dBg = gr.d_B + c0 * gr.lddb + g * N;
      gemm(CblasNoTrans, CblasNoTrans, Lc, N, Lc, T(1), dcb, Lc, Bg, ldb, T(0), dCg, gr.lddc);
      gemm(CblasNoTrans, CblasNoTrans, Lc, N, hpg * P, T(1), DYs.data() + g * hpg * P, HP, S0 + g * hpg * P * N, N,
           T(1), dCg, gr.lddc);
      gemm(CblasTrans, CblasNoTrans, Lc, N, Lc, T(1), dcb, Lc, Cg, ldc, T(0), dBg, gr.lddb);
      gemm(CblasNoTrans, CblasNoTrans, Lc, N, hpg * P, T(1), XW.data() + g * hpg * P, HP,
           dS_end.data() + g * hpg * P * N, N, T(1), dBg, gr.lddb);
    }
    dS_end.swap(dS_start);
  }
  if (gr.d_state0) std::copy_n(dS_end.data(), HPN, gr.d_state0);
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

template void ssd_scan_forward<float>(const SsdParamsT<float>&, const float*, int64_t, const float*, int64_t,
                                      const float*, int64_t, const float*, int64_t, float*, int64_t, float*, int64_t,
                                      int64_t);
template void ssd_scan_forward<double>(const SsdParamsT<double>&, const double*, int64_t, const double*, int64_t,
                                       const double*, int64_t, const double*, int64_t, double*, int64_t, double*,
                                       int64_t, int64_t);
template void ssd_scan_backward<float>(const SsdParamsT<float>&, const float*, int64_t, const float*, int64_t,
                                       const float*, int64_t, const float*, int64_t, const float*, const float*,
                                       int64_t, const float*, const SsdGradsT<float>&, int64_t, int64_t);
template void ssd_scan_backward<double>(const SsdParamsT<double>&, const double*, int64_t, const double*, int64_t,
                                        const double*, int64_t, const double*, int64_t, const double*, const double*,
                                        int64_t, const double*, const SsdGradsT<double>&, int64_t, int64_t);

}  // namespace mamba2::cpu
