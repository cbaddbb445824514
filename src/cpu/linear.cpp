#include <cblas.h>

#include "cpu/kernels.h"

namespace mamba2::cpu {

namespace {

// Few rows (decode): the product is bound by reading W once, so each thread streams a band of
// W's rows and multiplies every row of x against it while it is in cache.
void linear_few_rows(const float* x, int64_t ldx, const float* W, float* y, int64_t ldy, int64_t m, int64_t n,
                     int64_t k) {
  constexpr int64_t kRows = 4;
#pragma omp parallel for schedule(static)
  for (int64_t r0 = 0; r0 < n; r0 += kRows) {
    const int64_t r1 = r0 + kRows < n ? r0 + kRows : n;
    for (int64_t i = 0; i < m; ++i) {
      const float* xi = x + i * ldx;
      for (int64_t r = r0; r < r1; ++r) {
        const float* w = W + r * k;
        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
        for (int64_t j = 0; j < k; ++j) acc += w[j] * xi[j];
        y[i * ldy + r] = acc;
      }
    }
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
