// The Mamba-1 selective scan on the GPU (ops::selective_scan; the CPU kernels are the oracle).
//
// A channel's recurrence is sequential in t; the parallel work is (sequence, channel, state index).
// A block takes one sequence and kChannels channels; kGroup neighbouring threads share a channel,
// each holding NPT of its state indices (n = g·NPT + i) in registers, so the sum over n is the
// thread's own sum in n order, then two shuffles. A block stages kTile tokens' operands in shared
// memory (x, δ = softplus(dt + bias) and z per channel, B and C rows) with coalesced loads, runs
// the recurrence over them, and writes y's rows gated, coalesced. exp(δA) is 2^(δ·A·log2 e) by
// the SFU (A ≤ 0: never exp of a positive number); the complex scan's rotation reduces δ·Im A to
// [−π, π] before the SFU's sine and cosine. The decode step runs the same token code on one token
// per sequence (the same bits as the scan). Each sequence's work is its own: a
// sequence's bits never depend on its batch.
//
// Backward: a block takes one sequence and kChannels channels again. It first runs the recurrence
// forward, leaving the state at the start of every chunk of KC tokens in a scratch buffer, then
// walks the chunks from the last: the chunk's states recomputed from its checkpoint into shared
// memory, then its tokens in reverse (the formulas of cpu/selective_scan.cpp). dB and dC sum over
// channels: a block adds its kChannels channels' terms in channel order and leaves its partial
// sums; a second kernel adds the blocks' partials in block order. The parameter gradients are
// left per sequence and added to the gradients in sequence order, as the CPU does. The same bits
// every run.
#include <cmath>
#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "cuda/runtime.h"

namespace mamba2::cuda {

namespace {

constexpr int kGroup = 4;                     // threads of a channel
constexpr int kChannels = 32;                 // channels of a block
constexpr int kThreads = kGroup * kChannels;  // 128
constexpr int kTile = 32;                     // tokens the forward stages at a time
constexpr float kLog2e = 1.4426950408889634f;
constexpr int kMaxStates = 64;                // d_state ≤ kGroup · 16

// The scan's parameters as the kernels take them.
struct Params {
  int64_t D, N;
  const float *A_log, *A_imag, *Dw, *bias;
};

// sin and cos of v: reduced to [−π, π] (2π in two parts) for the SFU's, whose error grows with |v|.
__device__ __forceinline__ void sincos_reduced(float v, float& s, float& c) {
  const float k = rintf(v * 0.15915494309189535f);
  float r = fmaf(-k, 6.28318548202514648f, v);
  r = fmaf(-k, -1.7484556e-7f, r);
  __sincosf(r, &s, &c);
}

// A thread's share of a channel: its NPT state indices' A (Re A·log2 e and Re A; Im A) and state.
template <int NPT, bool Cx>
struct Share {
  static constexpr int SW = Cx ? 2 : 1;  // floats per state index
  static constexpr int W = NPT * SW;     // floats of a B (or C) row per thread
  float a2[NPT], ar[NPT], ai[NPT], hr[NPT], hi[NPT];

  // Channel d's A for state indices g·NPT + i (zeros past N or for a channel past D: their
  // states stay 0 and add nothing).
  __device__ void load_A(const Params& p, int64_t d, int g, bool live) {
#pragma unroll
    for (int i = 0; i < NPT; ++i) {
      const int64_t n = int64_t(g) * NPT + i;
      const bool on = live && n < p.N;
      ar[i] = on ? -expf(p.A_log[d * p.N + n]) : 0.0f;
      a2[i] = ar[i] * kLog2e;
      ai[i] = on && Cx ? p.A_imag[d * p.N + n] : 0.0f;
    }
  }
  // The state from / to a state row (channel d at d·N·SW, state index n at n·SW).
  __device__ void load_state(const float* st, const Params& p, int64_t d, int g, bool live) {
#pragma unroll
    for (int i = 0; i < NPT; ++i) {
      const int64_t n = int64_t(g) * NPT + i;
      const bool on = st && live && n < p.N;
      hr[i] = on ? st[(d * p.N + n) * SW] : 0.0f;
      hi[i] = on && Cx ? st[(d * p.N + n) * SW + 1] : 0.0f;
    }
  }
  __device__ void store_state(float* st, const Params& p, int64_t d, int g, bool live) const {
#pragma unroll
    for (int i = 0; i < NPT; ++i) {
      const int64_t n = int64_t(g) * NPT + i;
      if (!live || n >= p.N) continue;
      st[(d * p.N + n) * SW] = hr[i];
      if constexpr (Cx) st[(d * p.N + n) * SW + 1] = hi[i];
    }
  }
  // exp(δA) of state index i: (er, ei); ei = 0 for a real scan.
  __device__ __forceinline__ void decay(int i, float delta, float& er, float& ei) const {
    const float mag = exp2_approx(delta * a2[i]);
    if constexpr (Cx) {
      float s, c;
      sincos_reduced(delta * ai[i], s, c);
      er = mag * c, ei = mag * s;
    } else {
      er = mag, ei = 0.0f;
    }
  }
  // One token: h ← exp(δA)·h + δx·B. Bt, Ct: this thread's W values of the token's rows. Returns
  // the thread's part of Σ_n C·h (complex: of Re), in n order.
  __device__ __forceinline__ float advance(const float* Bt, const float* Ct, float delta, float dx) {
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < NPT; ++i) {
      float er, ei;
      decay(i, delta, er, ei);
      if constexpr (Cx) {
        const float nr = (er * hr[i] - ei * hi[i]) + dx * Bt[2 * i];
        const float ni = (er * hi[i] + ei * hr[i]) + dx * Bt[2 * i + 1];
        hr[i] = nr, hi[i] = ni;
        s += Ct[2 * i] * nr - Ct[2 * i + 1] * ni;
      } else {
        hr[i] = er * hr[i] + dx * Bt[i];
        s += Ct[i] * hr[i];
      }
    }
    return s;
  }
};

// Σ over the kGroup threads of a channel (neighbouring lanes): every one gets the same bits.
__device__ __forceinline__ float group_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  v += __shfl_xor_sync(0xffffffffu, v, 2);
  return v;
}

// y before the gate from the channel's sum: Σ C·h (complex: 2·Re) + D·x.
template <bool Cx>
__device__ __forceinline__ float finish(float sum, float Dd, float x) {
  return (Cx ? 2.0f * sum : sum) + Dd * x;
}

__device__ __forceinline__ float softplus_dt(float raw, float bias) { return dt_activation(raw, bias, 0.0f, INFINITY); }

// ---- Forward over packed sequences ----

// grid (channel blocks, sequences), kThreads threads: thread (c, g) = (tid / kGroup, tid % kGroup).
template <int NPT, bool Cx>
__global__ void __launch_bounds__(kThreads) scan_kernel(Params p, const float* __restrict__ x, int64_t ldx,
                                                        const float* __restrict__ dt, int64_t lddt,
                                                        const float* __restrict__ B, int64_t ldb,
                                                        const float* __restrict__ C, int64_t ldc,
                                                        const float* __restrict__ z, int64_t ldz, float* __restrict__ y,
                                                        int64_t ldy, float* __restrict__ states, PackedSeqs seqs) {
  using S = Share<NPT, Cx>;
  constexpr int W = S::W, RW = kGroup * W;  // a staged B / C row: every thread's W values
  __shared__ float s_delta[kTile][kChannels], s_x[kTile][kChannels], s_z[kTile][kChannels], s_y[kTile][kChannels];
  __shared__ float s_B[kTile][RW], s_C[kTile][RW];
  const int tid = threadIdx.x, c = tid / kGroup, g = tid % kGroup;
  const int64_t d0 = int64_t(blockIdx.x) * kChannels, d = d0 + c, seq = blockIdx.y;
  const bool live = d < p.D;
  const int64_t bw = p.N * S::SW, t0 = seqs.starts[seq], L = seqs.starts[seq + 1] - t0;
  float* st = states + seqs.slots[seq] * p.D * p.N * S::SW;
  S sh;
  sh.load_A(p, d, g, live);
  sh.load_state(st, p, d, g, live);
  const float Dd = live ? p.Dw[d] : 0.0f;
  for (int64_t tt = 0; tt < L; tt += kTile) {
    const int tl = int(min(int64_t(kTile), L - tt));
    __syncthreads();  // the previous tile's reads are done
    for (int e = tid; e < kTile * kChannels; e += kThreads) {
      const int t = e / kChannels, cc = e % kChannels;
      const int64_t dd = d0 + cc, row = t0 + tt + t;
      const bool on = t < tl && dd < p.D;
      s_x[t][cc] = on ? x[row * ldx + dd] : 0.0f;
      s_delta[t][cc] = on ? softplus_dt(dt[row * lddt + dd], p.bias[dd]) : 0.0f;
      if (z) s_z[t][cc] = on ? z[row * ldz + dd] : 0.0f;
    }
    for (int e = tid; e < kTile * RW; e += kThreads) {
      const int t = e / RW, j = e % RW;
      const int64_t row = t0 + tt + t;
      const bool on = t < tl && j < bw;
      s_B[t][j] = on ? B[row * ldb + j] : 0.0f;
      s_C[t][j] = on ? C[row * ldc + j] : 0.0f;
    }
    __syncthreads();
    for (int t = 0; t < tl; ++t) {
      const float dl = s_delta[t][c], xv = s_x[t][c];
      const float sum = group_sum(sh.advance(&s_B[t][g * W], &s_C[t][g * W], dl, dl * xv));
      if (g == 0) s_y[t][c] = finish<Cx>(sum, Dd, xv);
    }
    __syncthreads();
    for (int e = tid; e < tl * kChannels; e += kThreads) {
      const int t = e / kChannels, cc = e % kChannels;
      const int64_t dd = d0 + cc, row = t0 + tt + t;
      if (dd >= p.D) continue;
      const float v = s_y[t][cc];
      y[row * ldy + dd] = z ? v * silu(s_z[t][cc]) : v;
    }
  }
  sh.store_state(st, p, d, g, live);
}

// One token per sequence: grid (channel blocks, nb).
template <int NPT, bool Cx>
__global__ void __launch_bounds__(kThreads) step_kernel(Params p, const float* __restrict__ x, int64_t ldx,
                                                        const float* __restrict__ dt, int64_t lddt,
                                                        const float* __restrict__ B, int64_t ldb,
                                                        const float* __restrict__ C, int64_t ldc,
                                                        const float* __restrict__ z, int64_t ldz, float* __restrict__ y,
                                                        int64_t ldy, float* __restrict__ states,
                                                        const int64_t* __restrict__ slots) {
  using S = Share<NPT, Cx>;
  constexpr int W = S::W;
  const int tid = threadIdx.x, c = tid / kGroup, g = tid % kGroup;
  const int64_t d = int64_t(blockIdx.x) * kChannels + c, b = blockIdx.y;
  const bool live = d < p.D;
  const int64_t bw = p.N * S::SW;
  float* st = states + slots[b] * p.D * bw;
  S sh;
  sh.load_A(p, d, g, live);
  sh.load_state(st, p, d, g, live);
  float Bt[W], Ct[W];
#pragma unroll
  for (int j = 0; j < W; ++j) {
    const int64_t col = int64_t(g) * W + j;
    Bt[j] = col < bw ? B[b * ldb + col] : 0.0f;
    Ct[j] = col < bw ? C[b * ldc + col] : 0.0f;
  }
  const float dl = live ? softplus_dt(dt[b * lddt + d], p.bias[d]) : 0.0f, xv = live ? x[b * ldx + d] : 0.0f;
  const float sum = group_sum(sh.advance(Bt, Ct, dl, dl * xv));
  sh.store_state(st, p, d, g, live);
  if (g == 0 && live) {
    const float v = finish<Cx>(sum, p.Dw[d], xv);
    y[b * ldy + d] = z ? v * silu(z[b * ldz + d]) : v;
  }
}

// ---- Backward ----

struct Grads {
  float* x;
  int64_t ldx;
  float* dt;
  int64_t lddt;
  float* z;
  int64_t ldz;
  float* state0;  // (rows by slot) or null
};

// Tokens per backward chunk: its states are held in shared memory.
template <bool Cx>
constexpr int back_chunk() {
  return Cx ? 8 : 16;
}

// The backward's shared memory: the chunk's operands, its states h_{t0−1} … h_{t0+KC−1}, and the
// per-channel dB / dC terms, summed over the block's channels at the end of the chunk.
template <int NPT, bool Cx>
struct BackSmem {
  static constexpr int KC = back_chunk<Cx>(), W = Share<NPT, Cx>::W, RW = kGroup * W, CP = kChannels + 1;
  float raw[KC][kChannels], delta[KC][kChannels], x[KC][kChannels], z[KC][kChannels], dy[KC][kChannels],
      ypre[KC][kChannels];
  float B[KC][RW], C[KC][RW];
  float h[KC + 1][W][kThreads];
  float red[KC][2][RW][CP];  // [t][dB | dC][column][channel]
};

// The index of a sequence's chunk k among all sequences' chunks: distinct for every (sequence,
// chunk), below T/KC + count + 1 (Σ_{i<s} ⌈len_i/KC⌉ ≤ ⌊start_s/KC⌋ + s).
__device__ __forceinline__ int64_t checkpoint_index(int64_t start, int64_t seq, int64_t k, int KC) {
  return start / KC + seq + k;
}

// grid (channel blocks, sequences). part_bc (channel blocks, T, 2·bw): the block's dB | dC sums;
// part_param (count, D, 2N + 2): per sequence d Re A (as d A_log), d Im A, dD, d dt_bias.
template <int NPT, bool Cx>
__global__ void __launch_bounds__(kThreads) scan_backward_kernel(
    Params p, const float* __restrict__ x, int64_t ldx, const float* __restrict__ dt, int64_t lddt,
    const float* __restrict__ B, int64_t ldb, const float* __restrict__ C, int64_t ldc, const float* __restrict__ z,
    int64_t ldz, const float* __restrict__ state0, const float* __restrict__ d_y, int64_t lddy,
    const float* __restrict__ d_final, Grads gr, PackedSeqs seqs, float* __restrict__ ckpt,
    float* __restrict__ part_bc, float* __restrict__ part_param) {
  using S = Share<NPT, Cx>;
  using M = BackSmem<NPT, Cx>;
  constexpr int KC = M::KC, W = S::W, RW = M::RW;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  M& m = *reinterpret_cast<M*>(smem_raw);
  const int tid = threadIdx.x, c = tid / kGroup, g = tid % kGroup;
  const int64_t d0 = int64_t(blockIdx.x) * kChannels, d = d0 + c, seq = blockIdx.y;
  const bool live = d < p.D;
  const int64_t bw = p.N * S::SW, SR = p.D * bw;  // a state row
  const int64_t t0 = seqs.starts[seq], L = seqs.starts[seq + 1] - t0, T = seqs.tokens;
  const int64_t chunks = ceil_div(L, KC);
  S sh;
  sh.load_A(p, d, g, live);
  const float Dd = live ? p.Dw[d] : 0.0f, bias = live ? p.bias[d] : 0.0f;

  // Stages chunk k's operands (all of them for the backward; x, δ, B, C for the forward pass).
  const auto stage = [&](int64_t k, bool all) {
    const int64_t tk = k * KC;
    const int tl = int(min(int64_t(KC), L - tk));
    __syncthreads();
    for (int e = tid; e < KC * kChannels; e += kThreads) {
      const int t = e / kChannels, cc = e % kChannels;
      const int64_t dd = d0 + cc, row = t0 + tk + t;
      const bool on = t < tl && dd < p.D;
      const float r = on ? dt[row * lddt + dd] : 0.0f;
      m.x[t][cc] = on ? x[row * ldx + dd] : 0.0f;
      m.delta[t][cc] = on ? softplus_dt(r, p.bias[dd]) : 0.0f;
      if (!all) continue;
      m.raw[t][cc] = r;
      m.dy[t][cc] = on ? d_y[row * lddy + dd] : 0.0f;
      if (z) m.z[t][cc] = on ? z[row * ldz + dd] : 0.0f;
    }
    for (int e = tid; e < KC * RW; e += kThreads) {
      const int t = e / RW, j = e % RW;
      const int64_t row = t0 + tk + t;
      const bool on = t < tl && j < bw;
      m.B[t][j] = on ? B[row * ldb + j] : 0.0f;
      m.C[t][j] = on ? C[row * ldc + j] : 0.0f;
    }
    __syncthreads();
    return tl;
  };
  const auto ckpt_row = [&](int64_t k) { return ckpt + checkpoint_index(t0, seq, k, KC) * SR; };

  // Forward: the state at each chunk's start.
  sh.load_state(state0 ? state0 + seqs.slots[seq] * SR : nullptr, p, d, g, live);
  for (int64_t k = 0; k < chunks; ++k) {
    sh.store_state(ckpt_row(k), p, d, g, live);
    if (k + 1 == chunks) break;
    const int tl = stage(k, false);
    for (int t = 0; t < tl; ++t) {
      const float dl = m.delta[t][c];
      sh.advance(&m.B[t][g * W], &m.C[t][g * W], dl, dl * m.x[t][c]);
    }
  }

  // Backward, chunk by chunk from the last. gh: ∂loss/∂h of the state after the current token.
  float ghr[NPT], ghi[NPT], dAr[NPT] = {}, dAi[NPT] = {};
  sh.load_state(d_final ? d_final + seqs.slots[seq] * SR : nullptr, p, d, g, live);
#pragma unroll
  for (int i = 0; i < NPT; ++i) ghr[i] = sh.hr[i], ghi[i] = sh.hi[i];
  float dD = 0.0f, dbias = 0.0f;
  for (int64_t k = chunks - 1; k >= 0; --k) {
    const int tl = stage(k, true);
    const int64_t tk = k * KC;
    sh.load_state(ckpt_row(k), p, d, g, live);
#pragma unroll
    for (int i = 0; i < NPT; ++i) {
      m.h[0][i * S::SW][tid] = sh.hr[i];
      if constexpr (Cx) m.h[0][2 * i + 1][tid] = sh.hi[i];
    }
    for (int t = 0; t < tl; ++t) {
      const float dl = m.delta[t][c], xv = m.x[t][c];
      const float part = sh.advance(&m.B[t][g * W], &m.C[t][g * W], dl, dl * xv);
      if (z) {
        const float sum = group_sum(part);
        if (g == 0) m.ypre[t][c] = finish<Cx>(sum, Dd, xv);
      }
#pragma unroll
      for (int i = 0; i < NPT; ++i) {
        m.h[t + 1][i * S::SW][tid] = sh.hr[i];
        if constexpr (Cx) m.h[t + 1][2 * i + 1][tid] = sh.hi[i];
      }
    }
    __syncthreads();
    for (int t = tl - 1; t >= 0; --t) {
      const float dl = m.delta[t][c], xv = m.x[t][c], dx = dl * xv;
      float gy = m.dy[t][c];
      const int64_t row = t0 + tk + t;
      if (z) {
        const float zt = m.z[t][c];
        if (g == 0 && live) gr.z[row * gr.ldz + d] = gy * m.ypre[t][c] * silu_grad(zt);
        gy = gy * silu(zt);
      }
      dD += gy * xv;
      const float* Bt = &m.B[t][g * W];
      const float* Ct = &m.C[t][g * W];
      float sum_gB = 0.0f, d_delta = 0.0f;
#pragma unroll
      for (int i = 0; i < NPT; ++i) {
        float er, ei;
        sh.decay(i, dl, er, ei);
        if constexpr (Cx) {
          const float hr = m.h[t + 1][2 * i][tid], hi = m.h[t + 1][2 * i + 1][tid];
          const float hpr = m.h[t][2 * i][tid], hpi = m.h[t][2 * i + 1][tid];
          m.red[t][1][g * W + 2 * i][c] = 2.0f * gy * hr;
          m.red[t][1][g * W + 2 * i + 1][c] = -2.0f * gy * hi;
          const float gr_ = ghr[i] + 2.0f * gy * Ct[2 * i], gi = ghi[i] - 2.0f * gy * Ct[2 * i + 1];
          m.red[t][0][g * W + 2 * i][c] = gr_ * dx;
          m.red[t][0][g * W + 2 * i + 1][c] = gi * dx;
          sum_gB += gr_ * Bt[2 * i] + gi * Bt[2 * i + 1];
          const float dEr = gr_ * hpr + gi * hpi, dEi = gi * hpr - gr_ * hpi;
          const float ar = sh.ar[i], ai = sh.ai[i];
          d_delta += dEr * (ar * er - ai * ei) + dEi * (ar * ei + ai * er);
          dAr[i] += dl * (dEr * er + dEi * ei);
          dAi[i] += dl * (dEi * er - dEr * ei);
          ghr[i] = gr_ * er + gi * ei;
          ghi[i] = gi * er - gr_ * ei;
        } else {
          const float h = m.h[t + 1][i][tid], hp = m.h[t][i][tid];
          m.red[t][1][g * W + i][c] = gy * h;
          const float gn = ghr[i] + gy * Ct[i];
          m.red[t][0][g * W + i][c] = gn * dx;
          sum_gB += gn * Bt[i];
          const float da = gn * hp;
          d_delta += da * er * sh.ar[i];
          dAr[i] += dl * da * er;
          ghr[i] = er * gn;
        }
      }
      sum_gB = group_sum(sum_gB);
      d_delta = group_sum(d_delta) + xv * sum_gB;
      const float d_raw = d_delta * dt_activation_grad(m.raw[t][c], bias, 0.0f, INFINITY);
      dbias += d_raw;
      if (g == 0 && live) {
        gr.x[row * gr.ldx + d] = gy * Dd + dl * sum_gB;
        gr.dt[row * gr.lddt + d] = d_raw;
      }
    }
    __syncthreads();
    // The chunk's dB | dC: the block's channels added in channel order.
    for (int e = tid; e < tl * 2 * bw; e += kThreads) {
      const int t = int(e / (2 * bw)), r = int(e % (2 * bw)), which = r / int(bw), j = r % int(bw);
      float s = 0.0f;
#pragma unroll 8
      for (int cc = 0; cc < kChannels; ++cc) s += m.red[t][which][j][cc];
      part_bc[(int64_t(blockIdx.x) * T + t0 + tk + t) * 2 * bw + r] = s;
    }
  }
  if (!live) return;
  // The block's channels past D left their (zero) terms above; now only live ones write.
  if (gr.state0) {
    for (int i = 0; i < NPT; ++i) sh.hr[i] = ghr[i], sh.hi[i] = ghi[i];
    sh.store_state(gr.state0 + seqs.slots[seq] * SR, p, d, g, live);
  }
  const int64_t PW = 2 * p.N + 2;
  float* pp = part_param + (seq * p.D + d) * PW;
#pragma unroll
  for (int i = 0; i < NPT; ++i) {
    const int64_t n = int64_t(g) * NPT + i;
    if (n >= p.N) continue;
    pp[n] = dAr[i] * sh.ar[i];  // d A_log = d Re A · Re A
    pp[p.N + n] = Cx ? dAi[i] : 0.0f;
  }
  if (g == 0) pp[2 * p.N] = dD, pp[2 * p.N + 1] = dbias;
}

// d_B, d_C (T, bw): the channel blocks' partial sums added in block order.
__global__ void reduce_bc_kernel(const float* __restrict__ part_bc, int64_t blocks, int64_t T, int64_t bw,
                                 float* __restrict__ dB, int64_t lddb, float* __restrict__ dC, int64_t lddc) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= T * 2 * bw) return;
  const int64_t t = e / (2 * bw), r = e % (2 * bw);
  float s = 0.0f;
  for (int64_t b = 0; b < blocks; ++b) s += part_bc[(b * T + t) * 2 * bw + r];
  if (r < bw)
    dB[t * lddb + r] = s;
  else
    dC[t * lddc + r - bw] = s;
}

// The parameter gradients += the sequences' parts, in sequence order.
__global__ void reduce_params_kernel(const float* __restrict__ part, int64_t count, int64_t D, int64_t N,
                                     float* __restrict__ dA_log, float* __restrict__ dA_imag, float* __restrict__ dD,
                                     float* __restrict__ dbias) {
  const int64_t PW = 2 * N + 2, e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= D * PW) return;
  const int64_t d = e / PW, j = e % PW;
  float* out = j < N ? dA_log + d * N + j : j < 2 * N ? (dA_imag ? dA_imag + d * N + j - N : nullptr)
               : j == 2 * N ? dD + d : dbias + d;
  if (!out) return;
  float acc = *out;
  for (int64_t s = 0; s < count; ++s) acc += part[(s * D + d) * PW + j];
  *out = acc;
}

// The state indices a thread holds for d_state N: a power of two, N ≤ kGroup · it.
int states_per_thread(int64_t N) {
  if (N < 1 || N > kMaxStates)
    raise(cat("[selective_scan] d_state ", N, " is not supported on the GPU (1 to ", kMaxStates, ")"));
  int npt = 1;
  while (npt * kGroup < N) npt *= 2;
  return npt;
}

// f(std::integral_constant<int, NPT>, std::bool_constant<complex>) for the run-time N and kind.
template <class F>
void dispatch(int64_t N, bool complex, F&& f) {
  const int npt = states_per_thread(N);
  const auto with = [&](auto npt_c) {
    if (complex)
      f(npt_c, std::true_type{});
    else
      f(npt_c, std::false_type{});
  };
  switch (npt) {
    case 1: with(std::integral_constant<int, 1>{}); break;
    case 2: with(std::integral_constant<int, 2>{}); break;
    case 4: with(std::integral_constant<int, 4>{}); break;
    case 8: with(std::integral_constant<int, 8>{}); break;
    default: with(std::integral_constant<int, 16>{}); break;
  }
}

Params params(const SelectiveScanParams& p) { return {p.channels, p.d_state, p.A_log, p.A_imag, p.D, p.dt_bias}; }

}  // namespace

void selective_scan_forward(const SelectiveScanParams& sp, const float* x, int64_t ldx, const float* dt,
                            int64_t lddt, const float* B, int64_t ldb, const float* C, int64_t ldc, const float* z,
                            int64_t ldz, float* y, int64_t ldy, float* states, const PackedSeqs& seqs) {
  if (seqs.tokens == 0) return;
  const Params p = params(sp);
  const dim3 grid(unsigned(ceil_div(p.D, kChannels)), unsigned(seqs.count));
  dispatch(p.N, p.A_imag != nullptr, [&](auto npt, auto cx) {
    scan_kernel<decltype(npt)::value, decltype(cx)::value>
        <<<grid, kThreads, 0, stream()>>>(p, x, ldx, dt, lddt, B, ldb, C, ldc, z, ldz, y, ldy, states, seqs);
  });
  check_launch("selective_scan");
}

void selective_scan_step(const SelectiveScanParams& sp, const float* x, int64_t ldx, const float* dt, int64_t lddt,
                         const float* B, int64_t ldb, const float* C, int64_t ldc, const float* z, int64_t ldz,
                         float* y, int64_t ldy, float* states, const int64_t* slots, int64_t nb) {
  if (nb == 0) return;
  const Params p = params(sp);
  const dim3 grid(unsigned(ceil_div(p.D, kChannels)), unsigned(nb));
  dispatch(p.N, p.A_imag != nullptr, [&](auto npt, auto cx) {
    step_kernel<decltype(npt)::value, decltype(cx)::value>
        <<<grid, kThreads, 0, stream()>>>(p, x, ldx, dt, lddt, B, ldb, C, ldc, z, ldz, y, ldy, states, slots);
  });
  check_launch("selective_scan");
}

void selective_scan_backward(const SelectiveScanParams& sp, const float* x, int64_t ldx, const float* dt,
                             int64_t lddt, const float* B, int64_t ldb, const float* C, int64_t ldc, const float* z,
                             int64_t ldz, const float* state0, const float* d_y, int64_t lddy, const float* d_final,
                             const SelectiveScanGradPtrs& g, const PackedSeqs& seqs) {
  const int64_t T = seqs.tokens;
  if (T == 0) return;
  const Params p = params(sp);
  const bool cx = p.A_imag != nullptr;
  const int64_t bw = p.N * (cx ? 2 : 1), blocks = ceil_div(p.D, kChannels), KC = cx ? back_chunk<true>() : back_chunk<false>();
  const int64_t PW = 2 * p.N + 2;
  auto ckpt = allocate(size_t((T / KC + seqs.count + 1) * p.D * bw) * sizeof(float), "selective_scan checkpoints");
  auto part_bc = allocate(size_t(blocks * T * 2 * bw) * sizeof(float), "selective_scan dB, dC partial sums");
  auto part_param = allocate(size_t(seqs.count * p.D * PW) * sizeof(float), "selective_scan parameter gradients");
  const Grads gr{g.x, g.ldx, g.dt, g.lddt, g.z, g.ldz, g.state0};
  dispatch(p.N, cx, [&](auto npt, auto cxc) {
    constexpr int NPT = decltype(npt)::value;
    constexpr bool Cx = decltype(cxc)::value;
    const auto kernel = scan_backward_kernel<NPT, Cx>;
    const int smem = int(sizeof(BackSmem<NPT, Cx>));
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem), "selective_scan");
    kernel<<<dim3(unsigned(blocks), unsigned(seqs.count)), kThreads, smem, stream()>>>(
        p, x, ldx, dt, lddt, B, ldb, C, ldc, z, ldz, state0, d_y, lddy, d_final, gr, seqs,
        static_cast<float*>(ckpt.get()), static_cast<float*>(part_bc.get()), static_cast<float*>(part_param.get()));
  });
  check_launch("selective_scan");
  constexpr int kReduceThreads = 256;
  reduce_bc_kernel<<<unsigned(ceil_div(T * 2 * bw, kReduceThreads)), kReduceThreads, 0, stream()>>>(
      static_cast<const float*>(part_bc.get()), blocks, T, bw, g.B, g.ldb, g.C, g.ldc);
  check_launch("selective_scan");
  reduce_params_kernel<<<unsigned(ceil_div(p.D * PW, kReduceThreads)), kReduceThreads, 0, stream()>>>(
      static_cast<const float*>(part_param.get()), seqs.count, p.D, p.N, g.A_log, g.A_imag, g.D, g.dt_bias);
  check_launch("selective_scan");
}

}  // namespace mamba2::cuda
