// Op front ends: check shapes and devices, name the op in every error, dispatch to the kernel of
// the operands' device (src/cpu/<stem>.cpp, src/cuda/<stem>.cu). One section per op; the stems
// match the kernel files. Every op runs on either device (the backwards in fp32).
// On the GPU the projections' inputs (the norms' outputs) may be bf16/f16 like the weights;
// everything else is fp32 on both devices.
// Each *_backward follows its forward: parameter gradients (Tensor&) ACCUMULATE (+=), activation
// gradients (MatView) OVERWRITE.
#pragma once
#include <cstdint>
#include <span>

#include "core/tensor.h"
#include "core/view.h"
#include "ops/seq_batch.h"

namespace mamba2::ops {

// embedding: out (n, d) = table[ids]; every id must be a row of the table. On the GPU the ids are
// copied there, unless `device_ids` already holds them (a captured decode graph).
// `warm` (GPU, a hint): a tensor to warm into the GPU's L2 meanwhile (the next projection's weights).
void embedding(const Tensor& table, std::span<const int32_t> ids, MatView out, const int32_t* device_ids = nullptr,
               const Tensor* warm = nullptr);
// embedding: d_table[ids[t]] += d_out[t] (a tied head adds its part to the same tensor).
void embedding_backward(std::span<const int32_t> ids, MatView d_out, Tensor& d_table);

// rmsnorm: residual += h (h.ptr may be null), or with `sum` sum = residual + h and residual left as
// it is (training keeps every layer's); out = rmsnorm of it * w.
void add_rmsnorm(MatView residual, MatView h, const Tensor& w, MatView out, float eps, MatView sum = {});
// rmsnorm: out = rmsnorm per group (y * silu(z)) * w; y fp32, or on the GPU in out's dtype.
void gated_rmsnorm(MatView y, MatView z, const Tensor& w, MatView out, int64_t ngroups, float eps);
// rmsnorm backward. residual: the updated residual (after the add); d_out: the gradient of out.
// d_residual holds on entry the gradient of the updated residual from its later uses (zeros if
// none) and on exit that of the residual before the add, which is also that of h. d_w += .
void add_rmsnorm_backward(MatView residual, const Tensor& w, MatView d_out, MatView d_residual, Tensor& d_w,
                          float eps);
// gated_rmsnorm backward: d_y, d_z overwritten (neither may overlap d_out; on the GPU either may be
// BF16 or F16, rounded once); d_w += . y and d_out fp32, or on the GPU both in d_y's dtype.
void gated_rmsnorm_backward(MatView y, MatView z, const Tensor& w, MatView d_out, MatView d_y, MatView d_z,
                            Tensor& d_w, int64_t ngroups, float eps);

// linear: y = x @ Wᵀ, W (n, k). The caller says what the rows are, never the row count, so that
// in inference a sequence's results do not depend on the batch it runs in:
//   Prefill   many rows per sequence: our tiled GEMM, each element one FMA chain over k in
//             order, so the same bits whatever the rows, threads or instruction set (BLAS
//             kernels round a row differently by row count, on most CPUs);
//   Decode    one row per sequence: W streamed once, each row summed in a fixed order;
//   Training  BLAS always: fastest on many rows; batch invariance does not matter there.
//   TrainingTf32  Training, with an fp32 W's product on the GPU's TF32 tensor cores (operands
//             rounded to 10-bit mantissas, fp32 sums): a bf16 / f16 run's fp32 projections
//             (Mamba-1's x_proj and dt_proj, which mamba_ssm's autocast runs in bf16); on the
//             CPU it is Training.
//   PrefillTf32  Prefill, with an fp32 W's product on the GPU's TF32 tensor cores: a bf16 / f16
//             run's fp32 projections in inference, as TrainingTf32 in training; on the CPU it is
//             Prefill.
// With `bias` (n), y = x @ Wᵀ + bias, the bias added to the finished sums (as torch's nn.Linear;
// Mamba-1's optional projection biases; the CPU only for now).
enum class LinearKernel { Prefill, Decode, Training, TrainingTf32, PrefillTf32 };
void linear(MatView x, const Tensor& W, MatView y, LinearKernel kernel, const Tensor* bias = nullptr);
// Q8_0 and Q4_0 weights on the CPU: x's rows quantized to int8 per block of 32 and multiplied by
// integer dot products (Int8: llama.cpp's q8_0 · q8_0 and q4_0 · q8_0), or kept fp32 against the
// widened weights (F32: bit for bit the fp32 kernels on the dequantized weights). Default: per
// format, int8 where the instruction set's int8 kernels for it are the faster path
// (cpu/simd/q8x8.h, Int8Set::default_on: both with AVX-512 VNNI or AVX2), else fp32.
// MAMBA2_Q8_ACTIVATIONS=int8|f32 chooses for both at first use; set_q8_activations changes it
// (tests and benchmarks).
enum class Q8Activations { Default, Int8, F32 };
Q8Activations q8_activations();
void set_q8_activations(Q8Activations a);
// Whether the CPU multiplies `weights` (Q8_0 or Q4_0) against int8 activations now.
bool int8_activations(DType weights);
// bf16 weights on the CPU: x's rows rounded to bf16 and multiplied by AVX-512 BF16's vdpbf16ps
// (Bf16, cpu/simd/bf16xbf16.h), or kept fp32 against the widened weights (F32: bit for bit the
// fp32 kernels on the rounded weights). Default: bf16 where the instruction set in use has those
// kernels and they are the faster path (Bf16Kernels::default_on: AVX-512 with AVX512_BF16), else
// fp32. MAMBA2_BF16_ACTIVATIONS=bf16|f32 chooses at first use (bf16 is refused by the linear op
// where the kernels are missing); set_bf16_activations changes it (tests and benchmarks).
enum class Bf16Activations { Default, Bf16, F32 };
Bf16Activations bf16_activations();
void set_bf16_activations(Bf16Activations a);
// Whether the CPU multiplies bf16 weights against bf16 activations now ("[linear]" error when
// Bf16 is asked for where the instruction set in use has no such kernels).
bool bf16_rounded_activations();
// The GPU decode step's fused projections (a decode step is latency-bound: each fusion saves a
// kernel and a pass over the activations). The norm is applied on the way in, times weight, the
// operand rounded to W's dtype. With `sums`: from partial sums of squares left by the op before —
// row r's group g (of `groups` equal column ranges of src) scaled by rsqrt(Σ sums[r, g·per ..
// (g+1)·per) / (cols/groups) + eps), per = sums.cols/groups. Without (an RMSNorm, groups 1): the
// kernel sums src² itself and scales each row's products by rsqrt(Σ/cols + eps), so it waits for
// no producer's sums. GPU only; the tests hold them to the unfused ops.
struct RowNorm {
  MatView sums;          // (rows, groups·per) fp32, or none
  int64_t groups;        // 1: RMSNorm; ngroups: the gated grouped norm
  const Tensor& weight;  // (src.cols) fp32
  float eps;
};
// The in projection's conv step: y's columns [first, first + w.dim(0)) (xBC) also go through
// causal_conv1d_step into `out`, with the same bits.
struct ConvStepFusion {
  int64_t first;
  const Tensor& w;     // (C, K)
  const Tensor& bias;  // (C)
  MatView out;         // (rows, C)
  MatView states;      // as causal_conv1d_step's
  const SeqBatch& seqs;
};
// linear_normed: y = norm(src) @ Wᵀ (the decode kernel), src fp32. `warm`, as embedding's.
void linear_normed(MatView src, const RowNorm& norm, const Tensor& W, MatView y,
                   const ConvStepFusion* conv = nullptr, const Tensor* warm = nullptr);
// linear_normed_residual: residual += norm(src) @ Wᵀ.
void linear_normed_residual(MatView src, const RowNorm& norm, const Tensor& W, MatView residual,
                            const Tensor* warm = nullptr);
// linear_residual: residual += x @ Wᵀ (the decode kernel, GPU only), x in W's dtype.
void linear_residual(MatView x, const Tensor& W, MatView residual);
// linear backward: d_x = d_y @ W (skipped when d_x.data is null; with add_dx d_x += d_y @ W,
// the product's fp32 sum added once; on the GPU, not added, d_x may be in W's dtype, rounded
// once); d_W += d_yᵀ @ x. kernel: Training or TrainingTf32, as for the forward.
void linear_backward(MatView x, const Tensor& W, MatView d_y, MatView d_x, Tensor& d_W,
                     LinearKernel kernel = LinearKernel::Training, bool add_dx = false);
// The bias's: d_b += Σ_rows d_y (d_y fp32), each column's sum in double, in a fixed order.
void bias_backward(MatView d_y, Tensor& d_b);

// causal_conv1d: depthwise causal conv + bias + SiLU over the sequences of `seqs`, packed in `in`;
// each continues from its row of states ((batch, (K-1)·C), the last K-1 inputs, oldest first) and
// leaves its own last K-1 inputs there. fp32, but for `out` on the GPU, which may be bf16 or f16
// (the SSD scan's operands, forward and backward, rounded once from the fp32 sums).
void causal_conv1d(MatView in, const Tensor& w, const Tensor& bias, MatView out, MatView states, const SeqBatch& seqs);
// causal_conv1d: one token for each sequence of `seqs` (a decode batch).
void causal_conv1d_step(MatView x, const Tensor& w, const Tensor& bias, MatView out, MatView states,
                        const SeqBatch& seqs);
// causal_conv1d backward for the forward over the sequences of `seqs` packed in `in`, each from its
// row of `states` (slot; the K-1 inputs before it, not modified; an empty view: zeros, fresh
// sequences): d_in overwritten; d_w, d_bias += .
void causal_conv1d_backward(MatView in, const Tensor& w, const Tensor& bias, MatView states, MatView d_out,
                            MatView d_in, Tensor& d_w, Tensor& d_bias, const SeqBatch& seqs);

struct SsdWeights {
  const Tensor& dt_bias;  // (nheads)
  const Tensor& A_log;    // (nheads)
  const Tensor& D;        // (nheads)
  int64_t headdim, ngroups, d_state;
  double dt_min, dt_max;
};
// ssd_scan: chunked scan (chunks of seqs.chunk_size()) of the sequences of `seqs`, packed; each
// starts from its row of states (batch, nheads·headdim·d_state) and leaves its final state there.
// `compute`: the operand precision of the GPU scan's matrix products (the model's dtype; bf16 and
// f16 run them on tensor cores with fp32 accumulation). The CPU scan is fp32 whatever it says.
// x, B and C: fp32, or on the GPU in the compute dtype (the conv's output there); dt, y fp32.
void ssd_scan(const SsdWeights& w, MatView x, MatView B, MatView C, MatView dt, MatView y, MatView states,
              const SeqBatch& seqs, DType compute = DType::F32);
// ssd_scan: one token for each sequence of `seqs` (a decode batch). Gated (z given, GPU only: the
// decode step's fusion): y = the step's output · silu(z), and gate_sums, when given (rows,
// ssd_step_sum_count(nheads, headdim)), receives partial sums of y² in head order, the RowNorm
// sums of a gated norm of several groups. `warm`, as embedding's (ignored on the CPU).
void ssd_step(const SsdWeights& w, MatView x, MatView B, MatView C, MatView dt, MatView y, MatView states,
              const SeqBatch& seqs, MatView z = {}, MatView gate_sums = {}, const Tensor* warm = nullptr);
int64_t ssd_step_sum_count(int64_t nheads, int64_t headdim);
struct SsdGrads {
  MatView x, B, C, dt;  // overwritten; shapes of the inputs
  MatView state0;       // overwritten when its data is set: as the states (rows by slot)
  Tensor& dt_bias;      // accumulated (nheads)
  Tensor& A_log;
  Tensor& D;
};
// ssd_scan backward, chunked like the forward, for the scans of the sequences of `seqs` (x, B, C, dt,
// d_y packed), each from its row (slot) of `states0` (not modified; an empty view: zeros) given
// d_y and its row of d_states_final, the gradient of its final state (empty: zeros); grads.state0,
// when set, receives the initial states' gradients in the same rows. Gradients fp32; the products
// in `compute` (F32, or on the GPU BF16 / F16 operands with fp32 sums). x, B, C and d_y in F32, or
// on the GPU all four in the compute dtype (training's: the forward's operands as it rounded them).
void ssd_scan_backward(const SsdWeights& w, MatView x, MatView B, MatView C, MatView dt, MatView states0, MatView d_y,
                       MatView d_states_final, const SsdGrads& grads, const SeqBatch& seqs,
                       DType compute = DType::F32);

// selective_scan (Mamba-1; mamba_ssm's selective_scan_fn with delta_bias and delta_softplus): per
// channel d of x (rows, Dc) and state index n < N, over the sequences of `seqs` packed, each from
// its row (slot) of `states`, leaving its final state there:
//   δ = softplus(dt[t, d] + dt_bias[d])                (torch's softplus, threshold 20)
//   h[d, n] ← exp(δ·A[d, n])·h[d, n] + δ·x[t, d]·B[t, n]
//   y[t, d] = Σ_n C[t, n]·h[d, n] + D[d]·x[t, d], times silu(z[t, d]) when z is given
// Real (A_imag null): A = −exp(A_log); B and C (rows, N); states (batch, Dc·N), channel-major.
// Complex (A_imag given): A = −exp(A_log) + i·A_imag; B and C (rows, 2N), (re, im) interleaved per
// state index; h complex, states (batch, Dc·2N) interleaved likewise; y = 2·Re(Σ_n C·h) + D·x.
// fp32 throughout (the states too). Each element's arithmetic is one fixed sequence of roundings
// (the sum over n in a fixed tree), shared by the scan and the step: the same bits whatever the
// batch, the threads or the instruction set, and a token gives the same bits by either form.
struct SelectiveScanWeights {
  const Tensor& A_log;    // (Dc, N)
  const Tensor* A_imag;   // (Dc, N) for the complex scan, else null
  const Tensor& D;        // (Dc)
  const Tensor& dt_bias;  // (Dc)
};
// checkpoints (GPU only; selective_scan_checkpoint_rows × the state width, fp32): also the states
// selective_scan_backward walks back from, for it to take rather than form again.
void selective_scan(const SelectiveScanWeights& w, MatView x, MatView dt, MatView B, MatView C, MatView z, MatView y,
                    MatView states, const SeqBatch& seqs, MatView checkpoints = {});
int64_t selective_scan_checkpoint_rows(const SelectiveScanWeights& w, const SeqBatch& seqs);
// selective_scan: one token for each sequence of `seqs` (a decode batch).
void selective_scan_step(const SelectiveScanWeights& w, MatView x, MatView dt, MatView B, MatView C, MatView z,
                         MatView y, MatView states, const SeqBatch& seqs);
// selective_scan_step fused for the GPU's decode step: dt = dt_low @ dt_projᵀ (dt_low (rows, R),
// dt_proj (channels, R) fp32) computed in the kernel, y written in its dtype (F32, BF16 or F16).
void selective_scan_step_fused(const SelectiveScanWeights& w, MatView x, MatView dt_low, const Tensor& dt_proj,
                               MatView B, MatView C, MatView z, MatView y, MatView states, const SeqBatch& seqs);
struct SelectiveScanGrads {
  MatView x, dt, B, C, z;  // overwritten; z only when the forward was gated
  MatView state0;          // overwritten when its data is set: as the states (rows by slot)
  Tensor& A_log;           // accumulated (Dc, N)
  Tensor* A_imag;          // accumulated, the complex scan
  Tensor& D;
  Tensor& dt_bias;
};
// selective_scan backward for the scans of the sequences of `seqs`, each from its row (slot) of
// `states0` (not modified; empty: zeros), given d_y and its row of d_states_final (empty: zeros).
// Each channel's states are recomputed forward, then walked back; dB and dC sum over channels in a
// fixed order (the same bits for any thread count). On the GPU, `checkpoints` from the forward of
// the same inputs and states0 spare it forming them with the forward's kernels (the same bits
// either way).
void selective_scan_backward(const SelectiveScanWeights& w, MatView x, MatView dt, MatView B, MatView C, MatView z,
                             MatView states0, MatView d_y, MatView d_states_final, const SelectiveScanGrads& grads,
                             const SeqBatch& seqs, MatView checkpoints = {});

// cross_entropy: Σ_rows −log softmax(logits[r])[targets[r]] (double), every target in [0, V);
// when d_logits.ptr is set it receives scale·(softmax − onehot) (it may alias logits; on the GPU
// it may be BF16 / F16, rounded once, apart from the logits). Returned; or, with `total` (a
// double on the logits' device), added to *total in row order and 0 returned: on the GPU nothing
// waits for it.
double cross_entropy(MatView logits, std::span<const int32_t> targets, MatView d_logits, float scale,
                     double* total = nullptr);

// cast: dst = src (fp32) rounded to dst's dtype (F32, BF16 or F16; nearest even), same shape.
void cast(MatView src, MatView dst);

// argmax: out[r] = the index of the largest of x[r, 0..cols) (the first of equal ones), greedy
// decoding; out (x.rows) on x's device.
void argmax(MatView x, int64_t cols, int32_t* out);
// top_k: sampling's candidates under top-k. Row r's columns c < cols whose x[r, c] / temperature[r]
// is at least the k[r]-th largest of those quotients (ties with it kept), in column order: ids and
// values (x itself) at ids/values + r·cap, their number in counts[r], or -1 when more than cap
// qualify. The same sets, bit for bit, on every device; ids, values (x.rows, cap) and counts
// (x.rows) on x's device, k and temperature on the host.
void top_k(MatView x, int64_t cols, std::span<const int32_t> k, std::span<const float> temperature, int64_t cap,
           int32_t* ids, float* values, int32_t* counts);

// adamw: one torch.optim.AdamW step of a parameter (fp32 moments m, v updated in place), from the
// gradient times grad_scale. Decoupled weight decay p ← p·(1 − lr·weight_decay) (0: none);
// step is the 1-based count of updates, for the bias corrections 1 − β^step.
struct AdamW {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  int64_t step = 1;
  double grad_scale = 1.0;
};
void adamw(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamW& hyper);
// The same step for many parameters on one device (one launch on the GPU); weight decay only for
// those with `decay` (the no-decay group: biases, norms, per-head scalars). `copy` (GPU, or null):
// the updated parameter rounded once to the copy's dtype, written by the same pass (the bf16 / f16
// matrices mixed-precision training computes with: what a cast after the step would write).
struct AdamWParam {
  Tensor* param;
  const Tensor* grad;
  Tensor* m;
  Tensor* v;
  bool decay;
  Tensor* copy = nullptr;
};
void adamw(std::span<const AdamWParam> params, const AdamW& hyper);
// sum_squares: Σ t² in double, the same for any thread count (global-norm clipping); of many
// tensors on one device, in one pass on the GPU (one wait instead of one a tensor).
double sum_squares(const Tensor& t);
double sum_squares(std::span<const Tensor* const> ts);
// scale: t ← s·t.
void scale(Tensor& t, double s);

}  // namespace mamba2::ops
