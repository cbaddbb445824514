// Depthwise causal conv + bias + SiLU on the GPU over packed sequences (each sequence's window
// starts at its own first token: the K-1 inputs before it come from its state row), and the
// one-token decode form. A thread takes a channel through a tile of tokens, its taps and the last
// K-1 inputs in registers, so each input is read once; taps summed in the CPU kernel's order.
// Backward over packed sequences from their initial states (zeros where none), one kernel: a
// thread walks a channel through a chunk of kGradRows tokens and the K-1 after it, recomputing
// pre and d_pre = d_out ∘ silu'(pre), with d_in[t] = Σ_j w[:, j]∘d_pre[t+K-1-j] within the
// sequence once its last term is known, and the chunk's weight and bias partial sums in token
// order (then add_column_partials sums the chunks in order, in double).
#include <limits>

#include "cuda/causal_conv1d.cuh"
#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "cuda/runtime.h"

namespace mamba2::cuda {

namespace {

// Taps up to kMaxTaps in registers, loops unrolled over kMaxTaps under `j < K` tests; kernels
// instantiated for K = kCommonTaps (Mamba's d_conv) fold those tests away (KT = K; 0: any K). With
// K known only at run time the forward was bound by instruction issue (62 % of the SM's issue rate
// at 20 % of DRAM bandwidth, ncu on the H200) and held 84 registers a thread, 54 with K fixed.
constexpr int kMaxTaps = 8, kCommonTaps = 4;

// The sequence holding token t: the last i with starts[i] ≤ t.
__device__ int64_t sequence_of(const int64_t* starts, int64_t count, int64_t t) {
  int64_t lo = 0, hi = count - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (starts[mid] <= t) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// Tap j's input for token t of sequence s (from `start`): the packed input (In: fp32, or
// mixed-precision training's in_proj output in the compute dtype), or the sequence's initial state
// (zeros when states is null).
template <class In>
__device__ __forceinline__ float conv_input(const In* in, int64_t ldin, const float* states, const int64_t* slots,
                                            int64_t s, int64_t start, int64_t src, int64_t c, int64_t C, int K) {
  if (src >= start) return load_f32(in + src * ldin + c);
  return states ? states[(slots[s] * (K - 1) + src - start + (K - 1)) * C + c] : 0.0f;
}

// A thread's channel state: its taps, and the window of the K-1 inputs before the current token.
struct ConvLane {
  float w[kMaxTaps];
  float win[kMaxTaps - 1];

  __device__ void load_taps(const float* wc, int K) {
#pragma unroll
    for (int j = 0; j < kMaxTaps; ++j) w[j] = j < K ? wc[j] : 0.0f;
  }
  // The window at token t, the first of a tile or of its sequence s (from `start`).
  template <class In>
  __device__ void load_window(const In* in, int64_t ldin, const float* states, const int64_t* slots, int64_t s,
                              int64_t start, int64_t t, int64_t c, int64_t C, int K) {
#pragma unroll
    for (int j = 0; j < kMaxTaps - 1; ++j)
      if (j < K - 1) win[j] = conv_input(in, ldin, states, slots, s, start, t - (K - 1) + j, c, C, K);
  }
  // bias + Σ_j w_j · input_j, j in order, input_{K-1} = x (the token's own input).
  __device__ float pre(float bias, float x, int K) const {
    float acc = bias;
#pragma unroll
    for (int j = 0; j < kMaxTaps - 1; ++j)
      if (j < K - 1) acc += w[j] * win[j];
#pragma unroll
    for (int j = 0; j < kMaxTaps; ++j)
      if (j == K - 1) acc += w[j] * x;
    return acc;
  }
  __device__ void push(float x, int K) {
#pragma unroll
    for (int j = 0; j < kMaxTaps - 2; ++j)
      if (j + 1 < K - 1) win[j] = win[j + 1];
#pragma unroll
    for (int j = 0; j < kMaxTaps - 1; ++j)
      if (j == K - 2) win[j] = x;
  }
};

// kConvTile tokens' inputs are loaded at once before the chain through them: many loads in
// flight per thread rather than one round trip a token.
constexpr int kConvThreads = 128, kConvTile = 16, kConvBackTile = 8;

// Block (kConvThreads channels, kConvTile tokens), numbered channel block first (one grid
// dimension: any number of tokens).
template <class Out, int KT, class In>
__global__ void __launch_bounds__(kConvThreads) conv_kernel(const In* __restrict__ in, int64_t ldin,
                                                            const float* __restrict__ w,
                                                            const float* __restrict__ bias, Out* __restrict__ out,
                                                            int64_t ldo, const float* __restrict__ states,
                                                            PackedSeqs seqs, int64_t C, int K, int cblocks) {
  if constexpr (KT > 0) K = KT;
  const int64_t c = int64_t(blockIdx.x % cblocks) * kConvThreads + threadIdx.x;
  const int64_t t0 = int64_t(blockIdx.x / cblocks) * kConvTile, n = min(seqs.tokens - t0, int64_t(kConvTile));
  if (c >= C) return;
  float xs[kConvTile];
#pragma unroll
  for (int i = 0; i < kConvTile; ++i) xs[i] = i < n ? load_f32(in + (t0 + i) * ldin + c) : 0.0f;
  ConvLane lane;
  lane.load_taps(w + c * K, K);
  const float b = bias[c];
  int64_t s = sequence_of(seqs.starts, seqs.count, t0), next = seqs.starts[s + 1];
  lane.load_window(in, ldin, states, seqs.slots, s, seqs.starts[s], t0, c, C, K);
#pragma unroll
  for (int i = 0; i < kConvTile; ++i) {
    if (i >= n) break;
    const int64_t t = t0 + i;
    if (t >= next) {  // a new sequence: its window from its state
      while (seqs.starts[s + 1] <= t) ++s;
      next = seqs.starts[s + 1];
      lane.load_window(in, ldin, states, seqs.slots, s, t, t, c, C, K);
    }
    const float v = silu(lane.pre(b, xs[i], K));
    store_f32(out + t * ldo + c, v);
    lane.push(xs[i], K);
  }
}

// After the outputs: each state row becomes the last K-1 inputs of (state, sequence), written in
// increasing row order so that a short sequence's shift reads rows not yet overwritten.
template <class In>
__global__ void conv_state_kernel(const In* in, int64_t ldin, float* states, PackedSeqs seqs, int64_t C, int K) {
  const int64_t c = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  const int64_t s = blockIdx.x;
  if (c >= C) return;
  const int64_t start = seqs.starts[s], len = seqs.starts[s + 1] - start;
  float* state = states + seqs.slots[s] * (K - 1) * C;
  for (int r = 0; r < K - 1; ++r) {
    const int64_t src = len - (K - 1) + r;  // position within the sequence
    state[r * C + c] = src >= 0 ? load_f32(in + (start + src) * ldin + c) : state[(src + (K - 1)) * C + c];
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

// Block (kConvThreads channels, chunk of kGradRows tokens). d_pre of token u is recomputed for
// u in [t0, t1 + K - 1) (the K-1 after the chunk for its last d_in), kConvBackTile tokens'
// inputs loaded at a time, the last K kept as dp[i] = d_pre[u - i]; d_in[t] is written when
// u = t + K - 1 arrives. The chunk's weight and bias sums run in fp32 (64 terms), the chunks'
// partials are added in double. d_in in Din: fp32, or rounded once (in_proj's backward operand).
template <int KT, class Din, class In>
__global__ void __launch_bounds__(kConvThreads) conv_backward_kernel(
    const In* __restrict__ in, int64_t ldin, const float* __restrict__ w, const float* __restrict__ bias,
    const float* __restrict__ states, const float* __restrict__ d_out, int64_t lddo, Din* __restrict__ d_in,
    int64_t lddi, PackedSeqs seqs, int64_t C, int K, double* __restrict__ partial) {
  if constexpr (KT > 0) K = KT;
  const int64_t c = int64_t(blockIdx.x) * kConvThreads + threadIdx.x, chunk = blockIdx.y;
  if (c >= C) return;
  const int64_t T = seqs.tokens, t0 = chunk * kGradRows, t1 = min(T, t0 + kGradRows);
  const int64_t u_end = min(T, t1 + K - 1);  // d_pre beyond T is 0 (and never read: no token there)
  ConvLane lane;
  lane.load_taps(w + c * K, K);
  const float b = bias[c];
  float acc[kMaxTaps + 1] = {};
  float dp[kMaxTaps] = {};
  int64_t su = sequence_of(seqs.starts, seqs.count, t0), st = su;  // sequences of u and of t = u - (K-1)
  // The ends of u's and of t's sequences: the sequence tables are read again only past them (a
  // load and a test a token were a third of the kernel's instructions).
  int64_t next_u = seqs.starts[su + 1], end_t = next_u;
  lane.load_window(in, ldin, states, seqs.slots, su, seqs.starts[su], t0, c, C, K);
  const In* xp = in + t0 * ldin + c;        // token u0's input and output gradient
  const float* gp = d_out + t0 * lddo + c;
  Din* dip = d_in + t0 * lddi + c;  // token u0's row: d_in of t = u − (K−1) is K−1 rows before u's
  for (int64_t u0 = t0; u0 < t1 + K - 1; u0 += kConvBackTile) {
    float xs[kConvBackTile], gs[kConvBackTile];
#pragma unroll
    for (int i = 0; i < kConvBackTile; ++i) {
      const bool in_range = u0 + i < u_end;
      xs[i] = in_range ? load_f32(xp + i * ldin) : 0.0f;
      gs[i] = in_range ? gp[i * lddo] : 0.0f;
    }
#pragma unroll
    for (int i = 0; i < kConvBackTile; ++i) {
      const int64_t u = u0 + i;
      if (u >= t1 + K - 1) break;
#pragma unroll
      for (int k = kMaxTaps - 1; k > 0; --k) dp[k] = dp[k - 1];
      float d = 0.0f;
      if (u < u_end) {
        if (u >= next_u) {
          while (seqs.starts[su + 1] <= u) ++su;
          next_u = seqs.starts[su + 1];
          lane.load_window(in, ldin, states, seqs.slots, su, u, u, c, C, K);
        }
        d = gs[i] * silu_grad(lane.pre(b, xs[i], K));
        if (u < t1) {
#pragma unroll
          for (int j = 0; j < kMaxTaps - 1; ++j)
            if (j < K - 1) acc[j] += d * lane.win[j];
#pragma unroll
          for (int j = 0; j < kMaxTaps; ++j)
            if (j == K - 1) acc[j] += d * xs[i];
          acc[kMaxTaps] += d;
        }
        lane.push(xs[i], K);
      }
      dp[0] = d;
      const int64_t t = u - (K - 1);
      if (t < t0) continue;
      if (t >= end_t) {
        while (seqs.starts[st + 1] <= t) ++st;
        end_t = seqs.starts[st + 1];
      }
      float g = 0.0f;
#pragma unroll
      for (int j = 0; j < kMaxTaps; ++j)  // tap j of output u - j reads input t
        if (j < K && u - j < end_t) g += lane.w[j] * dp[j];
      store_f32(dip + (int64_t(i) - (K - 1)) * lddi, g);
    }
    xp += kConvBackTile * ldin, gp += kConvBackTile * lddo, dip += kConvBackTile * lddi;
  }
  double* p = partial + chunk * (C * K + C);
#pragma unroll
  for (int j = 0; j < kMaxTaps; ++j)
    if (j < K) p[c * K + j] = double(acc[j]);
  p[C * K + c] = double(acc[kMaxTaps]);
}

void check_taps(int64_t K) {
  if (K < 1 || K > kMaxTaps) raise(cat("[causal_conv1d] ", K, " taps: the CUDA kernel takes 1 to ", kMaxTaps));
}

}  // namespace

void causal_conv1d_forward(const void* in, DType in_dtype, int64_t ldin, const float* w, const float* bias, void* out,
                           int64_t ldo, DType out_dtype, float* states, const PackedSeqs& seqs, int64_t C, int64_t K) {
  check_taps(K);
  if (seqs.tokens == 0 || C == 0) return;
  const unsigned cblocks = unsigned(ceil_div(C, kConvThreads));
  const int64_t blocks = ceil_div(seqs.tokens, kConvTile) * cblocks;
  if (blocks > std::numeric_limits<int32_t>::max())
    raise(cat("[causal_conv1d] ", seqs.tokens, " tokens of ", C, " channels: more blocks than a launch takes"));
  const auto run = [&](auto* o, auto* x) {
    using Out = std::remove_pointer_t<decltype(o)>;
    using In = std::remove_const_t<std::remove_pointer_t<decltype(x)>>;
    auto* kernel = K == kCommonTaps ? conv_kernel<Out, kCommonTaps, In> : conv_kernel<Out, 0, In>;
    kernel<<<unsigned(blocks), kConvThreads, 0, stream()>>>(x, ldin, w, bias, o, ldo, states, seqs, C, int(K),
                                                            int(cblocks));
    check_launch("causal_conv1d");
    conv_state_kernel<In><<<dim3(unsigned(seqs.count), cblocks), 128, 0, stream()>>>(x, ldin, states, seqs, C, int(K));
    check_launch("causal_conv1d");
  };
  with_dtype(out_dtype, "causal_conv1d", [&](auto* tag) {
    using Out = std::remove_pointer_t<decltype(tag)>;
    with_f32_or<Out>(in, in_dtype, "causal_conv1d", "the input", "the output's dtype",
                     [&](auto* x) { run(static_cast<Out*>(out), x); });
  });
}

void causal_conv1d_step(const float* x, int64_t ldx, const float* w, const float* bias, float* out, int64_t ldo,
                        float* states, const int64_t* slots, int64_t nb, int64_t C, int64_t K) {
  check_taps(K);
  if (nb == 0 || C == 0) return;
  launch_overlapped(conv_step_kernel, dim3(unsigned(nb), unsigned(ceil_div(C, 128))), 128, 0, "causal_conv1d", x, ldx,
                    w, bias, out, ldo, states, slots, C, int(K));
}

void causal_conv1d_backward(const void* in, DType in_dtype, int64_t ldin, const float* w, const float* bias,
                            const float* states, const float* d_out, int64_t lddo, void* d_in, DType din_dtype,
                            int64_t lddi, float* d_w, float* d_bias, const PackedSeqs& seqs, int64_t C, int64_t K) {
  check_taps(K);
  const int64_t T = seqs.tokens;
  if (T == 0 || C == 0) return;
  const int64_t chunks = ceil_div(T, kGradRows), ld = C * K + C;
  auto partial = allocate(size_t(chunks * ld) * sizeof(double), "causal_conv1d gradient partials");
  auto* p = static_cast<double*>(partial.get());
  with_dtype(din_dtype, "causal_conv1d", [&](auto* tag) {
    using Din = std::remove_pointer_t<decltype(tag)>;
    with_f32_or<Din>(in, in_dtype, "causal_conv1d", "the input", "the output's dtype", [&](auto* x) {
      using In = std::remove_const_t<std::remove_pointer_t<decltype(x)>>;
      auto* kernel = K == kCommonTaps ? conv_backward_kernel<kCommonTaps, Din, In> : conv_backward_kernel<0, Din, In>;
      kernel<<<dim3(unsigned(ceil_div(C, kConvThreads)), unsigned(chunks)), kConvThreads, 0, stream()>>>(
          x, ldin, w, bias, states, d_out, lddo, static_cast<Din*>(d_in), lddi, seqs, C, int(K), p);
    });
  });
  check_launch("causal_conv1d");
  ColumnParts parts;  // a chunk's row: the weights' C·K sums, then the bias's C
  parts.count = 2, parts.cols[0] = C * K, parts.grad[0] = d_w, parts.cols[1] = C, parts.grad[1] = d_bias;
  add_column_partials(p, ld, chunks, parts, "causal_conv1d");
}

}  // namespace mamba2::cuda
