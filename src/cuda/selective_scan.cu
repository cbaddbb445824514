// The Mamba-1 selective scan on the GPU (ops::selective_scan; the CPU kernels are the oracle).
//
// A channel's recurrence is sequential in t; the parallel work is (sequence, channel, state index).
// A block takes one sequence and kChannels channels; kGroup neighbouring threads share a channel,
// each holding NPT of its state indices (n = g·NPT + i) in registers. A block stages kTile tokens'
// operands in shared memory (x, δ = softplus(dt + bias) and z per channel, B and C rows) with
// coalesced loads issued while it works on the tile before, runs the recurrence over them a few
// tokens at a time unrolled (their loads and exps do not wait for the states, so they overlap),
// leaves each thread's part of Σ_n C·h in shared memory, then writes y's rows from the parts
// (added in thread order), gated, coalesced. exp(δA) is 2^(δ·A·log2 e) by the SFU (A ≤ 0: never
// exp of a positive number); the complex scan's rotation reduces δ·Im A to [−π, π] before the
// SFU's sine and cosine. The decode step runs the same token code and sum order on one token per
// sequence (the same bits as the scan). Each sequence's work is its own: a sequence's bits never
// depend on its batch.
//
// Backward: a block takes one sequence and kChannels channels again. The state at the start of
// every chunk of KC tokens comes from the forward (scan_kernel's checkpoints: kept by training, or
// formed again by the forward kernels without y), and the block walks the chunks from the last (the
// chunk before loading meanwhile): the chunk's states and decays
// recomputed from its checkpoint into registers, then its tokens in reverse (the formulas of
// cpu/selective_scan.cpp), the per-channel sums over n left as parts and finished per (token,
// channel) after the chunk. dB and dC sum over channels: a block adds its kChannels channels'
// terms in channel order and leaves its partial sums; a second kernel adds the blocks' partials in
// block order. The parameter gradients are left per sequence and added to the gradients in
// sequence order, as the CPU does. The same bits every run.
#include <cmath>
#include <initializer_list>
#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "cuda/runtime.h"

namespace mamba2::cuda {

namespace {

constexpr int kGroup = 4;                     // threads of a channel
constexpr int kChannels = 32;                 // channels of a block
constexpr int kThreads = kGroup * kChannels;  // 128
// The per-(token, channel) epilogues: thread tid takes channel tid % kChannels of tokens
// tid / kChannels, + kRows, ... (a warp's stores coalesced along the channels).
constexpr int kRows = kThreads / kChannels;
// The forward's tile and occupancy: kTile 16 with 6 blocks an SM (80 registers) against kTile 32's
// 4 (128 registers, spilling): b8 0.57 → 0.53 ms, the 2.8b prefill 49.7 → 48.2 ms, the batch-1
// 130m prefill 5.4 → 5.6 ms (fewer tokens between barriers; H200, 2026-12-04). kTile 8 or 5 blocks
// at kTile 32 did no better. Neither changes a token's arithmetic (kTile moves the segments' cut
// only past 64 · 256 tokens).
constexpr int kTile = 16;  // tokens the forward stages at a time
// Blocks an SM the forward's registers leave room for: 6 at d_state ≤ 16 (80 registers); the
// complex form 4 (128: at 80 its kernels spilled, and b8 ran 1.19 → 1.13 ms, b1 0.226 → 0.189 ms;
// H200, 2026-12-05); more state indices a thread would spill, so they take what they need.
constexpr int forward_blocks(int npt, bool cx) { return npt <= 4 ? (cx ? 4 : 6) : 1; }
// The backward's: 3 at d_state ≤ 16 (168 registers: the complex form's B and C rows, loaded at
// once, took it to 200 and 2 blocks otherwise), what more state indices need beyond.
constexpr int backward_blocks(int npt) { return npt <= 4 ? 3 : 1; }
static_assert(kTile % kRows == 0);
constexpr int kMaxStates = 64;                // d_state ≤ kGroup · 16
// The backward walks a sequence back in chunks of KC tokens, each from the state at its start (a
// checkpoint the forward scan leaves); KC tokens' states and decays are held in registers at once.
__host__ __device__ constexpr int checkpoint_interval(bool complex) { return complex ? 4 : 8; }
// The index of a sequence's chunk k among all sequences' chunks: distinct for every (sequence,
// chunk), below T/KC + count + 1 (Σ_{i<s} ⌈len_i/KC⌉ ≤ ⌊start_s/KC⌋ + s).
__host__ __device__ inline int64_t checkpoint_index(int64_t start, int64_t seq, int64_t k, int KC) {
  return start / KC + seq + k;
}

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
    store_run(st + (d * p.N + int64_t(g) * NPT) * SW, states_of(p, g), live);
  }
  // How many of group thread g's NPT state indices lie below N.
  static __device__ int states_of(const Params& p, int g) { return int(min(int64_t(NPT), p.N - int64_t(g) * NPT)); }
  // The first `states` of the thread's states to q (its first value's place in a state row).
  __device__ void store_run(float* q, int states, bool live) const {
#pragma unroll
    for (int i = 0; i < NPT; ++i) {
      if (!live || i >= states) continue;
      q[i * SW] = hr[i];
      if constexpr (Cx) q[i * SW + 1] = hi[i];
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
  // the thread's part of Σ_n C·h (complex: of Re), in n order; WithC false (a segment's summary):
  // the state alone, Ct unread. er_out, ei_out: the decays too (the backward's reverse pass).
  template <bool WithC = true>
  __device__ __forceinline__ float advance(const float* Bt, const float* Ct, float delta, float dx,
                                           float* er_out = nullptr, float* ei_out = nullptr) {
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < NPT; ++i) {
      float er, ei;
      decay(i, delta, er, ei);
      if (er_out) er_out[i] = er, ei_out[i] = ei;
      // The state's update as written fmafs: every kernel that runs it (the scan with or without
      // y, the step, the backward) forms the same bits, which no compiler contraction may vary.
      if constexpr (Cx) {
        const float nr = fmaf(er, hr[i], fmaf(-ei, hi[i], dx * Bt[2 * i]));
        const float ni = fmaf(er, hi[i], fmaf(ei, hr[i], dx * Bt[2 * i + 1]));
        hr[i] = nr, hi[i] = ni;
        if constexpr (WithC) s += Ct[2 * i] * nr - Ct[2 * i + 1] * ni;
      } else {
        hr[i] = fmaf(er, hr[i], dx * Bt[i]);
        if constexpr (WithC) s += Ct[i] * hr[i];
      }
    }
    return s;
  }
  // exp(A·Σδ) of state index i, the product of a segment's decays: Σδ summed in double, and the
  // rotation's angle Σδ·Im A formed and reduced by 2π in double (in float its rounding alone would
  // be ~1e-4 of a radian at the angles a long segment reaches).
  __device__ __forceinline__ void decay_total(int i, double delta_sum, float& er, float& ei) const {
    const float mag = exp2_approx(float(delta_sum) * a2[i]);
    if constexpr (Cx) {
      const double angle = delta_sum * double(ai[i]);
      const double r = angle - rint(angle * 0.15915494309189535) * 6.283185307179586;
      float s, c;
      __sincosf(float(r), &s, &c);
      er = mag * c, ei = mag * s;
    } else {
      er = mag, ei = 0.0f;
    }
  }
};

// y before the gate from the channel's sum: Σ C·h (complex: 2·Re) + D·x, as one written fmaf (left
// to the compiler, the complex form's contraction followed the surrounding code and the step and
// the scan differed in the last bit).
template <bool Cx>
__device__ __forceinline__ float finish(float sum, float Dd, float x) {
  return fmaf(Dd, x, Cx ? 2.0f * sum : sum);
}

__device__ __forceinline__ float softplus_dt(float raw, float bias) { return dt_activation(raw, bias, 0.0f, INFINITY); }

// A channel's sum from its kGroup threads' parts (part[0 … kGroup)), added in thread order: the
// same by the scan, the step and the backward.
__device__ __forceinline__ float group_total(const float* part) {
  static_assert(kGroup == 4);
  return ((part[0] + part[1]) + part[2]) + part[3];
}

// ---- Staging ----

// A tile of TL tokens' operands, loaded into registers while the block works on the tile before,
// then stored to shared memory by the kernel. A thread takes VW neighbouring channels of a row of a
// per-channel source (kChannels / VW threads a row, their loads coalesced) and groups of 4
// neighbouring values of B's and C's rows. Sources.vec (every source on 16 bytes, D a multiple of
// 4, bw a multiple of 4) loads each piece at once (LDG.64/.128: the scalar loads and their address
// arithmetic were a fifth of the forward's instructions, SASS 2026-12-04); otherwise value by value,
// the same values in the same places.
struct Sources {
  const float *x, *dt, *B, *C, *z, *dy;
  int64_t ldx, lddt, ldb, ldc, ldz, lddy;
  bool vec;
};
// The staged loads' and the backward's stores' offsets within a tile are 32-bit (t·ld + column, t <
// kTile), as are the token rows: strides up to 2^26 elements, fewer than 2^31 tokens.
constexpr int64_t kMaxStride = int64_t(1) << 26;
void check_strides(int64_t tokens, std::initializer_list<int64_t> lds) {
  if (tokens >= (int64_t(1) << 31) - kTile) raise(cat("[selective_scan] ", tokens, " tokens: 2^31 or more"));
  for (const int64_t ld : lds)
    if (ld < 0 || ld > kMaxStride) raise(cat("[selective_scan] row stride ", ld, " outside [0, ", kMaxStride, "]"));
}
// Whether Sources.vec may hold: every row of every source given starts on 16 bytes.
bool vectorizable(const Sources& s, int64_t D, int64_t bw) {
  const auto ok = [](const float* q, int64_t ld) { return !q || aligned16(q, ld, sizeof(float)); };
  return D % 4 == 0 && bw % 4 == 0 && ok(s.x, s.ldx) && ok(s.dt, s.lddt) && ok(s.B, s.ldb) && ok(s.C, s.ldc) &&
         ok(s.z, s.ldz) && ok(s.dy, s.lddy);
}
template <int TL, int RW>
struct Staged {
  static constexpr int kCh = TL * kChannels / kThreads;     // per-channel values a thread
  static constexpr int VW = kCh >= 4 ? 4 : kCh;             // of them neighbouring channels
  static constexpr int kLane = kChannels / VW;              // threads a row
  static constexpr int kStep = kThreads / kLane;            // rows between a thread's pieces
  static constexpr int kG = (TL * RW / 4 + kThreads - 1) / kThreads;  // B (and C) groups a thread
  static_assert(kCh * kThreads == TL * kChannels && kCh % VW == 0 && RW % 4 == 0);
  float x[kCh], dt[kCh], z[kCh], dy[kCh], B[4 * kG], C[4 * kG];

  // Value i of a per-channel source: token row0 + ch_row(tid, i) of channel d0 + ch_col(tid, i).
  static __device__ __forceinline__ int ch_row(int tid, int i) { return tid / kLane + (i / VW) * kStep; }
  static __device__ __forceinline__ int ch_col(int tid, int i) { return (tid % kLane) * VW + i % VW; }
  // Group k of B's and C's values: token e / (RW / 4), values 4·(e % (RW / 4)) … + 3, e = k·kThreads + tid.
  static __device__ __forceinline__ int bc_group(int tid, int k) { return k * kThreads + tid; }

  // One source's pieces (zeros past the tile's tl rows, past the block's cw channels, or for a null
  // source): rows row0 … of channels d0 …. Row, stride and channel in 32 bits (the launchers check
  // them), the tile's base row·ld in 64: a piece's address is a few multiply-adds from the source
  // pointer. Formed in 64 bits per piece, the addresses and bounds were a seventh of the backward's
  // instructions (ncu source counters, 2026-12-05).
  __device__ static void load_channels(float* out, const float* p, int ld, bool vec, int row0, int tl, int d0,
                                       int cw, int tid) {
    if (!p) {
#pragma unroll
      for (int i = 0; i < kCh; ++i) out[i] = 0.0f;
      return;
    }
    const float* base = p + (int64_t(row0) * ld + d0);
#pragma unroll
    for (int r = 0; r < kCh / VW; ++r) {
      const int t = ch_row(tid, r * VW), col = ch_col(tid, r * VW);
      const float* q = base + (t * ld + col);
      const bool row_on = t < tl;
      if (vec) {
        const bool on = row_on && col < cw;  // D % 4 == 0: a piece is wholly in or out
        if constexpr (VW == 4) {
          const float4 v = on ? *reinterpret_cast<const float4*>(q) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
          out[4 * r] = v.x, out[4 * r + 1] = v.y, out[4 * r + 2] = v.z, out[4 * r + 3] = v.w;
        } else if constexpr (VW == 2) {
          const float2 v = on ? *reinterpret_cast<const float2*>(q) : make_float2(0.0f, 0.0f);
          out[2 * r] = v.x, out[2 * r + 1] = v.y;
        } else {
          out[r] = on ? *q : 0.0f;
        }
      } else {
#pragma unroll
        for (int u = 0; u < VW; ++u) out[r * VW + u] = row_on && col + u < cw ? q[u] : 0.0f;
      }
    }
  }
  __device__ static void load_groups(float* out, const float* p, int ld, bool vec, int row0, int tl, int bw,
                                     int tid) {
    if (!p) {
#pragma unroll
      for (int i = 0; i < 4 * kG; ++i) out[i] = 0.0f;
      return;
    }
    const float* base = p + int64_t(row0) * ld;
#pragma unroll
    for (int k = 0; k < kG; ++k) {
      const int e = bc_group(tid, k), t = e / (RW / 4), j = 4 * (e % (RW / 4));
      const float* q = base + (t * ld + j);
      const bool row_on = e < TL * RW / 4 && t < tl;
      if (vec) {
        const float4 v = row_on && j < bw ? *reinterpret_cast<const float4*>(q) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        out[4 * k] = v.x, out[4 * k + 1] = v.y, out[4 * k + 2] = v.z, out[4 * k + 3] = v.w;
      } else {
#pragma unroll
        for (int u = 0; u < 4; ++u) out[4 * k + u] = row_on && j + u < bw ? q[u] : 0.0f;
      }
    }
  }
  // Rows row0 … row0 + tl − 1 of channels d0 … (zeros past them); z, C and dy only when given.
  __device__ void load(const Sources& s, int64_t row0, int tl, int64_t d0, int64_t D, int64_t bw, int tid) {
    const int r = int(row0), c0 = int(d0), cw = int(min(D - d0, int64_t(kChannels)));
    load_channels(x, s.x, int(s.ldx), s.vec, r, tl, c0, cw, tid);
    load_channels(dt, s.dt, int(s.lddt), s.vec, r, tl, c0, cw, tid);
    load_channels(z, s.z, int(s.ldz), s.vec, r, tl, c0, cw, tid);
    load_channels(dy, s.dy, int(s.lddy), s.vec, r, tl, c0, cw, tid);
    load_groups(B, s.B, int(s.ldb), s.vec, r, tl, int(bw), tid);
    load_groups(C, s.C, int(s.ldc), s.vec, r, tl, int(bw), tid);
  }
  // f(t, channel, i) for each piece of this thread's per-channel values (values i … i + VW − 1, of
  // channels channel …); g(t, j, k) for each group of its B / C values (values k … k + 3, of
  // columns j …). The kernels store a piece or group at once (store_piece): element by element, the
  // pieces of a warp's rows met in the same banks (2- to 4-way conflicts).
  template <class F, class G>
  __device__ void each(int tid, F&& f, G&& g) const {
#pragma unroll
    for (int i = 0; i < kCh; i += VW) f(ch_row(tid, i), ch_col(tid, i), i);
#pragma unroll
    for (int k = 0; k < kG; ++k) {
      const int e = bc_group(tid, k);
      if (e < TL * RW / 4) g(e / (RW / 4), 4 * (e % (RW / 4)), 4 * k);
    }
  }
};

// n values to shared memory at dst (on n·4 bytes) in one store.
template <int n>
__device__ __forceinline__ void store_piece(float* dst, const float* v) {
  if constexpr (n == 4)
    *reinterpret_cast<float4*>(dst) = make_float4(v[0], v[1], v[2], v[3]);
  else if constexpr (n == 2)
    *reinterpret_cast<float2*>(dst) = make_float2(v[0], v[1]);
  else
    *dst = v[0];
}
// n values from shared memory at src (on n·4 bytes), a float4 (or float2) at a time: read one
// by one, the backward's B and C rows took 8 loads a token where 2 do.
template <int n>
__device__ __forceinline__ void load_piece(float* v, const float* src) {
#pragma unroll
  for (int j = 0; j + 4 <= n; j += 4) {
    const float4 q = *reinterpret_cast<const float4*>(src + j);
    v[j] = q.x, v[j + 1] = q.y, v[j + 2] = q.z, v[j + 3] = q.w;
  }
  if constexpr (n % 4 == 2) {
    const float2 q = *reinterpret_cast<const float2*>(src + n - 2);
    v[n - 2] = q.x, v[n - 1] = q.y;
  } else if constexpr (n % 4 == 1) {
    v[n - 1] = src[n - 1];
  }
}
// δ = softplus(raw + bias) of n channels, stored as store_piece does.
template <int n>
__device__ __forceinline__ void store_delta(float* dst, const float* raw, const float* bias) {
  float v[n];
#pragma unroll
  for (int u = 0; u < n; ++u) v[u] = softplus_dt(raw[u], bias[u]);
  store_piece<n>(dst, v);
}

// ---- Segments: a sequence's tokens scanned by several blocks at once ----
//
// One sequence gives only D/kChannels blocks (48 at 130m, 160 at 2.8b: the scan was half of a 1×2048
// prefill, bench/RESULTS.md), each walking all its tokens in order. A sequence longer than kSegment
// tokens is cut into segments of segment_length(L) tokens — a function of its own length, so the
// cut, and its bits, never depend on the batch — and three kernels run it:
// 1. summary_kernel: every segment but the last at once, the first from the sequence's state, the
//    others from zero: its end state, and (after the first) the product P of its decays exp(δA);
//    the scan's token code without C, y or z; P = exp(A·Σδ) (Share::decay_total).
// 2. combine_kernel: per (sequence, channel, state index), in segment order, the state each segment
//    starts from: h_{j+1} = P_j·h_j + e_j (e_j: segment j's end state from zero).
// 3. scan_kernel: every segment at once from its start state, as a sequence alone would run; the
//    last leaves the sequence's state.
// A sequence of one segment runs scan_kernel alone, as before: its bits are the step's, token by
// token. A longer one's later segments start from states formed through the products, which
// round differently from the token-by-token chain (a few 1e-7).
constexpr int64_t kSegment = 256, kMaxSegments = 64;

__host__ __device__ inline int64_t segment_length(int64_t L) {
  const int64_t s = ceil_div(ceil_div(L, kMaxSegments), int64_t(kTile)) * kTile;
  return s > kSegment ? s : kSegment;
}
__host__ __device__ inline int64_t segment_count(int64_t L) { return L > 0 ? ceil_div(L, segment_length(L)) : 0; }

// The segments' buffer rows: segment j of sequence seq at ((seq·maxseg + j)·D)·bw, laid out as a
// state row. Entry j ≥ 1 first holds segment j − 1's summary, then (after combine_kernel) the state
// segment j starts from; entry 0 the sequence's own start state.
__device__ __forceinline__ float* segment_row(float* buf, int64_t seq, int64_t j, int64_t maxseg, int64_t D,
                                             int64_t bw) {
  return buf + (seq * maxseg + j) * D * bw;
}

// grid (channel blocks, maxseg, sequences), kThreads threads, as scan_kernel.
template <int NPT, bool Cx>
__global__ void __launch_bounds__(kThreads, forward_blocks(NPT, Cx)) summary_kernel(Params p, Sources src, const float* __restrict__ states,
                                                           float* __restrict__ seg_h, float* __restrict__ seg_P,
                                                           int64_t maxseg, PackedSeqs seqs) {
  using S = Share<NPT, Cx>;
  constexpr int W = S::W, RW = kGroup * W, U = Cx ? 4 : 8;
  using St = Staged<kTile, RW>;
  __shared__ __align__(16) float s_B[kTile][RW];
  __shared__ __align__(16) float s_delta[kTile][kChannels], s_x[kTile][kChannels];
  __shared__ float s_bias[kChannels];
  const int tid = threadIdx.x, c = tid / kGroup, g = tid % kGroup;
  const int64_t d0 = int64_t(blockIdx.x) * kChannels, d = d0 + c, j = blockIdx.y, seq = blockIdx.z;
  const int64_t Lq = seqs.starts[seq + 1] - seqs.starts[seq];
  if (j + 1 >= segment_count(Lq)) return;  // the last segment (or the only one) needs no summary
  const bool live = d < p.D;
  const int64_t bw = p.N * S::SW, SL = segment_length(Lq), t0 = seqs.starts[seq] + j * SL;
  S sh;
  sh.load_A(p, d, g, live);
  sh.load_state(j == 0 ? states + seqs.slots[seq] * p.D * bw : nullptr, p, d, g, live);
  double delta_sum = 0.0;
  if (tid < kChannels) s_bias[tid] = d0 + tid < p.D ? p.bias[d0 + tid] : 0.0f;
  St stage{};
  const auto put = [&] {
    stage.each(
        tid,
        [&](int t, int cc, int i) {
          store_piece<St::VW>(&s_x[t][cc], &stage.x[i]);
          store_delta<St::VW>(&s_delta[t][cc], &stage.dt[i], &s_bias[cc]);
        },
        [&](int t, int j, int k) { store_piece<4>(&s_B[t][j], &stage.B[k]); });
  };
  const Sources xs{src.x, src.dt, src.B, nullptr, nullptr, nullptr, src.ldx, src.lddt, src.ldb, 0, 0, 0, src.vec};
  const int64_t tiles = SL / kTile;  // a whole segment: SL is a multiple of kTile
  stage.load(xs, t0, kTile, d0, p.D, bw, tid);
  __syncthreads();  // s_bias
  put();
  __syncthreads();
  for (int64_t k = 0; k < tiles; ++k) {
    const bool more = k + 1 < tiles;
    if (more) stage.load(xs, t0 + (k + 1) * kTile, kTile, d0, p.D, bw, tid);
#pragma unroll
    for (int t0u = 0; t0u < kTile; t0u += U) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const float dl = s_delta[t0u + u][c];
        delta_sum += dl;
        sh.template advance<false>(&s_B[t0u + u][g * W], nullptr, dl, dl * s_x[t0u + u][c]);
      }
    }
    __syncthreads();
    if (more) {
      put();
      __syncthreads();
    }
  }
  float* row = segment_row(seg_h, seq, j + 1, maxseg, p.D, bw);
  sh.store_state(row, p, d, g, live);
  if (j > 0) {
    S prod = sh;
#pragma unroll
    for (int i = 0; i < NPT; ++i) sh.decay_total(i, delta_sum, prod.hr[i], prod.hi[i]);
    prod.store_state(segment_row(seg_P, seq, j + 1, maxseg, p.D, bw), p, d, g, live);
  }
}

// grid (⌈D·N / 256⌉, sequences), a thread per (channel, state index): the segments' start states,
// in segment order.
template <bool Cx>
__global__ void combine_kernel(Params p, const float* __restrict__ states, float* __restrict__ seg_h,
                               const float* __restrict__ seg_P, int64_t maxseg, PackedSeqs seqs) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, seq = blockIdx.y;
  if (e >= p.D * p.N) return;
  const int64_t nseg = segment_count(seqs.starts[seq + 1] - seqs.starts[seq]);
  if (nseg <= 1) return;
  constexpr int SW = Cx ? 2 : 1;
  const int64_t bw = p.N * SW, off = e * SW;  // (d·N + n)·SW
  const float* st = states + seqs.slots[seq] * p.D * bw;
  float* first = segment_row(seg_h, seq, 0, maxseg, p.D, bw);
  first[off] = st[off];
  if constexpr (Cx) first[off + 1] = st[off + 1];
  float* h1 = segment_row(seg_h, seq, 1, maxseg, p.D, bw);
  float hr = h1[off], hi = Cx ? h1[off + 1] : 0.0f;
  for (int64_t j = 2; j < nseg; ++j) {
    float* h = segment_row(seg_h, seq, j, maxseg, p.D, bw);
    const float* P = segment_row(const_cast<float*>(seg_P), seq, j, maxseg, p.D, bw);
    if constexpr (Cx) {
      const float nr = (P[off] * hr - P[off + 1] * hi) + h[off];
      const float ni = (P[off] * hi + P[off + 1] * hr) + h[off + 1];
      hr = nr, hi = ni;
      h[off] = hr, h[off + 1] = hi;
    } else {
      hr = P[off] * hr + h[off];
      h[off] = hr;
    }
  }
}

// ---- Forward over packed sequences ----

// grid (channel blocks, sequences), kThreads threads: thread (c, g) = (tid / kGroup, tid % kGroup).
// Tokens in tiles of kTile: the tile's recurrence, U tokens at a time unrolled (their loads and
// exps independent of the states, so they overlap), each thread's part of Σ C·h to shared memory;
// then y's rows from the parts, gated, coalesced; the next tile's operands load meanwhile. Out
// false: the states alone (no C, z or y), for the checkpoints. ckpt (when set): the state before
// every KC-th token of each sequence, at its checkpoint_index (the backward's chunk starts); U is
// KC, and segments and tiles start on multiples of it. y in YT: the next projection's input dtype
// (its rounding done here rather than by a cast over y).
template <int NPT, bool Cx, bool Out, class YT>
__global__ void __launch_bounds__(kThreads, forward_blocks(NPT, Cx)) scan_kernel(Params p, Sources src, YT* __restrict__ y, int64_t ldy,
                                                        float* __restrict__ states, const float* __restrict__ seg_h,
                                                        int64_t maxseg, PackedSeqs seqs, float* __restrict__ ckpt) {
  using S = Share<NPT, Cx>;
  constexpr int W = S::W, RW = kGroup * W, U = checkpoint_interval(Cx);
  static_assert(kTile % U == 0 && kSegment % U == 0);
  using St = Staged<kTile, RW>;
  __shared__ __align__(16) float s_B[kTile][RW];
  __shared__ __align__(16) float s_C[kTile][RW];
  __shared__ __align__(16) float s_delta[kTile][kChannels], s_x[kTile][kChannels], s_z[kTile][kChannels];
  __shared__ float s_part[kTile][kThreads];
  __shared__ float s_D[kChannels], s_bias[kChannels];
  const int tid = threadIdx.x, c = tid / kGroup, g = tid % kGroup, ec = tid % kChannels;
  const int64_t d0 = int64_t(blockIdx.x) * kChannels, d = d0 + c, j = blockIdx.y, seq = blockIdx.z;
  const int64_t Lq = seqs.starts[seq + 1] - seqs.starts[seq], nseg = segment_count(Lq), SL = segment_length(Lq);
  if (j >= nseg) return;
  const bool live = d < p.D;
  const int64_t bw = p.N * S::SW, t0 = seqs.starts[seq] + j * SL, L = min(SL, Lq - j * SL);
  float* st = states + seqs.slots[seq] * p.D * bw;
  S sh;
  sh.load_A(p, d, g, live);
  // Several segments: each starts from its row (the sequence's own state copied to the first), as
  // the last one writes the sequence's state meanwhile.
  sh.load_state(nseg > 1 ? segment_row(const_cast<float*>(seg_h), seq, j, maxseg, p.D, bw) : st, p, d, g, live);
  if (tid < kChannels) {
    const bool on = d0 + tid < p.D;
    s_D[tid] = on ? p.Dw[d0 + tid] : 0.0f;
    s_bias[tid] = on ? p.bias[d0 + tid] : 0.0f;
  }
  St stage{};
  const auto put = [&] {
    stage.each(
        tid,
        [&](int t, int cc, int i) {
          store_piece<St::VW>(&s_x[t][cc], &stage.x[i]);
          store_delta<St::VW>(&s_delta[t][cc], &stage.dt[i], &s_bias[cc]);
          if constexpr (Out) store_piece<St::VW>(&s_z[t][cc], &stage.z[i]);
        },
        [&](int t, int j, int k) {
          store_piece<4>(&s_B[t][j], &stage.B[k]);
          if constexpr (Out) store_piece<4>(&s_C[t][j], &stage.C[k]);
        });
  };
  // The state before every U-th token, at its chunk's checkpoint: the segment's chunks come in
  // order, a state row apart, so a running pointer to this thread's values of the next one (the
  // row's index formed at each checkpoint was 3.6 % of the forward's instructions; ncu 2026-12-05).
  float* ck = ckpt ? ckpt + checkpoint_index(seqs.starts[seq], seq, j * SL / U, U) * p.D * bw +
                         (d * p.N + int64_t(g) * NPT) * S::SW
                   : nullptr;
  const int mine = S::states_of(p, g);
  const auto checkpoint = [&] {
    sh.store_run(ck, mine, live);
    ck += p.D * bw;
  };
  const int64_t tiles = ceil_div(L, kTile);
  if (tiles > 0) stage.load(src, t0, int(min(int64_t(kTile), L)), d0, p.D, bw, tid);
  __syncthreads();  // s_bias
  if (tiles > 0) put();
  __syncthreads();
  for (int64_t k = 0; k < tiles; ++k) {
    const int tl = int(min(int64_t(kTile), L - k * kTile));
    const bool more = k + 1 < tiles;
    if (more) stage.load(src, t0 + (k + 1) * kTile, int(min(int64_t(kTile), L - (k + 1) * kTile)), d0, p.D, bw, tid);
    const auto token = [&](int t) {
      const float dl = s_delta[t][c];
      if constexpr (Out)
        s_part[t][tid] = sh.advance(&s_B[t][g * W], &s_C[t][g * W], dl, dl * s_x[t][c]);
      else
        sh.template advance<false>(&s_B[t][g * W], nullptr, dl, dl * s_x[t][c]);
    };
    int t = 0;
    for (; t + U <= tl; t += U) {
      if (ckpt) checkpoint();
#pragma unroll
      for (int u = 0; u < U; ++u) token(t + u);
    }
    for (; t < tl; ++t) {
      if (ckpt && t % U == 0) checkpoint();
      token(t);
    }
    __syncthreads();
    if (Out && d0 + ec < p.D) {
      YT* yr = y + (t0 + k * kTile) * ldy + d0 + ec;
      const int ldy32 = int(ldy);
#pragma unroll
      for (int i = 0; i < kTile / kRows; ++i) {
        const int tt = tid / kChannels + i * kRows;
        if (tt >= tl) break;
        const float v = finish<Cx>(group_total(&s_part[tt][ec * kGroup]), s_D[ec], s_x[tt][ec]);
        store_f32(yr + tt * ldy32, src.z ? v * silu(s_z[tt][ec]) : v);
      }
    }
    __syncthreads();
    if (more) {
      put();
      __syncthreads();
    }
  }
  if (j == nseg - 1) sh.store_state(st, p, d, g, live);
}

// One token per sequence: grid (channel blocks, nb); the scan's token code and sum order. With
// dt_w (channels, R) the raw dt is first dt_w[d]·src.dt[b] (src.dt: dt_proj's input): thread g of
// the channel's group sums the float4 pieces q ≡ g (mod kGroup) of the row (elements 4q..4q+3),
// in order, and every thread of the group adds the kGroup parts in g order (the 2.8b's dt_proj is
// 3.3 MB: a row split over the group, its pieces loaded at once, streams it at a bandwidth the
// serial r loop did not reach). y in YT (the next projection's input dtype). Launched overlapped:
// A (its exp), D and dt_w's first kDtPieces pieces a thread (the rest of the row into the L2), the
// weights, are read before the wait for the previous kernel, and the block's state lines are
// prefetched into the L2 (a hint, whatever slots[b] reads then: the states, written by this kernel a
// step before, are read after the wait). It lets out_proj start once past its own wait (common.cuh:
// let start at once, out_proj ran the batch-1 steps 2 % (2.8b) and 4 % (130m) slower).
// float4 pieces of dt_w a thread holds at once: R ≤ 64 in one pass (130m: 48). More held ran the
// 130m's batch-16 step slower (128 registers a thread: two waves of blocks), and 12 (the 2.8b's 160
// in one pass: 168 registers) its batch-16 step 10 % slower, its batch 1 no faster (H200, 2026-12-04).
constexpr int kDtPieces = 4;

template <int NPT, bool Cx, class YT>
__global__ void __launch_bounds__(kThreads) step_kernel(Params p, Sources src, const float* __restrict__ dt_w, int R,
                                                        bool dt_vec, YT* __restrict__ y, int64_t ldy,
                                                        float* __restrict__ states,
                                                        const int64_t* __restrict__ slots) {
  using S = Share<NPT, Cx>;
  constexpr int W = S::W;
  const int tid = threadIdx.x, c = tid / kGroup, g = tid % kGroup;
  const int64_t d = int64_t(blockIdx.x) * kChannels + c, b = blockIdx.y;
  const bool live = d < p.D;
  const int64_t bw = p.N * S::SW;
  TRACE_KERNEL;
  S sh;
  sh.load_A(p, d, g, live);
  const float Dd = live ? p.Dw[d] : 0.0f, bias = live ? p.bias[d] : 0.0f;
  constexpr int64_t kPass = 4 * kGroup * kDtPieces;
  const float* wr = dt_w && live ? dt_w + d * R : nullptr;
  float4 wv[kDtPieces];
  if (wr) {
#pragma unroll
    for (int j = 0; j < kDtPieces; ++j) wv[j] = load_f32x4(wr, 4 * (g + kGroup * j), R, dt_vec);
    for (int64_t line = kPass / 32 + g; line * 32 < R; line += kGroup) prefetch_l2(wr + line * 32);
  }
  float* st = states + slots[b] * p.D * bw;  // the sequence's state row
  {
    // The block's kChannels state rows are contiguous: one 128-byte line a thread.
    const int64_t lines = ceil_div(int64_t(kChannels) * bw * int64_t(sizeof(float)), int64_t(128));
    const float* first = st + int64_t(blockIdx.x) * kChannels * bw;
    const int64_t last = (p.D - int64_t(blockIdx.x) * kChannels) * bw;  // floats left in the rows
    if (tid < lines && tid * 32 < last) prefetch_l2(first + tid * 32);
  }
  wait_for_previous();
  start_next();
  sh.load_state(st, p, d, g, live);
  float Bt[W], Ct[W];
#pragma unroll
  for (int j = 0; j < W; ++j) {
    const int64_t col = int64_t(g) * W + j;
    Bt[j] = col < bw ? src.B[b * src.ldb + col] : 0.0f;
    Ct[j] = col < bw ? src.C[b * src.ldc + col] : 0.0f;
  }
  const int base = (tid % 32) & ~(kGroup - 1);  // the channel's first lane in the warp
  float raw = 0.0f;
  if (dt_w) {
    float acc = 0.0f;
    if (wr) {
      const float* in = src.dt + b * src.lddt;
      for (int64_t r0 = 0; r0 < R; r0 += kPass) {
        if (r0 > 0) {
#pragma unroll
          for (int j = 0; j < kDtPieces; ++j) wv[j] = load_f32x4(wr, r0 + 4 * (g + kGroup * j), R, dt_vec);
        }
#pragma unroll
        for (int j = 0; j < kDtPieces; ++j) {
          const float4 iv = load_f32x4(in, r0 + 4 * (g + kGroup * j), R, dt_vec);
          acc = fmaf(wv[j].x, iv.x, acc);
          acc = fmaf(wv[j].y, iv.y, acc);
          acc = fmaf(wv[j].z, iv.z, acc);
          acc = fmaf(wv[j].w, iv.w, acc);
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kGroup; ++j) raw += __shfl_sync(0xffffffffu, acc, base + j);
  } else if (live) {
    raw = src.dt[b * src.lddt + d];
  }
  const float dl = live ? softplus_dt(raw, bias) : 0.0f;
  const float xv = live ? src.x[b * src.ldx + d] : 0.0f;
  const float part = sh.advance(Bt, Ct, dl, dl * xv);
  float parts[kGroup];
#pragma unroll
  for (int j = 0; j < kGroup; ++j) parts[j] = __shfl_sync(0xffffffffu, part, base + j);
  sh.store_state(st, p, d, g, live);
  if (g == 0 && live) {
    const float v = finish<Cx>(group_total(parts), Dd, xv);
    store_f32(y + b * ldy + d, src.z ? v * silu(src.z[b * src.ldz + d]) : v);
  }
}

// ---- Backward ----

struct Grads {
  float* x;
  int64_t ldx;
  float* dt;
  int64_t lddt;
  void* z;        // in z_dtype: F32, or BF16 / F16 when only in_proj's backward reads it
  DType z_dtype;
  int64_t ldz;
  float* state0;  // (rows by slot) or null
};

// The backward's shared memory: a chunk of KC tokens' operands, the threads' parts of the per-channel sums over n, and the per-channel dB / dC terms, summed
// over the block's channels at the end of the chunk. KC: small enough for 3 blocks an SM (the
// checkpoints, one a chunk, are the price: T/KC state rows in global memory).
template <int NPT, bool Cx>
struct BackSmem {
  static constexpr int KC = checkpoint_interval(Cx), W = Share<NPT, Cx>::W, RW = kGroup * W, CP = kChannels + 1;
  static_assert(KC % kRows == 0);
  __align__(16) float B[KC][RW];
  __align__(16) float C[KC][RW];
  float x[KC][kChannels], raw[KC][kChannels], delta[KC][kChannels], z[KC][kChannels], dy[KC][kChannels],
      gy[KC][kChannels];
  float D[kChannels], bias[kChannels];
  float part[KC][kThreads], part2[KC][kThreads];
  float red[KC][2][RW][CP];  // [t][dB | dC][column][channel]
  float acc[2][kThreads];
};

// grid (channel blocks, sequences). part_bc (channel blocks, T, 2·bw): the block's dB | dC sums;
// part_param (count, D, 2N + 2): per sequence d A_log, d Im A, dD, d dt_bias.
template <int NPT, bool Cx>
__global__ void __launch_bounds__(kThreads, backward_blocks(NPT)) scan_backward_kernel(Params p, Sources src, const float* __restrict__ d_final,
                                                                 Grads gr, PackedSeqs seqs,
                                                                 const float* __restrict__ ckpt,
                                                                 float* __restrict__ part_bc,
                                                                 float* __restrict__ part_param) {
  using S = Share<NPT, Cx>;
  using M = BackSmem<NPT, Cx>;
  constexpr int KC = M::KC, W = S::W, RW = M::RW;
  using St = Staged<KC, RW>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  M& m = *reinterpret_cast<M*>(smem_raw);
  const int tid = threadIdx.x, c = tid / kGroup, g = tid % kGroup, ec = tid % kChannels;
  const int64_t d0 = int64_t(blockIdx.x) * kChannels, d = d0 + c, seq = blockIdx.y;
  const bool live = d < p.D;
  const int64_t bw = p.N * S::SW, SR = p.D * bw;  // a state row
  const int64_t t0 = seqs.starts[seq], L = seqs.starts[seq + 1] - t0, T = seqs.tokens;
  const int bw32 = int(bw), ldgx = int(gr.ldx), ldgdt = int(gr.lddt), ldgz = int(gr.ldz);
  const int64_t chunks = ceil_div(L, KC);
  S sh;
  sh.load_A(p, d, g, live);
  if (tid < kChannels) {
    const bool on = d0 + tid < p.D;
    m.D[tid] = on ? p.Dw[d0 + tid] : 0.0f;
    m.bias[tid] = on ? p.bias[d0 + tid] : 0.0f;
  }
  St stage{};
  const auto chunk_len = [&](int64_t k) { return int(min(int64_t(KC), L - k * KC)); };
  const auto load = [&](int64_t k) { stage.load(src, t0 + k * KC, chunk_len(k), d0, p.D, bw, tid); };
  const auto put = [&] {
    stage.each(
        tid,
        [&](int t, int cc, int i) {
          store_piece<St::VW>(&m.x[t][cc], &stage.x[i]);
          store_delta<St::VW>(&m.delta[t][cc], &stage.dt[i], &m.bias[cc]);
          store_piece<St::VW>(&m.raw[t][cc], &stage.dt[i]);
          store_piece<St::VW>(&m.z[t][cc], &stage.z[i]);
          store_piece<St::VW>(&m.dy[t][cc], &stage.dy[i]);
        },
        [&](int t, int j, int k) {
          store_piece<4>(&m.B[t][j], &stage.B[k]);
          store_piece<4>(&m.C[t][j], &stage.C[k]);
        });
  };
  const auto ckpt_row = [&](int64_t k) { return ckpt + checkpoint_index(t0, seq, k, KC) * SR; };

  // Backward, chunk by chunk from the last. gh: ∂loss/∂h of the state after the current token.
  float ghr[NPT], ghi[NPT], dAr[NPT] = {}, dAi[NPT] = {};
  sh.load_state(d_final ? d_final + seqs.slots[seq] * SR : nullptr, p, d, g, live);
#pragma unroll
  for (int i = 0; i < NPT; ++i) ghr[i] = sh.hr[i], ghi[i] = sh.hi[i];
  float accD = 0.0f, accB = 0.0f;  // of this thread's epilogue channel ec: Σ gy·x, Σ d_raw
  S next;                          // the next chunk's checkpoint, loaded ahead
  load(chunks - 1);
  next.load_state(ckpt_row(chunks - 1), p, d, g, live);
  for (int64_t k = chunks - 1; k >= 0; --k) {
    const int tl = chunk_len(k);
    const int64_t tk = t0 + k * KC;
    // The chunk's rows of the per-(token, channel) gradients: bases the block shares, 32-bit offsets.
    float* gx = gr.x + tk * gr.ldx + d0;
    float* gdt = gr.dt + tk * gr.lddt + d0;
    const int64_t z_row = tk * gr.ldz + d0;
    __syncthreads();
    put();
    // The chunk's states h_{t0−1} … in registers (the loops over the chunk unrolled), and its decays
    // where they fit (d_state ≤ 16: formed again below otherwise; 128 more registers would spill).
    constexpr bool kKeep = KC * W <= 32;
    float hsr[KC + 1][NPT], hsi[KC + 1][NPT], ers[kKeep ? KC : 1][NPT], eis[kKeep ? KC : 1][NPT];
#pragma unroll
    for (int i = 0; i < NPT; ++i) {
      sh.hr[i] = next.hr[i], sh.hi[i] = next.hi[i];
      hsr[0][i] = sh.hr[i], hsi[0][i] = sh.hi[i];
    }
    __syncthreads();
    if (k > 0) {
      load(k - 1);
      next.load_state(ckpt_row(k - 1), p, d, g, live);
    }
    // The chunk's states again, and (gated) each thread's part of Σ C·h.
#pragma unroll
    for (int t = 0; t < KC; ++t) {
      if (t >= tl) break;
      const float dl = m.delta[t][c];
      m.part[t][tid] = sh.advance(&m.B[t][g * W], &m.C[t][g * W], dl, dl * m.x[t][c], kKeep ? ers[t] : nullptr,
                                  kKeep ? eis[t] : nullptr);
#pragma unroll
      for (int i = 0; i < NPT; ++i) hsr[t + 1][i] = sh.hr[i], hsi[t + 1][i] = sh.hi[i];
    }
    __syncthreads();
    // The gate: gy = d_y·silu(z), d_z = d_y·y_pre·silu'(z).
#pragma unroll
    for (int i = 0; i < KC / kRows; ++i) {
      const int t = tid / kChannels + i * kRows;
      if (t >= tl) break;
      const float dyv = m.dy[t][ec];
      if (!src.z) {
        m.gy[t][ec] = dyv;
        continue;
      }
      const float zt = m.z[t][ec], ypre = finish<Cx>(group_total(&m.part[t][ec * kGroup]), m.D[ec], m.x[t][ec]);
      float sz, dsz;
      silu_with_grad(zt, sz, dsz);
      if (d0 + ec < p.D) store_f32(gr.z, gr.z_dtype, z_row + (t * ldgz + ec), dyv * ypre * dsz);
      m.gy[t][ec] = dyv * sz;
    }
    __syncthreads();
#pragma unroll
    for (int t = KC - 1; t >= 0; --t) {
      if (t >= tl) continue;
      const float dl = m.delta[t][c], dx = dl * m.x[t][c], gy = m.gy[t][c];
      float Bt[W], Ct[W];
      load_piece<W>(Bt, &m.B[t][g * W]);
      load_piece<W>(Ct, &m.C[t][g * W]);
      float sum_gB = 0.0f, d_delta = 0.0f;
#pragma unroll
      for (int i = 0; i < NPT; ++i) {
        float er, ei;
        if constexpr (kKeep)
          er = ers[t][i], ei = eis[t][i];
        else
          sh.decay(i, dl, er, ei);
        if constexpr (Cx) {
          const float hr = hsr[t + 1][i], hi = hsi[t + 1][i], hpr = hsr[t][i], hpi = hsi[t][i];
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
          const float h = hsr[t + 1][i], hp = hsr[t][i];
          m.red[t][1][g * W + i][c] = gy * h;
          const float gn = ghr[i] + gy * Ct[i];
          m.red[t][0][g * W + i][c] = gn * dx;
          sum_gB += gn * Bt[i];
          ghr[i] = er * gn;
          const float q = ghr[i] * hp;  // ∂loss/∂(δA) of the token's decay: gn·er·h_{t−1}
          d_delta = fmaf(q, sh.ar[i], d_delta);
          dAr[i] = fmaf(dl, q, dAr[i]);
        }
      }
      m.part[t][tid] = sum_gB;
      m.part2[t][tid] = d_delta;
    }
    __syncthreads();
    // Per (token, channel): d_x, d_dt; the channel's dD and d dt_bias terms.
#pragma unroll
    for (int i = 0; i < KC / kRows; ++i) {
      const int t = tid / kChannels + i * kRows;
      if (t >= tl) break;
      const float sgb = group_total(&m.part[t][ec * kGroup]), xv = m.x[t][ec], gy = m.gy[t][ec];
      const float d_delta = group_total(&m.part2[t][ec * kGroup]) + xv * sgb;
      // softplus' derivative alone: no clamp binds here, so dt_activation_grad's test of it (which
      // forms the softplus again) is not needed.
      const float d_raw = d_delta * softplus_grad(m.raw[t][ec] + m.bias[ec]);
      accD += gy * xv;
      accB += d_raw;
      if (d0 + ec >= p.D) continue;
      gx[t * ldgx + ec] = gy * m.D[ec] + m.delta[t][ec] * sgb;
      gdt[t * ldgdt + ec] = d_raw;
    }
    // The chunk's dB | dC: the block's channels added in a fixed order, four interleaved sums
    // (channels ≡ 0, 1, 2, 3 mod 4, each in order) then those in pairs: one chain of 32 dependent
    // adds was a stall the warps could not hide.
    // Entries e = (t, which, j) at compile-time strides (RW ≥ bw columns, those past bw skipped).
    float* pbc = part_bc + (int64_t(blockIdx.x) * T + tk) * 2 * bw;
    const auto column_sum = [&](int t, int which, int j) {
      static_assert(kChannels % 4 == 0);
      const float* col = m.red[t][which][j];
      float s[4] = {};
#pragma unroll
      for (int cc = 0; cc < kChannels; cc += 4)
#pragma unroll
        for (int q = 0; q < 4; ++q) s[q] += col[cc + q];
      pbc[(t * 2 + which) * bw32 + j] = (s[0] + s[1]) + (s[2] + s[3]);
    };
    if constexpr (kThreads % (2 * RW) == 0) {
      // A thread's entries share (which, j): its loop over t unrolled, no index arithmetic a turn.
      const int which = tid / RW % 2, j = tid % RW;
      if (j < bw32) {
#pragma unroll
        for (int t = tid / (2 * RW); t < KC; t += kThreads / (2 * RW)) {
          if (t >= tl) break;
          column_sum(t, which, j);
        }
      }
    } else {
      for (int e = tid; e < tl * 2 * RW; e += kThreads)
        if (e % RW < bw32) column_sum(e / (2 * RW), e / RW % 2, e % RW);
    }
  }
  m.acc[0][tid] = accD;
  m.acc[1][tid] = accB;
  __syncthreads();
  if (!live) return;
  if (gr.state0) {
#pragma unroll
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
  if (g == 0) {
    // The epilogue threads of channel c: c, c + kChannels, ... in order.
    float sD = 0.0f, sB = 0.0f;
    for (int j = c; j < kThreads; j += kChannels) sD += m.acc[0][j], sB += m.acc[1][j];
    pp[2 * p.N] = sD, pp[2 * p.N + 1] = sB;
  }
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

int64_t selective_scan_checkpoint_rows(int64_t tokens, int64_t count, bool complex) {
  return tokens / checkpoint_interval(complex) + count + 1;
}

void selective_scan_forward(const SelectiveScanParams& sp, const float* x, int64_t ldx, const float* dt,
                            int64_t lddt, const float* B, int64_t ldb, const float* C, int64_t ldc, const float* z,
                            int64_t ldz, void* y, DType y_dtype, int64_t ldy, float* states, const PackedSeqs& seqs,
                            float* ckpt) {
  if (seqs.tokens == 0) return;
  const Params p = params(sp);
  const bool out = y != nullptr;
  check_strides(seqs.tokens, {ldx, lddt, ldb, ldc, ldz, ldy});
  Sources src{x, dt, B, out ? C : nullptr, out ? z : nullptr, nullptr, ldx, lddt, ldb, ldc, ldz, 0, false};
  const int64_t maxseg = segment_count(seqs.max_length), bw = p.N * (p.A_imag ? 2 : 1);
  src.vec = vectorizable(src, p.D, bw);
  if (seqs.max_length <= 0 || seqs.count > 65535)
    raise(cat("[selective_scan] ", seqs.count, " sequences (at most 65535) of up to ", seqs.max_length, " tokens"));
  std::shared_ptr<void> seg_h, seg_P;
  if (maxseg > 1) {
    const size_t bytes = size_t(seqs.count * maxseg * p.D * bw) * sizeof(float);
    seg_h = allocate(bytes, "selective_scan segment states");
    seg_P = allocate(bytes, "selective_scan segment decays");
  }
  float* seg_states = static_cast<float*>(seg_h.get());
  float* seg_decays = static_cast<float*>(seg_P.get());
  const dim3 grid(unsigned(ceil_div(p.D, kChannels)), unsigned(maxseg), unsigned(seqs.count));
  dispatch(p.N, p.A_imag != nullptr, [&](auto npt, auto cx) {
    constexpr int NPT = decltype(npt)::value;
    constexpr bool Cx = decltype(cx)::value;
    if (maxseg > 1) {
      summary_kernel<NPT, Cx><<<grid, kThreads, 0, stream()>>>(p, src, states, seg_states, seg_decays, maxseg, seqs);
      check_launch("selective_scan");
      constexpr int kCombineThreads = 256;
      combine_kernel<Cx><<<dim3(unsigned(ceil_div(p.D * p.N, kCombineThreads)), unsigned(seqs.count)),
                           kCombineThreads, 0, stream()>>>(p, states, seg_states, seg_decays, maxseg, seqs);
      check_launch("selective_scan");
    }
    if (out)
      with_dtype(y_dtype, "selective_scan", [&](auto* tag) {
        using YT = std::remove_pointer_t<decltype(tag)>;
        scan_kernel<NPT, Cx, true, YT><<<grid, kThreads, 0, stream()>>>(p, src, static_cast<YT*>(y), ldy, states,
                                                                        seg_states, maxseg, seqs, ckpt);
      });
    else
      scan_kernel<NPT, Cx, false, float><<<grid, kThreads, 0, stream()>>>(p, src, nullptr, ldy, states, seg_states,
                                                                          maxseg, seqs, ckpt);
  });
  check_launch("selective_scan");
}

void selective_scan_step(const SelectiveScanParams& sp, const float* x, int64_t ldx, const float* dt, int64_t lddt,
                         const float* dt_w, int64_t R, const float* B, int64_t ldb, const float* C, int64_t ldc,
                         const float* z, int64_t ldz, void* y, DType y_dtype, int64_t ldy, float* states,
                         const int64_t* slots, int64_t nb) {
  if (nb == 0) return;
  const Params p = params(sp);
  const Sources src{x, dt, B, C, z, nullptr, ldx, lddt, ldb, ldc, ldz, 0, false};  // read directly, not staged
  const dim3 grid(unsigned(ceil_div(p.D, kChannels)), unsigned(nb));
  // float4 loads of dt_w's rows and of dt_proj's input: 16-byte aligned rows (the choice follows
  // the buffers, never nb, and the sums are the same either way).
  const bool dt_vec = dt_w && aligned16(dt_w, R, sizeof(float)) && aligned16(dt, lddt, sizeof(float));
  dispatch(p.N, p.A_imag != nullptr, [&](auto npt, auto cx) {
    with_dtype(y_dtype, "selective_scan", [&](auto* tag) {
      using YT = std::remove_pointer_t<decltype(tag)>;
      launch_overlapped(step_kernel<decltype(npt)::value, decltype(cx)::value, YT>, grid, kThreads, 0,
                        "selective_scan", p, src, dt_w, int(R), dt_vec, static_cast<YT*>(y), ldy, states, slots);
    });
  });
  check_launch("selective_scan");
}

void selective_scan_backward(const SelectiveScanParams& sp, const float* x, int64_t ldx, const float* dt,
                             int64_t lddt, const float* B, int64_t ldb, const float* C, int64_t ldc, const float* z,
                             int64_t ldz, const float* state0, int64_t state_rows, const float* d_y, int64_t lddy,
                             const float* d_final, const float* checkpoints, const SelectiveScanGradPtrs& g,
                             const PackedSeqs& seqs) {
  const int64_t T = seqs.tokens;
  if (T == 0) return;
  const Params p = params(sp);
  const bool cx = p.A_imag != nullptr;
  const int64_t bw = p.N * (cx ? 2 : 1), blocks = ceil_div(p.D, kChannels), PW = 2 * p.N + 2;
  // Without the forward's checkpoints, the forward kernels form them again (from a copy of the
  // start states: the scan leaves its final states in them), the same bits as kept ones.
  std::shared_ptr<void> own;
  if (!checkpoints) {
    own = allocate(size_t(selective_scan_checkpoint_rows(T, seqs.count, cx) * p.D * bw) * sizeof(float),
                   "selective_scan checkpoints");
    const size_t state_bytes = size_t(state_rows * p.D * bw) * sizeof(float);
    auto scratch = allocate(state_bytes, "selective_scan start states");
    if (state0)
      check(cudaMemcpyAsync(scratch.get(), state0, state_bytes, cudaMemcpyDeviceToDevice, stream()), "selective_scan");
    else
      check(cudaMemsetAsync(scratch.get(), 0, state_bytes, stream()), "selective_scan");
    selective_scan_forward(sp, x, ldx, dt, lddt, B, ldb, C, ldc, nullptr, 0, nullptr, DType::F32, 0,
                           static_cast<float*>(scratch.get()), seqs, static_cast<float*>(own.get()));
    checkpoints = static_cast<const float*>(own.get());
  }
  auto part_bc = allocate(size_t(blocks * T * 2 * bw) * sizeof(float), "selective_scan dB, dC partial sums");
  auto part_param = allocate(size_t(seqs.count * p.D * PW) * sizeof(float), "selective_scan parameter gradients");
  const Grads gr{g.x, g.ldx, g.dt, g.lddt, g.z, g.z_dtype, g.ldz, g.state0};
  check_strides(T, {ldx, lddt, ldb, ldc, ldz, lddy, g.ldx, g.lddt, g.ldz});
  Sources src{x, dt, B, C, z, d_y, ldx, lddt, ldb, ldc, ldz, lddy, false};
  src.vec = vectorizable(src, p.D, bw);
  dispatch(p.N, cx, [&](auto npt, auto cxc) {
    constexpr int NPT = decltype(npt)::value;
    constexpr bool Cx = decltype(cxc)::value;
    const auto kernel = scan_backward_kernel<NPT, Cx>;
    const int smem = int(sizeof(BackSmem<NPT, Cx>));
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem), "selective_scan");
    kernel<<<dim3(unsigned(blocks), unsigned(seqs.count)), kThreads, smem, stream()>>>(
        p, src, d_final, gr, seqs, checkpoints, static_cast<float*>(part_bc.get()),
        static_cast<float*>(part_param.get()));
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
