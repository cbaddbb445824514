// The Mamba-1 selective scan on the CPU (ops::selective_scan): the recurrence itself, token by token
// per channel. A channel's work is inherently sequential in t, and at d_inner ≥ 1024 channels there
// is far more parallel work than cores, so no chunked form is needed on the CPU.
//
// The forward vectorises over channels, not over n: a block of kBlock channels is one vector of
// lanes, its states n-major (h[n][c]), so each token is N vector updates with no horizontal sums
// (the sum over n is a fixed tree of vector adds). Prefill: one parallel region; sequence by
// sequence, the channel blocks shared out statically (no barrier between sequences); a block walks
// its sequence in tiles of kTile tokens: the tile's rows of dt and x read first, δ = softplus(dt +
// bias) of them, then the recurrence over the tile, then y's rows, gated. The decode step runs the
// same block code on one token per sequence. N = 16 (every Mamba-1 checkpoint) has its own
// instantiation (its loops unrolled); other N run the same code with a run-time N.
//
// This file is compiled with -ffp-contract=off (src/CMakeLists.txt): every element's arithmetic is
// then the same roundings whether the compiler vectorises a loop or not and whatever the
// instruction set. Per channel and token the sum over n is a fixed tree: kLanes partial sums
// (lane i takes n ≡ i mod kLanes in n order, from 0), then halves added. The scan and
// the step share BlockScan, and neither the block a channel falls in, its lane, the tiles nor the
// N = 16 instantiation change an element's sequence of roundings: the scan and the step give the
// same bits for a token, and a sequence's bits never depend on its batch or the threads. The
// backward recomputes the forward with BlockScan too, token by token.
// (The scalar libm call — expf for A — is glibc's, which picks an implementation by CPU at load
// time; the promise across instruction sets is ours, not libm's. δ's softplus and its derivative
// and the complex decay's sine and cosine are ours: cpu::softplus, cpu::sin_cos.)
//
// Backward (blocks of kBlock channels as lanes again, each lane one channel, from the end of the
// sequence; g = ∂loss/∂h_t, h recomputed forward first):
//   real:    y = C·h + D·x;  h_t = a·h_{t−1} + δx·B,  a = exp(δA)
//            dC += gy·h,  g += gy·C,  dB += g·δx,  d(δx) = g·B,  da = g·h_{t−1},
//            dδ = x·Σ g·B + Σ da·a·A,  dA += δ·da·a,  g_{t−1} = a·g
//   complex: y = 2·Re(C·h) + D·x, E = exp(δA) = e^{δ·Re A}(cos δ·Im A + i sin δ·Im A); with (re, im) as
//            separate reals, dE_r = g_r·hp_r + g_i·hp_i, dE_i = g_i·hp_r − g_r·hp_i,
//            dδ += dE_r·Re(A·E) + dE_i·Im(A·E), d Re A += δ(dE_r·E_r + dE_i·E_i),
//            d Im A += δ(dE_i·E_r − dE_r·E_i), g_{t−1} = (g_r·E_r + g_i·E_i, g_i·E_r − g_r·E_i)
//   then d dt_raw = dδ·softplus'(dt_raw + bias), d bias += it, d A_log += d Re A · Re A.
// dB and dC (rows, bw) sum over channels: each block adds its lanes by a fixed tree into its own
// partial sums, added in block order, so the result does not depend on the threads.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/common.h"
#include "cpu/kernels.h"

namespace mamba2::cpu {

namespace {

constexpr int64_t kLanes = 16;         // the partial sums over n
constexpr int64_t kBlock = 16;         // channels per block (vector lanes)
constexpr int64_t kTile = 64;          // tokens a prefill block holds in its buffers at a time

// y before the gate from the sum over n: Σ_n C·h (complex: 2·Re) + D·x.
template <class T>
inline T finish(bool complex, T sum, T D, T x) {
  return (complex ? T(2) * sum : sum) + D * x;
}

// δ = softplus(dt + bias): Mamba-1 has no dt_limit clamp.
template <class T>
inline T softplus_dt(T raw, T bias) {
  return softplus(raw + bias);
}

template <class T>
int64_t state_width(const SelectiveScanParamsT<T>& p) {
  return p.d_state * (p.A_imag ? 2 : 1);
}

// ---- The forward: blocks of kBlock channels as vector lanes ----

// Per token, the lanes' inputs and outputs, rows of kBlock (the lanes past a block's channels
// hold zeros: their work is thrown away).
template <class T>
using Lanes = T[kBlock];

// A block's A and states, n-major, and its recurrence over rows of tokens. NC: N when known at
// compile time (16), else 0 and N comes from the parameters; the same roundings either way.
// NC = 0 keeps its arrays in `ws` (4·N·kBlock), NC > 0 in itself.
template <int64_t NC, bool Complex, class T>
class BlockScan {
 public:
  BlockScan(const SelectiveScanParamsT<T>& p, T* ws) : p_(p), N_(NC > 0 ? NC : p.d_state) {
    if constexpr (NC > 0) {
      ar_ = fixed_[0], ai_ = fixed_[1], hr_ = fixed_[2], hi_ = fixed_[3];
    } else {
      const int64_t m = N_ * kBlock;
      ar_ = ws, ai_ = ws + m, hr_ = ws + 2 * m, hi_ = ws + 3 * m;
    }
  }

  // The block of channels [d0, d0 + nc), nc ≤ kBlock; A_re: −exp(A_log) of every channel, (channels, N).
  void load_A(const T* A_re, int64_t d0, int64_t nc) {
    d0_ = d0, nc_ = nc;
    for (int64_t n = 0; n < N_; ++n)
      for (int64_t c = 0; c < kBlock; ++c) {
        ar_[n * kBlock + c] = c < nc ? A_re[(d0 + c) * N_ + n] : T(0);
        if constexpr (Complex) ai_[n * kBlock + c] = c < nc ? p_.A_imag[(d0 + c) * N_ + n] : T(0);
      }
    for (int64_t c = 0; c < kBlock; ++c) {
      D_[c] = c < nc ? p_.D[d0 + c] : T(0);
      bias_[c] = c < nc ? p_.dt_bias[d0 + c] : T(0);
    }
  }
  // The block's states from a sequence's state row (channels·S), and back.
  void load_state(const T* state) {
    for (int64_t c = 0; c < kBlock; ++c)
      for (int64_t n = 0; n < N_; ++n) {
        const T* h = c < nc_ ? state + (d0_ + c) * S() : nullptr;
        hr_[n * kBlock + c] = h ? h[Complex ? 2 * n : n] : T(0);
        if constexpr (Complex) hi_[n * kBlock + c] = h ? h[2 * n + 1] : T(0);
      }
  }
  void zero_state() {
    std::fill_n(hr_, N_ * kBlock, T(0));
    if constexpr (Complex) std::fill_n(hi_, N_ * kBlock, T(0));
  }
  // The block's states as they are, n-major lanes: Re (N·kBlock), then (complex) Im.
  void states_to(T* dst) const {
    std::copy_n(hr_, N_ * kBlock, dst);
    if constexpr (Complex) std::copy_n(hi_, N_ * kBlock, dst + N_ * kBlock);
  }
  void store_state(T* state) const {
    for (int64_t c = 0; c < nc_; ++c)
      for (int64_t n = 0; n < N_; ++n) {
        T* h = state + (d0_ + c) * S();
        h[Complex ? 2 * n : n] = hr_[n * kBlock + c];
        if constexpr (Complex) h[2 * n + 1] = hi_[n * kBlock + c];
      }
  }

  // δ of the lanes from rows of raw dt (nc values each; the other lanes 0).
  void softplus(const T* raw, Lanes<T>& delta) const {
    for (int64_t c = 0; c < kBlock; ++c) delta[c] = c < nc_ ? softplus_dt(raw[c], bias_[c]) : T(0);
  }

  // tl tokens: B, C their rows; delta, x per token; y (before the gate) out.
  // Keep (the backward): also every token's states (after it) and decays, each a row of
  // S·kBlock at keep_h / keep_e + t·S·kBlock, laid out as states_to's (Re, then Im).
  template <bool Keep = false>
  void run(const T* B, int64_t ldb, const T* C, int64_t ldc, const Lanes<T>* delta, const Lanes<T>* x, Lanes<T>* y,
           int64_t tl, T* keep_h = nullptr, T* keep_e = nullptr) {
    const int64_t N = NC > 0 ? NC : N_;
    T* __restrict hr = hr_;
    T* __restrict hi = hi_;
    const T* __restrict ar = ar_;
    const T* __restrict ai = ai_;
    for (int64_t t = 0; t < tl; ++t) {
      const T* Bt = B + t * ldb;
      const T* Ct = C + t * ldc;
      const T* dl = delta[t];
      T dx[kBlock];
#pragma omp simd
      for (int64_t c = 0; c < kBlock; ++c) dx[c] = dl[c] * x[t][c];
      T part[kLanes][kBlock] = {};
      for (int64_t n = 0; n < N; ++n) {
        T* pa = part[n % kLanes];
        T* hrn = hr + n * kBlock;
        const T* arn = ar + n * kBlock;
        if constexpr (!Complex) {
          const T b = Bt[n], cc = Ct[n];
          T* eo = Keep ? keep_e + (t * N + n) * kBlock : nullptr;
#pragma omp simd
          for (int64_t c = 0; c < kBlock; ++c) {
            const T a = exp_nonpos(dl[c] * arn[c]);
            const T hn = a * hrn[c] + dx[c] * b;
            hrn[c] = hn;
            pa[c] += cc * hn;
            if constexpr (Keep) eo[c] = a;
          }
        } else {
          T* hin = hi + n * kBlock;
          const T* ain = ai + n * kBlock;
          T mag[kBlock], cs[kBlock], sn[kBlock];
#pragma omp simd
          for (int64_t c = 0; c < kBlock; ++c) {
            mag[c] = exp_nonpos(dl[c] * arn[c]);
            sin_cos(dl[c] * ain[c], sn[c], cs[c]);
          }
          const T br = Bt[2 * n], bi = Bt[2 * n + 1], cr = Ct[2 * n], ci = Ct[2 * n + 1];
          T* eo = Keep ? keep_e + (2 * t * N + n) * kBlock : nullptr;
#pragma omp simd
          for (int64_t c = 0; c < kBlock; ++c) {
            const T er = mag[c] * cs[c], ei = mag[c] * sn[c];
            if constexpr (Keep) eo[c] = er, eo[N * kBlock + c] = ei;
            const T h_r = hrn[c], h_i = hin[c];
            const T nr = (er * h_r - ei * h_i) + dx[c] * br;
            const T ni = (er * h_i + ei * h_r) + dx[c] * bi;
            hrn[c] = nr;
            hin[c] = ni;
            pa[c] += cr * nr - ci * ni;
          }
        }
      }
      // tree_sum, lane by lane.
      for (int64_t w = kLanes / 2; w >= 1; w /= 2)
        for (int64_t i = 0; i < w; ++i)
#pragma omp simd
          for (int64_t c = 0; c < kBlock; ++c) part[i][c] += part[i + w][c];
#pragma omp simd
      for (int64_t c = 0; c < kBlock; ++c) y[t][c] = finish(Complex, part[0][c], D_[c], x[t][c]);
      if constexpr (Keep) states_to(keep_h + t * S() * kBlock);
    }
  }

 private:
  int64_t S() const { return Complex ? 2 * N_ : N_; }

  const SelectiveScanParamsT<T>& p_;
  int64_t N_, d0_ = 0, nc_ = 0;
  T *ar_, *ai_, *hr_, *hi_;
  alignas(64) T fixed_[NC > 0 ? 4 : 1][NC > 0 ? NC * kBlock : 1];
  alignas(64) T D_[kBlock], bias_[kBlock];
};

// y's row (nc values) from a token's lanes: gated by silu(z) when z is given.
template <class T>
inline void write_y(const Lanes<T>& ys, const T* z, T* y, int64_t nc) {
  if (z) {
#pragma omp simd
    for (int64_t c = 0; c < nc; ++c) y[c] = ys[c] * silu(z[c]);
  } else {
    std::copy_n(ys, nc, y);
  }
}

// −exp(A_log) of every channel, (channels, N), shared out over the threads of the enclosing
// parallel region (ends with its barrier).
template <class T>
void all_A_re(const SelectiveScanParamsT<T>& p, T* A_re) {
  const int64_t n = p.channels * p.d_state;
#pragma omp for schedule(static)
  for (int64_t i = 0; i < n; ++i) A_re[i] = -std::exp(p.A_log[i]);
}

// The operands of one sequence's prefill.
template <class T>
struct SeqOperands {
  const T *x, *dt, *B, *C, *z;
  int64_t ldx, lddt, ldb, ldc, ldz;
  T* y;
  int64_t ldy;
  T* state;  // channels·S
  int64_t L;
};

// One sequence's channels [d0, d0 + nc), tile by tile.
template <int64_t NC, bool Complex, class T>
void scan_block(BlockScan<NC, Complex, T>& blk, const T* A_re, const SeqOperands<T>& o, int64_t d0, int64_t nc) {
  alignas(64) T raw[kTile][kBlock], delta[kTile][kBlock], xs[kTile][kBlock], ys[kTile][kBlock];
  blk.load_A(A_re, d0, nc);
  blk.load_state(o.state);
  for (int64_t t0 = 0; t0 < o.L; t0 += kTile) {
    const int64_t tl = std::min(kTile, o.L - t0);
    // The tile's rows of dt and x first, loads only: rows a long stride apart are each their own
    // cache misses, overlapped here rather than one at a time behind the softplus calls.
    for (int64_t t = 0; t < tl; ++t) {
      std::copy_n(o.dt + (t0 + t) * o.lddt + d0, nc, raw[t]);
      std::copy_n(o.x + (t0 + t) * o.ldx + d0, nc, xs[t]);
      std::fill(xs[t] + nc, xs[t] + kBlock, T(0));
    }
    for (int64_t t = 0; t < tl; ++t) blk.softplus(raw[t], delta[t]);
    blk.run(o.B + t0 * o.ldb, o.ldb, o.C + t0 * o.ldc, o.ldc, delta, xs, ys, tl);
    for (int64_t t = 0; t < tl; ++t)
      write_y(ys[t], o.z ? o.z + (t0 + t) * o.ldz + d0 : nullptr, o.y + (t0 + t) * o.ldy + d0, nc);
  }
  blk.store_state(o.state);
}

template <int64_t NC, bool Complex, class T>
void scan_sequences(const SelectiveScanParamsT<T>& p, const T* A_re, const SeqOperands<T>* seqs, int64_t count) {
  std::vector<T> ws(NC > 0 ? 0 : static_cast<size_t>(4 * p.d_state * kBlock));
  BlockScan<NC, Complex, T> blk(p, ws.data());
  const int64_t blocks = (p.channels + kBlock - 1) / kBlock;
  for (int64_t s = 0; s < count; ++s) {
#pragma omp for schedule(static) nowait
    for (int64_t b = 0; b < blocks; ++b)
      scan_block(blk, A_re, seqs[s], b * kBlock, std::min(kBlock, p.channels - b * kBlock));
  }
}

// Every sequence of `seqs`, inside one parallel region: A first, then the sequences' blocks.
template <class T>
void scan_all(const SelectiveScanParamsT<T>& p, const SeqOperands<T>* seqs, int64_t count) {
  std::vector<T> A_re(static_cast<size_t>(p.channels * p.d_state));
  const bool cplx = p.A_imag != nullptr, n16 = p.d_state == 16;
#pragma omp parallel
  {
    all_A_re(p, A_re.data());
    if (n16 && cplx)
      scan_sequences<16, true>(p, A_re.data(), seqs, count);
    else if (n16)
      scan_sequences<16, false>(p, A_re.data(), seqs, count);
    else if (cplx)
      scan_sequences<0, true>(p, A_re.data(), seqs, count);
    else
      scan_sequences<0, false>(p, A_re.data(), seqs, count);
  }
}

// One token of each of nb sequences: channel blocks shared out, each block stepped for every
// sequence in its state row (in place), by the prefill's code on a tile of one token.
template <int64_t NC, bool Complex>
void step_all(const SelectiveScanParams& p, const float* A_re, const float* x, int64_t ldx, const float* dt,
              int64_t lddt, const float* B, int64_t ldb, const float* C, int64_t ldc, const float* z, int64_t ldz,
              float* y, int64_t ldy, float* states, const int64_t* slots, int64_t nb) {
  std::vector<float> ws(NC > 0 ? 0 : static_cast<size_t>(4 * p.d_state * kBlock));
  BlockScan<NC, Complex, float> blk(p, ws.data());
  const int64_t blocks = (p.channels + kBlock - 1) / kBlock, S = state_width(p);
#pragma omp for schedule(static)
  for (int64_t bk = 0; bk < blocks; ++bk) {
    const int64_t d0 = bk * kBlock, nc = std::min(kBlock, p.channels - d0);
    blk.load_A(A_re, d0, nc);
    for (int64_t b = 0; b < nb; ++b) {
      float* st = states + slots[b] * p.channels * S;
      alignas(64) float delta[1][kBlock], xs[1][kBlock], ys[1][kBlock];
      blk.softplus(dt + b * lddt + d0, delta[0]);
      std::copy_n(x + b * ldx + d0, nc, xs[0]);
      std::fill(xs[0] + nc, xs[0] + kBlock, 0.0f);
      blk.load_state(st);
      blk.run(B + b * ldb, ldb, C + b * ldc, ldc, delta, xs, ys, 1);
      blk.store_state(st);
      write_y(ys[0], z ? z + b * ldz + d0 : nullptr, y + b * ldy + d0, nc);
    }
  }
}

}  // namespace

template <class T>
void selective_scan_forward(const SelectiveScanParamsT<T>& p, const T* x, int64_t ldx, const T* dt, int64_t lddt,
                            const T* B, int64_t ldb, const T* C, int64_t ldc, const T* z, int64_t ldz, T* y,
                            int64_t ldy, T* state, int64_t L) {
  const SeqOperands<T> seq{x, dt, B, C, z, ldx, lddt, ldb, ldc, ldz, y, ldy, state, L};
  scan_all(p, &seq, 1);
}

void selective_scan_prefill(const SelectiveScanParams& p, const float* x, int64_t ldx, const float* dt, int64_t lddt,
                            const float* B, int64_t ldb, const float* C, int64_t ldc, const float* z, int64_t ldz,
                            float* y, int64_t ldy, float* states, const int64_t* starts, const int64_t* slots,
                            int64_t count) {
  const int64_t S = state_width(p);
  std::vector<SeqOperands<float>> seqs(static_cast<size_t>(count));
  for (int64_t s = 0; s < count; ++s) {
    const int64_t t0 = starts[s];
    seqs[size_t(s)] = {x + t0 * ldx, dt + t0 * lddt, B + t0 * ldb, C + t0 * ldc, z ? z + t0 * ldz : nullptr,
                       ldx, lddt, ldb, ldc, ldz, y + t0 * ldy, ldy, states + slots[s] * p.channels * S,
                       starts[s + 1] - t0};
  }
  scan_all(p, seqs.data(), count);
}

void selective_scan_step(const SelectiveScanParams& p, const float* x, int64_t ldx, const float* dt, int64_t lddt,
                         const float* B, int64_t ldb, const float* C, int64_t ldc, const float* z, int64_t ldz,
                         float* y, int64_t ldy, float* states, const int64_t* slots, int64_t nb) {
  std::vector<float> A_re(static_cast<size_t>(p.channels * p.d_state));
  const bool cplx = p.A_imag != nullptr, n16 = p.d_state == 16;
#pragma omp parallel
  {
    all_A_re(p, A_re.data());
    auto* run = n16 ? (cplx ? &step_all<16, true> : &step_all<16, false>)
                    : (cplx ? &step_all<0, true> : &step_all<0, false>);
    run(p, A_re.data(), x, ldx, dt, lddt, B, ldb, C, ldc, z, ldz, y, ldy, states, slots, nb);
  }
}

namespace {

// dB and dC of a token: the block's lanes' terms added by a fixed tree (halves added).
// Each level into its own array (in place, the compiler kept the last levels on the stack, a
// store and reload a step).
template <class T>
inline T lane_sum(const T (&v)[kBlock]) {
  static_assert(kBlock == 16);
  T w8[8], w4[4], w2[2];
  for (int64_t c = 0; c < 8; ++c) w8[c] = v[c] + v[c + 8];
  for (int64_t c = 0; c < 4; ++c) w4[c] = w8[c] + w8[c + 4];
  for (int64_t c = 0; c < 2; ++c) w2[c] = w4[c] + w4[c + 2];
  return w2[0] + w2[1];
}

// The operands and gradients of one sequence's backward.
template <class T>
struct BackOperands {
  const SelectiveScanParamsT<T>& p;
  const T *x, *dt, *B, *C, *z;
  int64_t ldx, lddt, ldb, ldc, ldz;
  const T *state0, *d_y;
  int64_t lddy;
  const T* d_state_final;
  const SelectiveScanGradsT<T>& g;
  int64_t L;
};

// The backward of channels [d0, d0 + nc) as lanes: the forward again by the forward's own block
// code (BlockScan: the same states, decays and y), every state and decay kept (hs: (L + 1) rows
// of S·kBlock, dec: L), then the tokens in reverse, each lane one channel's formulas (above), its
// sums over n in n order. pB, pC (L, bw): the block's dB and dC.
template <int64_t NC, bool Complex, class T>
void backward_block(const BackOperands<T>& o, const T* A_re_all, int64_t d0, int64_t nc, T* pB, T* pC,
                    std::vector<T>& ws) {
  constexpr int64_t K = kBlock;
  const SelectiveScanParamsT<T>& p = o.p;
  const int64_t N = p.d_state, S = Complex ? 2 * N : N, bw = S, SK = S * K, L = o.L;
  const size_t need = size_t((L + 1) * SK + L * SK + 3 * L * K + 4 * N * K + 2 * N * K + SK + 2 * N * K + 2 * SK);
  if (ws.size() < need) ws.resize(need);
  T* hs = ws.data();
  T* dec = hs + (L + 1) * SK;  // the decays exp(δA) of every token (Re, then Im), as hs's rows
  T* delta = dec + L * SK;
  T* xin = delta + L * K;
  T* ypre = xin + L * K;
  T* blk_ws = ypre + L * K;  // BlockScan's arrays for a run-time N
  T* dA = blk_ws + 4 * N * K;  // d Re A, then d Im A, n-major lanes
  T* gh = dA + 2 * N * K;      // ∂loss/∂h, as hs's rows
  T* ar = gh + SK;             // Re A and Im A, n-major lanes
  T* ai = ar + N * K;
  auto* lanes = reinterpret_cast<T(*)[K]>(ai + N * K);  // a token's dB and dC terms: 2·S rows of lanes
  BlockScan<NC, Complex, T> blk(p, blk_ws);
  blk.load_A(A_re_all, d0, nc);
  if (o.state0)
    blk.load_state(o.state0);
  else
    blk.zero_state();
  blk.states_to(hs);
  auto* dls = reinterpret_cast<T(*)[K]>(delta);
  auto* xs = reinterpret_cast<T(*)[K]>(xin);
  alignas(64) T raw[K];
  for (int64_t t = 0; t < L; ++t) {
    for (int64_t c = 0; c < K; ++c) {
      raw[c] = c < nc ? o.dt[t * o.lddt + d0 + c] : T(0);
      xs[t][c] = c < nc ? o.x[t * o.ldx + d0 + c] : T(0);
    }
    blk.softplus(raw, dls[t]);
  }
  blk.template run<true>(o.B, o.ldb, o.C, o.ldc, dls, xs, reinterpret_cast<T(*)[K]>(ypre), L, hs + SK, dec);

  T Dd[K], bias[K];
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < K; ++c) {
      ar[n * K + c] = c < nc ? A_re_all[(d0 + c) * N + n] : T(0);
      ai[n * K + c] = Complex && c < nc ? p.A_imag[(d0 + c) * N + n] : T(0);
    }
  for (int64_t c = 0; c < K; ++c) {
    Dd[c] = c < nc ? p.D[d0 + c] : T(0);
    bias[c] = c < nc ? p.dt_bias[d0 + c] : T(0);
  }
  // gh in hs's layout: Re of n at n·K + c, Im at (N + n)·K + c.
  for (int64_t j = 0; j < SK; ++j) gh[j] = T(0);
  if (o.d_state_final)
    for (int64_t c = 0; c < nc; ++c)
      for (int64_t n = 0; n < N; ++n) {
        const T* f = o.d_state_final + (d0 + c) * S;
        gh[n * K + c] = f[Complex ? 2 * n : n];
        if constexpr (Complex) gh[(N + n) * K + c] = f[2 * n + 1];
      }
  std::fill_n(dA, 2 * N * K, T(0));
  T dD[K] = {}, dbias[K] = {};
  const SelectiveScanGradsT<T>& g = o.g;
  for (int64_t t = L - 1; t >= 0; --t) {
    const T* dl = delta + t * K;
    const T* h = hs + (t + 1) * SK;
    const T* hp = hs + t * SK;
    const T* Bt = o.B + t * o.ldb;
    const T* Ct = o.C + t * o.ldc;
    T gy[K], xv[K], dx[K], sum_gB[K] = {}, d_delta[K] = {};
    for (int64_t c = 0; c < K; ++c) {
      xv[c] = c < nc ? o.x[t * o.ldx + d0 + c] : T(0);
      gy[c] = c < nc ? o.d_y[t * o.lddy + d0 + c] : T(0);
    }
    if (o.z) {
      // The gate over whole lanes (it vectorises; the lanes past nc are not written).
      T zt[K], dz[K];
      for (int64_t c = 0; c < K; ++c) zt[c] = c < nc ? o.z[t * o.ldz + d0 + c] : T(0);
#pragma omp simd
      for (int64_t c = 0; c < K; ++c) {
        dz[c] = gy[c] * ypre[t * K + c] * silu_grad(zt[c]);
        gy[c] = gy[c] * silu(zt[c]);
      }
      std::copy_n(dz, nc, g.d_z + t * g.lddz + d0);
    }
#pragma omp simd
    for (int64_t c = 0; c < K; ++c) {
      dx[c] = dl[c] * xv[c];
      dD[c] += gy[c] * xv[c];
    }
    for (int64_t n = 0; n < N; ++n) {
      const T* arn = ar + n * K;
      T* dArn = dA + n * K;
      if constexpr (!Complex) {
        const T b = Bt[n], cc = Ct[n];
        const T* hn = h + n * K;
        const T* hpn = hp + n * K;
        const T* an = dec + t * SK + n * K;
        T* ghn = gh + n * K;
        T(&vC)[K] = lanes[2 * n];
        T(&vB)[K] = lanes[2 * n + 1];
#pragma omp simd
        for (int64_t c = 0; c < K; ++c) {
          vC[c] = gy[c] * hn[c];
          const T gn = ghn[c] + gy[c] * cc;
          const T a = an[c];
          vB[c] = gn * dx[c];
          sum_gB[c] += gn * b;
          const T da = gn * hpn[c];
          d_delta[c] += da * a * arn[c];
          dArn[c] += dl[c] * da * a;
          ghn[c] = a * gn;
        }
      } else {
        const T br = Bt[2 * n], bi = Bt[2 * n + 1], cr = Ct[2 * n], ci = Ct[2 * n + 1];
        const T* ain = ai + n * K;
        T* dAin = dA + (N + n) * K;
        const T *hr = h + n * K, *hi = h + (N + n) * K, *hpr = hp + n * K, *hpi = hp + (N + n) * K;
        T *ghr = gh + n * K, *ghi = gh + (N + n) * K;
        const T *ern = dec + t * SK + n * K, *ein = dec + t * SK + (N + n) * K;
        T(&vCr)[K] = lanes[4 * n];
        T(&vCi)[K] = lanes[4 * n + 1];
        T(&vBr)[K] = lanes[4 * n + 2];
        T(&vBi)[K] = lanes[4 * n + 3];
#pragma omp simd
        for (int64_t c = 0; c < K; ++c) {
          vCr[c] = T(2) * gy[c] * hr[c];
          vCi[c] = T(2) * gy[c] * hi[c];
          const T gr = ghr[c] + T(2) * gy[c] * cr;
          const T gi = ghi[c] - T(2) * gy[c] * ci;
          const T er = ern[c], ei = ein[c];
          vBr[c] = gr * dx[c];
          vBi[c] = gi * dx[c];
          sum_gB[c] += gr * br + gi * bi;
          const T dEr = gr * hpr[c] + gi * hpi[c], dEi = gi * hpr[c] - gr * hpi[c];
          d_delta[c] += dEr * (arn[c] * er - ain[c] * ei) + dEi * (arn[c] * ei + ain[c] * er);
          dArn[c] += dl[c] * (dEr * er + dEi * ei);
          dAin[c] += dl[c] * (dEi * er - dEr * ei);
          ghr[c] = gr * er + gi * ei;
          ghi[c] = gi * er - gr * ei;
        }
      }
    }
    // The token's dB and dC terms summed over the lanes after the n loop: independent of it and of
    // each other, so their trees overlap.
    for (int64_t n = 0; n < N; ++n) {
      if constexpr (!Complex) {
        pC[t * bw + n] += lane_sum(lanes[2 * n]);
        pB[t * bw + n] += lane_sum(lanes[2 * n + 1]);
      } else {
        pC[t * bw + 2 * n] += lane_sum(lanes[4 * n]);
        pC[t * bw + 2 * n + 1] -= lane_sum(lanes[4 * n + 1]);
        pB[t * bw + 2 * n] += lane_sum(lanes[4 * n + 2]);
        pB[t * bw + 2 * n + 1] += lane_sum(lanes[4 * n + 3]);
      }
    }
    for (int64_t c = 0; c < nc; ++c) {
      const int64_t d = d0 + c;
      g.d_x[t * g.lddx + d] = gy[c] * Dd[c] + dl[c] * sum_gB[c];
      const T dd = d_delta[c] + xv[c] * sum_gB[c];
      const T d_raw = dd * softplus_grad(o.dt[t * o.lddt + d] + bias[c]);
      g.d_dt[t * g.lddt + d] = d_raw;
      dbias[c] += d_raw;
    }
  }
  for (int64_t c = 0; c < nc; ++c) {
    const int64_t d = d0 + c;
    if (g.d_state0)
      for (int64_t n = 0; n < N; ++n) {
        g.d_state0[d * S + (Complex ? 2 * n : n)] = gh[n * K + c];
        if constexpr (Complex) g.d_state0[d * S + 2 * n + 1] = gh[(N + n) * K + c];
      }
    for (int64_t n = 0; n < N; ++n) {
      g.d_A_log[d * N + n] += dA[n * K + c] * ar[n * K + c];
      if constexpr (Complex) g.d_A_imag[d * N + n] += dA[(N + n) * K + c];
    }
    g.d_D[d] += dD[c];
    g.d_dt_bias[d] += dbias[c];
  }
}

}  // namespace

template <class T>
void selective_scan_backward(const SelectiveScanParamsT<T>& p, const T* x, int64_t ldx, const T* dt, int64_t lddt,
                             const T* B, int64_t ldb, const T* C, int64_t ldc, const T* z, int64_t ldz,
                             const T* state0, const T* d_y, int64_t lddy, const T* d_state_final,
                             const SelectiveScanGradsT<T>& g, int64_t L) {
  const int64_t bw = state_width(p), Dc = p.channels, blocks = (Dc + kBlock - 1) / kBlock;
  const bool cplx = p.A_imag != nullptr, n16 = p.d_state == 16;
  const BackOperands<T> o{p, x, dt, B, C, z, ldx, lddt, ldb, ldc, ldz, state0, d_y, lddy, d_state_final, g, L};
  // Per channel block: its partial dB and dC, (L, bw) each, added in block order below.
  std::vector<T> part_B(size_t(blocks * L * bw)), part_C(size_t(blocks * L * bw));
  std::vector<T> A_re(static_cast<size_t>(Dc * p.d_state));
#pragma omp parallel
  {
    all_A_re(p, A_re.data());
    std::vector<T> ws;
    auto* run = n16 ? (cplx ? &backward_block<16, true, T> : &backward_block<16, false, T>)
                    : (cplx ? &backward_block<0, true, T> : &backward_block<0, false, T>);
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk)
      run(o, A_re.data(), blk * kBlock, std::min(kBlock, Dc - blk * kBlock), part_B.data() + blk * L * bw,
          part_C.data() + blk * L * bw, ws);
  }
  // dB, dC: the blocks' partial sums in block order.
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < L; ++t) {
    for (int64_t j = 0; j < bw; ++j) {
      T sb = 0, sc = 0;
      for (int64_t blk = 0; blk < blocks; ++blk) {
        sb += part_B[size_t((blk * L + t) * bw + j)];
        sc += part_C[size_t((blk * L + t) * bw + j)];
      }
      g.d_B[t * g.lddb + j] = sb;
      g.d_C[t * g.lddc + j] = sc;
    }
  }
}

template void selective_scan_forward<float>(const SelectiveScanParamsT<float>&, const float*, int64_t, const float*,
                                            int64_t, const float*, int64_t, const float*, int64_t, const float*,
                                            int64_t, float*, int64_t, float*, int64_t);
template void selective_scan_forward<double>(const SelectiveScanParamsT<double>&, const double*, int64_t,
                                             const double*, int64_t, const double*, int64_t, const double*, int64_t,
                                             const double*, int64_t, double*, int64_t, double*, int64_t);
template void selective_scan_backward<float>(const SelectiveScanParamsT<float>&, const float*, int64_t, const float*,
                                             int64_t, const float*, int64_t, const float*, int64_t, const float*,
                                             int64_t, const float*, const float*, int64_t, const float*,
                                             const SelectiveScanGradsT<float>&, int64_t);
template void selective_scan_backward<double>(const SelectiveScanParamsT<double>&, const double*, int64_t,
                                              const double*, int64_t, const double*, int64_t, const double*, int64_t,
                                              const double*, int64_t, const double*, const double*, int64_t,
                                              const double*, const SelectiveScanGradsT<double>&, int64_t);

}  // namespace mamba2::cpu
