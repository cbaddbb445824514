// CPU kernels: plain pointers and named dimensions. Matrices are row-major; `ld*` is the row
// stride in elements, so a kernel can read a column slice of a wider buffer (z | xBC | dt of
// in_proj's output) without copying. Front ends in src/ops check shapes before calling these.
// Threads: OpenMP inside each kernel; BLAS calls made inside a parallel region run on one thread.
//
// The kernels training needs are templates over the scalar type T, instantiated for float (the
// engine) and double (the gradient checks); the decode-only kernels are float. Each *_backward
// sits next to its forward in the file of the same stem: parameter gradients ACCUMULATE (+=),
// activation gradients OVERWRITE.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace mamba2::cpu {

// out[t] = table[ids[t]]                                   table (vocab, d), out (n, d)
template <class T>
void embedding_forward(const T* table, int64_t d, const int32_t* ids, int64_t n, T* out);
// The same from a bf16, Q8_0 or Q4_0 table (rows of d elements in `dtype`), widened exactly.
void embedding_forward_narrow(DType dtype, const void* table, int64_t d, const int32_t* ids, int64_t n, float* out);
// d_table[ids[t]] += d_out[t]                              d_out (n, d), d_table (vocab, d)
template <class T>
void embedding_backward(const int32_t* ids, int64_t n, const T* d_out, T* d_table, int64_t d);

// residual += h (h may be null: residual is then taken as is); out = rmsnorm(residual) * w.
//   residual, h, out (n, d); w (d)
template <class T>
void add_rmsnorm_forward(const T* residual, const T* h, T* sum, const T* w, T* out, int64_t n, int64_t d, T eps);
// residual: the updated residual (after the add); d_out: gradient of out. d_residual: on entry the
// gradient of the updated residual from its later uses, on exit that of the residual before the
// add (which is also that of h). d_w += .
template <class T>
void add_rmsnorm_backward(const T* residual, const T* w, const T* d_out, T* d_residual, T* d_w, int64_t n, int64_t d,
                          T eps);

// out = rmsnorm_per_group(y * silu(z)) * w, groups of d / ngroups channels.
//   y (n, d) ld ldy; z (n, d) ld ldz; out (n, d) ld ldo (may alias y)
template <class T>
void gated_rmsnorm_forward(const T* y, int64_t ldy, const T* z, int64_t ldz, const T* w, T* out, int64_t ldo,
                           int64_t n, int64_t d, int64_t ngroups, T eps);
// d_y, d_z (overwritten; must not overlap d_out) and d_w (+=) from d_out.
template <class T>
void gated_rmsnorm_backward(const T* y, int64_t ldy, const T* z, int64_t ldz, const T* w, const T* d_out,
                            int64_t ldd, T* d_y, int64_t lddy, T* d_z, int64_t lddz, T* d_w, int64_t n, int64_t d,
                            int64_t ngroups, T eps);

// y = x @ Wᵀ                                               x (m, k) ld ldx; W (n, k); y (m, n) ld ldy
// tiled: our blocked GEMM (prefill); every y element one chain of fused multiply-adds over k in
// order, whatever m, the threads or the instruction set (cpu/simd/tile.h). streaming: W read
// once as one sequential stream per row, for a few rows (decode); its order does not depend on
// m either. gemm: BLAS, for training (a row's result may depend on m). tiled and streaming also
// take bf16 weights (uint16_t bits) and Q8_0 or Q4_0 blocks (W's rows k/32 blocks each): the fp32
// arithmetic on the widened or dequantized weights, bit for bit.
void linear_tiled(const float* x, int64_t ldx, const float* W, float* y, int64_t ldy, int64_t m, int64_t n,
                  int64_t k);
void linear_tiled(const float* x, int64_t ldx, const uint16_t* W, float* y, int64_t ldy, int64_t m, int64_t n,
                  int64_t k);
void linear_tiled(const float* x, int64_t ldx, const Q8Block* W, float* y, int64_t ldy, int64_t m, int64_t n,
                  int64_t k);
void linear_tiled(const float* x, int64_t ldx, const Q4Block* W, float* y, int64_t ldy, int64_t m, int64_t n,
                  int64_t k);
// Q8_0 or Q4_0 weights × x's rows quantized to int8 per block of 32 (cpu/simd/q8x8.h: integer dot
// products, the blocks' scales applied in k order). prefill: the GEMM kernel where the instruction
// set has one; the bits are the same either way, and for any m.
void linear_int8(const float* x, int64_t ldx, const Q8Block* W, float* y, int64_t ldy, int64_t m, int64_t n,
                 int64_t k, bool prefill);
void linear_int8(const float* x, int64_t ldx, const Q4Block* W, float* y, int64_t ldy, int64_t m, int64_t n,
                 int64_t k, bool prefill);
// bf16 weights × x's rows rounded to bf16 (cpu/simd/bf16xbf16.h: AVX-512 BF16's vdpbf16ps, fp32
// lanes in an order fixed by k). prefill: the kernel blocked for W in cache; the bits are the
// same either way, and for any m. Only where simd::bf16_kernels(active_isa()) has kernels
// ("[linear]" error elsewhere).
void linear_bf16(const float* x, int64_t ldx, const uint16_t* W, float* y, int64_t ldy, int64_t m, int64_t n,
                 int64_t k, bool prefill);
template <class T>
void linear_gemm(const T* x, int64_t ldx, const T* W, T* y, int64_t ldy, int64_t m, int64_t n, int64_t k);
// y[r, :] += bias for each of the m rows.
void add_bias(float* y, int64_t ldy, const float* bias, int64_t m, int64_t n);
// d_b += Σ_rows d_y, each column summed in row order in double.
void bias_backward(const float* d_y, int64_t ld, int64_t m, int64_t n, float* d_b);
void linear_streaming(const float* x, int64_t ldx, const float* W, float* y, int64_t ldy, int64_t m, int64_t n,
                      int64_t k);
void linear_streaming(const float* x, int64_t ldx, const uint16_t* W, float* y, int64_t ldy, int64_t m, int64_t n,
                      int64_t k);
void linear_streaming(const float* x, int64_t ldx, const Q8Block* W, float* y, int64_t ldy, int64_t m, int64_t n,
                      int64_t k);
void linear_streaming(const float* x, int64_t ldx, const Q4Block* W, float* y, int64_t ldy, int64_t m, int64_t n,
                      int64_t k);
// d_x = d_y @ W (skipped when d_x is null; d_x += with add_dx); d_W += d_yᵀ @ x.
//   d_y (m, n) ld lddy; d_x (m, k) ld lddx
template <class T>
void linear_backward(const T* x, int64_t ldx, const T* W, const T* d_y, int64_t lddy, T* d_x, int64_t lddx, T* d_W,
                     int64_t m, int64_t n, int64_t k, bool add_dx = false);

// out[t, c] = silu(bias[c] + Σ_j w[c, j] · in[t - (K-1) + j, c]), where inputs before t = 0 come
// from `state` (the K-1 inputs that preceded, oldest first; zeros for a fresh sequence);
// state ← the last K-1 inputs of (state, in).
//   in (L, C) ld ldin; w (C, K); bias (C); out (L, C) ld ldo; state (K-1, C)
template <class T>
void causal_conv1d_forward(const T* in, int64_t ldin, const T* w, const T* bias, T* out, int64_t ldo, T* state,
                           int64_t L, int64_t C, int64_t K);
// Gradient of out w.r.t. in (d_in, overwritten), w and bias (+=), for the forward from `state`
// (the K-1 preceding inputs, not modified; null: zeros, a fresh sequence).
//   d_out (L, C) ld lddo; d_in (L, C) ld lddi; d_w (C, K); d_bias (C)
template <class T>
void causal_conv1d_backward(const T* in, int64_t ldin, const T* w, const T* bias, const T* state, const T* d_out,
                            int64_t lddo, T* d_in, int64_t lddi, T* d_w, T* d_bias, int64_t L, int64_t C, int64_t K);

// One token per sequence: out[b] from state[b] and x[b], then state[b] shifts in x[b].
//   x (nb, C) ld ldx; state[b] at states + slot[b] * (K-1) * C; out (nb, C) ld ldo
void causal_conv1d_step(const float* x, int64_t ldx, const float* w, const float* bias, float* out, int64_t ldo,
                        float* states, const int64_t* slots, int64_t nb, int64_t C, int64_t K);

template <class T>
struct SsdParamsT {
  int64_t nheads, headdim, ngroups, d_state;
  const T* dt_bias;  // (nheads)
  const T* A_log;    // (nheads)
  const T* D;        // (nheads)
  T dt_min, dt_max;  // clamp range; (0, inf) when no limit
};
using SsdParams = SsdParamsT<float>;

// Chunked SSD scan of one sequence of L tokens, from `state` (nheads, headdim, d_state), which
// receives the final state. Every exponent is a difference of in-chunk cumulative sums (≤ 0).
//   x (L, nheads·headdim) ld ldx; B, C (L, ngroups·d_state) ld ldb, ldc; dt_raw (L, nheads) ld lddt
//   y (L, nheads·headdim) ld ldy
template <class T>
void ssd_scan_forward(const SsdParamsT<T>& p, const T* x, int64_t ldx, const T* B, int64_t ldb, const T* C,
                      int64_t ldc, const T* dt_raw, int64_t lddt, T* y, int64_t ldy, T* state, int64_t L,
                      int64_t chunk_size);

// Gradients of the chunked scan, chunk by chunk in reverse, carrying the state gradient.
//   Inputs: those of the forward, with state0 the INITIAL state (null: zeros); d_y (L, nheads·headdim);
//   d_state_final (nheads, headdim, d_state), the gradient of the final state (null: zeros).
//   Outputs (overwritten): d_x, d_B, d_C, d_dt_raw (shapes of x, B, C, dt_raw) and d_state0 (null:
//   not wanted). Accumulated: d_dt_bias, d_A_log, d_D (nheads).
template <class T>
struct SsdGradsT {
  T* d_x;  // (L, nheads·headdim) ld lddx
  int64_t lddx;
  T* d_B;  // (L, ngroups·d_state) ld lddb
  int64_t lddb;
  T* d_C;  // (L, ngroups·d_state) ld lddc
  int64_t lddc;
  T* d_dt_raw;  // (L, nheads) ld ldddt
  int64_t ldddt;
  T* d_state0;  // (nheads, headdim, d_state) or null
  T* d_dt_bias;  // (nheads) each
  T* d_A_log;
  T* d_D;
};
template <class T>
void ssd_scan_backward(const SsdParamsT<T>& p, const T* x, int64_t ldx, const T* B, int64_t ldb, const T* C,
                       int64_t ldc, const T* dt_raw, int64_t lddt, const T* state0, const T* d_y, int64_t lddy,
                       const T* d_state_final, const SsdGradsT<T>& g, int64_t L, int64_t chunk_size);

// One token per sequence (recurrent decode); state[b] at states + slot[b] · nheads·headdim·d_state.
void ssd_step(const SsdParams& p, const float* x, int64_t ldx, const float* B, int64_t ldb, const float* C,
              int64_t ldc, const float* dt_raw, int64_t lddt, float* y, int64_t ldy, float* states,
              const int64_t* slots, int64_t nb);

// Softmax cross-entropy of n rows of V logits against targets (each in [0, V)), row by row with
// the max subtracted and the exp-sum in double. Returns Σ_rows (logsumexp - logit[target]); when
// d_logits is not null it receives scale · (softmax - onehot(target)) (it may alias logits).
//   logits (n, V) ld ldl; d_logits (n, V) ld lddl
template <class T>
double cross_entropy(const T* logits, int64_t ldl, const int32_t* targets, int64_t n, int64_t V, T* d_logits,
                     int64_t lddl, T scale);

// AdamW (torch.optim.AdamW): the coefficients of one step, computed by the caller in double.
// Every element: decoupled weight decay p·decay, the moment updates from g = grad·grad_scale
// (clipping and accumulation weights folded in), then p −= step_size · m / (sqrt(v)·inv_sqrt_bc2 + eps).
template <class T>
struct AdamWScalars {
  T beta1, one_minus_beta1, beta2, one_minus_beta2, eps;
  T decay;         // 1 − lr·weight_decay
  T step_size;     // lr / (1 − β1^step)
  T inv_sqrt_bc2;  // 1 / sqrt(1 − β2^step)
  T grad_scale;
};
//   param, m, v (n) updated in place; grad (n)
template <class T>
void adamw_step(T* param, const T* grad, T* m, T* v, int64_t n, const AdamWScalars<T>& s);
// Σ x² in double, in fixed blocks summed in order (the same result for any thread count).
template <class T>
double sum_squares(const T* x, int64_t n);
// x ← s·x (the weighting of accumulated micro-batch gradients)
template <class T>
void scale_inplace(T* x, int64_t n, T s);

// dst (rows, cols) ld ldd in `dtype` (F32, BF16 or F16) = src (rows, cols) ld lds, rounded to nearest even.
void cast_rows(const float* src, int64_t lds, void* dst, DType dtype, int64_t ldd, int64_t rows, int64_t cols);

// out[r] = the index of the largest of x[r, 0..cols) (the first of equal ones).   x (n, ld)
void argmax_rows(const float* x, int64_t ld, int64_t n, int64_t cols, int32_t* out);

// Row r's columns c < cols with x[r, c] / temperature[r] ≥ the k[r]-th largest of those quotients
// (ties kept), in column order: their ids and values x[r, c] at ids/values + r·cap, their number in
// counts[r], or -1 when more than cap (ids and values of the row then unspecified).
//   x (n, ld); k (n) in [1, cols]; temperature (n) > 0; ids, values (n, cap); counts (n)
void top_k_rows(const float* x, int64_t ld, int64_t n, int64_t cols, const int32_t* k, const float* temperature,
                int64_t cap, int32_t* ids, float* values, int32_t* counts);

// The Mamba-1 selective scan (ops::selective_scan). A_log, A_imag (null: real) (channels, N);
// D, dt_bias (channels). z may be null (no gate). float for inference; double too for the
// gradient checks.
template <class T>
struct SelectiveScanParamsT {
  int64_t channels, d_state;
  const T *A_log, *A_imag, *D, *dt_bias;
};
using SelectiveScanParams = SelectiveScanParamsT<float>;
// One sequence of L tokens from `state` (channels·N values, complex 2N), left there.
template <class T>
void selective_scan_forward(const SelectiveScanParamsT<T>& p, const T* x, int64_t ldx, const T* dt, int64_t lddt,
                            const T* B, int64_t ldb, const T* C, int64_t ldc, const T* z, int64_t ldz, T* y,
                            int64_t ldy, T* state, int64_t L);
// The sequences of a packed batch: sequence s's rows [starts[s], starts[s+1]) (of every operand),
// from and back to its state at states + slots[s]·channels·(N or 2N). The same bits as
// selective_scan_forward on each sequence alone.
void selective_scan_prefill(const SelectiveScanParams& p, const float* x, int64_t ldx, const float* dt, int64_t lddt,
                            const float* B, int64_t ldb, const float* C, int64_t ldc, const float* z, int64_t ldz,
                            float* y, int64_t ldy, float* states, const int64_t* starts, const int64_t* slots,
                            int64_t count);
// One token for each of nb sequences, row b's state at states + slots[b]·(channels·N or ·2N).
void selective_scan_step(const SelectiveScanParams& p, const float* x, int64_t ldx, const float* dt, int64_t lddt,
                         const float* B, int64_t ldb, const float* C, int64_t ldc, const float* z, int64_t ldz,
                         float* y, int64_t ldy, float* states, const int64_t* slots, int64_t nb);
// The backward of one sequence: activation gradients overwritten (d_z only when z is given, d_state0
// when not null), parameter gradients accumulated.
template <class T>
struct SelectiveScanGradsT {
  T* d_x; int64_t lddx;
  T* d_dt; int64_t lddt;
  T* d_B; int64_t lddb;
  T* d_C; int64_t lddc;
  T* d_z; int64_t lddz;
  T* d_state0;
  T *d_A_log, *d_A_imag, *d_D, *d_dt_bias;
};
// state0 null: zeros; d_state_final null: zeros.
template <class T>
void selective_scan_backward(const SelectiveScanParamsT<T>& p, const T* x, int64_t ldx, const T* dt, int64_t lddt,
                             const T* B, int64_t ldb, const T* C, int64_t ldc, const T* z, int64_t ldz,
                             const T* state0, const T* d_y, int64_t lddy, const T* d_state_final,
                             const SelectiveScanGradsT<T>& g, int64_t L);

}  // namespace mamba2::cpu
