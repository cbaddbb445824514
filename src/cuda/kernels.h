// CUDA kernels: the launchers, with plain device pointers and named dimensions, as in
// cpu/kernels.h (row-major, `ld*` row strides in elements). Front ends in src/ops check shapes
// and call these only for tensors on the GPU. Every launch goes to the engine's stream
// (cuda/common.cuh); scratch memory comes from the stream-ordered pool (cuda/runtime.h).
//
// Precision: activations between ops are fp32 (the residual stream, in_proj's output, the conv's
// and the scan's outputs) except the inputs of the projections, which are in the model's compute
// dtype (`DType`: f32, bf16 or f16) like the weights. Every kernel computes and accumulates in fp32;
// conv and SSM states are fp32. No kernel's choice or reduction order depends on the number of
// rows or sequences it is given (batch invariance).
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace mamba2::cuda {

// Sequences packed back to back, as the kernels see them: device arrays built once per forward.
struct PackedSeqs {
  int64_t count = 0;                    // sequences
  int64_t tokens = 0;                   // Σ lengths
  int64_t total_chunks = 0;             // Σ ceil(length / chunk_size)
  const int64_t* starts = nullptr;      // (count + 1) token offsets; starts[count] = the tokens
  const int64_t* chunk_starts = nullptr;  // (count + 1) cumulative chunk counts
  const int64_t* slots = nullptr;       // (count) rows of the state buffers
  // (total_chunks) the chunks ordered by their index within their sequence, then by sequence:
  // every sequence's first chunk, then every second one, ... (the scan's chunks take the state
  // from the chunk before them, and run in this order).
  const int64_t* chunk_order = nullptr;
  int64_t max_length = 0;               // the longest sequence's tokens
};

// Bytes a decode kernel warms into the L2 while it runs (common.cuh, warm_l2): the weights of the
// projection after it. A hint only; no result depends on it. Launchers drop it when it is over a
// quarter of the L2 (common.cuh, fitting).
struct L2Warm {
  const void* ptr = nullptr;
  uint64_t bytes = 0;
};

// out[t] (fp32) = table[ids[t]]                 table (vocab, d) in table_dtype; ids (n) on the GPU
void embedding_forward(const void* table, DType table_dtype, int64_t d, const int32_t* ids, int64_t n, float* out,
                       const L2Warm& warm = {});
// d_table[ids[t]] += d_out[t], each table row's additions in position order (the CPU's bits).
//   ids (n) on the host; d_out (n, d), d_table (vocab, d) fp32
void embedding_backward(const int32_t* ids, int64_t n, const float* d_out, float* d_table, int64_t d);

// sum = residual + h (h may be null; sum may be residual: in place); out = rmsnorm(sum) · w, stored
// in out_dtype.   residual, h, sum (n, d) fp32; w (d) fp32; out (n, d)
void add_rmsnorm_forward(const float* residual, const float* h, float* sum, const float* w, void* out,
                         DType out_dtype, int64_t n, int64_t d, float eps);
// out = rmsnorm per group of d/ngroups channels (y · silu(z)) · w, stored in out_dtype.
//   y (n, d) ld ldy and z (n, d) ld ldz in y_dtype (F32, or out_dtype: mixed-precision training's
//   scan output and in_proj output, rounded); out (n, d) ld ldo
void gated_rmsnorm_forward(const void* y, DType y_dtype, int64_t ldy, const void* z, int64_t ldz, const float* w,
                           void* out, DType out_dtype, int64_t ldo, int64_t n, int64_t d, int64_t ngroups, float eps);
// The backwards, as cpu::add_rmsnorm_backward and cpu::gated_rmsnorm_backward (fp32; d_w +=, the
// weight gradient summed over rows in fixed chunks in double: the same bits every run). d_y in
// dy_dtype and d_z in dz_dtype (F32, or BF16 / F16: rounded once); the gated norm's y, z and
// d_out in y_dtype, F32 or dy_dtype.
void add_rmsnorm_backward(const float* residual, const float* w, const float* d_out, float* d_residual, float* d_w,
                          int64_t n, int64_t d, float eps);
void gated_rmsnorm_backward(const void* y, DType y_dtype, int64_t ldy, const void* z, int64_t ldz, const float* w,
                            const void* d_out, int64_t ldd, void* d_y, DType dy_dtype, int64_t lddy, void* d_z,
                            DType dz_dtype, int64_t lddz, float* d_w, int64_t n, int64_t d, int64_t ngroups,
                            float eps);

// y = x @ Wᵀ, x and W in `dtype`, fp32 accumulation (true fp32 for f32 unless `tf32`: TF32
// tensor cores for an f32 x and W, training's choice for a bf16 / f16 run), y in fp32 or (not
// `decode`) rounded once to `dtype`.
//   x (m, k) ld ldx; W (n, k); y (m, n) ld ldy
// The kernel is chosen once per (n, k, dtype, kind, alignment), never by m, so that a row's bits
// do not depend on the rows beside it. `decode`: our kernels for a few rows (f32 on CUDA cores,
// bf16/f16 on tensor cores); otherwise cuBLASLt's plan chosen for many rows.
void linear_forward(const void* x, int64_t ldx, const void* W, DType dtype, void* y, DType y_dtype, int64_t ldy,
                    int64_t m, int64_t n, int64_t k, bool decode, bool tf32 = false);
// residual (fp32) += x @ Wᵀ by the decode kernels (a decode step's out projection without a norm).
void linear_decode_residual(const void* x, int64_t ldx, const void* W, DType dtype, float* residual, int64_t ldr,
                            int64_t m, int64_t n, int64_t k);
// Training: d_x = d_y @ W (skipped when d_x is null; d_x += with add_dx), d_W += d_yᵀ @ x, x and W in `dtype` (bf16 /
// f16: d_y rounded to it once, unless it comes so), fp32 sums (TF32 products for f32 only with
// `tf32`), cuBLASLt, the same bits every run.
//   d_y (m, n) ld lddy fp32 or `dtype`; d_x (m, k) ld lddx fp32 or (not added) `dtype`, rounded
//   once; d_W (n, k) fp32
void linear_backward(const void* x, int64_t ldx, const void* W, DType dtype, const void* d_y, DType dy_dtype,
                     int64_t lddy, void* d_x, DType dx_dtype, int64_t lddx, float* d_W, int64_t m, int64_t n,
                     int64_t k, bool tf32 = false, bool add_dx = false);

// y += bias per row; d_b += Σ_rows d_y (chunks of kGradRows rows in double, added in order).
//   y, d_y (m, n) ld; bias, d_b (n) fp32
void add_bias(float* y, int64_t ldy, const float* bias, int64_t m, int64_t n);
void bias_backward(const float* d_y, int64_t ld, int64_t m, int64_t n, float* d_b);

// The decode step's fused projections. x = the fp32 rows src normalised on the way in, times
// weight (k), rounded to `dtype`: with `sums`, row r's group g (of `groups` equal column ranges)
// scaled by rsqrt(Σ_{j<per} sums[r·ld + g·per + j] / (k/groups) + eps) — partial sums of squares
// left by the previous kernel (the gated SSD step); without (groups 1: an RMSNorm), the kernel
// sums src² itself from the elements it loads and scales the row's products by rsqrt(Σ/k + eps)
// instead (no wait for a producer). Then y = x Wᵀ (y set), or residual += x Wᵀ (y null).
constexpr int64_t kMaxNormGroups = 16;
struct RowNorm {
  const float* sums;  // null: an RMSNorm whose scale the kernel finds
  int64_t ld, groups, per;
  const float* weight;
  float eps;
};
// conv (C > 0): y's columns [first, first + C) (the in projection's xBC) also take the conv step
// (as causal_conv1d_step: out (m, C) ld ldo, the state of row r at states + slots[r]·(K-1)·C).
// The states are read before the kernel waits for the one before it, as ssd_step's (below).
struct ConvStepArgs {
  int64_t first = 0, C = 0, K = 0;
  const float* w = nullptr;  // (C, K)
  const float* bias = nullptr;
  float* states = nullptr;
  const int64_t* slots = nullptr;
  float* out = nullptr;
  int64_t ldo = 0;
};
void linear_decode_normed(const float* src, int64_t ld, const RowNorm& norm, const void* W, DType dtype, float* y,
                          int64_t ldy, float* residual, int64_t ldr, const ConvStepArgs& conv, const L2Warm& warm,
                          int64_t m, int64_t n, int64_t k);

// Depthwise causal conv + bias + SiLU over packed sequences: sequence i continues from
// states + slots[i]·(K-1)·C (its last K-1 inputs, oldest first) and leaves its own last K-1
// inputs there.   in (T, C) ld ldin in in_dtype (F32, or out_dtype: mixed-precision training's
// in_proj output); w (C, K); bias (C); fp32 sums; out (T, C) ld ldo in out_dtype (F32, BF16 or
// F16: the SSD scan's operands, forward and backward, rounded once here).
void causal_conv1d_forward(const void* in, DType in_dtype, int64_t ldin, const float* w, const float* bias, void* out,
                           int64_t ldo, DType out_dtype, float* states, const PackedSeqs& seqs, int64_t C, int64_t K);
// One token per sequence: out[b] from its state and x[b], then the state shifts in x[b].
//   x (nb, C) ld ldx; state of b at states + slots[b]·(K-1)·C; out (nb, C) ld ldo
void causal_conv1d_step(const float* x, int64_t ldx, const float* w, const float* bias, float* out, int64_t ldo,
                        float* states, const int64_t* slots, int64_t nb, int64_t C, int64_t K);
// Backward over packed sequences, each from its initial state at states + slots[i]·(K-1)·C (null:
// zeros): d_in (overwritten; in din_dtype: F32, or BF16 / F16 rounded once), d_w and d_bias (+=,
// summed over tokens in fixed chunks in double), as cpu::causal_conv1d_backward per sequence.
// The input in in_dtype: F32, or din_dtype.
void causal_conv1d_backward(const void* in, DType in_dtype, int64_t ldin, const float* w, const float* bias,
                            const float* states, const float* d_out, int64_t lddo, void* d_in, DType din_dtype,
                            int64_t lddi, float* d_w, float* d_bias, const PackedSeqs& seqs, int64_t C, int64_t K);

struct SsdParams {
  int64_t nheads, headdim, ngroups, d_state;
  const float* dt_bias;  // (nheads) on the GPU
  const float* A_log;    // (nheads)
  const float* D;        // (nheads)
  float dt_min, dt_max;  // clamp range; (0, inf) when no limit
};
// Chunked SSD scan over packed sequences: sequence i's chunks start at its first token; its
// state (nheads, headdim, d_state) at states + slots[i]·nheads·headdim·d_state is read as the
// initial state and receives the final one. Every exponent is ≤ 0 (differences of in-chunk
// cumulative sums). x (T, nheads·headdim) ld ldx; B, C (T, ngroups·d_state), all three in
// `inputs` (F32, or the compute dtype); dt_raw (T, nheads) and y (T, nheads·headdim) ld ldy in
// fp32. `compute`: F32 runs the products in fp32 (no TF32); BF16 / F16 on tensor cores, operands
// rounded to that type (x too where D·x uses it), fp32 accumulation (d_state ≤ 256). The decay
// terms (dt, cumulative sums, exp) and the states are fp32 (the sums double) either way.
// y in y_dtype: F32, or the compute dtype (rounded once; mixed-precision training's).
void ssd_scan_forward(const SsdParams& p, const void* x, int64_t ldx, const void* B, int64_t ldb, const void* C,
                      int64_t ldc, DType inputs, const float* dt_raw, int64_t lddt, void* y, DType y_dtype,
                      int64_t ldy, float* states, const PackedSeqs& seqs, int64_t chunk_size, DType compute);
// One token per sequence (recurrent decode); the state of b at states + slots[b]·nheads·headdim·d_state.
// With z set (the decode step's fusion) y = the step's output · silu(z), z (nb, nheads·headdim) ld
// ldz, and sums[b·lds + i] (i < ssd_step_sum_count), when set, receive partial sums of y² in head
// order. Launched overlapped, it reads the states before it waits for the kernel before it: none
// of the kernels launched overlapped right before it may write them (the decode step's own).
void ssd_step(const SsdParams& p, const float* x, int64_t ldx, const float* B, int64_t ldb, const float* C,
              int64_t ldc, const float* dt_raw, int64_t lddt, float* y, int64_t ldy, float* states,
              const int64_t* slots, int64_t nb, const float* z = nullptr, int64_t ldz = 0, float* sums = nullptr,
              int64_t lds = 0, const L2Warm& warm = {});
int64_t ssd_step_sum_count(int64_t nheads, int64_t headdim);
// Backward of the scan over packed sequences: sequence i from its initial state at state0 +
// slots[i]·nheads·headdim·d_state (null: zeros), d_final likewise the gradient of its final state
// (null: zeros). d_x, d_B, d_C, d_dt (of dt_raw) and, when set, d_state0 (rows as state0's) are
// overwritten; d_dt_bias, d_A_log, d_D accumulate (+=). As cpu::ssd_scan_backward, with its
// products batched over the chunks; `compute`: F32 runs them in fp32 (no TF32), BF16 / F16 on
// tensor cores with operands rounded to that type (x, d_y, B, C, the states and the masked
// products), fp32 accumulation. x, B, C and d_y in `inputs`: F32, or the compute dtype (rounded by
// their producers: the forward's operands as it took them, half the bytes). The same bits every run.
struct SsdGradPtrs {
  float* x;
  int64_t ldx;
  float* B;
  int64_t ldb;
  float* C;
  int64_t ldc;
  void* dt;  // in dt_dtype: F32, or BF16 / F16 rounded once (only in_proj's backward reads it)
  DType dt_dtype;
  int64_t lddt;
  float* state0;
  float *dt_bias, *A_log, *D;
};
void ssd_scan_backward(const SsdParams& p, const void* x, int64_t ldx, const void* B, int64_t ldb, const void* C,
                       int64_t ldc, const float* dt_raw, int64_t lddt, const float* state0, const void* d_y,
                       int64_t lddy, DType inputs, const float* d_final, const SsdGradPtrs& g, const PackedSeqs& seqs,
                       int64_t chunk_size, DType compute);

// The Mamba-1 selective scan (ops::selective_scan): A_log, A_imag (null: real) (channels, d_state),
// D, dt_bias (channels), on the GPU; d_state ≤ 64.
struct SelectiveScanParams {
  int64_t channels, d_state;
  const float *A_log, *A_imag, *D, *dt_bias;
};
// Over packed sequences, sequence i from and back to its state at states + slots[i]·channels·S
// (S = d_state, complex 2·d_state interleaved). x, dt, z (null: no gate) (T, channels) and B, C
// (T, S) fp32; y (T, channels) in y_dtype (F32, BF16 or F16: the next projection's input). y null:
// the states alone (C and z unread). checkpoints (when set; rows as selective_scan_checkpoint_rows,
// channels·S each): the states the backward walks back from.
void selective_scan_forward(const SelectiveScanParams& p, const float* x, int64_t ldx, const float* dt,
                            int64_t lddt, const float* B, int64_t ldb, const float* C, int64_t ldc, const float* z,
                            int64_t ldz, void* y, DType y_dtype, int64_t ldy, float* states, const PackedSeqs& seqs,
                            float* checkpoints = nullptr);
// The checkpoints' rows for T tokens in `count` sequences.
int64_t selective_scan_checkpoint_rows(int64_t tokens, int64_t count, bool complex);
// One token per sequence, row b's state at states + slots[b]·channels·S; the scan's token code
// (the same bits as the scan given the same dt). With dt_w (channels, R) (dt_proj's weight), dt
// (nb, R) is dt_proj's input and the raw dt of channel d is dt_w[d]·dt[b] (fp32, in an order fixed
// by R). y in y_dtype (F32, BF16 or F16: the out projection's input, rounded once).
void selective_scan_step(const SelectiveScanParams& p, const float* x, int64_t ldx, const float* dt, int64_t lddt,
                         const float* dt_w, int64_t R, const float* B, int64_t ldb, const float* C, int64_t ldc,
                         const float* z, int64_t ldz, void* y, DType y_dtype, int64_t ldy, float* states,
                         const int64_t* slots, int64_t nb);
// The backward over packed sequences (fp32), each from its state in state0 (null: zeros; its
// slots index state_rows rows, read only without checkpoints) with its final state's gradient in
// d_final (null: zeros), rows by slot: x, dt, B, C, z (when gated) and state0 (when set)
// overwritten; A_log, A_imag, D, dt_bias accumulated (+=). checkpoints: the forward's (from the
// same inputs and states), or null: formed here by the same kernels. The same bits either way,
// and every run.
struct SelectiveScanGradPtrs {
  float* x;
  int64_t ldx;
  float* dt;
  int64_t lddt;
  float* B;
  int64_t ldb;
  float* C;
  int64_t ldc;
  void* z;  // in z_dtype: F32, or BF16 / F16 rounded once
  DType z_dtype;
  int64_t ldz;
  float* state0;
  float *A_log, *A_imag, *D, *dt_bias;
};
void selective_scan_backward(const SelectiveScanParams& p, const float* x, int64_t ldx, const float* dt,
                             int64_t lddt, const float* B, int64_t ldb, const float* C, int64_t ldc, const float* z,
                             int64_t ldz, const float* state0, int64_t state_rows, const float* d_y, int64_t lddy,
                             const float* d_final, const float* checkpoints, const SelectiveScanGradPtrs& g,
                             const PackedSeqs& seqs);

// As cpu::cross_entropy (fp32 logits, exp-sums in double; d_logits may alias logits, or be BF16 /
// F16: the fp32 gradient rounded once); targets (n) on the host. Returns Σ_rows (logsumexp −
// logit[target]), added on the host in row order; or with `total` (on the GPU) adds it to *total,
// in the same order, on the GPU, and returns 0 without waiting.
double cross_entropy(const float* logits, int64_t ldl, const int32_t* targets, int64_t n, int64_t V, void* d_logits,
                     DType d_dtype, int64_t lddl, float scale, double* total = nullptr);

// As cpu::AdamWScalars<float> and cpu::adamw_step: one AdamW update, element by element.
struct AdamWScalars {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, eps, decay, step_size, inv_sqrt_bc2, grad_scale;
};
// Of `count` tensors (a host array) in one launch: those without `decays` use a decay factor of 1;
// `copy` (or null) gets the updated parameter rounded to copy_dtype.
struct AdamWTensor {
  float* param;
  const float* grad;
  float *m, *v;
  int64_t n;
  bool decays;
  void* copy;
  DType copy_dtype;
};
void adamw_step_many(const AdamWTensor* tensors, int64_t count, const AdamWScalars& s);
// Σ x² in double over `count` tensors (host arrays of their device pointers and sizes), each in
// fixed blocks of 2¹⁴ elements (the CPU's), each block reduced in a fixed tree, all blocks' sums
// added on the host in order: the same bits every run, one wait for all.
double sum_squares_many(const float* const* xs, const int64_t* sizes, int64_t count);
void scale_inplace(float* x, int64_t n, float s);

// As cpu::cast_rows: fp32 rows to F32, BF16 or F16, rounded to nearest even.
void cast_rows(const float* src, int64_t lds, void* dst, DType dtype, int64_t ldd, int64_t rows, int64_t cols);

// out[r] = the index of the largest of x[r, 0..cols) (the first of equal ones); out on the GPU.
void argmax_rows(const float* x, int64_t ld, int64_t n, int64_t cols, int32_t* out);

// As cpu::top_k_rows (the same sets, bit for bit); k, temperature, ids, values, counts on the GPU.
void top_k_rows(const float* x, int64_t ld, int64_t n, int64_t cols, const int32_t* k, const float* temperature,
                int64_t cap, int32_t* ids, float* values, int32_t* counts);

}  // namespace mamba2::cuda
