// y = x @ Wᵀ: BLAS for many rows (templated, also the backward), a streaming kernel for decode
// (float). Backward: d_x = d_y @ W overwrites, d_W += d_yᵀ @ x accumulates.
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "cpu/blas.h"
#include "cpu/kernels.h"

namespace mamba2::cpu {

namespace {

// 16 fp32 lanes through GCC/Clang vector extensions: one AVX-512 register on x86, four NEON
// registers on arm64; the compiler picks the instructions.
typedef float v16 __attribute__((vector_size(64), aligned(4)));

inline v16 load16(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline float hsum(v16 v) {
  float s = 0.0f;
  for (int i = 0; i < 16; ++i) s += v[i];
  return s;
}

// One row of W against MI rows of x, with U independent accumulators per x row so that the FMA
// chains overlap. The row is one sequential stream, which is what the hardware prefetcher
// follows best when W comes from DRAM. U is the same for every MI, so each y element is summed
// in the same order however many rows share the call: a sequence's logits do not depend on the
// batch it decodes in.
constexpr int U = 2;
template <int MI>
void row_dot(const float* x, int64_t ldx, const float* w, float* y, int64_t ldy, int64_t k) {
  v16 acc[U][MI] = {};
  int64_t j = 0;
  for (; j + 16 * U <= k; j += 16 * U) {
    for (int u = 0; u < U; ++u) {
      const v16 wv = load16(w + j + 16 * u);
      for (int i = 0; i < MI; ++i) acc[u][i] += wv * load16(x + i * ldx + j + 16 * u);
    }
  }
  for (int i = 0; i < MI; ++i) {
    v16 total = acc[0][i];
    for (int u = 1; u < U; ++u) total += acc[u][i];
    float s = hsum(total);
    for (int64_t jj = j; jj < k; ++jj) s += w[jj] * x[i * ldx + jj];
    y[i * ldy] = s;
  }
}

template <int MI>
void rows_band(const float* x, int64_t ldx, const float* W, float* y, int64_t ldy, int64_t r_begin, int64_t r_end,
               int64_t k) {
  for (int64_t r = r_begin; r < r_end; ++r) row_dot<MI>(x, ldx, W + r * k, y + r, ldy, k);
}

// Bound by reading W once. Each thread streams a band of W's rows; the band stays in cache
// while every row of x passes over it.
void linear_rows(const float* x, int64_t ldx, const float* W, float* y, int64_t ldy, int64_t m, int64_t n,
                     int64_t k) {
  // About four bands per thread, so that many cores share even the narrow out_proj.
  const int64_t band = std::clamp<int64_t>(n / (4 * omp_get_max_threads()), 4, 64);
#pragma omp parallel for schedule(static)
  for (int64_t b0 = 0; b0 < n; b0 += band) {
    const int64_t b1 = std::min(b0 + band, n);
    int64_t i = 0;
    for (; i + 4 <= m; i += 4) rows_band<4>(x + i * ldx, ldx, W, y + i * ldy, ldy, b0, b1, k);
    for (; i + 2 <= m; i += 2) rows_band<2>(x + i * ldx, ldx, W, y + i * ldy, ldy, b0, b1, k);
    for (; i < m; ++i) rows_band<1>(x + i * ldx, ldx, W, y + i * ldy, ldy, b0, b1, k);
  }
}

}  // namespace

void linear_streaming(const float* x, int64_t ldx, const float* W, float* y, int64_t ldy, int64_t m, int64_t n,
                      int64_t k) {
  if (m > 0 && n > 0) linear_rows(x, ldx, W, y, ldy, m, n, k);
}

template <class T>
void linear_gemm(const T* x, int64_t ldx, const T* W, T* y, int64_t ldy, int64_t m, int64_t n, int64_t k) {
  if (m == 0 || n == 0) return;
  gemm(CblasNoTrans, CblasTrans, m, n, k, T(1), x, ldx, W, k, T(0), y, ldy);
}

template <class T>
void linear_backward(const T* x, int64_t ldx, const T* W, const T* d_y, int64_t lddy, T* d_x, int64_t lddx, T* d_W,
                     int64_t m, int64_t n, int64_t k) {
  if (m == 0 || k == 0) return;
  if (n == 0) {
    for (int64_t i = 0; d_x && i < m; ++i) std::fill_n(d_x + i * lddx, k, T(0));
    return;
  }
  if (d_x) gemm(CblasNoTrans, CblasNoTrans, m, k, n, T(1), d_y, lddy, W, k, T(0), d_x, lddx);
  gemm(CblasTrans, CblasNoTrans, n, k, m, T(1), d_y, lddy, x, ldx, T(1), d_W, k);
}

template void linear_gemm<float>(const float*, int64_t, const float*, float*, int64_t, int64_t, int64_t, int64_t);
template void linear_gemm<double>(const double*, int64_t, const double*, double*, int64_t, int64_t, int64_t, int64_t);
template void linear_backward<float>(const float*, int64_t, const float*, const float*, int64_t, float*, int64_t,
                                     float*, int64_t, int64_t, int64_t);
template void linear_backward<double>(const double*, int64_t, const double*, const double*, int64_t, double*, int64_t,
                                      double*, int64_t, int64_t, int64_t);

}  // namespace mamba2::cpu
