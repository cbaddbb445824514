// CPU kernels: plain pointers and named dimensions. Matrices are row-major; `ld*` is the row
// stride in elements, so a kernel can read a column slice of a wider buffer (z | xBC | dt of
// in_proj's output) without copying. Front ends in src/ops check shapes before calling these.
// Threads: OpenMP inside each kernel; BLAS calls made inside a parallel region run on one thread.
#pragma once
#include <cstdint>

namespace mamba2::cpu {

// out[t] = table[ids[t]]                                   table (vocab, d), out (n, d)
void embedding_forward(const float* table, int64_t d, const int32_t* ids, int64_t n, float* out);

// residual += h (h may be null: residual is then taken as is); out = rmsnorm(residual) * w.
//   residual, h, out (n, d); w (d)
void add_rmsnorm_forward(float* residual, const float* h, const float* w, float* out, int64_t n, int64_t d,
                         float eps);

// out = rmsnorm_per_group(y * silu(z)) * w, groups of d / ngroups channels.
//   y (n, d) ld ldy; z (n, d) ld ldz; out (n, d) ld ldo (may alias y)
void gated_rmsnorm_forward(const float* y, int64_t ldy, const float* z, int64_t ldz, const float* w, float* out,
                           int64_t ldo, int64_t n, int64_t d, int64_t ngroups, float eps);

// y = x @ Wᵀ                                               x (m, k) ld ldx; W (n, k); y (m, n) ld ldy
// gemm: BLAS, for many rows. streaming: W read once as one sequential stream per row, for a few
// rows (decode). Each sums every y element in an order that does not depend on m.
void linear_gemm(const float* x, int64_t ldx, const float* W, float* y, int64_t ldy, int64_t m, int64_t n, int64_t k);
void linear_streaming(const float* x, int64_t ldx, const float* W, float* y, int64_t ldy, int64_t m, int64_t n,
                      int64_t k);

// out[t, c] = silu(bias[c] + Σ_j w[c, j] · in[t - (K-1) + j, c]), where inputs before t = 0 come
// from `state` (the K-1 inputs that preceded, oldest first; zeros for a fresh sequence);
// state ← the last K-1 inputs of (state, in).
//   in (L, C) ld ldin; w (C, K); bias (C); out (L, C) ld ldo; state (K-1, C)
void causal_conv1d_forward(const float* in, int64_t ldin, const float* w, const float* bias, float* out,
                           int64_t ldo, float* state, int64_t L, int64_t C, int64_t K);

// One token per sequence: out[b] from state[b] and x[b], then state[b] shifts in x[b].
//   x (nb, C) ld ldx; state[b] at states + slot[b] * (K-1) * C; out (nb, C) ld ldo
void causal_conv1d_step(const float* x, int64_t ldx, const float* w, const float* bias, float* out, int64_t ldo,
                        float* states, const int64_t* slots, int64_t nb, int64_t C, int64_t K);

struct SsdParams {
  int64_t nheads, headdim, ngroups, d_state;
  const float* dt_bias;  // (nheads)
  const float* A_log;    // (nheads)
  const float* D;        // (nheads)
  float dt_min, dt_max;  // clamp range; (0, inf) when no limit
};

// Chunked SSD scan of one sequence of L tokens, from `state` (nheads, headdim, d_state), which
// receives the final state. Every exponent is a difference of in-chunk cumulative sums (≤ 0).
//   x (L, nheads·headdim) ld ldx; B, C (L, ngroups·d_state) ld ldb, ldc; dt_raw (L, nheads) ld lddt
//   y (L, nheads·headdim) ld ldy
void ssd_scan_forward(const SsdParams& p, const float* x, int64_t ldx, const float* B, int64_t ldb,
                      const float* C, int64_t ldc, const float* dt_raw, int64_t lddt, float* y, int64_t ldy,
                      float* state, int64_t L, int64_t chunk_size);

// One token per sequence (recurrent decode); state[b] at states + slot[b] · nheads·headdim·d_state.
void ssd_step(const SsdParams& p, const float* x, int64_t ldx, const float* B, int64_t ldb, const float* C,
              int64_t ldc, const float* dt_raw, int64_t lddt, float* y, int64_t ldy, float* states,
              const int64_t* slots, int64_t nb);

}  // namespace mamba2::cpu
