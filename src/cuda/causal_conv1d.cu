// Depthwise causal conv + bias + SiLU on the GPU over packed sequences (each sequence's window
// starts at its own first token: the K-1 inputs before it come from its state row), and the
// one-token decode form. One thread per (token, channel); taps summed in the CPU kernel's order.
// Backward over packed sequences from their initial states (zeros where none): d_pre = d_out ∘
// silu'(pre) (pre recomputed), d_in[s] = Σ_j w[:, j]∘d_pre[s+K-1-j] within the sequence, and the
// weight and bias gradients summed over tokens in fixed chunks (add_column_partials).
#include "cuda/causal_conv1d.cuh"
#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "cuda/runtime.h"

namespace mamba2::cuda {

namespace {

constexpr int kMaxTaps = 8;

// The sequence holding token t: the last i with starts[i] ≤ t.
__device__ int64_t sequence_of(const int64_t* starts, int64_t count, int64_t t) {
  int64_t lo = 0, hi = count - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (starts[mid] <= t) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// Tap j's input for token t of sequence s (from `start`): the packed input, or the sequence's
// initial state (zeros when states is null).
__device__ __forceinline__ float conv_input(const float* in, int64_t ldin, const float* states, const int64_t* slots,
                                            int64_t s, int64_t start, int64_t src, int64_t c, int64_t C, int K) {
  if (src >= start) return in[src * ldin + c];
  return states ? states[(slots[s] * (K - 1) + src - start + (K - 1)) * C + c] : 0.0f;
}

template <class Out>
__global__ void conv_kernel(const float* in, int64_t ldin, const float* w, const float* bias, Out* out, int64_t ldo,
                            const float* states, PackedSeqs seqs, int64_t C, int K) {
  const int64_t c = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  const int64_t t = blockIdx.x;
  if (c >= C) return;
  const int64_t s = sequence_of(seqs.starts, seqs.count, t);
  const int64_t start = seqs.starts[s];
  float acc = bias[c];
  for (int j = 0; j < K; ++j)
    acc += w[c * K + j] * conv_input(in, ldin, states, seqs.slots, s, start, t - (K - 1) + j, c, C, K);
  store_f32(out + t * ldo + c, silu(acc));
}

// After the outputs: each state row becomes the last K-1 inputs of (state, sequence), written in
// increasing row order so that a short sequence's shift reads rows not yet overwritten.
__global__ void conv_state_kernel(const float* in, int64_t ldin, float* states, PackedSeqs seqs, int64_t C, int K) {
  const int64_t c = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  const int64_t s = blockIdx.x;
  if (c >= C) return;
  const int64_t start = seqs.starts[s], len = seqs.starts[s + 1] - start;
  float* state = states + seqs.slots[s] * (K - 1) * C;
  for (int r = 0; r < K - 1; ++r) {
    const int64_t src = len - (K - 1) + r;  // position within the sequence
    state[r * C + c] = src >= 0 ? in[(start + src) * ldin + c] : state[(src + (K - 1)) * C + c];
  }
}

// Launched overlapped (the decode step's chain): nothing is read before the previous kernel ends.
__global__ void conv_step_kernel(const float* x, int64_t ldx, const float* w, const float* bias, float* out,
                                 int64_t ldo, float* states, const int64_t* slots, int64_t C, int K) {
  TRACE_KERNEL;
  start_next();
  wait_for_previous();
  const int64_t c = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  const int64_t b = blockIdx.x;
  if (c >= C) return;
  out[b * ldo + c] = conv_step_channel(x[b * ldx + c], w + c * K, bias[c], states + slots[b] * (K - 1) * C, C, c, K);
}

__global__ void conv_pre_grad_kernel(const float* in, int64_t ldin, const float* w, const float* bias,
                                     const float* states, const float* d_out, int64_t lddo, float* d_pre,
                                     PackedSeqs seqs, int64_t C, int K) {
  const int64_t c = int64_t(blockIdx.y) * blockDim.x + threadIdx.x, t = blockIdx.x;
  if (c >= C) return;
  const int64_t s = sequence_of(seqs.starts, seqs.count, t), start = seqs.starts[s];
  float pre = bias[c];
  for (int j = 0; j < K; ++j)
    pre += w[c * K + j] * conv_input(in, ldin, states, seqs.slots, s, start, t - (K - 1) + j, c, C, K);
  d_pre[t * C + c] = d_out[t * lddo + c] * silu_grad(pre);
}

__global__ void conv_input_grad_kernel(const float* w, const float* d_pre, float* d_in, int64_t lddi, PackedSeqs seqs,
                                       int64_t C, int K) {
  const int64_t c = int64_t(blockIdx.y) * blockDim.x + threadIdx.x, t = blockIdx.x;
  if (c >= C) return;
  const int64_t end = seqs.starts[sequence_of(seqs.starts, seqs.count, t) + 1];
  float acc = 0.0f;
  for (int j = 0; j < K; ++j) {
    const int64_t u = t + (K - 1) - j;  // the output tap j of which reads input t
    if (u < end) acc += w[c * K + j] * d_pre[u * C + c];
  }
  d_in[t * lddi + c] = acc;
}

// Block (channel tile, chunk of kGradRows tokens): partial[chunk][c·K + j] = Σ_t d_pre·input of tap
// j, partial[chunk][C·K + c] = Σ_t d_pre, in token order, in double.
__global__ void conv_weight_partials_kernel(const float* in, int64_t ldin, const float* states, const float* d_pre,
                                            PackedSeqs seqs, int64_t C, int K, double* partial) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, chunk = blockIdx.y;
  if (c >= C) return;
  double acc[kMaxTaps + 1] = {};
  const int64_t t0 = chunk * kGradRows, t1 = min(seqs.tokens, t0 + kGradRows);
  int64_t s = sequence_of(seqs.starts, seqs.count, t0);
  for (int64_t t = t0; t < t1; ++t) {
    while (seqs.starts[s + 1] <= t) ++s;
    const double dp = d_pre[t * C + c];
#pragma unroll
    for (int j = 0; j < kMaxTaps; ++j)
      if (j < K)
        acc[j] += dp * double(conv_input(in, ldin, states, seqs.slots, s, seqs.starts[s], t - (K - 1) + j, c, C, K));
    acc[kMaxTaps] += dp;
  }
  double* p = partial + chunk * (C * K + C);
  for (int j = 0; j < K; ++j) p[c * K + j] = acc[j];
  p[C * K + c] = acc[kMaxTaps];
}

void check_taps(int64_t K) {
  if (K < 1 || K > kMaxTaps) raise(cat("[causal_conv1d] ", K, " taps: the CUDA kernel takes 1 to ", kMaxTaps));
}

}  // namespace

void causal_conv1d_forward(const float* in, int64_t ldin, const float* w, const float* bias, void* out, int64_t ldo,
                           DType out_dtype, float* states, const PackedSeqs& seqs, int64_t C, int64_t K) {
  check_taps(K);
  if (seqs.tokens == 0 || C == 0) return;
  // Tokens and sequences on grid x (up to 2³¹-1), channel blocks on y.
  const unsigned cblocks = unsigned(ceil_div(C, 128));
  const dim3 grid(unsigned(seqs.tokens), cblocks);
  const auto run = [&](auto* o) { conv_kernel<<<grid, 128, 0, stream()>>>(in, ldin, w, bias, o, ldo, states, seqs, C, int(K)); };
  with_dtype(out_dtype, "causal_conv1d", [&](auto* tag) { run(static_cast<decltype(tag)>(out)); });
  check_launch("causal_conv1d");
  conv_state_kernel<<<dim3(unsigned(seqs.count), cblocks), 128, 0, stream()>>>(in, ldin, states, seqs, C, int(K));
  check_launch("causal_conv1d");
}

void causal_conv1d_step(const float* x, int64_t ldx, const float* w, const float* bias, float* out, int64_t ldo,
                        float* states, const int64_t* slots, int64_t nb, int64_t C, int64_t K) {
  check_taps(K);
  if (nb == 0 || C == 0) return;
  launch_overlapped(conv_step_kernel, dim3(unsigned(nb), unsigned(ceil_div(C, 128))), 128, 0, "causal_conv1d", x, ldx,
                    w, bias, out, ldo, states, slots, C, int(K));
}

void causal_conv1d_backward(const float* in, int64_t ldin, const float* w, const float* bias, const float* states,
                            const float* d_out, int64_t lddo, float* d_in, int64_t lddi, float* d_w, float* d_bias,
                            const PackedSeqs& seqs, int64_t C, int64_t K) {
  check_taps(K);
  const int64_t T = seqs.tokens;
  if (T == 0 || C == 0) return;
  auto pre = allocate(size_t(T * C) * sizeof(float), "causal_conv1d gradient");
  auto* d_pre = static_cast<float*>(pre.get());
  const dim3 grid(unsigned(T), unsigned(ceil_div(C, 128)));
  conv_pre_grad_kernel<<<grid, 128, 0, stream()>>>(in, ldin, w, bias, states, d_out, lddo, d_pre, seqs, C, int(K));
  check_launch("causal_conv1d");
  conv_input_grad_kernel<<<grid, 128, 0, stream()>>>(w, d_pre, d_in, lddi, seqs, C, int(K));
  check_launch("causal_conv1d");
  const int64_t chunks = ceil_div(T, kGradRows), ld = C * K + C;
  auto partial = allocate(size_t(chunks * ld) * sizeof(double), "causal_conv1d gradient partials");
  auto* p = static_cast<double*>(partial.get());
  conv_weight_partials_kernel<<<dim3(unsigned(ceil_div(C, 128)), unsigned(chunks)), 128, 0, stream()>>>(
      in, ldin, states, d_pre, seqs, C, int(K), p);
  check_launch("causal_conv1d");
  add_column_partials(p, ld, chunks, C * K, d_w, "causal_conv1d");
  add_column_partials(p + C * K, ld, chunks, C, d_bias, "causal_conv1d");
}

}  // namespace mamba2::cuda
