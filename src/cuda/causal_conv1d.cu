// Depthwise causal conv + bias + SiLU on the GPU over packed sequences (each sequence's window
// starts at its own first token: the K-1 inputs before it come from its state row), and the
// one-token decode form. One thread per (token, channel); taps summed in the CPU kernel's order.
#include "cuda/causal_conv1d.cuh"
#include "cuda/common.cuh"
#include "cuda/kernels.h"

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

template <class Out>
__global__ void conv_kernel(const float* in, int64_t ldin, const float* w, const float* bias, Out* out, int64_t ldo,
                            const float* states, PackedSeqs seqs, int64_t C, int K) {
  const int64_t c = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  const int64_t t = blockIdx.x;
  if (c >= C) return;
  const int64_t s = sequence_of(seqs.starts, seqs.count, t);
  const int64_t start = seqs.starts[s];
  const float* state = states + seqs.slots[s] * (K - 1) * C;
  float acc = bias[c];
  for (int j = 0; j < K; ++j) {
    const int64_t src = t - (K - 1) + j;  // position of tap j
    const float v = src >= start ? in[src * ldin + c] : state[(src - start + (K - 1)) * C + c];
    acc += w[c * K + j] * v;
  }
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

}  // namespace mamba2::cuda
