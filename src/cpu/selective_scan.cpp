// The Mamba-1 selective scan on the CPU (ops::selective_scan): the recurrence itself, token by token
// per channel, its N (complex: N pairs) states held while the channel walks the sequence. Prefill runs
// the channels in parallel; a channel's work is inherently sequential in t, and at d_inner ≥ 1024
// channels there is far more parallel work than cores, so no chunked form is needed on the CPU.
//
// This file is compiled with -ffp-contract=off (src/CMakeLists.txt): every element's arithmetic is
// then the same roundings whether the compiler vectorises a loop or not and whatever the
// instruction set, and the sum over n runs in a fixed tree of kLanes partial sums. So the scan and
// the step give the same bits for a token, and a sequence's bits never depend on its batch.
//
// Backward (per channel, from the end of the sequence; g = ∂loss/∂h_t, h recomputed forward first):
//   real:    y = C·h + D·x;  h_t = a·h_{t−1} + δx·B,  a = exp(δA)
//            dC += gy·h,  g += gy·C,  dB += g·δx,  d(δx) = g·B,  da = g·h_{t−1},
//            dδ = x·Σ g·B + Σ da·a·A,  dA += δ·da·a,  g_{t−1} = a·g
//   complex: y = 2·Re(C·h) + D·x, E = exp(δA) = e^{δ·Re A}(cos δ·Im A + i sin δ·Im A); with (re, im) as
//            separate reals, dE_r = g_r·hp_r + g_i·hp_i, dE_i = g_i·hp_r − g_r·hp_i,
//            dδ += dE_r·Re(A·E) + dE_i·Im(A·E), d Re A += δ(dE_r·E_r + dE_i·E_i),
//            d Im A += δ(dE_i·E_r − dE_r·E_i), g_{t−1} = (g_r·E_r + g_i·E_i, g_i·E_r − g_r·E_i)
//   then d dt_raw = dδ·softplus'(dt_raw + bias), d bias += it, d A_log += d Re A · Re A.
// dB and dC (rows, bw) sum over channels: each block of kChannelBlock channels writes its own
// partial sums, added in block order, so the result does not depend on the threads.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/common.h"
#include "cpu/kernels.h"

namespace mamba2::cpu {

namespace {

constexpr int64_t kLanes = 16;
constexpr int64_t kChannelBlock = 32;

template <class T>
T tree_sum(T (&part)[kLanes]) {
  for (int64_t w = kLanes / 2; w >= 1; w /= 2)
    for (int64_t i = 0; i < w; ++i) part[i] += part[i + w];
  return part[0];
}

// One channel's constants, A's parts as the scan reads them.
template <class T>
struct Channel {
  int64_t N;
  const T* A_re;  // (N) −exp(A_log)
  const T* A_im;  // (N) or null
  T D, bias;
};

// One token of a real channel: h ← exp(δA)·h + δx·B, returns Σ_n C·h.
template <class T>
inline T real_token(const Channel<T>& ch, T* h, const T* Bt, const T* Ct, T delta, T dx) {
  T part[kLanes] = {};
  for (int64_t n0 = 0; n0 < ch.N; n0 += kLanes) {
    const int64_t m = std::min(kLanes, ch.N - n0);
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) {
      const int64_t n = n0 + i;
      const T hn = exp_nonpos(delta * ch.A_re[n]) * h[n] + dx * Bt[n];
      h[n] = hn;
      part[i] += Ct[n] * hn;
    }
  }
  return tree_sum(part);
}

// exp(δA) of a complex A, (re, im).
template <class T>
inline void complex_decay(T delta, T a_re, T a_im, T& er, T& ei) {
  const T mag = exp_nonpos(delta * a_re), angle = delta * a_im;
  er = mag * std::cos(angle);
  ei = mag * std::sin(angle);
}

// One token of a complex channel (h, B, C as (re, im) pairs): h ← exp(δA)·h + δx·B, returns
// Re Σ_n C·h.
template <class T>
inline T complex_token(const Channel<T>& ch, T* h, const T* Bt, const T* Ct, T delta, T dx) {
  T part[kLanes] = {};
  for (int64_t n0 = 0; n0 < ch.N; n0 += kLanes) {
    const int64_t m = std::min(kLanes, ch.N - n0);
    for (int64_t i = 0; i < m; ++i) {
      const int64_t n = n0 + i;
      T er, ei;
      complex_decay(delta, ch.A_re[n], ch.A_im[n], er, ei);
      const T hr = h[2 * n], hi = h[2 * n + 1];
      const T nr = (er * hr - ei * hi) + dx * Bt[2 * n];
      const T ni = (er * hi + ei * hr) + dx * Bt[2 * n + 1];
      h[2 * n] = nr;
      h[2 * n + 1] = ni;
      part[i] += Ct[2 * n] * nr - Ct[2 * n + 1] * ni;
    }
  }
  return tree_sum(part);
}

// y for one token of one channel before the gate: Σ_n C·h (complex: 2·Re) + D·x.
template <class T>
inline T ungated_token(const Channel<T>& ch, T* h, const T* Bt, const T* Ct, T delta, T x) {
  const T dx = delta * x;
  const T s = ch.A_im ? T(2) * complex_token(ch, h, Bt, Ct, delta, dx) : real_token(ch, h, Bt, Ct, delta, dx);
  return s + ch.D * x;
}

template <class T>
inline T token(const Channel<T>& ch, T* h, const T* Bt, const T* Ct, T raw_dt, T x, const T* z) {
  const T delta = dt_activation(raw_dt, ch.bias, T(0), T(INFINITY));
  const T y = ungated_token(ch, h, Bt, Ct, delta, x);
  return z ? y * silu(*z) : y;
}

// A channel's A, −exp(A_log) and Im A.
template <class T>
void load_A(const SelectiveScanParamsT<T>& p, int64_t d, T* A_re, T* A_im) {
  const int64_t N = p.d_state;
  for (int64_t n = 0; n < N; ++n) {
    A_re[n] = -std::exp(p.A_log[d * N + n]);
    if (p.A_imag) A_im[n] = p.A_imag[d * N + n];
  }
}

template <class T>
int64_t state_width(const SelectiveScanParamsT<T>& p) {
  return p.d_state * (p.A_imag ? 2 : 1);
}

}  // namespace

template <class T>
void selective_scan_forward(const SelectiveScanParamsT<T>& p, const T* x, int64_t ldx, const T* dt, int64_t lddt,
                            const T* B, int64_t ldb, const T* C, int64_t ldc, const T* z, int64_t ldz, T* y,
                            int64_t ldy, T* state, int64_t L) {
  const int64_t N = p.d_state, S = state_width(p);
#pragma omp parallel
  {
    std::vector<T> A_re(static_cast<size_t>(N)), A_im(static_cast<size_t>(N)), h(static_cast<size_t>(S));
#pragma omp for schedule(static)
    for (int64_t d = 0; d < p.channels; ++d) {
      load_A(p, d, A_re.data(), A_im.data());
      const Channel<T> ch{N, A_re.data(), p.A_imag ? A_im.data() : nullptr, p.D[d], p.dt_bias[d]};
      T* hd = state + d * S;
      std::copy_n(hd, S, h.data());
      for (int64_t t = 0; t < L; ++t)
        y[t * ldy + d] = token(ch, h.data(), B + t * ldb, C + t * ldc, dt[t * lddt + d], x[t * ldx + d],
                               z ? z + t * ldz + d : nullptr);
      std::copy_n(h.data(), S, hd);
    }
  }
}

void selective_scan_step(const SelectiveScanParams& p, const float* x, int64_t ldx, const float* dt, int64_t lddt,
                         const float* B, int64_t ldb, const float* C, int64_t ldc, const float* z, int64_t ldz,
                         float* y, int64_t ldy, float* states, const int64_t* slots, int64_t nb) {
  const int64_t N = p.d_state, S = state_width(p);
#pragma omp parallel
  {
    std::vector<float> A_re(static_cast<size_t>(N)), A_im(static_cast<size_t>(N));
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < nb; ++b) {
      for (int64_t d = 0; d < p.channels; ++d) {
        load_A(p, d, A_re.data(), A_im.data());
        const Channel<float> ch{N, A_re.data(), p.A_imag ? A_im.data() : nullptr, p.D[d], p.dt_bias[d]};
        float* h = states + slots[b] * p.channels * S + d * S;
        y[b * ldy + d] = token(ch, h, B + b * ldb, C + b * ldc, dt[b * lddt + d], x[b * ldx + d],
                               z ? z + b * ldz + d : nullptr);
      }
    }
  }
}

template <class T>
void selective_scan_backward(const SelectiveScanParamsT<T>& p, const T* x, int64_t ldx, const T* dt, int64_t lddt,
                             const T* B, int64_t ldb, const T* C, int64_t ldc, const T* z, int64_t ldz,
                             const T* state0, const T* d_y, int64_t lddy, const T* d_state_final,
                             const SelectiveScanGradsT<T>& g, int64_t L) {
  const int64_t N = p.d_state, S = state_width(p), bw = S, Dc = p.channels;
  const int64_t blocks = (Dc + kChannelBlock - 1) / kChannelBlock;
  const bool cplx = p.A_imag != nullptr;
  // Per channel block: its partial dB and dC, (L, bw) each.
  std::vector<T> part_B(size_t(blocks * L * bw)), part_C(size_t(blocks * L * bw));
#pragma omp parallel
  {
    std::vector<T> A_re(static_cast<size_t>(N)), A_im(static_cast<size_t>(N)), dA_re(static_cast<size_t>(N)),
        dA_im(static_cast<size_t>(N)), hs(static_cast<size_t>((L + 1) * S)), gh(static_cast<size_t>(S)),
        delta(static_cast<size_t>(L)), ypre(static_cast<size_t>(L));
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      T* pB = part_B.data() + blk * L * bw;
      T* pC = part_C.data() + blk * L * bw;
      std::fill(pB, pB + L * bw, T(0));
      std::fill(pC, pC + L * bw, T(0));
      for (int64_t d = blk * kChannelBlock; d < std::min(Dc, (blk + 1) * kChannelBlock); ++d) {
        load_A(p, d, A_re.data(), A_im.data());
        const Channel<T> ch{N, A_re.data(), cplx ? A_im.data() : nullptr, p.D[d], p.dt_bias[d]};
        // Forward again, keeping every state: hs[t + 1] = h_t, hs[0] the initial state.
        if (state0)
          std::copy_n(state0 + d * S, S, hs.data());
        else
          std::fill_n(hs.data(), S, T(0));
        for (int64_t t = 0; t < L; ++t) {
          std::copy_n(hs.data() + t * S, S, hs.data() + (t + 1) * S);
          delta[size_t(t)] = dt_activation(dt[t * lddt + d], ch.bias, T(0), T(INFINITY));
          ypre[size_t(t)] = ungated_token(ch, hs.data() + (t + 1) * S, B + t * ldb, C + t * ldc, delta[size_t(t)],
                                          x[t * ldx + d]);
        }
        if (d_state_final)
          std::copy_n(d_state_final + d * S, S, gh.data());
        else
          std::fill(gh.begin(), gh.end(), T(0));
        std::fill(dA_re.begin(), dA_re.end(), T(0));
        std::fill(dA_im.begin(), dA_im.end(), T(0));
        T dD = 0, dbias = 0;
        for (int64_t t = L - 1; t >= 0; --t) {
          const T xt = x[t * ldx + d], dl = delta[size_t(t)], dx = dl * xt;
          T gy = d_y[t * lddy + d];
          if (z) {
            const T zt = z[t * ldz + d];
            g.d_z[t * g.lddz + d] = gy * ypre[size_t(t)] * silu_grad(zt);
            gy = gy * silu(zt);
          }
          const T* h = hs.data() + (t + 1) * S;
          const T* hp = hs.data() + t * S;
          const T* Bt = B + t * ldb;
          const T* Ct = C + t * ldc;
          T* dBt = pB + t * bw;
          T* dCt = pC + t * bw;
          dD += gy * xt;
          T sum_gB = 0, d_delta = 0;
          if (!cplx) {
            for (int64_t n = 0; n < N; ++n) {
              dCt[n] += gy * h[n];
              const T gn = gh[size_t(n)] + gy * Ct[n];
              const T a = exp_nonpos(dl * A_re[size_t(n)]);
              dBt[n] += gn * dx;
              sum_gB += gn * Bt[n];
              const T da = gn * hp[n];
              d_delta += da * a * A_re[size_t(n)];
              dA_re[size_t(n)] += dl * da * a;
              gh[size_t(n)] = a * gn;
            }
          } else {
            for (int64_t n = 0; n < N; ++n) {
              dCt[2 * n] += T(2) * gy * h[2 * n];
              dCt[2 * n + 1] -= T(2) * gy * h[2 * n + 1];
              const T gr = gh[size_t(2 * n)] + T(2) * gy * Ct[2 * n];
              const T gi = gh[size_t(2 * n + 1)] - T(2) * gy * Ct[2 * n + 1];
              T er, ei;
              complex_decay(dl, A_re[size_t(n)], A_im[size_t(n)], er, ei);
              dBt[2 * n] += gr * dx;
              dBt[2 * n + 1] += gi * dx;
              sum_gB += gr * Bt[2 * n] + gi * Bt[2 * n + 1];
              const T hpr = hp[2 * n], hpi = hp[2 * n + 1];
              const T dEr = gr * hpr + gi * hpi, dEi = gi * hpr - gr * hpi;
              const T ar = A_re[size_t(n)], ai = A_im[size_t(n)];
              d_delta += dEr * (ar * er - ai * ei) + dEi * (ar * ei + ai * er);
              dA_re[size_t(n)] += dl * (dEr * er + dEi * ei);
              dA_im[size_t(n)] += dl * (dEi * er - dEr * ei);
              gh[size_t(2 * n)] = gr * er + gi * ei;
              gh[size_t(2 * n + 1)] = gi * er - gr * ei;
            }
          }
          g.d_x[t * g.lddx + d] = gy * ch.D + dl * sum_gB;
          d_delta += xt * sum_gB;
          const T d_raw = d_delta * dt_activation_grad(dt[t * lddt + d], ch.bias, T(0), T(INFINITY));
          g.d_dt[t * g.lddt + d] = d_raw;
          dbias += d_raw;
        }
        if (g.d_state0) std::copy(gh.begin(), gh.end(), g.d_state0 + d * S);
        for (int64_t n = 0; n < N; ++n) {
          g.d_A_log[d * N + n] += dA_re[size_t(n)] * A_re[size_t(n)];
          if (cplx) g.d_A_imag[d * N + n] += dA_im[size_t(n)];
        }
        g.d_D[d] += dD;
        g.d_dt_bias[d] += dbias;
      }
    }
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
