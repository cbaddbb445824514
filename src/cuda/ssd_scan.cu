// Chunked SSD scan (prefill) over packed sequences and the one-token step (decode) on the GPU.
// In bf16 / f16 compute with d_state ≤ 128 (every published Mamba2 model) one kernel per chunk
// does it all (ssd_chunk_tc_kernel, below); otherwise (fp32 compute, larger states, or
// MAMBA2_SSD_PASSES=1, which exists to measure the two against each other) the chunked form is
// the CPU kernel's (cpu/ssd_scan.cpp), in two passes so that the chunks of a sequence run in
// parallel and only the (P, N) states pass between them in order:
//   1. chunk_state  (chunk, head, state tile): dt, a = in-chunk cumsum of dt·A, and the chunk's
//      own end-state term S_c = Σ_s exp(a[last]-a[s])·dt[s]·x[s] ⊗ B[s]; then, once the chunk
//      before it has left the state at this chunk's start (S_start), the state at its end,
//      exp(a[last])·S_start + S_c, for the chunk after it (or the sequence's slot). Where the
//      hand-offs of that chain of blocks would not hide behind other work (a grid the GPU holds
//      at once, or a few long sequences), a separate state pass walks each sequence's chunks in
//      registers instead, with the same operations in the same order (the same bits).
//   2. chunk_scan   (chunk, head, 64 rows of t): y = exp(a[t])·C[t] S_startᵀ
//      + (C Bᵀ ∘ exp(a[t]-a[s]) ∘ dt[s], s ≤ t) X + D·x, C Bᵀ a tile at a time in shared memory
// fp32 SIMT, fp32 accumulation; in bf16 / f16 compute the products run on tensor cores (below,
// with C Bᵀ computed once per group in a pass of its own). Every output element is one chain of
// FMAs (or MMAs) in a fixed order that depends only on its own chunk (and, for the states, on its
// own sequence's chunks): never on the other sequences of the launch or on timing. Offsets are
// 64-bit.
// In fp32 compute a is kept in double, as on the CPU: in fp32, a[t] ~ -400 late in a chunk of a
// fast-decaying head (dt·A ~ -1.6 per token) is rounded by ~3e-5, an error exp(a[t]-a[s]) carries
// whole (~1e-5 in the final state). A difference taken in double and rounded to fp32 once costs one
// DADD per (t, s) pair against N FMAs. On tensor cores, where every decay factor is rounded to the
// operand type (2⁻⁹ for bf16, 2⁻¹² for f16) after it is formed, pass 2 takes a·log2(e) in fp32:
// its rounding, |a|·2⁻²⁴ in the exponent, stays below that for |a| < 2¹¹ (f16) or 2¹⁴ (bf16), past
// which every factor but the nearest tokens' has underflowed. Every exponent is ≤ 0: a never
// increases (see chunk_decay), and rounding keeps the order.
#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "cuda/mma.cuh"
#include "cuda/runtime.h"

#include <cstdlib>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

namespace mamba2::cuda {

namespace {

constexpr int kThreads = 256;   // 16×16: thread (ty, tx) owns rows 4·ty.. and columns 4·tx.. of a tile
constexpr int kTile = 64;       // rows and columns of a block tile
constexpr int kMaxChunk = 256;  // chunk_decay: 32 lanes × 8 tokens
constexpr int kMaxHeaddim = 256;
constexpr double kLog2eD = 1.4426950408889634;  // log2 e in double (common.cuh's kLog2e is a float)
constexpr int kStride = kTile + 4;  // shared row stride: float4-aligned, rows 4 banks apart

// The chunk with global index c: the last sequence i whose chunks start at or before c (an empty
// sequence owns none), its first token and its length (≤ Q).
struct Chunk {
  int64_t tok0;
  int len;
  int64_t seq;
};
__device__ Chunk find_chunk(const PackedSeqs& s, int64_t c, int64_t Q) {
  int64_t lo = 0, hi = s.count - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (s.chunk_starts[mid] <= c) lo = mid; else hi = mid - 1;
  }
  const int64_t tok0 = s.starts[lo] + (c - s.chunk_starts[lo]) * Q;
  return {tok0, int(min(Q, s.starts[lo + 1] - tok0)), lo};
}

// The chain of states through a sequence's chunks (pass 1). Blocks take tickets in the order
// they start and the ticket picks the work: chunks in seqs.chunk_order (every sequence's first
// chunk, then every second one, ...), for each the (head, state tile) units. A block waits only
// for the block of the chunk before its own (same unit), whose ticket is smaller: that block has
// started, so it finishes (by induction), and no launch order or residency can deadlock. The
// order makes the wait short: a chunk's predecessor started a whole chunk index earlier.
struct Chain {
  bool chained;                 // false: leave S_c in chunk_states and a[last] in a_last (state_pass)
  unsigned long long* tickets;  // one counter, zero at launch
  unsigned* ready;              // (total_chunks, heads, tiles): chunk_states[c] holds the tile's S_start
                                // (chained only; zero at launch)
  float* chunk_states;          // (total_chunks, heads, P, N): S_start of every chunk, for pass 2
  float* states;                // the sequences' slots: initial state in, final state out
  double* a_last;               // (heads, total_chunks), unchained only
  bool pairs;                   // d_state even and the buffers 8-byte aligned: 8-byte state accesses
};

struct Work {
  int64_t c;
  int h, tile;
};

__device__ Work take_work(const Chain& k, const PackedSeqs& s, int64_t heads, int tiles) {
  __shared__ unsigned long long ticket;
  if (threadIdx.x == 0) ticket = atomicAdd(k.tickets, 1ull);
  __syncthreads();
  const int64_t units = heads * tiles, rank = int64_t(ticket / units), unit = int64_t(ticket % units);
  return {s.chunk_order[rank], int(unit / tiles), int(unit % tiles)};
}

__device__ __forceinline__ unsigned load_relaxed(const unsigned* p) {
  unsigned v;
  asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void store_relaxed(unsigned* p, unsigned v) {
  asm volatile("st.relaxed.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

// Elements e0 and e1 of a state (offsets, -1: none; pairs: e1 = e0 + 1 whenever e0 ≥ 0, e0 even,
// the buffer 8-byte aligned) from the L2, 0 where none, and back.
__device__ __forceinline__ void load_pair(const float* base, int64_t e0, int64_t e1, bool pairs, float& v0,
                                          float& v1) {
  if (pairs) {
    const float2 v = e0 >= 0 ? __ldcg(reinterpret_cast<const float2*>(base + e0)) : make_float2(0.0f, 0.0f);
    v0 = v.x, v1 = v.y;
  } else {
    v0 = e0 >= 0 ? __ldcg(base + e0) : 0.0f;
    v1 = e1 >= 0 ? __ldcg(base + e1) : 0.0f;
  }
}
__device__ __forceinline__ void store_pair(float* base, int64_t e0, int64_t e1, bool pairs, float v0, float v1) {
  if (pairs) {
    if (e0 >= 0) *reinterpret_cast<float2*>(base + e0) = make_float2(v0, v1);
  } else {
    if (e0 >= 0) base[e0] = v0;
    if (e1 >= 0) base[e1] = v1;
  }
}

// The block's share of the chain step for chunk ch (global index c), head h, state tile `tile`
// (unchained: S_c to chunk_states[c] and a[last] to a_last, for state_pass):
// S_start from the slot (a sequence's first chunk: also copied to chunk_states[c] for pass 2) or
// from chunk_states[c] once the chunk before has published it; then exp(a[last])·S_start + S_c to
// chunk_states[c + 1] (published) or, for the last chunk, to the slot; chained, the thread's
// s_c[i] then holds S_start[offset(i)] (0 where none), as phase 2 of the one-kernel scan starts.
// The thread holds S_c[e] for e = offset(i), i < K (offset -1: none), e an element of the head's
// P×N state; elements 2q and 2q+1 are columns n and n+1 of one row, n even, so with k.pairs (N
// even, 8-byte aligned buffers) they move as one 8-byte access. Every load is issued before the
// first store, 16 at a time (the compiler must assume the two may alias, and would not hoist
// them): a round trip to the L2 per 16 elements, not per element.
template <int K, class Offset>
__device__ void pass_state(const Chain& k, const SsdParams& p, const PackedSeqs& s, const Chunk& ch, int64_t c, int h,
                           int tile, int tiles, double a_last, float (&s_c)[K], Offset offset) {
  static_assert(K % 2 == 0, "pass_state: elements come in pairs");
  const int64_t H = p.nheads, PN = p.headdim * p.d_state;
  float* here = k.chunk_states + (c * H + h) * PN;
  if (!k.chained) {
#pragma unroll
    for (int i = 0; i < K; i += 2) store_pair(here, offset(i), offset(i + 1), k.pairs, s_c[i], s_c[i + 1]);
    if (tile == 0 && threadIdx.x == 0) k.a_last[h * s.total_chunks + c] = a_last;
    return;
  }
  const bool first = c == s.chunk_starts[ch.seq], last = c + 1 == s.chunk_starts[ch.seq + 1];
  float* slot = k.states + (s.slots[ch.seq] * H + h) * PN;
  unsigned* flag = k.ready + (c * H + h) * tiles + tile;
  if (!first) {
    // A relaxed spin, then one fence: an acquiring load in the loop would invalidate the SM's L1
    // at every try, under the other blocks' feet. The state itself is read from the L2 (__ldcg).
    if (threadIdx.x == 0) {
      while (load_relaxed(flag) == 0) {
      }
      __threadfence();
    }
    __syncthreads();
  }
  const float* from = first ? slot : here;
  float* to = last ? slot : here + H * PN;
  constexpr int G = K < 16 ? K : 16;  // loads in flight a thread: more spill S_c's registers
  const float decay = expf(float(a_last));
#pragma unroll
  for (int i0 = 0; i0 < K; i0 += G) {
    float s0[G];
#pragma unroll
    for (int i = 0; i < G; i += 2) load_pair(from, offset(i0 + i), offset(i0 + i + 1), k.pairs, s0[i], s0[i + 1]);
#pragma unroll
    for (int i = 0; i < G; i += 2) {
      const int64_t e0 = offset(i0 + i), e1 = offset(i0 + i + 1);
      if (first) store_pair(here, e0, e1, k.pairs, s0[i], s0[i + 1]);
      store_pair(to, e0, e1, k.pairs, fmaf(decay, s0[i], s_c[i0 + i]), fmaf(decay, s0[i + 1], s_c[i0 + i + 1]));
      s_c[i0 + i] = s0[i], s_c[i0 + i + 1] = s0[i + 1];
    }
  }
  if (last) return;
  __syncthreads();  // then one fence orders the block's stores before the flag (as a grid barrier does)
  if (threadIdx.x == 0) {
    __threadfence();
    store_relaxed(flag + H * tiles, 1u);
  }
}

// dt and a = inclusive cumsum of dt·A over the chunk's len tokens, into shared memory (len ≤
// 256). Warp 0, lane l for tokens 8l..8l+7: its partial sums v, then a = e_l + v with
// e_{l+1} = e_l + v[7] summed in lane order. So a[8l+7] = e_{l+1} bit for bit and each step adds
// a term ≤ 0: a never increases, and every a[t]-a[s] (s ≤ t) is ≤ 0 as computed.
__device__ void chunk_decay(const SsdParams& p, const float* dt_raw, int64_t lddt, int h, int64_t tok0, int len,
                            float* dt, double* a) {
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    const double A = -exp(double(p.A_log[h]));
    const float bias = p.dt_bias[h];
    double v[8], sum = 0.0;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int t = 8 * lane + i;
      const float d = t < len ? dt_activation(dt_raw[(tok0 + t) * lddt + h], bias, p.dt_min, p.dt_max) : 0.0f;
      dt[t] = d;
      sum += double(d) * A;
      v[i] = sum;
    }
    double e = 0.0;
    for (int l = 0; l < 31; ++l) {
      const double total = __shfl_sync(0xffffffffu, sum, l);
      if (l < lane) e += total;
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) a[8 * lane + i] = e + v[i];
  }
  __syncthreads();
}

// acc[r][4j+q] += Σ_k A[k][4·ty+r] · Bm[k][64j + 4·tx + q] for k = 0..K-1 in order: A (K, 64) with
// row stride kStride and Bm (K, 64·CG) with row stride bstride, both in shared memory.
template <int K, int CG>
__device__ __forceinline__ void mma_tile(const float* A, const float* Bm, int bstride, float (&acc)[4][4 * CG]) {
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const float4 a4 = *reinterpret_cast<const float4*>(A + k * kStride + 4 * ty);
    const float av[4] = {a4.x, a4.y, a4.z, a4.w};
#pragma unroll
    for (int j = 0; j < CG; ++j) {
      const float4 b4 = *reinterpret_cast<const float4*>(Bm + k * bstride + 64 * j + 4 * tx);
      const float bv[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[r][4 * j + q] = fmaf(av[r], bv[q], acc[r][4 * j + q]);
    }
  }
}

// dst[k][r] = src[r·ld + k] for r < ROWS, k < K (0 outside r < nrows, k < nk): a row-major tile
// stored k-major for mma_tile. A warp takes 4 rows × 8 columns: whole 32-byte sectors from global
// memory, and shared banks 4k + r (stride ≡ 4 mod 32), all distinct.
template <int ROWS, int K>
__device__ __forceinline__ void load_transposed(float* dst, int stride, const float* src, int64_t ld, int nrows,
                                                int nk) {
  constexpr int kRowGroups = ROWS / 4, kGroups = kRowGroups * (K / 8);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int gi = warp; gi < kGroups; gi += kThreads / 32) {
    const int r = (gi % kRowGroups) * 4 + lane / 8, k = (gi / kRowGroups) * 8 + lane % 8;
    dst[k * stride + r] = r < nrows && k < nk ? src[r * ld + k] : 0.0f;
  }
}

// dst[k][c] = scale[k]·src[k·ld + c] for k < K, c < COLS (0 outside k < nk, c < ncols; scale may
// be null): a row-major tile kept as it is.
template <int K, int COLS>
__device__ __forceinline__ void load_rows(float* dst, int stride, const float* src, int64_t ld, int nk, int ncols,
                                          const float* scale) {
  for (int i = threadIdx.x; i < K * COLS; i += kThreads) {
    const int k = i / COLS, c = i % COLS;
    float v = 0.0f;
    if (k < nk && c < ncols) v = scale ? scale[k] * src[k * ld + c] : src[k * ld + c];
    dst[k * stride + c] = v;
  }
}

// What pass 2 keeps of a: in double (fp32 compute), or a·log2(e) in fp32 (tensor cores).
__device__ __forceinline__ void store_a(double* out, double a) { *out = a; }
__device__ __forceinline__ void store_a(float* out, double a) { *out = float(a * kLog2eD); }

// The start of pass 1 (both forms): the block's work by ticket (Chain), its chunk, dt and a
// (chunk_decay) and w[t] = exp(a[last] - a[t])·dt[t] in shared memory; tile 0 also stores dt and
// a (store_a) for pass 2: (nheads, T) each.
struct StateWork {
  Work w;
  int h, g;
  Chunk ch;
  double a_last;
};
template <class A>
__device__ StateWork state_prologue(const SsdParams& p, const float* dt_raw, int64_t lddt, const PackedSeqs& seqs,
                                    int64_t Q, int tiles, const Chain& chain, float* dt_out, A* a_out, double* s_a,
                                    float* s_dt, float* s_w) {
  const int64_t H = p.nheads;
  const Work w = take_work(chain, seqs, H, tiles);
  const int h = w.h, g = int(h / (H / p.ngroups));
  const Chunk ch = find_chunk(seqs, w.c, Q);
  chunk_decay(p, dt_raw, lddt, h, ch.tok0, ch.len, s_dt, s_a);
  const double a_last = s_a[ch.len - 1];
  for (int t = threadIdx.x; t < ch.len; t += blockDim.x) {
    s_w[t] = expf(float(a_last - s_a[t])) * s_dt[t];
    if (w.tile == 0) {
      dt_out[h * seqs.tokens + ch.tok0 + t] = s_dt[t];
      store_a(a_out + h * seqs.tokens + ch.tok0 + t, s_a[t]);
    }
  }
  __syncthreads();
  return {w, h, g, ch, a_last};
}

// Pass 1. Block (chunk, head, state tile) by ticket (Chain); tile = (row block of P) ·
// ceil(N/64) + column block.
constexpr int kStateK = 32;
__global__ __launch_bounds__(kThreads) void chunk_state_kernel(SsdParams p, const float* x, int64_t ldx,
                                                               const float* B, int64_t ldb, const float* dt_raw,
                                                               int64_t lddt, PackedSeqs seqs, int64_t Q,
                                                               float* dt_out, double* a_out, Chain chain) {
  __shared__ double s_a[kMaxChunk];
  __shared__ float s_dt[kMaxChunk], s_w[kMaxChunk];
  __shared__ __align__(16) float As[kStateK * kStride], Bs[kStateK * kStride];
  const int64_t P = p.headdim, N = p.d_state;
  const int ncol_tiles = int((N + kTile - 1) / kTile), tiles = int((P + kTile - 1) / kTile) * ncol_tiles;
  const auto [w, h, g, ch, a_last] =
      state_prologue(p, dt_raw, lddt, seqs, Q, tiles, chain, dt_out, a_out, s_a, s_dt, s_w);

  const int p0 = (w.tile / ncol_tiles) * kTile, n0 = (w.tile % ncol_tiles) * kTile;
  const float* xs = x + ch.tok0 * ldx + h * P + p0;
  const float* bs = B + ch.tok0 * ldb + g * N + n0;
  float acc[4][4] = {};
  for (int s0 = 0; s0 < ch.len; s0 += kStateK) {
    load_rows<kStateK, kTile>(As, kStride, xs + s0 * ldx, ldx, ch.len - s0, int(P - p0), s_w + s0);
    load_rows<kStateK, kTile>(Bs, kStride, bs + s0 * ldb, ldb, ch.len - s0, int(N - n0), nullptr);
    __syncthreads();
    mma_tile<kStateK, 1>(As, Bs, kStride, acc);
    __syncthreads();
  }
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  pass_state(chain, p, seqs, ch, w.c, h, w.tile, tiles, a_last, reinterpret_cast<float(&)[16]>(acc),
             [&](int i) -> int64_t {
               const int64_t pp = p0 + 4 * ty + i / 4, n = n0 + 4 * tx + i % 4;
               return pp < P && n < N ? pp * N + n : -1;
             });
}

// Pass 1's state step when the grid is not chained (Chain): block (sequence, head, 256 state
// elements), one element per thread, the sequence's chunks in order as pass_state takes them, 8 at
// a time with all 16 loads issued before the first store (chunk_states is both read and written,
// so the compiler would not hoist them): one memory round trip per 8 chunks instead of two per chunk.
__global__ __launch_bounds__(kThreads) void state_pass_kernel(SsdParams p, const double* a_last, float* chunk_states,
                                                              float* states, PackedSeqs seqs) {
  constexpr int kAhead = 8;
  const int64_t i = blockIdx.x, h = blockIdx.y, PN = p.headdim * p.d_state;
  const int64_t e = int64_t(blockIdx.z) * kThreads + threadIdx.x;
  if (e >= PN) return;
  const int64_t c0 = seqs.chunk_starts[i], nchunks = seqs.chunk_starts[i + 1] - c0, step = p.nheads * PN;
  const double* ah = a_last + h * seqs.total_chunks + c0;
  float* final_state = states + (seqs.slots[i] * p.nheads + h) * PN + e;
  float* own = chunk_states + (c0 * p.nheads + h) * PN + e;
  float state = *final_state;
  for (int64_t k0 = 0; k0 < nchunks; k0 += kAhead) {
    float s_c[kAhead];
    double al[kAhead];
#pragma unroll
    for (int j = 0; j < kAhead; ++j) {
      const int64_t k = k0 + j;
      s_c[j] = k < nchunks ? own[k * step] : 0.0f;
      al[j] = k < nchunks ? ah[k] : 0.0;
    }
#pragma unroll
    for (int j = 0; j < kAhead; ++j) {
      if (k0 + j >= nchunks) break;
      own[(k0 + j) * step] = state;
      state = fmaf(expf(float(al[j])), state, s_c[j]);
    }
  }
  *final_state = state;
}

// Pass 2. Block (chunk, 64 rows of t, head); CG = ceil(P/64) column groups of 64 in the output.
// Shared: As holds k-major slices of C (K × 64) or the decayed C Bᵀ tile M[s][t] (64 × 64); Bs
// slices of the start state, of B or of x.
template <int CG>
__global__ __launch_bounds__(kThreads) void chunk_scan_kernel(SsdParams p, const float* x, int64_t ldx,
                                                              const float* B, int64_t ldb, const float* C,
                                                              int64_t ldc, float* y, int64_t ldy, const float* dt,
                                                              const double* a, const float* chunk_states,
                                                              PackedSeqs seqs, int64_t Q) {
  constexpr int K = CG > 3 ? 16 : 32;  // inner slice: keeps shared memory under 48 KiB
  constexpr int kBStride = 64 * CG + 4;
  __shared__ double s_a[kMaxChunk];
  __shared__ float s_dt[kMaxChunk];
  __shared__ __align__(16) float As[kTile * kStride], Bs[K * kBStride];
  const int64_t c = blockIdx.x, H = p.nheads, P = p.headdim, N = p.d_state;
  const int h = blockIdx.z, g = int(h / (H / p.ngroups)), t0 = blockIdx.y * kTile;
  const Chunk ch = find_chunk(seqs, c, Q);
  if (t0 >= ch.len) return;
  const int rows = min(kTile, ch.len - t0), s_end = t0 + rows;  // this tile needs s < s_end
  for (int t = threadIdx.x; t < s_end; t += kThreads) {
    s_dt[t] = dt[h * seqs.tokens + ch.tok0 + t];
    s_a[t] = a[h * seqs.tokens + ch.tok0 + t];
  }
  __syncthreads();
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  const float* ct = C + (ch.tok0 + t0) * ldc + g * N;

  // Earlier chunks: exp(a[t]) · C[t] S_startᵀ.
  float acc[4][4 * CG] = {};
  const float* s_start = chunk_states + (c * H + h) * P * N;
  for (int n0 = 0; n0 < N; n0 += K) {
    load_transposed<kTile, K>(As, kStride, ct + n0, ldc, rows, int(N - n0));
    load_transposed<kTile * CG, K>(Bs, kBStride, s_start + n0, N, int(P), int(N - n0));
    __syncthreads();
    mma_tile<K, CG>(As, Bs, kBStride, acc);
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int t = t0 + 4 * ty + r;
    const float decay = t < ch.len ? expf(float(s_a[t])) : 0.0f;
#pragma unroll
    for (int j = 0; j < 4 * CG; ++j) acc[r][j] *= decay;
  }

  // This chunk, s-tile by s-tile up to the diagonal one.
  for (int s0 = 0; s0 <= t0; s0 += kTile) {
    const float* bs = B + (ch.tok0 + s0) * ldb + g * N;
    float cb[4][4] = {};
    for (int n0 = 0; n0 < N; n0 += K) {
      load_transposed<kTile, K>(As, kStride, ct + n0, ldc, rows, int(N - n0));
      load_transposed<kTile, K>(Bs, kStride, bs + n0, ldb, ch.len - s0, int(N - n0));
      __syncthreads();
      mma_tile<K, 1>(As, Bs, kStride, cb);
      __syncthreads();
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int s = s0 + 4 * tx + q;
      float m[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int t = t0 + 4 * ty + r;
        m[r] = s <= t && t < ch.len ? cb[r][q] * expf(float(s_a[t] - s_a[s])) * s_dt[s] : 0.0f;
      }
      *reinterpret_cast<float4*>(As + (4 * tx + q) * kStride + 4 * ty) = make_float4(m[0], m[1], m[2], m[3]);
    }
    __syncthreads();
    const float* xs = x + (ch.tok0 + s0) * ldx + h * P;
    for (int k0 = 0; k0 < min(kTile, s_end - s0); k0 += K) {
      load_rows<K, kTile * CG>(Bs, kBStride, xs + k0 * ldx, ldx, s_end - s0 - k0, int(P), nullptr);
      __syncthreads();
      mma_tile<K, CG>(As + k0 * kStride, Bs, kBStride, acc);
      __syncthreads();
    }
  }

  const float Dh = p.D[h];
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int64_t t = t0 + 4 * ty + r;
    if (t >= ch.len) continue;
    const float* xt = x + (ch.tok0 + t) * ldx + h * P;
    float* yt = y + (ch.tok0 + t) * ldy + h * P;
#pragma unroll
    for (int j = 0; j < CG; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int pp = 64 * j + 4 * tx + q;
        if (pp < P) yt[pp] = fmaf(Dh, xt[pp], acc[r][4 * j + q]);
      }
  }
}

// Block (b, head, 8 state rows): warp w of 2 takes rows 4w .. 4w+3, lane l eight columns of each: with
// 16-byte loads (d_state a multiple of 4) n = 4l .. 4l+3 and 128 more, else n = l, l+32, ...
// Every load is issued before the first use: the step streams the fp32 states (64 MB a layer of
// 130m at batch 256), so each warp keeps 2 KB of them in flight. y[q] = Σ_n state[q][n]·C[n]
// after the update: per lane in column order, then a fixed butterfly. Gated (the decode step's
// fusion): y[q]·silu(z[q]), and the block's Σ y² (rows in order within a warp, then warps in
// order) for the norm the out projection applies.
constexpr int kStepWarps = 2, kStepWarpRows = 4, kStepRows = kStepWarps * kStepWarpRows;
constexpr int kStepCols = 8;  // columns per lane held in registers: d_state ≤ 256

template <bool vec>
__device__ __forceinline__ int64_t step_col(int lane, int j) {
  return vec ? 128 * (j / 4) + 4 * lane + j % 4 : lane + 32 * j;
}

// The kStepCols values of row p (n < N) into v; vec: whole float4s.
template <bool vec>
__device__ __forceinline__ void load_step_row(const float* p, int64_t N, int lane, float (&v)[kStepCols]) {
#pragma unroll
  for (int j = 0; j < kStepCols; j += vec ? 4 : 1) {
    const int64_t n = step_col<vec>(lane, j);
    if (n >= N) continue;
    if constexpr (vec) {
      const float4 q = *reinterpret_cast<const float4*>(p + n);
      v[j] = q.x, v[j + 1] = q.y, v[j + 2] = q.z, v[j + 3] = q.w;
    } else {
      v[j] = p[n];
    }
  }
}

template <bool vec>
__global__ __launch_bounds__(kStepWarps * 32) void step_kernel(SsdParams p, const float* x, int64_t ldx, const float* B,
                                                        int64_t ldb, const float* C, int64_t ldc, const float* dt_raw,
                                                        int64_t lddt, float* y, int64_t ldy, float* states,
                                                        const int64_t* slots, const float* z, int64_t ldz, float* sums,
                                                        int64_t lds, L2Warm warm) {
  __shared__ float sq[kStepWarps];
  TRACE_KERNEL;
  start_next();  // launched overlapped (common.cuh)
  warm_l2(warm);
  const int64_t b = blockIdx.x, h = blockIdx.y, P = p.headdim, N = p.d_state;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t q0 = int64_t(blockIdx.z) * kStepRows + warp * kStepWarpRows;
  const int64_t g = h / (p.nheads / p.ngroups);
  // Before the wait: the head's parameters (weights) and the state rows. Reading the states
  // before the wait is safe: within a decode step only this kernel touches its layer's states,
  // and a step begins with the copies of its ids and slots, which wait for all earlier work on
  // the stream (the slots likewise are written only by those copies).
  const float dt_bias = p.dt_bias[h], A_log = p.A_log[h], D = p.D[h];
  float* rows = states + (slots[b] * p.nheads + h) * P * N;
  float sv[kStepWarpRows][kStepCols], bv[kStepCols], cv[kStepCols], xq[kStepWarpRows], zq[kStepWarpRows];
#pragma unroll
  for (int r = 0; r < kStepWarpRows; ++r)
    if (q0 + r < P) load_step_row<vec>(rows + (q0 + r) * N, N, lane, sv[r]);
  wait_for_previous();
  load_step_row<vec>(B + b * ldb + g * N, N, lane, bv);
  load_step_row<vec>(C + b * ldc + g * N, N, lane, cv);
#pragma unroll
  for (int r = 0; r < kStepWarpRows; ++r) {
    const int64_t q = q0 + r;
    if (q >= P) continue;
    xq[r] = x[b * ldx + h * P + q];
    zq[r] = z ? z[b * ldz + h * P + q] : 0.0f;
  }
  const float dt = dt_activation(dt_raw[b * lddt + h], dt_bias, p.dt_min, p.dt_max);
  const float decay = expf(dt * -expf(A_log));
  float sum_sq = 0.0f;
#pragma unroll
  for (int r = 0; r < kStepWarpRows; ++r) {
    const int64_t q = q0 + r;
    if (q >= P) continue;  // the same for the whole warp
    const float dx = dt * xq[r];
    float acc = 0.0f;
#pragma unroll
    for (int j = 0; j < kStepCols; ++j) {
      if (step_col<vec>(lane, j) >= N) continue;
      sv[r][j] = sv[r][j] * decay + dx * bv[j];
      acc += sv[r][j] * cv[j];
    }
#pragma unroll
    for (int j = 0; j < kStepCols; j += vec ? 4 : 1) {
      const int64_t n = step_col<vec>(lane, j);
      if (n >= N) continue;
      if constexpr (vec)
        *reinterpret_cast<float4*>(rows + q * N + n) = make_float4(sv[r][j], sv[r][j + 1], sv[r][j + 2], sv[r][j + 3]);
      else
        rows[q * N + n] = sv[r][j];
    }
    acc = warp_sum(acc);
    float out = acc + D * xq[r];
    if (z) out *= silu(zq[r]);
    if (lane == r) y[b * ldy + h * P + q] = out;
    sum_sq += out * out;
  }
  if (!sums) return;
  if (lane == 0) sq[warp] = sum_sq;  // rows past P: 0
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.0f;
    for (int w = 0; w < kStepWarps; ++w) s += sq[w];
    sums[b * lds + h * gridDim.z + blockIdx.z] = s;
  }
}

// Tensor-core path (bf16 / f16 operands, fp32 accumulation). The same passes; the four products
// (C Bᵀ, masked M·X, C·S_startᵀ, (w∘X)ᵀ·B) run as mma.sync m16n8k16 (sm_80+) on operands
// rounded to T when they are stored in shared memory (M: in registers); dt, a, the decay factors
// and every accumulator stay as in the fp32 path (a in double, states fp32). A block is 4 warps;
// warp w owns 16 rows of a 64-row tile and its columns as 8-column fragments.
// The loop bounds depend on the chunk's length only, so batch invariance holds as above.
constexpr int kTcThreads = 128;
constexpr int kTcStride = kTile + 8;  // 144-byte rows: the 8 rows of an ldmatrix phase hit distinct banks
constexpr int kMaxTcState = 256;      // C's and the state's rows in shared memory: up to 33 KiB each

// Shared-memory row stride of a tile whose K columns are the state's N, padded to whole k-steps.
__host__ __device__ inline int64_t state_stride(int64_t N) { return (N + 15) / 16 * 16 + 8; }

// Lane l gets, of 8×8 matrix j (rows addressed by lanes 8j..8j+7), row l/4, columns 2(l%4) and
// 2(l%4)+1; transposed: column l/4, rows 2(l%4) and 2(l%4)+1.
__device__ __forceinline__ void ldsm(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(unsigned(__cvta_generic_to_shared(p))));
}
__device__ __forceinline__ void ldsm_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(unsigned(__cvta_generic_to_shared(p))));
}

// Fragment addresses of lane l in a tile at `base` with row stride ld (elements), for the k-step
// at column (row-major operand) or row (transposed operand) k:
//   a_rows:  A (16 rows × 16 k) stored row-major, rows first
//   a_cols:  A stored k-major ([k][row]), through ldsm_trans
//   b_rows:  B for two 8-column fragments stored [n][k] (k contiguous)
//   b_cols:  B stored [k][n] (n contiguous), through ldsm_trans
// After ldsm, r[0], r[1] are fragment 0's b0, b1 and r[2], r[3] fragment 1's.
template <class T>
__device__ __forceinline__ const T* a_rows(const T* base, int ld, int row0, int k) {
  const int l = threadIdx.x % 32;
  return base + (row0 + l % 16) * ld + k + (l / 16) * 8;
}
template <class T>
__device__ __forceinline__ const T* a_cols(const T* base, int ld, int row0, int k) {
  const int l = threadIdx.x % 32;
  return base + (k + l % 8 + (l / 16) * 8) * ld + row0 + ((l / 8) % 2) * 8;
}
template <class T>
__device__ __forceinline__ const T* b_rows(const T* base, int ld, int n0, int k) {
  const int l = threadIdx.x % 32;
  return base + (n0 + l % 8 + (l / 16) * 8) * ld + k + ((l / 8) % 2) * 8;
}
template <class T>
__device__ __forceinline__ const T* b_cols(const T* base, int ld, int n0, int k) {
  const int l = threadIdx.x % 32;
  return base + (k + l % 8 + ((l / 8) % 2) * 8) * ld + n0 + (l / 16) * 8;
}

// acc0 += A·(fragment 0), acc1 += A·(fragment 1) of the two 8-column B fragments that one
// ldmatrix.x4 at b (b_rows, or b_cols when Trans) loads: the step every tensor-core loop repeats.
template <class T, bool Trans>
__device__ __forceinline__ void mma_pair(float (&acc0)[4], float (&acc1)[4], const uint32_t (&a)[4], const void* b) {
  uint32_t r[4];
  if constexpr (Trans)
    ldsm_trans(r, b);
  else
    ldsm(r, b);
  mma<T>(acc0, a, r[0], r[1]);
  mma<T>(acc1, a, r[2], r[3]);
}

// dst[r][c] = T(scale[r]·src[r·ld + c]) for r < 64, c < cols (a multiple of 4, at most 256):
// 0 outside r < nrows, c < ncols; scale may be null. Thread i keeps one float4 column, 4·(i % (cols
// / 4)), and takes rows i / (cols / 4) + k·dr, dr = THREADS / (cols / 4) rows a pass (threads
// past dr·cols/4 take none): its addresses advance by a constant, so the loop is loads, converts
// and stores rather than index arithmetic. A thread issues BATCH 16-byte loads (4-byte ones where
// the rows are not 16-byte aligned) before it converts and stores any: the loads come from DRAM or
// L2, and one round trip per BATCH instead of per load is what keeps these kernels from stalling.
template <class T, int BATCH, int THREADS = kTcThreads>
__device__ __forceinline__ void load_tile(T* dst, int stride, const float* src, int64_t ld, int cols, int nrows,
                                          int ncols, const float* scale) {
  const int c4s = cols / 4, dr = THREADS / c4s, r0 = int(threadIdx.x) / c4s, c = 4 * (int(threadIdx.x) % c4s);
  if (r0 >= dr) return;
  const bool vec = aligned16(src, ld, 4) && ncols % 4 == 0;
  const int lim = min(nrows, kTile);
  const int64_t step = int64_t(dr) * ld;
  const float* row = src + r0 * ld + c;
  T* out = dst + r0 * stride + c;
  for (int r = r0; r < kTile; r += BATCH * dr, row += BATCH * step, out += BATCH * dr * stride) {
    float4 v[BATCH];
#pragma unroll
    for (int u = 0; u < BATCH; ++u) {
      v[u] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (r + u * dr >= lim || c >= ncols) continue;
      const float* q = row + u * step;
      if (vec) {
        v[u] = *reinterpret_cast<const float4*>(q);
      } else {
        v[u].x = q[0];
        if (c + 1 < ncols) v[u].y = q[1];
        if (c + 2 < ncols) v[u].z = q[2];
        if (c + 3 < ncols) v[u].w = q[3];
      }
    }
#pragma unroll
    for (int u = 0; u < BATCH; ++u) {
      const int ru = r + u * dr;
      if (ru >= kTile) break;
      const float f = scale && ru < lim ? scale[ru] : 1.0f;
      *reinterpret_cast<uint2*>(out + u * dr * stride) =
          make_uint2(pack2<T>(f * v[u].x, f * v[u].y), pack2<T>(f * v[u].z, f * v[u].w));
    }
  }
}

// Pass 1 on tensor cores. Block (chunk, head, state tile of 64 rows p × 8·NF columns n) by ticket:
// S_c[p][n] = Σ_s (w∘X)[s][p]·B[s][n], 64 tokens at a time; warp w the rows p0 + 16(w % 4)... and
// the (w / 4)th half of the columns. NF = 16 (the whole of d_state 128 in one tile) halves the
// reads of x and the repeats of chunk_decay; 8 warps keep each thread's share of the chain step at
// 2·NF elements (two round trips to the L2). Tile 0 stores dt and a·log2(e) (fp32) for pass 2.
constexpr int kStateThreads = 256;
template <class T, int NF>
__global__ __launch_bounds__(kStateThreads, 2) void chunk_state_tc_kernel(SsdParams p, const float* x, int64_t ldx,
                                                                         const float* B, int64_t ldb,
                                                                         const float* dt_raw, int64_t lddt,
                                                                         PackedSeqs seqs, int64_t Q, float* dt_out,
                                                                         float* a_out, Chain chain) {
  __shared__ double s_a[kMaxChunk];
  __shared__ float s_dt[kMaxChunk], s_w[kMaxChunk];
  constexpr int kCols = 8 * NF, kBStride = kCols + 8, FW = NF / 2;  // FW: 8-column fragments a warp
  __shared__ __align__(16) T Xs[kTile * kTcStride], Bs[kTile * kBStride];
  const int64_t P = p.headdim, N = p.d_state;
  const int ncol_tiles = int((N + kCols - 1) / kCols), tiles = int((P + kTile - 1) / kTile) * ncol_tiles;
  const auto [w, h, g, ch, a_last] =
      state_prologue(p, dt_raw, lddt, seqs, Q, tiles, chain, dt_out, a_out, s_a, s_dt, s_w);

  const int p0 = (w.tile / ncol_tiles) * kTile, n0 = (w.tile % ncol_tiles) * kCols;
  const float* xs = x + ch.tok0 * ldx + h * P + p0;
  const float* bs = B + ch.tok0 * ldb + g * N + n0;
  const int warp = threadIdx.x / 32, r0 = 16 * (warp % 4), c0 = 8 * FW * (warp / 4);
  float acc[FW][4] = {};
  for (int s0 = 0; s0 < ch.len; s0 += kTile) {
    const int ns = min(kTile, ch.len - s0);
    load_tile<T, 4, kStateThreads>(Xs, kTcStride, xs + s0 * ldx, ldx, kTile, ns, int(P - p0), s_w + s0);
    load_tile<T, 4, kStateThreads>(Bs, kBStride, bs + s0 * ldb, ldb, kCols, ns, int(N - n0), nullptr);
    __syncthreads();
    for (int k = 0; k < ns; k += 16) {
      uint32_t a[4];
      ldsm_trans(a, a_cols(Xs, kTcStride, r0, k));
#pragma unroll
      for (int j = 0; j < FW; j += 2) {
        mma_pair<T, true>(acc[j], acc[j + 1], a, b_cols(Bs, kBStride, c0 + 8 * j, k));
      }
    }
    __syncthreads();
  }
  const int lane = threadIdx.x % 32;
  pass_state(chain, p, seqs, ch, w.c, h, w.tile, tiles, a_last, reinterpret_cast<float(&)[4 * FW]>(acc),
             [&](int i) -> int64_t {
               const int j = i / 4, q = i % 4;
               const int64_t pp = p0 + r0 + lane / 4 + 8 * (q / 2), n = n0 + c0 + 8 * j + 2 * (lane % 4) + q % 2;
               return pp < P && n < N ? pp * N + n : -1;
             });
}

// C Bᵀ on tensor cores, once per (chunk, group) for all the group's heads. Block (chunk, tile
// pair, group): the 64×64 tile of rows t0.. and columns s0.. ≤ t0 (pairs numbered ti(ti+1)/2 + si),
// into cb (chunks, groups, Qp, Qp) fp32, Qp = Q rounded up to whole tiles. In the diagonal tile
// warp w computes (and pass 2 reads) only the first w + 1 groups of 16 columns.
template <class T>
__global__ __launch_bounds__(kTcThreads) void chunk_cb_tc_kernel(SsdParams p, const float* B, int64_t ldb,
                                                                 const float* C, int64_t ldc, PackedSeqs seqs,
                                                                 int64_t Q, int64_t Qp, float* cb) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t c = blockIdx.x, N = p.d_state;
  const int g = blockIdx.z, ns_ = int(state_stride(N)), nk = ns_ - 8;
  T* Cs = reinterpret_cast<T*>(smem);
  T* Bs = Cs + kTile * ns_;
  int ti = 0;
  while ((ti + 1) * (ti + 2) / 2 <= int(blockIdx.y)) ++ti;
  const int t0 = ti * kTile, s0 = (int(blockIdx.y) - ti * (ti + 1) / 2) * kTile;
  const Chunk ch = find_chunk(seqs, c, Q);
  if (t0 >= ch.len) return;
  load_tile<T, 16>(Cs, ns_, C + (ch.tok0 + t0) * ldc + g * N, ldc, nk, ch.len - t0, int(N), nullptr);
  load_tile<T, 16>(Bs, ns_, B + (ch.tok0 + s0) * ldb + g * N, ldb, nk, ch.len - s0, int(N), nullptr);
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r0 = 16 * warp;
  const int groups = s0 < t0 ? 4 : warp + 1;
  float acc[8][4] = {};
  for (int k = 0; k < nk; k += 16) {
    uint32_t af[4];
    ldsm(af, a_rows(Cs, ns_, r0, k));
#pragma unroll
    for (int j = 0; j < 8; j += 2) {
      if (j / 2 >= groups) break;
      mma_pair<T, false>(acc[j], acc[j + 1], af, b_rows(Bs, ns_, 8 * j, k));
    }
  }
  float* out = cb + ((c * p.ngroups + g) * Qp + t0 + r0 + lane / 4) * Qp + s0 + 2 * (lane % 4);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    if (j / 2 >= groups) break;
    *reinterpret_cast<float2*>(out + 8 * j) = make_float2(acc[j][0], acc[j][1]);
    *reinterpret_cast<float2*>(out + 8 * Qp + 8 * j) = make_float2(acc[j][2], acc[j][3]);
  }
}

// Pass 2 on tensor cores. Block (chunk, 64 rows of t × 64 columns of p, head), warp w the rows
// t0 + 16w..; dynamic shared memory: C's rows [t][n] and the start state [p][n] (N padded to whole
// k-steps), x's rows [s][p]. C Bᵀ comes from chunk_cb_tc straight into registers in the layout of
// mma's accumulators, which is that of its A operand: M = (C Bᵀ)∘decay∘dt never touches shared
// memory. At most 128 registers: shared memory (~47 KiB a block at N = 128) allows 4 blocks per
// SM, and the kernel needs those 16 warps in flight more than it needs registers (holding the
// next tile's loads in registers at 3 blocks an SM measured slower: 240 against 223 µs, b8 L2048).
template <class T>
__global__ __launch_bounds__(kTcThreads, 4) void chunk_scan_tc_kernel(SsdParams p, const float* x, int64_t ldx,
                                                                      const float* C, int64_t ldc, float* y,
                                                                      int64_t ldy, const float* dt, const float* a2,
                                                                      const float* chunk_states, const float* cb,
                                                                      PackedSeqs seqs, int64_t Q, int64_t Qp) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ __align__(8) float s_a[kMaxChunk];  // a·log2(e)
  __shared__ __align__(8) float s_dt[kMaxChunk];
  const int64_t c = blockIdx.x, H = p.nheads, P = p.headdim, N = p.d_state;
  const int ns_ = int(state_stride(N)), nk = ns_ - 8;
  T* Cs = reinterpret_cast<T*>(smem);
  T* Ss = Cs + kTile * ns_;
  T* Xs = Ss + kTile * ns_;
  const int ptiles = int((P + kTile - 1) / kTile);
  const int h = blockIdx.z, g = int(h / (H / p.ngroups));
  const int t0 = int(blockIdx.y / ptiles) * kTile, p0 = int(blockIdx.y % ptiles) * kTile;
  const Chunk ch = find_chunk(seqs, c, Q);
  if (t0 >= ch.len) return;
  const int rows = min(kTile, ch.len - t0), s_end = t0 + rows;  // this tile needs s < s_end
  for (int t = threadIdx.x; t < s_end; t += kTcThreads) {
    s_dt[t] = dt[h * seqs.tokens + ch.tok0 + t];
    s_a[t] = a2[h * seqs.tokens + ch.tok0 + t];
  }
  load_tile<T, 16>(Cs, ns_, C + (ch.tok0 + t0) * ldc + g * N, ldc, nk, rows, int(N), nullptr);
  load_tile<T, 16>(Ss, ns_, chunk_states + ((c * H + h) * P + p0) * N, N, nk, int(P - p0), int(N), nullptr);
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int r0 = 16 * warp;  // the warp's first row in the tile
  const int tr[2] = {t0 + r0 + lane / 4, t0 + r0 + lane / 4 + 8};
  const int last[2] = {tr[0] < ch.len ? tr[0] : -1, tr[1] < ch.len ? tr[1] : -1};  // row t takes s ≤ last

  // Earlier chunks: exp(a[t]) · C[t] S_startᵀ.
  float acc[8][4] = {};
  for (int k = 0; k < nk; k += 16) {
    uint32_t af[4];
    ldsm(af, a_rows(Cs, ns_, r0, k));
#pragma unroll
    for (int j = 0; j < 8; j += 2) {
      mma_pair<T, false>(acc[j], acc[j + 1], af, b_rows(Ss, ns_, 8 * j, k));
    }
  }
  float at[2];
  for (int i = 0; i < 2; ++i) {
    at[i] = tr[i] < ch.len ? s_a[tr[i]] : 0.0f;
    const float decay = exp2_approx(at[i]);
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[j][2 * i] *= decay, acc[j][2 * i + 1] *= decay;
  }

  // This chunk, 64 tokens s at a time up to the diagonal tile; in that one, warp w needs only
  // the first w + 1 groups of 16 (s ≤ t).
  const float* cbt = cb + ((c * p.ngroups + g) * Qp + tr[0]) * Qp + 2 * (lane % 4);
  for (int s0 = 0; s0 <= t0; s0 += kTile) {
    const int groups = s0 < t0 ? 4 : warp + 1;
    // The tile's C Bᵀ values, issued before x's tile so that both loads are in flight together.
    float2 cbv[4][2][2];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
#pragma unroll
      for (int f = 0; f < 2; ++f) {
        const float* q = cbt + s0 + 16 * kk + 8 * f;
        cbv[kk][f][0] = cbv[kk][f][1] = make_float2(0.0f, 0.0f);
        if (kk < groups) {
          cbv[kk][f][0] = *reinterpret_cast<const float2*>(q);
          cbv[kk][f][1] = *reinterpret_cast<const float2*>(q + 8 * Qp);
        }
      }
    __syncthreads();
    load_tile<T, 4>(Xs, kTcStride, x + (ch.tok0 + s0) * ldx + h * P + p0, ldx, kTile, s_end - s0, int(P - p0),
                    nullptr);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      if (kk >= groups) break;
      uint32_t m[4];
#pragma unroll
      for (int f = 0; f < 2; ++f)
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int s = s0 + 16 * kk + 8 * f + 2 * (lane % 4);  // and s + 1
          const float2 as = *reinterpret_cast<const float2*>(s_a + s), ds = *reinterpret_cast<const float2*>(s_dt + s);
          const float v0 = s <= last[i] ? cbv[kk][f][i].x * exp2_approx(at[i] - as.x) * ds.x : 0.0f;
          const float v1 = s + 1 <= last[i] ? cbv[kk][f][i].y * exp2_approx(at[i] - as.y) * ds.y : 0.0f;
          m[2 * f + i] = pack2<T>(v0, v1);
        }
#pragma unroll
      for (int j = 0; j < 8; j += 2) {
        mma_pair<T, true>(acc[j], acc[j + 1], m, b_cols(Xs, kTcStride, 8 * j, 16 * kk));
      }
    }
  }

  // D·x from x in fp32: every load before the first store (the compiler must assume y may alias
  // x, so it would not hoist them): one round trip instead of 32.
  const float Dh = p.D[h];
  float xd[2][8][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int pp = p0 + 8 * j + 2 * (lane % 4) + e;
        xd[i][j][e] = tr[i] < ch.len && pp < P ? x[(ch.tok0 + tr[i]) * ldx + h * P + pp] : 0.0f;
      }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    if (tr[i] >= ch.len) continue;
    float* yt = y + (ch.tok0 + tr[i]) * ldy + h * P;
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int pp = p0 + 8 * j + 2 * (lane % 4) + e;
        if (pp < P) yt[pp] = fmaf(Dh, xd[i][j][e], acc[j][2 * i + e]);
      }
  }
}

// The tensor-core scan for d_state ≤ 128 (every published Mamba2 model): one kernel per chunk
// of the sequence (and head, 64 columns p), which walks its chunk 64 tokens (a span) at a time
// with the (p, n) state in fp32 registers. Phase 1: the chunk's own end-state term S_c from zero
// over its spans, then the chain of chunks as in pass 1 above (pass_state: the same hand-off,
// or the separate state pass, with the same bits); phase 2: from the state at the chunk's start,
// per span (s, t in the span, a the cumsum of dt·A within it, times log2(e)):
//   y[t] = Σ_{s≤t} (C Bᵀ)[t][s]·2^(a[t]-a[s])·dt[s]·x[s] + 2^a[t]·C[t] Sᵀ + D·x[t]
//   S    = 2^a[last]·S + Σ_s (2^(a[last]-a[s])·dt[s]·x[s]) ⊗ B[s]
// So C Bᵀ is a 64×64 triangle per span instead of the chunk's, nothing but the chunk-boundary
// states goes through global memory, and x is read twice (the second time from the L2).
// x, B and C come in T, as the conv leaves them in the model (or are rounded to T once by
// to_operand_kernel when given in fp32 or laid out otherwise); D·x takes x as rounded, as
// mamba_ssm's kernels do. w∘x, S and M are rounded as in the passes above; every product
// accumulates in fp32. 8 warps: warp w = (row tile r = w % 4, half h = w / 4): rows t = 16r..
// of C Bᵀ (both halves), columns p = 32h.. of M·X, C·Sᵀ and y;
// state rows p = 16r.., columns n of half h. Every output's sum runs in an order fixed by its
// own chunk: batch invariance holds whatever else the launch holds. The chunk's dt, a and w are
// found once, with the first span's copies, warp s taking span s (one barrier, not two a span
// with one warp busy); phase 1's span copies are double-buffered in the tiles it leaves unused
// and phase 2 copies the next span's tiles once M is stored (the state update moved before that
// barrier), so they land while M·X and y run (H200: 5-8% off the scan, bench/RESULTS.md).
constexpr int kSpan = 64;
constexpr int kSeqThreads = 256;

// Rows of `groups` blocks of `width` values (fp32 or T, row stride ld, block stride `width`) to T,
// rows of groups·PAD with zeros past `width` in each block: B and C to the scan's operand tiles
// (blocks of d_state, PAD = NPAD), x to whole 16-byte pieces a head (blocks of headdim, PAD its
// next multiple of 8).
template <class T, class In>
__global__ void to_operand_kernel(const In* src, int64_t ld, int64_t tokens, int64_t groups, int64_t width,
                                  int64_t pad, T* dst) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // a pair of columns
  if (i >= tokens * groups * pad / 2) return;
  const int64_t row = i / (groups * pad / 2), rest = i % (groups * pad / 2);
  const int64_t g = rest / (pad / 2), n = 2 * (rest % (pad / 2));
  const In* e = src + row * ld + g * width;
  reinterpret_cast<uint32_t*>(dst)[i] =
      pack2<T>(n < width ? load_f32(e + n) : 0.0f, n + 1 < width ? load_f32(e + n + 1) : 0.0f);
}

// fp32 copies of T inputs, for the passes (larger states), which read fp32.
template <class T>
__global__ void to_f32_kernel(const T* src, int64_t ld, int64_t rows, int64_t cols, float* dst) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < rows * cols) dst[i] = load_f32(src + i / cols * ld + i % cols);
}

template <int NPAD>
__host__ __device__ constexpr size_t seq_smem_bytes() {
  return 2 * (3 * size_t(kSpan) * (NPAD + 8) + 3 * size_t(kSpan) * kTcStride) + 4 * (4 * size_t(kMaxChunk));
}

enum class SeqMode { Chained, StateOnly, ScanOnly };

template <class T, int NPAD, SeqMode MODE>
__global__ __launch_bounds__(kSeqThreads, 2) void ssd_chunk_tc_kernel(SsdParams p, const T* x, int64_t ldx,
                                                                      int64_t xhead, bool y_vec, const T* bt,
                                                                      int64_t ldb, const T* ct, int64_t ldc,
                                                                      const float* dt_raw, int64_t lddt, void* y,
                                                                      bool y_narrow, int64_t ldy, PackedSeqs seqs,
                                                                      int64_t Q, Chain chain) {
  constexpr int NS = NPAD + 8, NF = NPAD / 16, NKS = NPAD / 16;  // row stride, n fragments a half, k-steps over n
  extern __shared__ __align__(16) unsigned char smem[];
  T* Cs = reinterpret_cast<T*>(smem);  // [t][n]
  T* Bs = Cs + kSpan * NS;             // [s][n]
  T* Ss = Bs + kSpan * NS;             // [p][n]: the state as an operand
  T* Xt = Ss + kSpan * NS;             // [s][p]: x, or w∘x (phase 2 alternates the two tiles)
  T* Xw = Xt + kSpan * kTcStride;      // [s][p]: w∘x, or x
  T* Ms = Xw + kSpan * kTcStride;      // [t][s]: M
  // Of the whole chunk, span by span (phase 2 of the chained kernel reuses phase 1's):
  float* s_raw = reinterpret_cast<float*>(Ms + kSpan * kTcStride);  // raw dt
  float* s_a = s_raw + kMaxChunk;         // a·log2(e), a the cumsum within the span
  float* s_dt = s_a + kMaxChunk;
  float* s_w = s_dt + kMaxChunk;  // 2^(a[last]-a[s])·dt[s], last the span's

  const int64_t H = p.nheads, P = p.headdim, N = p.d_state, G = p.ngroups;
  const int tiles = int(ceil_div(P, kTile));
  int64_t c;
  int h, tile;
  if constexpr (MODE == SeqMode::ScanOnly) {
    c = blockIdx.x, h = int(blockIdx.y), tile = int(blockIdx.z);
  } else {
    const Work w = take_work(chain, seqs, H, tiles);
    c = w.c, h = w.h, tile = w.tile;
  }
  const Chunk ch = find_chunk(seqs, c, Q);
  const int64_t g = h / (H / G), p0 = int64_t(tile) * kTile, pcols = min(int64_t(kTile), P - p0);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, rt = warp % 4, half = warp / 4;
  const int r0 = 16 * rt;
  const int sp[2] = {r0 + lane / 4, r0 + lane / 4 + 8};  // the state's rows p (and y's rows t) of the lane

  // Copies of span tok0's B (and C), x and raw dt into shared memory, zeros past the chunk's end.
  // Thread i copies rows i/16 + 16u (u < 4) at 16-byte column i % 16 of B and C (their rows are
  // NPAD/8 ≤ 16 such pieces), and rows i/8 + 32u (u < 2) at piece i % 8 of x (a head's columns
  // come in whole pieces, zeros past headdim: see to_operand_kernel).
  const int cr = threadIdx.x / 16, cq = threadIdx.x % 16, xr = threadIdx.x / 8, xq = threadIdx.x % 8;
  const T* bsrc = bt + g * NPAD + 8 * cq;
  const T* csrc = ct + g * NPAD + 8 * cq;
  const T* xsrc = x + h * xhead + p0 + 8 * xq;
  const auto issue = [&](int64_t tok0, int len, bool with_c, T* bdst, T* xdst) {
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int r = cr + 16 * u;
      const bool in = r < len;
      const int64_t row = tok0 + (in ? r : 0);
      if (8 * cq < NPAD) {
        if (with_c) cp_async16(Cs + r * NS + 8 * cq, csrc + row * ldc, in ? 16 : 0);
        cp_async16(bdst + r * NS + 8 * cq, bsrc + row * ldb, in ? 16 : 0);
      }
    }
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int r = xr + 32 * u;
      const bool in = r < len && 8 * xq < pcols;
      cp_async16(xdst + r * kTcStride + 8 * xq, xsrc + (in ? (tok0 + r) * ldx : tok0 * ldx), in ? 16 : 0);
    }
    cp_async_commit();
  };
  // The chunk's raw dt, in the same group as its first span's copies (kSeqThreads ≥ kMaxChunk).
  const auto issue_dt = [&] {
    const int r = threadIdx.x;
    if (r < kMaxChunk) cp_async4(s_raw + r, dt_raw + (ch.tok0 + min(r, ch.len - 1)) * lddt + h, r < ch.len ? 4 : 0);
  };
  const float A = -expf(p.A_log[h]), bias = p.dt_bias[h];
  const int nspans = int(ceil_div(ch.len, kSpan));
  // After span s's copies have landed (with the first span's, `scan_dt`: the chunk's dt): warp s'
  // takes span s' of the chunk, its dt, a·log2(e) (an inclusive scan across the warp; every
  // exponent below is clamped to ≤ 0, so rounding in the scan never makes a factor exceed 1) and
  // w into s_dt, s_a, s_w, all spans at once; then span s's w∘x (from its x in xs) into ws.
  // Returns span s's a[last]·log2(e).
  const auto span_prologue = [&](int s, bool scan_dt, const T* xs, T* ws, bool one_ahead) -> float {
    if (one_ahead) cp_async_wait_all_but_last();
    else cp_async_wait_all();
    __syncthreads();
    if (scan_dt) {
      if (warp < nspans) {
        const int t = 2 * lane, slen = min(kSpan, ch.len - warp * kSpan);
        const float* raw = s_raw + warp * kSpan;
        float *sa = s_a + warp * kSpan, *sdt = s_dt + warp * kSpan, *sw = s_w + warp * kSpan;
        const float d0 = t < slen ? dt_activation(raw[t], bias, p.dt_min, p.dt_max) : 0.0f;
        const float d1 = t + 1 < slen ? dt_activation(raw[t + 1], bias, p.dt_min, p.dt_max) : 0.0f;
        const float v0 = d0 * A;
        float incl = v0 + d1 * A;
#pragma unroll
        for (int off = 1; off < 32; off *= 2) {
          const float o = __shfl_up_sync(0xffffffffu, incl, off);
          if (lane >= off) incl += o;
        }
        const float excl = __shfl_up_sync(0xffffffffu, incl, 1);
        const float a0 = float(double(lane > 0 ? excl + v0 : v0) * kLog2eD), a1 = float(double(incl) * kLog2eD);
        const float last = __shfl_sync(0xffffffffu, a1, 31);
        sdt[t] = d0, sdt[t + 1] = d1;
        sa[t] = a0, sa[t + 1] = a1;
        sw[t] = exp2_approx(fminf(last - a0, 0.0f)) * d0;
        sw[t + 1] = exp2_approx(fminf(last - a1, 0.0f)) * d1;
      }
      __syncthreads();
    }
    const float* sw = s_w + s * kSpan;
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int r = cr + 16 * u, cc = 4 * cq;
      const uint2 v = *reinterpret_cast<const uint2*>(xs + r * kTcStride + cc);
      const float2 lo = unpack2<T>(v.x), hi = unpack2<T>(v.y);
      const float wr = sw[r];
      *reinterpret_cast<uint2*>(ws + r * kTcStride + cc) =
          make_uint2(pack2<T>(wr * lo.x, wr * lo.y), pack2<T>(wr * hi.x, wr * hi.y));
    }
    __syncthreads();
    return s_a[s * kSpan + kSpan - 1];
  };
  // S = 2^a[last]·S + (w∘X)ᵀ B: rows p = r0.., the half's columns n, 64 tokens as k.
  float st[NF][4];
  const auto update_state = [&](float a2_last, const T* bs, const T* ws) {
    const float decay = exp2_approx(fminf(a2_last, 0.0f));
#pragma unroll
    for (int j = 0; j < NF; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) st[j][e] *= decay;
#pragma unroll
    for (int k = 0; k < kSpan; k += 16) {
      uint32_t a[4];
      ldsm_trans(a, a_cols(ws, kTcStride, r0, k));
#pragma unroll
      for (int j = 0; j < NF; j += 2) {
        mma_pair<T, true>(st[j], st[j + 1], a, b_cols(bs, NS, NPAD / 2 * half + 8 * j, k));
      }
    }
  };
  const auto state_offset = [&](int i) -> int64_t {
    const int j = i / 4, e = i % 4;
    const int64_t pp = p0 + sp[e / 2], n = NPAD / 2 * half + 8 * j + 2 * (lane % 4) + e % 2;
    return pp < P && n < N ? pp * N + n : -1;
  };

  if constexpr (MODE != SeqMode::ScanOnly) {
    // Phase 1: S_c from zero, and a[last] of the chunk in natural units (the spans' in order).
#pragma unroll
    for (int j = 0; j < NF; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) st[j][e] = 0.0f;
    double a_chunk = 0.0;
    // Double-buffered: phase 1 reads neither C nor the state operand, so span s+1's B goes to Cs
    // and its x to Ss (found by offsets, which keeps ptxas from spilling) while span s is summed.
    const auto bbuf = [&](int i) { return Bs - (i % 2) * (kSpan * NS); };  // Cs just before Bs
    const auto xbuf = [&](int i) { return Xt - (i % 2) * (kSpan * NS); };  // Ss just before Xt
    static_assert(NS >= kTcStride, "x's second buffer");
    issue_dt();
    issue(ch.tok0, min(kSpan, ch.len), false, Bs, Xt);
    for (int s = 0; s < nspans; ++s) {
      const bool ahead = s + 1 < nspans;
      if (ahead) issue(ch.tok0 + (s + 1) * kSpan, min(kSpan, ch.len - (s + 1) * kSpan), false, bbuf(s + 1),
                       xbuf(s + 1));
      const float a2_last = span_prologue(s, s == 0, xbuf(s), Xw, ahead);
      a_chunk += double(a2_last) / kLog2eD;
      update_state(a2_last, bbuf(s), Xw);
      __syncthreads();  // span s's buffers are free for span s+2
    }
    // Phase 2's first span is copied in during the hand-off; pass_state leaves S_start in st.
    if constexpr (MODE == SeqMode::Chained) issue(ch.tok0, min(kSpan, ch.len), true, Bs, Xt);
    pass_state(chain, p, seqs, ch, c, h, tile, tiles, a_chunk, reinterpret_cast<float(&)[4 * NF]>(st),
               state_offset);
    if constexpr (MODE == SeqMode::StateOnly) return;
  } else {
    // Phase 2 alone: the state at the chunk's start from chunk_states[c] (state_pass left it there).
    issue_dt();
    issue(ch.tok0, min(kSpan, ch.len), true, Bs, Xt);
    const float* s_start = chain.chunk_states + (c * H + h) * P * N;
    float(&sv)[4 * NF] = reinterpret_cast<float(&)[4 * NF]>(st);
#pragma unroll
    for (int i = 0; i < 4 * NF; i += 2)
      load_pair(s_start, state_offset(i), state_offset(i + 1), chain.pairs, sv[i], sv[i + 1]);
  }

  // Phase 2: from the state at the chunk's start.
  const auto state_to_operand = [&] {
#pragma unroll
    for (int j = 0; j < NF; ++j) {
      const int n = NPAD / 2 * half + 8 * j + 2 * (lane % 4);
      *reinterpret_cast<uint32_t*>(Ss + sp[0] * NS + n) = pack2<T>(st[j][0], st[j][1]);
      *reinterpret_cast<uint32_t*>(Ss + sp[1] * NS + n) = pack2<T>(st[j][2], st[j][3]);
    }
  };
  state_to_operand();
  const float Dh = p.D[h];
  const int pc0 = 32 * half;  // the warp's columns p of y
  for (int s = 0; s < nspans; ++s) {
    const int64_t tok0 = ch.tok0 + s * kSpan;
    const int len = min(kSpan, ch.len - s * kSpan);
    // x and w∘x take Xt and Xw in turn: the next span's x lands in this one's w∘x tile, free
    // once the state is updated, while this one's x still feeds M·X and D·x.
    T* xs = s % 2 ? Xw : Xt;
    T* ws = s % 2 ? Xt : Xw;
    // Phase 1 left dt, a and w of every span (ScanOnly: the first span's prologue finds them).
    const float a2_last = span_prologue(s, MODE == SeqMode::ScanOnly && s == 0, xs, ws, false);
    const float *sa = s_a + s * kSpan, *sdt = s_dt + s * kSpan;
    // C Bᵀ (rows r0.., the k-steps q ≤ r of 16 columns s with q % 2 = the warp's half: the two
    // halves share the triangle) and C·Sᵀ (the half's columns p), C's fragment loaded once.
    float cb[2][2][4] = {}, cs[4][4] = {};
#pragma unroll
    for (int k = 0; k < NKS; ++k) {
      uint32_t af[4];
      ldsm(af, a_rows(Cs, NS, r0, 16 * k));
#pragma unroll
      for (int li = 0; li < 2; ++li) {
        const int q = 2 * li + half;
        if (q > rt) break;
        mma_pair<T, false>(cb[li][0], cb[li][1], af, b_rows(Bs, NS, 16 * q, 16 * k));
      }
#pragma unroll
      for (int j = 0; j < 4; j += 2) {
        mma_pair<T, false>(cs[j], cs[j + 1], af, b_rows(Ss, NS, pc0 + 8 * j, 16 * k));
      }
    }
    float at[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      at[i] = sa[sp[i]];
      const float decay = exp2_approx(fminf(at[i], 0.0f));
#pragma unroll
      for (int j = 0; j < 4; ++j) cs[j][2 * i] *= decay, cs[j][2 * i + 1] *= decay;
    }
    // M = C Bᵀ∘2^(a[t]-a[s])∘dt[s] for s ≤ t (0 above the diagonal), rounded to T, to shared memory.
#pragma unroll
    for (int li = 0; li < 2; ++li) {
      const int q = 2 * li + half;
      if (q > rt) break;
#pragma unroll
      for (int f = 0; f < 2; ++f) {
        const int s0 = 16 * q + 8 * f + 2 * (lane % 4);  // and s0 + 1
        const float2 as = *reinterpret_cast<const float2*>(sa + s0), ds = *reinterpret_cast<const float2*>(sdt + s0);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const float v0 = s0 <= sp[i] ? cb[li][f][2 * i] * exp2_approx(fminf(at[i] - as.x, 0.0f)) * ds.x : 0.0f;
          const float v1 =
              s0 + 1 <= sp[i] ? cb[li][f][2 * i + 1] * exp2_approx(fminf(at[i] - as.y, 0.0f)) * ds.y : 0.0f;
          *reinterpret_cast<uint32_t*>(Ms + sp[i] * kTcStride + s0) = pack2<T>(v0, v1);
        }
      }
    }
    // The state past the span (not after the last: the chain has it), so that once every warp
    // is here C, B, w∘x and the state operand are free for the next span.
    const bool more = s + 1 < nspans;
    if (more) update_state(a2_last, Bs, ws);
    __syncthreads();
    // The next span's copies land while M·X and y run.
    if (more) {
      issue(tok0 + kSpan, min(kSpan, ch.len - (s + 1) * kSpan), true, Bs, ws);
      state_to_operand();
    }
    // + M·X over the k-steps q ≤ r.
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      if (q > rt) break;
      uint32_t m[4];
      ldsm(m, a_rows(Ms, kTcStride, r0, 16 * q));
#pragma unroll
      for (int j = 0; j < 4; j += 2) {
        mma_pair<T, true>(cs[j], cs[j + 1], m, b_cols(xs, kTcStride, pc0 + 8 * j, 16 * q));
      }
    }
    // y = that + D·x, in fp32 or (y_narrow) rounded once to T.
    const auto store_y = [&](auto* yt, int cc, float y0, float y1) {
      using Y = std::remove_pointer_t<decltype(yt)>;
      if (y_vec && cc + 1 < pcols) {
        if constexpr (std::is_same_v<Y, float>) *reinterpret_cast<float2*>(yt + cc) = make_float2(y0, y1);
        else *reinterpret_cast<uint32_t*>(yt + cc) = pack2<T>(y0, y1);
      } else {
        if (cc < pcols) store_f32(yt + cc, y0);
        if (cc + 1 < pcols) store_f32(yt + cc + 1, y1);
      }
    };
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      if (sp[i] >= len) continue;
      const int64_t row = (tok0 + sp[i]) * ldy + h * P + p0;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int cc = pc0 + 8 * j + 2 * (lane % 4);
        const float2 xv = unpack2<T>(*reinterpret_cast<const uint32_t*>(xs + sp[i] * kTcStride + cc));
        const float y0 = fmaf(Dh, xv.x, cs[j][2 * i]), y1 = fmaf(Dh, xv.y, cs[j][2 * i + 1]);
        if (y_narrow) store_y(static_cast<T*>(y) + row, cc, y0, y1);
        else store_y(static_cast<float*>(y) + row, cc, y0, y1);
      }
    }
  }
}

void check_params(const SsdParams& p) {
  if (p.headdim < 1 || p.headdim > kMaxHeaddim)
    raise(cat("[ssd_scan] headdim ", p.headdim, ": the CUDA kernels take 1 to ", kMaxHeaddim));
  if (p.d_state < 1 || p.ngroups < 1 || p.nheads % p.ngroups != 0)
    raise(cat("[ssd_scan] ", p.nheads, " heads in ", p.ngroups, " groups, d_state ", p.d_state, ": not a valid shape"));
  if (p.nheads < 1 || p.nheads > 65535)
    raise(cat("[ssd_scan] ", p.nheads, " heads: the CUDA kernels take 1 to 65535 (a grid dimension)"));
}

}  // namespace

void ssd_scan_forward(const SsdParams& p, const void* x, int64_t ldx, const void* B, int64_t ldb, const void* C,
                      int64_t ldc, DType inputs, const float* dt_raw, int64_t lddt, void* y_out, DType y_dtype,
                      int64_t ldy, float* states, const PackedSeqs& seqs, int64_t chunk_size, DType compute) {
  check_params(p);
  if (y_dtype != DType::F32 && y_dtype != compute)
    raise(cat("[ssd_scan] y in ", dtype_name(y_dtype), ": the ", dtype_name(compute), " scan writes fp32 or ",
              dtype_name(compute)));
  const char* passes = std::getenv("MAMBA2_SSD_PASSES");
  const bool one_kernel = compute != DType::F32 && p.d_state <= 128 && !(passes && std::string(passes) == "1");
  if (y_dtype != DType::F32 && !one_kernel) {
    // The passes write fp32: y through a copy, rounded once.
    const int64_t HP = p.nheads * p.headdim;
    auto wide = allocate(sizeof(float) * size_t(seqs.tokens * HP), "ssd_scan scratch");
    ssd_scan_forward(p, x, ldx, B, ldb, C, ldc, inputs, dt_raw, lddt, wide.get(), DType::F32, HP, states, seqs,
                     chunk_size, compute);
    cast_rows(static_cast<const float*>(wide.get()), HP, y_out, y_dtype, ldy, seqs.tokens, HP);
    return;
  }
  float* y = static_cast<float*>(y_out);  // the passes' (fp32); the one-kernel scan takes y_out
  if (inputs != DType::F32 && inputs != compute)
    raise(cat("[ssd_scan] x, B and C in ", dtype_name(inputs), ": the ", dtype_name(compute),
              " scan takes them in fp32 or in ", dtype_name(compute)));
  if (chunk_size < 1 || chunk_size > kMaxChunk)
    raise(cat("[ssd_scan] chunk_size ", chunk_size, ": the CUDA kernels take 1 to ", kMaxChunk));
  if (compute != DType::F32 && p.d_state > kMaxTcState)
    raise(cat("[ssd_scan] d_state ", p.d_state, ": the ", dtype_name(compute), " kernels take 1 to ", kMaxTcState));
  if (seqs.tokens == 0) return;
  const int64_t H = p.nheads, P = p.headdim, N = p.d_state, T = seqs.tokens;
  const unsigned chunks = unsigned(seqs.total_chunks), heads = unsigned(H);
  auto dt_buf = allocate(sizeof(float) * size_t(H * T), "ssd_scan scratch");
  auto a_buf = allocate(sizeof(double) * size_t(H * T), "ssd_scan scratch");  // double (f32) or float (else)
  auto chunk_states = allocate(sizeof(float) * size_t(seqs.total_chunks * H * P * N), "ssd_scan scratch");
  float* dt = static_cast<float*>(dt_buf.get());
  float* cs = static_cast<float*>(chunk_states.get());
  // Pass 1's grid: one block per (chunk, head, state tile), in ticket order (Chain); chained or
  // followed by state_pass (the same bits either way).
  std::shared_ptr<void> chain_buf, a_last_buf;
  const auto chain = [&](const void* kernel, int threads, int64_t tiles, unsigned& blocks, size_t smem = 0,
                         int64_t share = 2) {
    const int64_t n = seqs.total_chunks * H * tiles;
    if (n > int64_t(INT32_MAX)) raise(cat("[ssd_scan] ", n, " blocks in the state pass: more than a grid takes"));
    blocks = unsigned(n);
    int per_sm = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem), "ssd_scan");
    // The chain pays a hand-off between blocks (a few µs) per chunk, in sequence; hidden when each
    // chunk index of every sequence fills a share of a wave of blocks (the blocks of the next
    // index start as those of this one finish), exposed when many indices run at once (a few
    // long sequences of few heads: the separate pass walks them in registers instead). The share:
    // half a wave for the passes; an eighth for the one-kernel scan, whose separate pass also
    // reads every tile twice from memory (H200, bench/RESULTS.md: chained, 48 blocks an index
    // ran 22% faster; 24, a 130m prompt alone, 3% slower).
    const int64_t capacity = int64_t(per_sm) * sm_count(), per_index = seqs.count * H * tiles;
    const bool chained = n > capacity && share * per_index >= capacity;
    const size_t bytes = sizeof(unsigned long long) + sizeof(unsigned) * size_t(chained ? n : 0);
    chain_buf = allocate(bytes, "ssd_scan scratch");
    fill_zero(chain_buf.get(), bytes);
    if (!chained) a_last_buf = allocate(sizeof(double) * size_t(H * seqs.total_chunks), "ssd_scan scratch");
    auto* tickets = static_cast<unsigned long long*>(chain_buf.get());
    const bool pairs = N % 2 == 0 && reinterpret_cast<uintptr_t>(states) % 8 == 0;
    return Chain{chained, tickets, reinterpret_cast<unsigned*>(tickets + 1), cs, states,
                 static_cast<double*>(a_last_buf.get()), pairs};
  };
  const auto state_pass = [&](const Chain& k) {
    if (k.chained) return;
    state_pass_kernel<<<dim3(unsigned(seqs.count), heads, unsigned(ceil_div(P * N, kThreads))), kThreads, 0,
                        stream()>>>(p, k.a_last, cs, states, seqs);
    check_launch("ssd_scan");
  };

  if (compute == DType::F32) {
    const float *xf = static_cast<const float*>(x), *bf = static_cast<const float*>(B), *cf = static_cast<const float*>(C);
    double* a = static_cast<double*>(a_buf.get());
    unsigned blocks = 0;
    const Chain k = chain(reinterpret_cast<const void*>(chunk_state_kernel), kThreads,
                          ceil_div(P, kTile) * ceil_div(N, kTile), blocks);
    chunk_state_kernel<<<blocks, kThreads, 0, stream()>>>(p, xf, ldx, bf, ldb, dt_raw, lddt, seqs, chunk_size, dt, a, k);
    check_launch("ssd_scan");
    state_pass(k);
    const dim3 grid(chunks, unsigned(ceil_div(chunk_size, kTile)), heads);
    const auto scan = [&](auto kernel) {
      kernel<<<grid, kThreads, 0, stream()>>>(p, xf, ldx, bf, ldb, cf, ldc, y, ldy, dt, a, cs, seqs, chunk_size);
    };
    switch (ceil_div(P, kTile)) {
      case 1: scan(chunk_scan_kernel<1>); break;
      case 2: scan(chunk_scan_kernel<2>); break;
      case 3: scan(chunk_scan_kernel<3>); break;
      default: scan(chunk_scan_kernel<4>); break;
    }
    check_launch("ssd_scan");
    return;
  }

  const bool in_t = inputs != DType::F32;
  const auto tensor_cores = [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    if (one_kernel) {
      const auto spans = [&](auto npad) {
        constexpr int NPAD = decltype(npad)::value;
        const int64_t G = p.ngroups;
        // The operands as the kernel copies them, in 16-byte pieces: the inputs themselves where
        // they come in T in whole pieces (B and C rows of d_state 64 or 128, heads of x a multiple
        // of 8 wide: the model's), else copies rounded to T and padded with zeros.
        const bool bc_direct = in_t && N == NPAD && aligned16(B, ldb, sizeof(T)) && aligned16(C, ldc, sizeof(T));
        const bool x_direct = in_t && P % 8 == 0 && aligned16(x, ldx, sizeof(T));
        const int64_t ppad = (P + 7) / 8 * 8;
        const size_t copies = (bc_direct ? 0 : 2 * size_t(seqs.tokens * G * NPAD)) +
                              (x_direct ? 0 : size_t(seqs.tokens * H * ppad));
        std::shared_ptr<void> copy_buf = copies ? allocate(sizeof(T) * copies, "ssd_scan scratch") : nullptr;
        T* next = static_cast<T*>(copy_buf.get());
        const auto to_operand = [&](const void* src, int64_t ld, int64_t groups, int64_t width, int64_t pad) {
          T* dst = next;
          next += seqs.tokens * groups * pad;
          const unsigned blocks = unsigned(ceil_div(seqs.tokens * groups * pad / 2, int64_t(256)));
          if (in_t)
            to_operand_kernel<T, T>
                <<<blocks, 256, 0, stream()>>>(static_cast<const T*>(src), ld, seqs.tokens, groups, width, pad, dst);
          else
            to_operand_kernel<T, float><<<blocks, 256, 0, stream()>>>(static_cast<const float*>(src), ld, seqs.tokens,
                                                                       groups, width, pad, dst);
          check_launch("ssd_scan");
          return dst;
        };
        const T *bt = static_cast<const T*>(B), *ct = static_cast<const T*>(C), *xt = static_cast<const T*>(x);
        int64_t ldbt = ldb, ldct = ldc, ldxt = ldx, xhead = P;
        if (!bc_direct) {
          bt = to_operand(B, ldb, G, N, NPAD), ct = to_operand(C, ldc, G, N, NPAD);
          ldbt = ldct = G * NPAD;
        }
        if (!x_direct) {
          xt = to_operand(x, ldx, H, P, ppad);
          ldxt = H * ppad, xhead = ppad;
        }
        constexpr size_t smem = seq_smem_bytes<NPAD>();
        auto* chained = ssd_chunk_tc_kernel<T, NPAD, SeqMode::Chained>;
        auto* state_only = ssd_chunk_tc_kernel<T, NPAD, SeqMode::StateOnly>;
        auto* scan_only = ssd_chunk_tc_kernel<T, NPAD, SeqMode::ScanOnly>;
        for (auto* kernel : {chained, state_only, scan_only})
          check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)), "ssd_scan");
        const size_t y_es = dtype_size(y_dtype);
        const bool y_vec = reinterpret_cast<uintptr_t>(y_out) % (2 * y_es) == 0 && ldy % 2 == 0 && P % 2 == 0;
        const bool y_narrow = y_dtype != DType::F32;
        unsigned blocks = 0;
        const int64_t tiles = ceil_div(P, kTile);
        const Chain k = chain(reinterpret_cast<const void*>(chained), kSeqThreads, tiles, blocks, smem, 8);
        if (k.chained) {
          chained<<<blocks, kSeqThreads, smem, stream()>>>(p, xt, ldxt, xhead, y_vec, bt, ldbt, ct, ldct, dt_raw, lddt,
                                                           y_out, y_narrow, ldy, seqs, chunk_size, k);
          check_launch("ssd_scan");
          return;
        }
        state_only<<<blocks, kSeqThreads, smem, stream()>>>(p, xt, ldxt, xhead, y_vec, bt, ldbt, ct, ldct, dt_raw,
                                                            lddt, y_out, y_narrow, ldy, seqs, chunk_size, k);
        check_launch("ssd_scan");
        state_pass(k);
        scan_only<<<dim3(chunks, heads, unsigned(tiles)), kSeqThreads, smem, stream()>>>(
            p, xt, ldxt, xhead, y_vec, bt, ldbt, ct, ldct, dt_raw, lddt, y_out, y_narrow, ldy, seqs, chunk_size, k);
        check_launch("ssd_scan");
      };
      if (N <= 64) spans(std::integral_constant<int, 64>{});
      else spans(std::integral_constant<int, 128>{});
      return;
    }
    // The passes read fp32: copies of x, B and C where they come in T.
    const float *xf = static_cast<const float*>(x), *bf = static_cast<const float*>(B), *cf = static_cast<const float*>(C);
    int64_t ldxf = ldx, ldbf = ldb, ldcf = ldc;
    std::shared_ptr<void> widened;
    if (in_t) {
      const int64_t HP = H * P, GN = p.ngroups * N, rows = seqs.tokens;
      widened = allocate(sizeof(float) * size_t(rows * (HP + 2 * GN)), "ssd_scan scratch");
      float* d = static_cast<float*>(widened.get());
      const auto widen = [&](const void* src, int64_t ld, int64_t cols, float* dst) {
        to_f32_kernel<T><<<unsigned(ceil_div(rows * cols, int64_t(256))), 256, 0, stream()>>>(
            static_cast<const T*>(src), ld, rows, cols, dst);
        check_launch("ssd_scan");
      };
      widen(x, ldx, HP, d), widen(B, ldb, GN, d + rows * HP), widen(C, ldc, GN, d + rows * (HP + GN));
      xf = d, bf = d + rows * HP, cf = d + rows * (HP + GN);
      ldxf = HP, ldbf = ldcf = GN;
    }
    float* a2 = static_cast<float*>(a_buf.get());
    const auto chunk_state = [&](auto kernel, int64_t cols) {
      unsigned blocks = 0;
      const Chain k = chain(reinterpret_cast<const void*>(kernel), kStateThreads,
                            ceil_div(P, kTile) * ceil_div(N, cols), blocks);
      kernel<<<blocks, kStateThreads, 0, stream()>>>(p, xf, ldxf, bf, ldbf, dt_raw, lddt, seqs, chunk_size, dt, a2, k);
      check_launch("ssd_scan");
      state_pass(k);
    };
    if (N > 64) chunk_state(chunk_state_tc_kernel<T, 16>, 128);
    else chunk_state(chunk_state_tc_kernel<T, 8>, 64);
    const int64_t ntiles = ceil_div(chunk_size, kTile), Qp = ntiles * kTile;
    auto cb_buf = allocate(sizeof(float) * size_t(seqs.total_chunks * p.ngroups * Qp * Qp), "ssd_scan scratch");
    float* cb = static_cast<float*>(cb_buf.get());
    const size_t cb_smem = sizeof(T) * size_t(2 * kTile * state_stride(N));
    check(cudaFuncSetAttribute(chunk_cb_tc_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(cb_smem)),
          "ssd_scan");
    chunk_cb_tc_kernel<T><<<dim3(chunks, unsigned(ntiles * (ntiles + 1) / 2), unsigned(p.ngroups)), kTcThreads,
                            cb_smem, stream()>>>(p, bf, ldbf, cf, ldcf, seqs, chunk_size, Qp, cb);
    check_launch("ssd_scan");
    const size_t smem = sizeof(T) * size_t(kTile * (2 * state_stride(N) + kTcStride));
    check(cudaFuncSetAttribute(chunk_scan_tc_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
          "ssd_scan");
    const dim3 grid(chunks, unsigned(ntiles * ceil_div(P, kTile)), heads);
    chunk_scan_tc_kernel<T><<<grid, kTcThreads, smem, stream()>>>(p, xf, ldxf, cf, ldcf, y, ldy, dt, a2, cs, cb, seqs,
                                                                  chunk_size, Qp);
    check_launch("ssd_scan");
  };
  if (compute == DType::BF16) tensor_cores(static_cast<__nv_bfloat16*>(nullptr));
  else tensor_cores(static_cast<__half*>(nullptr));
}

int64_t ssd_step_sum_count(int64_t nheads, int64_t headdim) { return nheads * ceil_div(headdim, kStepRows); }

void ssd_step(const SsdParams& p, const float* x, int64_t ldx, const float* B, int64_t ldb, const float* C,
              int64_t ldc, const float* dt_raw, int64_t lddt, float* y, int64_t ldy, float* states,
              const int64_t* slots, int64_t nb, const float* z, int64_t ldz, float* sums, int64_t lds,
              const L2Warm& warm) {
  check_params(p);
  if (nb == 0) return;
  if (p.d_state > 32 * kStepCols)
    raise(cat("[ssd_scan] d_state ", p.d_state, ": the decode step takes at most ", 32 * kStepCols));
  const dim3 grid(unsigned(nb), unsigned(p.nheads), unsigned(ceil_div(p.headdim, kStepRows)));
  // 16-byte loads: whole float4 rows of the states (a pool buffer) and of B and C.
  const bool vec = aligned16(states, p.d_state, 4) && aligned16(B, ldb, 4) && aligned16(C, ldc, 4);
  launch_overlapped(vec ? step_kernel<true> : step_kernel<false>, grid, kStepWarps * 32, 0, "ssd_scan", p, x, ldx, B,
                    ldb, C, ldc, dt_raw, lddt, y, ldy, states, slots, z, ldz, sums, lds, fitting(warm));
}


// ---------------------------------------------------------------------------------------------
// Backward: the CPU kernel's algorithm (cpu/ssd_scan.cpp) with its products batched through
// cuBLASLt on operands of the compute dtype (fp32: no TF32; bf16 / f16: tensor cores), fp32
// accumulation. Every chunk is laid out padded to Q tokens (zeros for x, B, C, d_y and dt past a
// sequence's end: the padding's a stays a[len-1], its w and every product with it vanish), so that
// each product is one strided batch: per group over the chunks with the group's heads side by side
// (the chunks' own states, C S_startᵀ, B dS_endᵀ, the state terms of d_C and d_B), or over the
// (chunk, head) pairs from head-major copies (d_y xᵀ, Mᵀ d_y). Kernels do the rest: the decays and
// the operand copies (bwd_prep), the chunk-start states and end-state gradients in chunk order per
// sequence (bwd_states), the (t, s) pairs' terms a 64×64 tile at a time, summed over a group's heads
// in head order (bwd_pairs), and the rows' terms with the chain through dt (bwd_rows). Every sum
// runs in a fixed order that depends on its own chunk only, the chunks' parameter sums in chunk
// order (add_column_partials): the same bits every run, whatever else is in the batch.

namespace {

struct BwdDims {
  int64_t NC, Q, H, G, P, N;
  __host__ __device__ int64_t HP() const { return H * P; }
  __host__ __device__ int64_t GN() const { return G * N; }
  __host__ __device__ int64_t PN() const { return P * N; }
  __host__ __device__ int64_t NT() const { return (Q + kTile - 1) / kTile; }  // 64-token tiles a chunk
};

// Head h's rows of chunk c (first token ch.tok0) of x or d_y for the tensor-core kernels: row t at
// the result + t·ld, zeros from row `len` on. From the head-major copy (chunk, head, Q, P) bwd_prep
// writes, zero-padded to Q rows; or, where that copy is not made (copy null: the inputs came in
// T with rows on 16 bytes), from the input itself, token-major with row stride ld_in.
template <class T>
__device__ __forceinline__ const T* head_rows(const T* copy, const T* in, int64_t ld_in, const BwdDims& d, int64_t c,
                                              const Chunk& ch, int64_t h, int64_t& ld, int64_t& len) {
  if (copy) {
    ld = d.P, len = d.Q;
    return copy + (c * d.H + h) * d.Q * d.P;
  }
  ld = ld_in, len = ch.len;
  return in + ch.tok0 * ld_in + h * d.P;
}

// K adjacent elements of T stored at once (K · sizeof(T) bytes, aligned so).
template <class T, int K>
struct alignas(sizeof(T) * K) Pack {
  T e[K];
};

// Element i of 16 bytes of E loaded as raw words, as a float (i a constant once unrolled).
template <class E>
__device__ __forceinline__ float raw_element(const uint4& r, int i) {
  constexpr int per = int(4 / sizeof(E));
  const int k = i / per;
  const uint32_t w = k == 0 ? r.x : k == 1 ? r.y : k == 2 ? r.z : r.w;
  if constexpr (std::is_same_v<E, float>) return __uint_as_float(w);
  else if constexpr (std::is_same_v<E, __nv_bfloat16>) return __uint_as_float(i % 2 ? w & 0xffff0000u : w << 16);
  else return __half2float(__ushort_as_half(uint16_t(i % 2 ? w >> 16 : w & 0xffffu)));
}

// Block (chunk, head): dt and a (as the forward's chunk_decay, a in double); x and d_y head-major
// (chunk, head, Q, P) unless Xh is null (head_rows), w[t]·x and exp(a[t])·d_y token-major
// (chunk·Q + t, H·P); B and C (chunk·Q + t, G·N), the chunk's rows shared out over its blocks.
// Operands rounded to T once (In = T: the inputs came rounded, and are copied).
// A streaming kernel: 16 bytes of x and of d_y a load (`wide`: P, the row strides and the
// pointers allow it; else an element), kBatch loads of each out before their stores, kept as raw
// words until then, 4 blocks an SM (64 registers). Two elements a load, 4 bytes of bf16, moved
// ~1.7 TB/s on the H100.
template <class T, class In, bool wide>
__global__ __launch_bounds__(kThreads, 4) void bwd_prep_kernel(
    SsdParams p, const In* __restrict__ x, int64_t ldx, const In* __restrict__ B, int64_t ldb,
    const In* __restrict__ C, int64_t ldc, const float* __restrict__ dt_raw, int64_t lddt,
    const In* __restrict__ d_y, int64_t lddy, PackedSeqs seqs, BwdDims d, float* dtp, double* ap,
    T* __restrict__ Xh, T* __restrict__ dYh, T* __restrict__ XW, T* __restrict__ DYs, T* __restrict__ Bp,
    T* __restrict__ Cp) {
  __shared__ float s_dt[kMaxChunk], s_w[kMaxChunk], s_ey[kMaxChunk];
  __shared__ double s_a[kMaxChunk];
  const int64_t c = blockIdx.y, Q = d.Q, P = d.P, HP = d.HP(), GN = d.GN();
  const int h = int(blockIdx.x);
  const Chunk ch = find_chunk(seqs, c, Q);
  chunk_decay(p, dt_raw, lddt, h, ch.tok0, ch.len, s_dt, s_a);
  const int64_t u = (c * d.H + h) * Q;
  const double a_last = s_a[Q - 1];
  for (int64_t t = threadIdx.x; t < Q; t += kThreads) {
    dtp[u + t] = s_dt[t];
    ap[u + t] = s_a[t];
    s_w[t] = expf(float(a_last - s_a[t])) * s_dt[t];
    s_ey[t] = expf(float(s_a[t]));
  }
  __syncthreads();
  constexpr int K = wide ? int(16 / sizeof(In)) : 1, kBatch = wide ? 2 : 4;
  using V = std::conditional_t<wide, uint4, float>;
  using PT = Pack<T, K>;
  const auto load = [](const In* src) {
    if constexpr (wide) return *reinterpret_cast<const uint4*>(src);
    else return load_f32(src);
  };
  // One piece scaled and rounded to T (zeros past the sequence: v zero).
  const auto scaled = [](const V& v, float s) {
    PT r;
#pragma unroll
    for (int i = 0; i < K; ++i) {
      if constexpr (wide) store_f32(&r.e[i], s * raw_element<In>(v, i));
      else store_f32(&r.e[i], s * v);
    }
    return r;
  };
  const int cols = int(P) / K, n = int(Q) * cols;  // the chunk's (token, piece) elements
  for (int f0 = threadIdx.x; f0 < n; f0 += kBatch * kThreads) {
    V xv[kBatch], dyv[kBatch];
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int f = f0 + j * kThreads, t = f / cols, q = (f - t * cols) * K;
      xv[j] = V{}, dyv[j] = V{};
      if (f < n && t < ch.len) {
        const int64_t tok = ch.tok0 + t;
        xv[j] = load(x + tok * ldx + h * P + q);
        dyv[j] = load(d_y + tok * lddy + h * P + q);
      }
    }
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int f = f0 + j * kThreads, t = f / cols, q = (f - t * cols) * K;
      if (f >= n) break;
      const int64_t o = (c * Q + t) * HP + h * P + q, e = (u + t) * P + q;
      if (Xh) {
        *reinterpret_cast<PT*>(Xh + e) = scaled(xv[j], 1.0f);
        *reinterpret_cast<PT*>(dYh + e) = scaled(dyv[j], 1.0f);
      }
      *reinterpret_cast<PT*>(XW + o) = scaled(xv[j], s_w[t]);
      *reinterpret_cast<PT*>(DYs + o) = scaled(dyv[j], s_ey[t]);
    }
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // B and C: the chunk's rows shared out over its H blocks.
  for (int64_t t = h + int64_t(warp) * d.H; t < Q; t += (kThreads / 32) * d.H) {
    const bool in = t < ch.len;
    const int64_t tok = ch.tok0 + t;
    for (int64_t i = lane; i < GN; i += 32) {
      store_f32(Bp + (c * Q + t) * GN + i, in ? load_f32(B + tok * ldb + i) : 0.0f);
      store_f32(Cp + (c * Q + t) * GN + i, in ? load_f32(C + tok * ldc + i) : 0.0f);
    }
  }
}

// Block (sequence, head, 256 state elements z): the states at the chunks' starts, S ← e·S + S_c in
// chunk order from the initial state (the slot's row), and the gradients of the chunks' end
// states, G ← e·G + dS_c in reverse order from the final state's; the first chunk's start gradient
// to d_state0. Both rounded to T as the operands of the state terms (S0t, dSendt; for T = fp32 the
// fp32 S0 and dS_end themselves); the block's part of each chunk's Σ dS_end·S_start (the end
// state's term of da, in fp32) to dots[(chunk·H + head)·nz + z].
// A sequence's last R chunks (R = 4, 8 or 16: the fewest that hold the longest sequence's chunks,
// or 16) keep their fp32 start states in registers between the two walks, their S_c and dS_c
// loaded all at once (restrict: the loads may pass the stores) and their decays formed once per
// block in shared memory; their dot products' warp parts meet in shared memory behind one barrier,
// in block_sum's order (lanes by butterfly, then warps in order), so the same bits as the chunks
// before them, whose fp32 start states pass through S0 in memory (H100: 102 → 58 µs a call at the
// 130m shape, bench/RESULTS.md).
constexpr int kMaxStateRegs = 16;  // the most chunks bwd_states holds in registers
template <class T, int R>
__global__ __launch_bounds__(kThreads) void bwd_states_kernel(
    PackedSeqs seqs, BwdDims d, const double* __restrict__ ap, const float* __restrict__ state0,
    const float* __restrict__ d_final, const float* __restrict__ Sc, const float* __restrict__ dSc, float* S0,
    T* S0t, T* dSendt, float* d_state0, float* dots) {
  constexpr int kWarps = kThreads / 32;
  __shared__ float s_dec[R], s_part[R][kWarps];
  const int64_t s = blockIdx.x, h = blockIdx.y, PN = d.PN(), step = d.H * PN, nz = gridDim.z;
  const int64_t i = int64_t(blockIdx.z) * kThreads + threadIdx.x;
  const bool in = i < PN;  // every thread takes part in the block sums
  const int64_t c0 = seqs.chunk_starts[s], c1 = seqs.chunk_starts[s + 1], e = (seqs.slots[s] * d.H + h) * PN + i;
  const int64_t cr = c1 - R > c0 ? c1 - R : c0;  // chunks cr.. in registers
  const int nr = int(c1 - cr);
  auto decay = [&](int64_t c) { return expf(float(ap[(c * d.H + h) * d.Q + d.Q - 1])); };
  if (threadIdx.x < nr) s_dec[threadIdx.x] = decay(cr + threadIdx.x);
  float cur = state0 && in ? state0[e] : 0.0f;
  for (int64_t c = c0, o = (c0 * d.H + h) * PN + i; c < cr && in; ++c, o += step) {
    S0[o] = cur;
    if constexpr (!std::is_same_v<T, float>) store_f32(S0t + o, cur);
    cur = decay(c) * cur + Sc[o];
  }
  const int64_t o0 = (cr * d.H + h) * PN + i;  // chunk cr + j's element: o0 + j·step
  float held[R], term[R];
  const float* sc = Sc + o0;
#pragma unroll
  for (int j = 0; j < R; ++j, sc += step)
    if (j < nr && in) term[j] = *sc;
  __syncthreads();  // s_dec
  T* s0t = S0t + o0;  // T = fp32: S0 itself
#pragma unroll
  for (int j = 0; j < R; ++j, s0t += step)
    if (j < nr && in) {
      held[j] = cur;
      store_f32(s0t, cur);
      cur = s_dec[j] * cur + term[j];
    }
  const float* dsc = dSc + o0;
#pragma unroll
  for (int j = 0; j < R; ++j, dsc += step)
    if (j < nr && in) term[j] = *dsc;
  cur = d_final && in ? d_final[e] : 0.0f;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  T* dsend = dSendt + o0 + (R - 1) * step;  // T = fp32: the fp32 dS_end itself
#pragma unroll
  for (int j = R - 1; j >= 0; --j, dsend -= step) {
    if (j >= nr) continue;
    float dot = 0.0f;
    if (in) {
      store_f32(dsend, cur);
      dot = cur * held[j];
      cur = s_dec[j] * cur + term[j];
    }
    dot = warp_sum(dot);  // then the warps in order below: block_sum's order
    if (lane == 0) s_part[j][warp] = dot;
  }
  for (int64_t c = cr - 1, o = o0 - step; c >= c0; --c, o -= step) {
    float dot = 0.0f;
    if (in) {
      store_f32(dSendt + o, cur);
      dot = cur * S0[o];
      cur = decay(c) * cur + dSc[o];
    }
    dot = block_sum<kThreads>(dot);
    if (threadIdx.x == 0) dots[(c * d.H + h) * nz + blockIdx.z] = dot;
  }
  if (d_state0 && in) d_state0[e] = cur;
  __syncthreads();
  if (threadIdx.x < nr) {
    const int j = int(threadIdx.x);
    float dot = 0.0f;
    for (int w = 0; w < kWarps; ++w) dot += s_part[j][w];
    dots[((cr + j) * d.H + h) * nz + blockIdx.z] = dot;
  }
}

// Block (chunk, group, 64×64 tile (ti, si) of the chunk's (t, s) pairs), thread (ty, tx) the
// pairs (64·ti + ty + 16k, 64·si + tx + 16j). For each head of the group in head order, with
// E = exp(a[t]-a[s]) and dM = d_y xᵀ, where s ≤ t: ge = dM·E, c = ge·CB, m = c·dt[s]; M = CB·E·dt[s]
// (T, the product Mᵀ d_y's operand), the tile's row sums of m and column sums of c and m (in
// double: d_dt and da are their differences; by tile, for bwd_rows). dCB = Σ_heads ge·dt[s] in
// head order (T). Above the diagonal M and dCB are 0 (ti < si: the whole tile).
template <class T>
__global__ __launch_bounds__(kThreads, 2) void bwd_pairs_kernel(BwdDims d, const float* dtp, const double* ap,
                                                                const float* CB, const float* dM, T* M, T* dCB,
                                                                double* row_m, double* col_c, double* col_m) {
  __shared__ double s_at[kTile], s_as[kTile];
  __shared__ float s_dts[kTile];
  __shared__ double s_cc[16][kTile + 1], s_cm[16][kTile + 1];
  const int64_t c = blockIdx.x, g = blockIdx.y, Q = d.Q, QQ = Q * Q, NT = d.NT(), hpg = d.H / d.G;
  const int ti = int(blockIdx.z / NT), si = int(blockIdx.z % NT), ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  const int64_t t0 = int64_t(ti) * kTile, s0 = int64_t(si) * kTile;
  T* dcb = dCB + (c * d.G + g) * QQ;
  if (si > ti) {
    for (int64_t h = g * hpg; h <= (g + 1) * hpg; ++h) {  // the last round: dCB
      T* out = h < (g + 1) * hpg ? M + (c * d.H + h) * QQ : dcb;
#pragma unroll
      for (int k = 0; k < 4; ++k)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int64_t t = t0 + ty + 16 * k, s = s0 + tx + 16 * j;
          if (t < Q && s < Q) store_f32(out + t * Q + s, 0.0f);
        }
    }
    return;
  }
  float cb[4][4], acc[4][4];
  const float* cbg = CB + (c * d.G + g) * QQ;
#pragma unroll
  for (int k = 0; k < 4; ++k)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t t = t0 + ty + 16 * k, s = s0 + tx + 16 * j;
      cb[k][j] = t < Q && s <= t ? cbg[t * Q + s] : 0.0f;
      acc[k][j] = 0.0f;
    }
  for (int64_t h = g * hpg; h < (g + 1) * hpg; ++h) {
    const int64_t u = (c * d.H + h) * Q;
    __syncthreads();  // the previous head's shared values are used up
    if (threadIdx.x < kTile) {
      const int64_t t = t0 + threadIdx.x;
      s_at[threadIdx.x] = t < Q ? ap[u + t] : 0.0;
    } else if (threadIdx.x < 2 * kTile) {
      const int i = threadIdx.x - kTile;
      const int64_t s = s0 + i;
      s_as[i] = s < Q ? ap[u + s] : 0.0;
      s_dts[i] = s < Q ? dtp[u + s] : 0.0f;
    }
    __syncthreads();
    const float* dm = dM + (c * d.H + h) * QQ;
    T* mo = M + (c * d.H + h) * QQ;
    float dmv[4][4];  // all 16 loads in flight before the first use
#pragma unroll
    for (int k = 0; k < 4; ++k)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t t = t0 + ty + 16 * k, s = s0 + tx + 16 * j;
        dmv[k][j] = t < Q && s <= t ? dm[t * Q + s] : 0.0f;
      }
    double rm[4] = {}, cc[4] = {}, cm[4] = {};
#pragma unroll
    for (int k = 0; k < 4; ++k)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int rk = ty + 16 * k, cj = tx + 16 * j;
        const int64_t t = t0 + rk, s = s0 + cj;
        if (t >= Q || s >= Q) continue;
        float mv = 0.0f;
        if (s <= t) {
          const float e = expf(float(s_at[rk] - s_as[cj])), dts = s_dts[cj];
          const float ge = dmv[k][j] * e, cv = ge * cb[k][j], mm = cv * dts;
          rm[k] += mm;
          cc[j] += cv;
          cm[j] += mm;
          mv = cb[k][j] * e * dts;
          acc[k][j] += ge * dts;
        }
        store_f32(mo + t * Q + s, mv);
      }
    // Rows: over the 16 threads tx of a row (lanes of one half-warp), a fixed butterfly.
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      double v = rm[k];
      for (int off = 8; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
      const int64_t t = t0 + ty + 16 * k;
      if (tx == 0 && t < Q) row_m[((c * d.H + h) * NT + si) * Q + t] = v;
    }
    // Columns: over the 16 rows ty, in order.
#pragma unroll
    for (int j = 0; j < 4; ++j) s_cc[ty][tx + 16 * j] = cc[j], s_cm[ty][tx + 16 * j] = cm[j];
    __syncthreads();
    if (threadIdx.x < kTile && s0 + threadIdx.x < Q) {
      double vc = 0.0, vm = 0.0;
      for (int r = 0; r < 16; ++r) vc += s_cc[r][threadIdx.x], vm += s_cm[r][threadIdx.x];
      const int64_t o = ((c * d.H + h) * NT + ti) * Q + s0 + threadIdx.x;
      col_c[o] = vc;
      col_m[o] = vm;
    }
  }
#pragma unroll
  for (int k = 0; k < 4; ++k)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t t = t0 + ty + 16 * k, s = s0 + tx + 16 * j;
      if (t < Q && s < Q) store_f32(dcb + t * Q + s, acc[k][j]);
    }
}

// The tensor-core form of bwd_pairs (bf16 / f16; headdim a multiple of 8, at most 128): the tile of
// dM = d_y xᵀ is computed here on mma.sync from the head-major copies (never stored), and the
// next head's tiles are copied in while this one's are used. 4 warps, warp w the rows 16w.. of
// the tile, lane l the accumulator elements of mma's layout; sums per thread in fp32, then across
// lanes (rows: the quad; columns: lanes 4 apart) and warps in a fixed order, in double past that.
// exp(a_t − a_s) is 2^(a_t·log2 e − a_s·log2 e) by the SFU from fp32 exponents, as the forward's
// tensor-core scan takes them: their rounding stays below that of d_y xᵀ's rounded operands (see
// the top of the file). M (T) is formed and stored only with kStoreM: for the GEMM Mᵀ d_y (the
// tensor-core rows kernel forms its tiles from CB).
constexpr int kPairThreads = 128;
constexpr int kMaxPairHeaddim = 128;
__host__ __device__ inline int pair_stride(int64_t P) { return int((P + 15) / 16 * 16 + 8); }

// Column sums of two fragments' elements v[f][e] (column 8f + 2(l%4) + e of lane l) over the 8
// lanes of a column (4 apart), halving the values a step: bit 4 of the lane keeps fragment f =
// bit 4, bit 3 element e = bit 3, bit 2 adds the last one: 4 shuffles instead of 12. Lanes l and
// l^4 end with the same sum.
__device__ __forceinline__ float column_sum8(const float (&v)[2][2], int lane) {
  const bool hi = lane & 16, odd = lane & 8;
  float k0 = hi ? v[1][0] : v[0][0], k1 = hi ? v[1][1] : v[0][1];
  k0 += __shfl_xor_sync(0xffffffffu, hi ? v[0][0] : v[1][0], 16);
  k1 += __shfl_xor_sync(0xffffffffu, hi ? v[0][1] : v[1][1], 16);
  float k = odd ? k1 : k0;
  k += __shfl_xor_sync(0xffffffffu, odd ? k0 : k1, 8);
  return k + __shfl_xor_sync(0xffffffffu, k, 4);
}

template <class T, bool kStoreM>
__global__ __launch_bounds__(kPairThreads, 3) void bwd_pairs_tc_kernel(BwdDims d, PackedSeqs seqs, const float* dtp,
                                                                   const double* ap, const float* CB, const T* Xh,
                                                                   const T* dYh, const T* x, int64_t ldx,
                                                                   const T* d_y, int64_t lddy, T* M, T* dCB,
                                                                   double* row_m, double* col_c, double* col_m) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ __align__(8) float s_at[2][kTile], s_as[2][kTile], s_dts[2][kTile];  // a·log2(e), dt
  __shared__ float s_col[4][2][kTile];
  const int64_t c = blockIdx.x, g = blockIdx.y, Q = d.Q, QQ = Q * Q, NT = d.NT(), hpg = d.H / d.G, P = d.P;
  const int ti = int(blockIdx.z / NT), si = int(blockIdx.z % NT);
  const int64_t t0 = int64_t(ti) * kTile, s0 = int64_t(si) * kTile;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r0 = 16 * warp;
  const int LD = pair_stride(P), KS = int((P + 15) / 16);
  T* dcb = dCB + (c * d.G + g) * QQ;
  const bool pairs = Q % 2 == 0;  // two columns as one 4-byte store
  // Element e of fragment j of the lane: row r0 + lane/4 + 8(e/2), column 8j + 2(lane%4) + e%2.
  const auto store_tile = [&](T* out, const float (&v)[8][4]) {
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int64_t t = t0 + r0 + lane / 4 + 8 * i, s = s0 + 8 * j + 2 * (lane % 4);
        if (t >= Q || s >= Q) continue;
        if (pairs) {
          *reinterpret_cast<uint32_t*>(out + t * Q + s) = pack2<T>(v[j][2 * i], v[j][2 * i + 1]);
        } else {
          store_f32(out + t * Q + s, v[j][2 * i]);
          if (s + 1 < Q) store_f32(out + t * Q + s + 1, v[j][2 * i + 1]);
        }
      }
  };
  if (si > ti) {  // zeros: dCB's (and M's, when stored, for the GEMM that reads all of it)
    const float zero[8][4] = {};
    for (int64_t h = g * hpg; kStoreM && h < (g + 1) * hpg; ++h) store_tile(M + (c * d.H + h) * QQ, zero);
    store_tile(dcb, zero);
    return;
  }
  T* Ys = reinterpret_cast<T*>(smem);  // [stage][64][LD]: d_y's rows t0.., then x's rows s0..
  T* Xs = Ys + 2 * kTile * LD;
  for (int i = threadIdx.x; i < 4 * kTile; i += kPairThreads)  // the k-steps' padding past headdim: zeros
    for (int q = int(P); q < 16 * KS; ++q) Ys[i * LD + q] = T(0.0f);
  // 16-byte pieces (r, q) of the rows, thread i the pieces i, i + 128, …: the row and piece carried
  // from one to the next (no division a piece).
  const unsigned pieces = unsigned(P / 8), r_step = kPairThreads / pieces, q_step = kPairThreads % pieces;
  const Chunk ch = find_chunk(seqs, c, Q);
  const auto issue = [&](int64_t h, int b) {
    int64_t yld, ylen, xld, xlen;
    const T* ysrc = head_rows(dYh, d_y, lddy, d, c, ch, h, yld, ylen);
    const T* xsrc = head_rows(Xh, x, ldx, d, c, ch, h, xld, xlen);
    for (unsigned r = threadIdx.x / pieces, q = threadIdx.x % pieces; r < kTile;) {
      const bool yin = t0 + r < ylen, xin = s0 + r < xlen;
      cp_async16(Ys + (b * kTile + r) * LD + 8 * q, ysrc + (yin ? t0 + r : 0) * yld + 8 * q, yin ? 16 : 0);
      cp_async16(Xs + (b * kTile + r) * LD + 8 * q, xsrc + (xin ? s0 + r : 0) * xld + 8 * q, xin ? 16 : 0);
      r += r_step, q += q_step;
      if (q >= pieces) q -= pieces, ++r;
    }
    cp_async_commit();
  };
  // The head's a and dt of the tile's rows and columns, one head ahead in registers.
  float ra_t = 0.0f, ra_s = 0.0f;
  float rdt = 0.0f;
  const auto fetch = [&](int64_t h) {
    if (threadIdx.x >= kTile) return;
    const int64_t u = (c * d.H + h) * Q, t = t0 + threadIdx.x, s = s0 + threadIdx.x;
    ra_t = t < Q ? float(ap[u + t] * kLog2eD) : 0.0f;
    ra_s = s < Q ? float(ap[u + s] * kLog2eD) : 0.0f;
    rdt = s < Q ? dtp[u + s] : 0.0f;
  };
  float cbv[8][4], dcbv[8][4];
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t t = t0 + r0 + lane / 4 + 8 * (e / 2), s = s0 + 8 * j + 2 * (lane % 4) + e % 2;
      cbv[j][e] = t < Q && s <= t ? CB[(c * d.G + g) * QQ + t * Q + s] : 0.0f;
      dcbv[j][e] = 0.0f;
    }
  const int64_t h0 = g * hpg;
  issue(h0, 0);
  fetch(h0);
  for (int64_t k = 0; k < hpg; ++k) {
    const int b = int(k % 2);
    const int64_t h = h0 + k;
    if (threadIdx.x < kTile) s_at[b][threadIdx.x] = ra_t, s_as[b][threadIdx.x] = ra_s, s_dts[b][threadIdx.x] = rdt;
    if (k + 1 < hpg) {
      issue(h + 1, 1 - b);
      fetch(h + 1);
      cp_async_wait_all_but_last();
    } else {
      cp_async_wait_all();
    }
    __syncthreads();
    float acc[8][4] = {};
    const T* ys = Ys + b * kTile * LD;
    const T* xs = Xs + b * kTile * LD;
    for (int ks = 0; ks < KS; ++ks) {
      uint32_t a[4];
      ldsm(a, a_rows(ys, LD, r0, 16 * ks));
#pragma unroll
      for (int j = 0; j < 8; j += 2) {
        mma_pair<T, false>(acc[j], acc[j + 1], a, b_rows(xs, LD, 8 * j, 16 * ks));
      }
    }
    // Two fragments at a time: their terms, then their columns' sums over the warp's 16 rows
    // (column_sum8) into s_col, so that only those fragments' sums are alive at a time.
    // Unmasked: C Bᵀ is zero outside the chunk and above the diagonal, so there every term is zero
    // but dCB's, masked once at the end (the exponent is clamped at 0 there, where it is positive).
    float rs[2] = {};
    const float at_lo = s_at[b][r0 + lane / 4], at_hi = s_at[b][r0 + lane / 4 + 8];
#pragma unroll
    for (int jp = 0; jp < 8; jp += 2) {
      float cc[2][2] = {}, cm[2][2] = {};
#pragma unroll
      for (int f = 0; f < 2; ++f) {
        const int j = jp + f, sl = 8 * j + 2 * (lane % 4);
        const float2 as = *reinterpret_cast<const float2*>(&s_as[b][sl]);
        const float2 dt2 = *reinterpret_cast<const float2*>(&s_dts[b][sl]);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float dts = e % 2 ? dt2.y : dt2.x;
          const float ex = exp2_approx(fminf((e < 2 ? at_lo : at_hi) - (e % 2 ? as.y : as.x), 0.0f));
          const float ge = acc[j][e] * ex, cv = ge * cbv[j][e], mm = cv * dts;
          rs[e / 2] += mm;
          cc[f][e % 2] += cv;
          cm[f][e % 2] += mm;
          dcbv[j][e] += ge * dts;
          if constexpr (kStoreM) acc[j][e] = cbv[j][e] * ex * dts;
        }
      }
      const float sc = column_sum8(cc, lane), sm = column_sum8(cm, lane);
      if (lane % 8 < 4) {
        const int col = 8 * (jp + lane / 16) + 2 * (lane % 4) + lane / 8 % 2;
        s_col[warp][0][col] = sc, s_col[warp][1][col] = sm;
      }
    }
    if constexpr (kStoreM) store_tile(M + (c * d.H + h) * QQ, acc);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float v = rs[i];
      v += __shfl_xor_sync(0xffffffffu, v, 1);
      v += __shfl_xor_sync(0xffffffffu, v, 2);
      const int64_t t = t0 + r0 + lane / 4 + 8 * i;
      if (lane % 4 == 0 && t < Q) row_m[((c * d.H + h) * NT + si) * Q + t] = double(v);
    }
    // This stage's tiles, a and dt are used up and s_col is whole. The next head's writes of s_col
    // come after its first barrier, which the threads summing the columns reach only when done:
    // no barrier after the sums.
    __syncthreads();
    if (threadIdx.x < kTile && s0 + threadIdx.x < Q) {
      double vc = 0.0, vm = 0.0;
      for (int w = 0; w < 4; ++w) vc += double(s_col[w][0][threadIdx.x]), vm += double(s_col[w][1][threadIdx.x]);
      const int64_t o = ((c * d.H + h) * NT + ti) * Q + s0 + threadIdx.x;
      col_c[o] = vc;
      col_m[o] = vm;
    }
  }
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t t = t0 + r0 + lane / 4 + 8 * (e / 2), s = s0 + 8 * j + 2 * (lane % 4) + e % 2;
      if (!(t < Q && s <= t)) dcbv[j][e] = 0.0f;
    }
  store_tile(dcb, dcbv);
}

// bwd_states' blocks a (sequence, head): kThreads state elements each.
__host__ __device__ inline int64_t state_blocks(const BwdDims& d) { return (d.PN() + kThreads - 1) / kThreads; }

// The rows' tail, thread t the row t (kThreads ≥ Q), once the block has the rows' dot products
// Σ d_y·x (s_rowD), Σ d_y·Z (s_dot) and Σ x·Z2 (s_dw): row t's da and ddt (the pairs' tile sums
// added in tile order, in double; the terms through exp(a[t]) and w), the end state's part of
// da[last], the reverse cumsum through a = cumsum(dt·A), d_dt_raw, and the chunk's sums for d_D,
// d_A_log and d_dt_bias (partials, by chunk). s_da and s_ddt: kMaxChunk doubles each.
template <class Ddt>
__device__ void rows_tail(const SsdParams& p, const Chunk& ch, const BwdDims& d, int64_t c, int64_t h,
                          const float* dt_raw, int64_t lddt, const float* dots, const float* dtp,
                          const double* ap, const double* row_m, const double* col_c, const double* col_m,
                          const float* s_dot, const float* s_dw, const float* s_rowD, double* s_da, double* s_ddt,
                          double& s_dA, Ddt* d_dt, int64_t ldd_dt, double* partials) {
  const int64_t Q = d.Q, NT = d.NT(), u = (c * d.H + h) * Q, nz = state_blocks(d);
  const double a_last = ap[u + Q - 1];
  const int64_t t = threadIdx.x;
  double dD = 0.0, gw = 0.0;
  if (t < Q) {
    const int64_t tt = t / kTile;
    double da = 0.0, ddt = 0.0;
    for (int64_t si = 0; si <= tt; ++si) da += row_m[(u / Q * NT + si) * Q + t];
    for (int64_t ti = tt; ti < NT; ++ti) {
      da -= col_m[(u / Q * NT + ti) * Q + t];
      ddt += col_c[(u / Q * NT + ti) * Q + t];
    }
    const float el = expf(float(a_last - ap[u + t])), wt = el * dtp[u + t];
    gw = double(s_dw[t] * wt);
    s_da[t] = da + double(expf(float(ap[u + t])) * s_dot[t]) - gw;
    s_ddt[t] = ddt + double(s_dw[t] * el);
    dD = double(s_rowD[t]);
  }
  float sdot = 0.0f;  // Σ dS_end·S_start: the state blocks' parts in block order
  for (int64_t z = 0; z < nz; ++z) sdot += dots[(c * d.H + h) * nz + z];
  dD = block_sum<kThreads, double>(dD);
  gw = block_sum<kThreads, double>(gw);
  const double A = -exp(double(p.A_log[h]));
  if (threadIdx.x == 0) s_da[ch.len - 1] += double(expf(float(a_last)) * sdot) + gw;
  __syncthreads();
  if (threadIdx.x < 32) {
    // The reverse cumsum r[i] = Σ_{j ≥ i} da[j] over warp 0: lane l the rows [l·E, (l+1)·E), its
    // segment's total, the totals of the lanes after it (a fixed shuffle scan), then its rows.
    const int lane = threadIdx.x, E = int((Q + 31) / 32);
    const int i0 = min(int(Q), lane * E), i1 = min(int(Q), i0 + E);
    double tail = 0.0;  // Σ of the segments of lanes ≥ l, then of lanes > l
    for (int i = i1 - 1; i >= i0; --i) tail += s_da[i];
    for (int off = 1; off < 32; off <<= 1) {
      const double v = __shfl_down_sync(0xffffffffu, tail, off);
      if (lane + off < 32) tail += v;
    }
    tail = __shfl_down_sync(0xffffffffu, tail, 1);
    double r = lane < 31 ? tail : 0.0, dA = 0.0;
    for (int i = i1 - 1; i >= i0; --i) {
      r += s_da[i];
      s_ddt[i] += A * r;
      dA += double(dtp[u + i]) * r;
    }
    dA = warp_sum(dA);
    if (lane == 0) s_dA = dA;
  }
  __syncthreads();
  double dbias = 0.0;
  if (t < ch.len) {
    const float g_raw =
        float(s_ddt[t]) * dt_activation_grad(dt_raw[(ch.tok0 + t) * lddt + h], p.dt_bias[h], p.dt_min, p.dt_max);
    store_f32(d_dt + (ch.tok0 + t) * ldd_dt + h, g_raw);
    dbias = double(g_raw);
  }
  dbias = block_sum<kThreads, double>(dbias);
  if (threadIdx.x != 0) return;
  partials[c * 3 * d.H + h] = dbias;
  partials[c * 3 * d.H + d.H + h] = s_dA * A;
  partials[c * 3 * d.H + 2 * d.H + h] = dD;
}

// Block (chunk, head), warp w the rows w, w + 8, ...: d_x = Mᵀ d_y + D·d_y + w[t]·(B[t] dS_endᵀ)
// (the first term from dXh) into the packed d_x, and the rows' dot products; then rows_tail.
constexpr int kRowsAWarp = 2;
// Ddt: d_dt's type (fp32, or the compute dtype when only in_proj's backward reads it); In: x's and d_y's.
template <class Ddt, class In>
__global__ __launch_bounds__(kThreads, 3) void bwd_rows_kernel(
    SsdParams p, PackedSeqs seqs, BwdDims d, const In* x, int64_t ldx, const In* d_y, int64_t lddy,
    const float* dt_raw, int64_t lddt, const float* dXh, const float* Z, const float* Z2, const float* dots,
    const float* dtp, const double* ap, const double* row_m, const double* col_c,
    const double* col_m, float* d_x, int64_t lddx, Ddt* d_dt, int64_t ldd_dt, double* partials) {
  __shared__ float s_dot[kMaxChunk], s_dw[kMaxChunk], s_rowD[kMaxChunk];
  __shared__ double s_da[kMaxChunk], s_ddt[kMaxChunk];
  __shared__ double s_dA;
  const int64_t c = blockIdx.y, h = blockIdx.x, Q = d.Q, P = d.P, HP = d.HP();
  const int64_t u = (c * d.H + h) * Q;
  const Chunk ch = find_chunk(seqs, c, Q);
  const double a_last = ap[u + Q - 1];
  const float Dh = p.D[h];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // kRowsAWarp rows a warp at once, 64 columns a round, every load issued before the first use.
  constexpr int R = kRowsAWarp;
  for (int64_t tb = int64_t(warp) * R; tb < Q; tb += (kThreads / 32) * R) {
    float rowD[R] = {}, dot[R] = {}, dw[R] = {}, wt[R];
#pragma unroll
    for (int r = 0; r < R; ++r)
      wt[r] = tb + r < ch.len ? expf(float(a_last - ap[u + tb + r])) * dtp[u + tb + r] : 0.0f;
    for (int64_t q0 = 0; q0 < P; q0 += 64) {
      float dy[R][2], xv[R][2], z[R][2], z2[R][2], dxh[R][2];
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t t = tb + r, q = q0 + lane + 32 * e, tok = ch.tok0 + t, zr = (c * Q + t) * HP + h * P + q;
          const bool in = t < ch.len && q < P;
          dy[r][e] = in ? load_f32(d_y + tok * lddy + h * P + q) : 0.0f;
          xv[r][e] = in ? load_f32(x + tok * ldx + h * P + q) : 0.0f;
          z[r][e] = in ? Z[zr] : 0.0f;
          z2[r][e] = in ? Z2[zr] : 0.0f;
          dxh[r][e] = in ? dXh[(u + t) * P + q] : 0.0f;
        }
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t t = tb + r, q = q0 + lane + 32 * e;
          rowD[r] += dy[r][e] * xv[r][e];
          dot[r] += dy[r][e] * z[r][e];
          dw[r] += xv[r][e] * z2[r][e];
          if (t < ch.len && q < P)
            d_x[(ch.tok0 + t) * lddx + h * P + q] = (dxh[r][e] + Dh * dy[r][e]) + wt[r] * z2[r][e];
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      rowD[r] = warp_sum(rowD[r]), dot[r] = warp_sum(dot[r]), dw[r] = warp_sum(dw[r]);
      if (lane == 0 && tb + r < Q) s_rowD[tb + r] = rowD[r], s_dot[tb + r] = dot[r], s_dw[tb + r] = dw[r];
    }
  }
  __syncthreads();
  rows_tail(p, ch, d, c, h, dt_raw, lddt, dots, dtp, ap, row_m, col_c, col_m, s_dot, s_dw, s_rowD, s_da, s_ddt, s_dA,
            d_dt, ldd_dt, partials);
}

// The tensor-core form of the rows' products and bwd_rows (bf16 / f16): block (chunk, head) forms,
// 64 rows s at a time, Z2 = B dS_endᵀ and Z = C S_startᵀ (k over the state) and dXh = Mᵀ d_y (k
// over the tiles of rows t ≥ s: M is 0 above its diagonal) on mma.sync from the rounded operands,
// and uses each where bwd_rows reads it, so that none of the three (Q × P fp32 a head) is stored.
// M's tiles are formed here from C Bᵀ (fp32, one copy for the group's heads, from the L2) rather
// than read back from a stored copy: that copy was Q² a head in T, written once and read once.
// Blocks run heads first, so that a chunk's C Bᵀ, B and C and its tokens' rows are read by
// neighbouring blocks (DRAM traffic at b8 L2048 H24: 827 → 482 MB). 8 warps: warp w the rows
// 16(w%4).. of the tile and the columns 32(w/4).. (lane l the elements of mma's layout); a row's
// sums over its half's lanes, then half 0's plus half 1's. The next tile's C Bᵀ and d_y are
// loaded while this one is used. Headdim a multiple of 8 up to 64, d_state up to 128, the chunk a
// multiple of 8 (16-byte loads of rows).
constexpr int kRowsTcMaxP = 64, kRowsTcMaxN = 128;

template <class T, int NPAD>
constexpr size_t rows_tc_smem() {  // S_start, dS_end, C, B; two stages of M and d_y
  return sizeof(T) * size_t(4 * kTile * (NPAD + 8) + 4 * kTile * kTcStride);
}

// A 64-row tile of PIECES 16-byte pieces a row (row stride ld) from src's first rows_in rows and
// cols_in columns (stride lds), zeros elsewhere: by cp.async where the rows allow it (cols_in,
// lds and src multiples of 8 elements), else element by element. Thread i takes the piece
// i % PIECES of the rows i / PIECES + k·(kThreads / PIECES).
template <int PIECES, class T>
__device__ __forceinline__ void stage_tile(T* dst, int ld, const T* src, int64_t lds, int rows_in, int cols_in,
                                           bool async) {
  constexpr int kPass = kThreads / PIECES;  // rows a pass
  const int r0 = threadIdx.x / PIECES, q = 8 * (threadIdx.x % PIECES);
  T* o = dst + r0 * ld + q;
  const T* from = src + r0 * lds + q;
#pragma unroll
  for (int k = 0; k < kTile / kPass; ++k) {
    const int r = r0 + k * kPass;
    if (async) {
      const bool in = r < rows_in && q < cols_in;
      cp_async16(o + k * kPass * ld, in ? from + k * kPass * lds : src, in ? 16 : 0);
    } else {
      for (int e = 0; e < 8; ++e)
        o[k * kPass * ld + e] = r < rows_in && q + e < cols_in ? from[k * kPass * lds + e] : T(0.0f);
    }
  }
}

// NPAD: d_state padded with zeros to 64 or 128 (whole pieces and k-steps, compile-time strides).
template <class T, int NPAD, class Ddt, class In>
__global__ __launch_bounds__(kThreads, 2) void bwd_rows_tc_kernel(
    SsdParams p, PackedSeqs seqs, BwdDims d, const In* __restrict__ x, int64_t ldx,
    const In* __restrict__ d_y, int64_t lddy, bool vec, const float* dt_raw, int64_t lddt, const float* CB,
    const T* dYh, const T* Bp, const T* Cp, const T* S0t, const T* dSendt, const float* dots, const float* dtp,
    const double* ap, const double* row_m, const double* col_c, const double* col_m, float* __restrict__ d_x,
    int64_t lddx, Ddt* d_dt, int64_t ldd_dt, double* partials) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ float s_dot[kMaxChunk], s_dw[kMaxChunk], s_rowD[kMaxChunk], s_wt[kMaxChunk], s_part[2][3][kTile];
  __shared__ __align__(16) float s_a2[kMaxChunk], s_dt[kMaxChunk];  // a·log2(e) and dt, for M
  __shared__ double s_dA;
  const int64_t c = blockIdx.y, h = blockIdx.x, Q = d.Q, P = d.P, N = d.N, GN = d.GN(), NT = d.NT();
  const int64_t u = (c * d.H + h) * Q, g = h / (d.H / d.G);
  const Chunk ch = find_chunk(seqs, c, Q);
  const double a_last = ap[u + Q - 1];
  const float Dh = p.D[h];
  for (int64_t t = threadIdx.x; t < Q; t += kThreads) {  // w[t], the end state's weight of row t
    s_wt[t] = t < ch.len ? expf(float(a_last - ap[u + t])) * dtp[u + t] : 0.0f;
    s_a2[t] = float(ap[u + t] * kLog2eD);
    s_dt[t] = dtp[u + t];
  }
  __syncthreads();  // s_a2 and s_dt, which put_m reads before the loop's first barrier
  constexpr int NS = NPAD + 8, KN = NPAD / 16, NP = NPAD / 8;
  T* Ss = reinterpret_cast<T*>(smem);  // [q][n]
  T* Ds = Ss + kTile * NS;             // [q][n]
  T* Cs = Ds + kTile * NS;             // [s][n]
  T* Bs = Cs + kTile * NS;             // [s][n]
  T* Ms = Bs + kTile * NS;             // [stage][t][s]
  T* Ys = Ms + 2 * kTile * kTcStride;  // [stage][t][q]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r0 = 16 * (warp % 4), half = warp / 4;
  const int c0 = 32 * half;
  const bool nvec = N % 8 == 0;
  stage_tile<NP>(Ss, NS, S0t + (c * d.H + h) * d.PN(), N, int(P), int(N), nvec);
  stage_tile<NP>(Ds, NS, dSendt + (c * d.H + h) * d.PN(), N, int(P), int(N), nvec);
  // Rows kt.. of d_y into stage b.
  int64_t yld, ylen;
  const T* yrows = head_rows(dYh, std::is_same_v<In, T> ? reinterpret_cast<const T*>(d_y) : nullptr, lddy, d, c, ch,
                             h, yld, ylen);
  const auto stage_dy = [&](int64_t kt, int b) {
    const int rows = int(max(int64_t(0), min(int64_t(kTile), ylen - kt * kTile)));
    stage_tile<kTile / 8>(Ys + b * kTile * kTcStride, kTcStride, rows > 0 ? yrows + kt * kTile * yld : yrows, yld,
                          rows, int(P), true);
  };
  // M's tile (kt, st), rows t and columns s, into stage b: thread i the columns mq.. of the rows
  // mr + 16k, C Bᵀ loaded into registers (load_m) a tile ahead of forming M in T (put_m). The decay
  // 2^(a[t]·log2 e − a[s]·log2 e) from fp32 exponents, as the forward's tensor-core scan takes them
  // (their rounding stays below the operand's; see the top of the file).
  const float* cb = CB + (c * d.G + g) * Q * Q;
  const int mq = 4 * (threadIdx.x % 16), mr = threadIdx.x / 16;
  float4 cbr[4];
  const auto load_m = [&](int64_t kt, int64_t st) {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t t = kt * kTile + mr + 16 * k, s = st * kTile + mq;
      cbr[k] = t < Q && s < Q ? *reinterpret_cast<const float4*>(cb + t * Q + s) : float4{0.0f, 0.0f, 0.0f, 0.0f};
    }
  };
  const auto put_m = [&](int64_t kt, int64_t st, int b) {
    const int s = int(st * kTile) + mq;
    float as[4] = {}, dts[4] = {};
    if (s < Q) {  // Q is a multiple of 8: whole quads
      const float4 av = *reinterpret_cast<const float4*>(s_a2 + s), dv = *reinterpret_cast<const float4*>(s_dt + s);
      as[0] = av.x, as[1] = av.y, as[2] = av.z, as[3] = av.w, dts[0] = dv.x, dts[1] = dv.y, dts[2] = dv.z, dts[3] = dv.w;
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int t = int(kt * kTile) + mr + 16 * k;
      const float at = t < Q ? s_a2[t] : 0.0f;
      const float v[4] = {cbr[k].x, cbr[k].y, cbr[k].z, cbr[k].w};
      float m[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const bool on = t < Q && s + e <= t;
        m[e] = on ? v[e] * exp2_approx(at - as[e]) * dts[e] : 0.0f;
      }
      *reinterpret_cast<uint2*>(Ms + (b * kTile + mr + 16 * k) * kTcStride + mq) =
          uint2{pack2<T>(m[0], m[1]), pack2<T>(m[2], m[3])};
    }
  };
  for (int64_t st = 0; st < NT; ++st) {
    const int64_t s0 = st * kTile;
    const int rows_in = int(min(int64_t(kTile), Q - s0));
    if (st + 1 < NT) {  // the next tile's rows of x and d_y into the L2 (hints)
      const int64_t n0 = s0 + kTile;
      constexpr int kLine = 128 / sizeof(In);                    // elements a 128-byte line
      constexpr int kLines = (kRowsTcMaxP + kLine - 1) / kLine;  // lines a row at most
      for (int i = threadIdx.x; i < 2 * kLines * kTile; i += kThreads) {  // x, d_y: 64 rows of kLines lines
        const int r = (i / kLines) % kTile, line = i % kLines;
        if (n0 + r < ch.len && kLine * line < P) {
          const int64_t tok = ch.tok0 + n0 + r;
          prefetch_l2((i < kLines * kTile ? x + tok * ldx : d_y + tok * lddy) + h * P + kLine * line);
        }
      }
    }
    load_m(st, st);
    stage_tile<NP>(Cs, NS, Cp + (c * Q + s0) * GN + g * N, GN, rows_in, int(N), nvec);
    stage_tile<NP>(Bs, NS, Bp + (c * Q + s0) * GN + g * N, GN, rows_in, int(N), nvec);
    stage_dy(st, 0);
    cp_async_commit();
    // The thread's x and d_y, as its accumulators' elements [j][2i + e]: row s0 + r0 + l/4 + 8i,
    // column c0 + 8j + 2(l%4) + e. With the inputs in T, d_y's from its tile staged below.
    constexpr bool dy_staged = std::is_same_v<In, T>;
    float xv[4][4], dyv[4][4];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int64_t s = s0 + r0 + lane / 4 + 8 * i, tok = ch.tok0 + s;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t q = c0 + 8 * j + 2 * (lane % 4);
        float2 xs{0.0f, 0.0f}, ys{0.0f, 0.0f};
        if (s < ch.len && q < P) {
          const In *xp = x + tok * ldx + h * P + q, *yp = d_y + tok * lddy + h * P + q;
          if (vec) {
            xs = load_f32x2(xp);
            if (!dy_staged) ys = load_f32x2(yp);
          } else {
            xs = {load_f32(xp), load_f32(xp + 1)};
            if (!dy_staged) ys = {load_f32(yp), load_f32(yp + 1)};
          }
        }
        xv[j][2 * i] = xs.x, xv[j][2 * i + 1] = xs.y, dyv[j][2 * i] = ys.x, dyv[j][2 * i + 1] = ys.y;
      }
    }
    put_m(st, st, 0);
    cp_async_wait_all();
    __syncthreads();
    if constexpr (dy_staged) {  // stage 0 holds rows s0.. (zeros past the chunk and headdim) until kt = st + 2
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const T* yp = Ys + (r0 + lane / 4 + 8 * i) * kTcStride + c0 + 8 * j + 2 * (lane % 4);
          const float2 v = unpack2<T>(*reinterpret_cast<const uint32_t*>(yp));
          dyv[j][2 * i] = v.x, dyv[j][2 * i + 1] = v.y;
        }
    }
    if (st + 1 < NT) {
      load_m(st + 1, st);
      stage_dy(st + 1, 1);
      cp_async_commit();
    }
    // K over the state: acc += A·Bᵀ with A's rows in `as` and B's in `bs`, both [row][n].
    const auto state_product = [&](float (&acc)[4][4], const T* as, const T* bs) {
#pragma unroll
      for (int ks = 0; ks < KN; ++ks) {
        uint32_t a[4];
        ldsm(a, a_rows(as, NS, r0, 16 * ks));
#pragma unroll
        for (int j = 0; j < 4; j += 2) {
          mma_pair<T, false>(acc[j], acc[j + 1], a, b_rows(bs, NS, c0 + 8 * j, 16 * ks));
        }
      }
    };
    float z2[4][4] = {}, acc[4][4] = {};
    state_product(z2, Bs, Ds);
    state_product(acc, Cs, Ss);
    float rowD[2] = {}, dot[2] = {}, dw[2] = {};
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        rowD[e / 2] += dyv[j][e] * xv[j][e];
        dot[e / 2] += dyv[j][e] * acc[j][e];
        dw[e / 2] += xv[j][e] * z2[j][e];
        acc[j][e] = 0.0f;
      }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float v[3] = {rowD[i], dot[i], dw[i]};
#pragma unroll
      for (int k = 0; k < 3; ++k) {
        v[k] += __shfl_xor_sync(0xffffffffu, v[k], 1);
        v[k] += __shfl_xor_sync(0xffffffffu, v[k], 2);
        if (lane % 4 == 0) s_part[half][k][r0 + lane / 4 + 8 * i] = v[k];
      }
    }
    // dXh = Mᵀ d_y over the tiles kt ≥ st.
    for (int64_t kt = st; kt < NT; ++kt) {
      const int b = int((kt - st) % 2);
      if (kt > st) {
        put_m(kt, st, b);
        if (kt + 1 < NT) {
          load_m(kt + 1, st);
          stage_dy(kt + 1, 1 - b);
          cp_async_commit();
          cp_async_wait_all_but_last();
        } else {
          cp_async_wait_all();
        }
        __syncthreads();
      }
      const T* ms = Ms + b * kTile * kTcStride;
      const T* ys = Ys + b * kTile * kTcStride;
#pragma unroll
      for (int ks = 0; ks < kTile / 16; ++ks) {
        uint32_t a[4];
        ldsm_trans(a, a_cols(ms, kTcStride, r0, 16 * ks));
#pragma unroll
        for (int j = 0; j < 4; j += 2) {
          // mma_pair's step written out: through it ptxas schedules this kernel otherwise (the same
          // instructions in another order, SASS 2026-12-04), a change not yet timed on the GPU.
          uint32_t bb[4];
          ldsm_trans(bb, b_cols(ys, kTcStride, c0 + 8 * j, 16 * ks));
          mma<T>(acc[j], a, bb[0], bb[1]);
          mma<T>(acc[j + 1], a, bb[2], bb[3]);
        }
      }
      __syncthreads();  // stage b is used up (and s_part written)
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int64_t s = s0 + r0 + lane / 4 + 8 * i;
      if (s >= ch.len) continue;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t q = c0 + 8 * j + 2 * (lane % 4);
        if (q >= P) continue;
        float2 v;
        v.x = (acc[j][2 * i] + Dh * dyv[j][2 * i]) + s_wt[s] * z2[j][2 * i];
        v.y = (acc[j][2 * i + 1] + Dh * dyv[j][2 * i + 1]) + s_wt[s] * z2[j][2 * i + 1];
        float* o = d_x + (ch.tok0 + s) * lddx + h * P + q;
        if (vec) *reinterpret_cast<float2*>(o) = v;
        else o[0] = v.x, o[1] = v.y;
      }
    }
    if (threadIdx.x < kTile && s0 + threadIdx.x < Q) {
      const int r = threadIdx.x;
      s_rowD[s0 + r] = s_part[0][0][r] + s_part[1][0][r];
      s_dot[s0 + r] = s_part[0][1][r] + s_part[1][1][r];
      s_dw[s0 + r] = s_part[0][2][r] + s_part[1][2][r];
    }
  }
  __syncthreads();
  double* s_da = reinterpret_cast<double*>(Cs);  // C's and B's tiles are used up
  rows_tail(p, ch, d, c, h, dt_raw, lddt, dots, dtp, ap, row_m, col_c, col_m, s_dot, s_dw, s_rowD, s_da,
            s_da + kMaxChunk, s_dA, d_dt, ldd_dt, partials);
}

// Block per padded row (chunk, t) of a real token: the padded d_B and d_C to the packed ones.
__global__ void bwd_scatter_kernel(PackedSeqs seqs, BwdDims d, const float* dBp, const float* dCp, float* d_B,
                                   int64_t lddb, float* d_C, int64_t lddc) {
  const int64_t c = blockIdx.x, t = blockIdx.y;
  const Chunk ch = find_chunk(seqs, c, d.Q);
  if (t >= ch.len) return;
  const int64_t tok = ch.tok0 + t, row = c * d.Q + t, GN = d.GN();
  for (int64_t i = threadIdx.x; i < GN; i += kThreads) {
    d_B[tok * lddb + i] = dBp[row * GN + i];
    d_C[tok * lddc + i] = dCp[row * GN + i];
  }
}

// In: x's, B's, C's and d_y's type (fp32, or T: rounded by their producers).
template <class T, class In>
void backward(const SsdParams& p, const In* x, int64_t ldx, const In* B, int64_t ldb, const In* C,
              int64_t ldc, const float* dt_raw, int64_t lddt, const float* state0, const In* d_y, int64_t lddy,
              const float* d_final, const SsdGradPtrs& g, const PackedSeqs& seqs, const BwdDims& d, DType dtype) {
  const int64_t NC = d.NC, Q = d.Q, H = d.H, G = d.G, P = d.P, N = d.N, HP = d.HP(), GN = d.GN(), PN = d.PN();
  const int64_t hpg = H / G, QQ = Q * Q, NT = d.NT();
  std::vector<std::shared_ptr<void>> keep;
  auto scratch = [&](int64_t count, size_t es) {
    keep.push_back(allocate(size_t(count) * es, "ssd_scan gradient scratch"));
    return keep.back().get();
  };
  auto f = [&](int64_t count) { return static_cast<float*>(scratch(count, sizeof(float))); };
  auto op_t = [&](int64_t count) { return static_cast<T*>(scratch(count, sizeof(T))); };
  // On tensor cores the pairs' and (up to headdim 64, d_state 128) the rows' products run in the
  // kernels; otherwise dM = dY Xᵀ, dXh = Mᵀ dY, Z and Z2 are cuBLASLt products stored for them.
  bool pairs_tc = false, rows_tc = false;
  if constexpr (!std::is_same_v<T, float>) {
    pairs_tc = P % 8 == 0 && P <= kMaxPairHeaddim;
    rows_tc = pairs_tc && P <= kRowsTcMaxP && N <= kRowsTcMaxN && Q % 8 == 0;
  }
  float *dtp = f(NC * H * Q), *dXh = nullptr, *Z = nullptr, *Z2 = nullptr;
  if (!rows_tc) dXh = f(NC * H * Q * P), Z = f(NC * Q * HP), Z2 = f(NC * Q * HP);
  // d_B and d_C straight into the packed gradients when every chunk is whole (padded rows =
  // tokens), else padded and scattered.
  const bool whole = NC * Q == seqs.tokens;
  float *dBp = g.B, *dCp = g.C, *CB = f(NC * G * QQ);
  int64_t lddb = g.ldb, lddc = g.ldc;
  if (!whole) dBp = f(NC * Q * GN), dCp = f(NC * Q * GN), lddb = lddc = GN;
  // bwd_states keeps a sequence's last kMaxStateRegs chunks' start states in registers: the fp32
  // S0 in memory holds only those before them (and, in fp32, is the operand S0t itself).
  const int64_t most_chunks = (seqs.max_length + Q - 1) / Q;
  float *Sc = f(NC * H * PN), *dSc = f(NC * H * PN), *dSend = nullptr;
  float* S0 = std::is_same_v<T, float> || most_chunks > kMaxStateRegs ? f(NC * H * PN) : nullptr;
  float* dots = f(NC * H * state_blocks(d));
  // The inputs in T with rows on 16 bytes: the tensor-core kernels stage x's and d_y's rows from
  // them, and bwd_prep makes no head-major copies (head_rows).
  const bool direct = std::is_same_v<In, T> && rows_tc && aligned16(x, ldx, sizeof(In)) &&
                      aligned16(d_y, lddy, sizeof(In));
  T *Xh = direct ? nullptr : op_t(NC * H * Q * P), *dYh = direct ? nullptr : op_t(NC * H * Q * P);
  T *XW = op_t(NC * Q * HP), *DYs = op_t(NC * Q * HP);
  T *Bp = op_t(NC * Q * GN), *Cp = op_t(NC * Q * GN), *dCB = op_t(NC * G * QQ);
  // M = (C Bᵀ)∘decay∘dt, Q × Q a head, is stored only for the GEMM Mᵀ dY: the tensor-core rows
  // kernel forms its tiles from CB.
  T* M = rows_tc ? nullptr : op_t(NC * H * QQ);
  T *S0t = nullptr, *dSendt = nullptr;
  if constexpr (std::is_same_v<T, float>) dSend = f(NC * H * PN), S0t = S0, dSendt = dSend;
  else S0t = op_t(NC * H * PN), dSendt = op_t(NC * H * PN);
  double *ap = static_cast<double*>(scratch(NC * H * Q, sizeof(double)));
  double* partials = static_cast<double*>(scratch(NC * 3 * H, sizeof(double)));
  double *row_m = static_cast<double*>(scratch(NC * H * NT * Q, sizeof(double))),
         *col_c = static_cast<double*>(scratch(NC * H * NT * Q, sizeof(double))),
         *col_m = static_cast<double*>(scratch(NC * H * NT * Q, sizeof(double)));
  const char* op = "ssd_scan";
  const dim3 units{unsigned(H), unsigned(NC), 1u};  // (head, chunk): a chunk's heads side by side
  // Row-major products, GemmOperand {pointer, ld, batch stride, transposed, dtype}.
  auto opd = [&](const T* ptr, int64_t ld, int64_t stride, bool t) { return GemmOperand{ptr, ld, stride, t, dtype}; };

  const bool pairs = P % 2 == 0 && ldx % 2 == 0 && lddy % 2 == 0 &&
                     reinterpret_cast<uintptr_t>(x) % (2 * sizeof(In)) == 0 &&
                     reinterpret_cast<uintptr_t>(d_y) % (2 * sizeof(In)) == 0;
  const bool wide = P % int64_t(16 / sizeof(In)) == 0 && aligned16(x, ldx, sizeof(In)) &&
                    aligned16(d_y, lddy, sizeof(In));
  (wide ? bwd_prep_kernel<T, In, true> : bwd_prep_kernel<T, In, false>)<<<units, kThreads, 0, stream()>>>(
      p, x, ldx, B, ldb, C, ldc, dt_raw, lddt, d_y, lddy, seqs, d, dtp, ap, Xh, dYh, XW, DYs, Bp, Cp);
  check_launch(op);
  // Two chains with no data between them run side by side: the states' (S_c, dS_c, then their
  // walks) and the pairs' (C Bᵀ, then the pairs kernel).
  Overlap states_beside_pairs;
  states_beside_pairs.side([&] {
    for (int64_t gi = 0; gi < G; ++gi) {
      const int64_t h0 = gi * hpg;
      // The chunks' own end states S_c = (w∘X)ᵀ B and dS_c = (exp(a)∘dY)ᵀ C, the group's heads'
      // (P × N) blocks one under the other.
      gemm(hpg * P, N, Q, opd(XW + h0 * P, HP, Q * HP, true), opd(Bp + gi * N, GN, Q * GN, false), Sc + h0 * PN, N,
           H * PN, NC, 0.0f, op);
      gemm(hpg * P, N, Q, opd(DYs + h0 * P, HP, Q * HP, true), opd(Cp + gi * N, GN, Q * GN, false), dSc + h0 * PN,
           N, H * PN, NC, 0.0f, op);
    }
    const auto states = [&](auto regs) {
      bwd_states_kernel<T, decltype(regs)::value>
          <<<dim3(unsigned(seqs.count), unsigned(H), unsigned(state_blocks(d))), kThreads, 0, stream()>>>(
              seqs, d, ap, state0, d_final, Sc, dSc, S0, S0t, dSendt, g.state0, dots);
    };
    if (most_chunks <= 4) states(std::integral_constant<int, 4>{});
    else if (most_chunks <= 8) states(std::integral_constant<int, 8>{});
    else states(std::integral_constant<int, kMaxStateRegs>{});
    check_launch(op);
  });
  for (int64_t gi = 0; gi < G; ++gi)  // C Bᵀ (Q × Q)
    gemm(Q, Q, N, opd(Cp + gi * N, GN, Q * GN, false), opd(Bp + gi * N, GN, Q * GN, true), CB + gi * QQ, Q, G * QQ,
         NC, 0.0f, op);
  const dim3 pair_grid{unsigned(NC), unsigned(G), unsigned(NT * NT)};
  if (pairs_tc) {
    const size_t smem = 4 * size_t(kTile) * pair_stride(P) * sizeof(T);
    auto* kernel = rows_tc ? bwd_pairs_tc_kernel<T, false> : bwd_pairs_tc_kernel<T, true>;
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)), op);
    const T* x_in = std::is_same_v<In, T> ? reinterpret_cast<const T*>(x) : nullptr;
    const T* dy_in = std::is_same_v<In, T> ? reinterpret_cast<const T*>(d_y) : nullptr;
    kernel<<<pair_grid, kPairThreads, smem, stream()>>>(d, seqs, dtp, ap, CB, Xh, dYh, x_in, ldx, dy_in, lddy, M, dCB,
                                                        row_m, col_c, col_m);
  } else {
    // dM = dY Xᵀ (Q × Q) per (chunk, head), then the pairs.
    float* dM = f(NC * H * QQ);
    gemm(Q, Q, P, opd(dYh, P, Q * P, false), opd(Xh, P, Q * P, true), dM, Q, QQ, NC * H, 0.0f, op);
    bwd_pairs_kernel<T><<<pair_grid, kThreads, 0, stream()>>>(d, dtp, ap, CB, dM, M, dCB, row_m, col_c, col_m);
  }
  check_launch(op);
  states_beside_pairs.join();
  if (!rows_tc) {
    // Mᵀ dY (Q × P) per (chunk, head); Z = C S_startᵀ and Z2 = B dS_endᵀ (Q × P a head, the
    // group's heads side by side).
    gemm(Q, P, Q, opd(M, Q, QQ, true), opd(dYh, P, Q * P, false), dXh, P, Q * P, NC * H, 0.0f, op);
    for (int64_t gi = 0; gi < G; ++gi) {
      const int64_t h0 = gi * hpg;
      gemm(Q, hpg * P, N, opd(Cp + gi * N, GN, Q * GN, false), opd(S0t + h0 * PN, N, H * PN, true), Z + h0 * P, HP,
           Q * HP, NC, 0.0f, op);
      gemm(Q, hpg * P, N, opd(Bp + gi * N, GN, Q * GN, false), opd(dSendt + h0 * PN, N, H * PN, true), Z2 + h0 * P,
           HP, Q * HP, NC, 0.0f, op);
    }
  }
  // d_B and d_C beside the rows kernel, which reads neither.
  Overlap grads_beside_rows;
  grads_beside_rows.side([&] {
    for (int64_t gi = 0; gi < G; ++gi) {
      const int64_t h0 = gi * hpg;
      // dC = dCB B + Σ_heads (exp(a)∘dY) S_start; dB = dCBᵀ C + Σ_heads (w∘X) dS_end.
      gemm(Q, N, Q, opd(dCB + gi * QQ, Q, G * QQ, false), opd(Bp + gi * N, GN, Q * GN, false), dCp + gi * N, lddc,
           Q * lddc, NC, 0.0f, op);
      gemm(Q, N, hpg * P, opd(DYs + h0 * P, HP, Q * HP, false), opd(S0t + h0 * PN, N, H * PN, false), dCp + gi * N,
           lddc, Q * lddc, NC, 1.0f, op);
      gemm(Q, N, Q, opd(dCB + gi * QQ, Q, G * QQ, true), opd(Cp + gi * N, GN, Q * GN, false), dBp + gi * N, lddb,
           Q * lddb, NC, 0.0f, op);
      gemm(Q, N, hpg * P, opd(XW + h0 * P, HP, Q * HP, false), opd(dSendt + h0 * PN, N, H * PN, false),
           dBp + gi * N, lddb, Q * lddb, NC, 1.0f, op);
    }
  });
  // d_dt in fp32 or the compute dtype (the kernels are instantiated for those two alone).
  with_f32_or<T>(g.dt, g.dt_dtype, op, "d_dt", "the compute dtype", [&](auto* ddt) {
    using Ddt = std::remove_pointer_t<decltype(ddt)>;
    if constexpr (!std::is_same_v<T, float>) {
      if (rows_tc) {
        const bool vec = pairs && g.ldx % 2 == 0 && reinterpret_cast<uintptr_t>(g.x) % 8 == 0;
        const auto launch = [&](auto npad) {
          constexpr int NPAD = decltype(npad)::value;
          constexpr size_t smem = rows_tc_smem<T, NPAD>();
          auto* kernel = bwd_rows_tc_kernel<T, NPAD, Ddt, In>;
          check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)), op);
          kernel<<<units, kThreads, smem, stream()>>>(p, seqs, d, x, ldx, d_y, lddy, vec, dt_raw, lddt, CB, dYh, Bp, Cp,
                                                      S0t, dSendt, dots, dtp, ap, row_m, col_c, col_m, g.x, g.ldx,
                                                      ddt, g.lddt, partials);
        };
        if (N <= 64) launch(std::integral_constant<int, 64>{});
        else launch(std::integral_constant<int, 128>{});
        return;
      }
    }
    bwd_rows_kernel<Ddt, In><<<units, kThreads, 0, stream()>>>(p, seqs, d, x, ldx, d_y, lddy, dt_raw, lddt, dXh, Z, Z2,
                                                           dots, dtp, ap, row_m, col_c, col_m, g.x, g.ldx,
                                                           ddt, g.lddt, partials);
  });
  check_launch(op);
  grads_beside_rows.join();
  if (!whole) {
    bwd_scatter_kernel<<<dim3(unsigned(NC), unsigned(Q)), kThreads, 0, stream()>>>(seqs, d, dBp, dCp, g.B, g.ldb,
                                                                                   g.C, g.ldc);
    check_launch(op);
  }
  ColumnParts parts;  // a chunk's row: d dt_bias, d A_log, d D, H each
  parts.count = 3;
  for (int k = 0; k < 3; ++k) parts.cols[k] = H;
  parts.grad[0] = g.dt_bias, parts.grad[1] = g.A_log, parts.grad[2] = g.D;
  add_column_partials(partials, 3 * H, NC, parts, op);
}

}  // namespace

void ssd_scan_backward(const SsdParams& p, const void* x, int64_t ldx, const void* B, int64_t ldb, const void* C,
                       int64_t ldc, const float* dt_raw, int64_t lddt, const float* state0, const void* d_y,
                       int64_t lddy, DType inputs, const float* d_final, const SsdGradPtrs& g, const PackedSeqs& seqs,
                       int64_t chunk_size, DType compute) {
  check_params(p);
  if (chunk_size < 1 || chunk_size > kMaxChunk)
    raise(cat("[ssd_scan] chunk_size ", chunk_size, ": the CUDA kernels take 1 to ", kMaxChunk));
  if (!(compute == DType::F32 || compute == DType::BF16 || compute == DType::F16))
    raise(cat("[ssd_scan] the backward computes in F32, BF16 or F16, not ", dtype_name(compute)));
  if (inputs != DType::F32 && inputs != compute)
    raise(cat("[ssd_scan] the backward takes x, B, C and d_y in F32 or in its compute dtype (", dtype_name(compute),
              "), not ", dtype_name(inputs)));
  if (seqs.tokens == 0) return;
  const BwdDims d{seqs.total_chunks, chunk_size, p.nheads, p.ngroups, p.headdim, p.d_state};
  const auto run = [&](auto* ttag, auto* itag) {
    using T = std::remove_pointer_t<decltype(ttag)>;
    using In = std::remove_pointer_t<decltype(itag)>;
    backward<T, In>(p, static_cast<const In*>(x), ldx, static_cast<const In*>(B), ldb, static_cast<const In*>(C), ldc,
                    dt_raw, lddt, state0, static_cast<const In*>(d_y), lddy, d_final, g, seqs, d, compute);
  };
  with_dtype(compute, "ssd_scan", [&](auto* tag) {
    if (inputs == DType::F32) run(tag, static_cast<float*>(nullptr));
    else if constexpr (!std::is_same_v<decltype(tag), float*>) run(tag, tag);
  });
}

}  // namespace mamba2::cuda
