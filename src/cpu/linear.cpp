#include <cblas.h>

#include <cstring>

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

// y[i, r0..r0+R) for rows i0..i0+MI of x: R×MI accumulators stay in registers while W's rows
// stream through once.
template <int R, int MI>
void block(const float* x, int64_t ldx, const float* W, float* y, int64_t ldy, int64_t r0, int64_t k) {
  v16 acc[R][MI] = {};
  int64_t j = 0;
  for (; j + 16 <= k; j += 16) {
    v16 xv[MI];
    for (int i = 0; i < MI; ++i) xv[i] = load16(x + i * ldx + j);
    for (int r = 0; r < R; ++r) {
      const v16 wv = load16(W + (r0 + r) * k + j);
      for (int i = 0; i < MI; ++i) acc[r][i] += wv * xv[i];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int i = 0; i < MI; ++i) {
      float s = hsum(acc[r][i]);
      for (int64_t jj = j; jj < k; ++jj) s += W[(r0 + r) * k + jj] * x[i * ldx + jj];
      y[i * ldy + r0 + r] = s;
    }
  }
}

template <int MI>
void rows_band(const float* x, int64_t ldx, const float* W, float* y, int64_t ldy, int64_t r_begin, int64_t r_end,
               int64_t k) {
  int64_t r = r_begin;
  for (; r + 4 <= r_end; r += 4) block<4, MI>(x, ldx, W, y, ldy, r, k);
  for (; r < r_end; ++r) block<1, MI>(x, ldx, W, y, ldy, r, k);
}

// Few rows of x (decode): bound by reading W once. Each thread streams a band of W's rows.
void linear_few_rows(const float* x, int64_t ldx, const float* W, float* y, int64_t ldy, int64_t m, int64_t n,
                     int64_t k) {
  constexpr int64_t kBand = 64;
#pragma omp parallel for schedule(static)
  for (int64_t b0 = 0; b0 < n; b0 += kBand) {
    const int64_t b1 = b0 + kBand < n ? b0 + kBand : n;
    int64_t i = 0;
    for (; i + 4 <= m; i += 4) rows_band<4>(x + i * ldx, ldx, W, y + i * ldy, ldy, b0, b1, k);
    for (; i + 2 <= m; i += 2) rows_band<2>(x + i * ldx, ldx, W, y + i * ldy, ldy, b0, b1, k);
    for (; i < m; ++i) rows_band<1>(x + i * ldx, ldx, W, y + i * ldy, ldy, b0, b1, k);
  }
}

}  // namespace

void linear_forward(const float* x, int64_t ldx, const float* W, float* y, int64_t ldy, int64_t m, int64_t n,
                    int64_t k) {
  if (m == 0 || n == 0) return;
  if (m <= 8) {
    linear_few_rows(x, ldx, W, y, ldy, m, n, k);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(m), int(n), int(k), 1.0f, x, int(ldx), W, int(k), 0.0f, y,
              int(ldy));
}

}  // namespace mamba2::cpu
