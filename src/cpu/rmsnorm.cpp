#include <cmath>

#include "cpu/common.h"
#include "cpu/kernels.h"

namespace mamba2::cpu {

void add_rmsnorm_forward(float* residual, const float* h, const float* w, float* out, int64_t n, int64_t d,
                         float eps) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    float* r = residual + t * d;
    if (h) {
      const float* ht = h + t * d;
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) r[i] += ht[i];
    }
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < d; ++i) ss += r[i] * r[i];
    const float scale = 1.0f / std::sqrt(ss / float(d) + eps);
    float* o = out + t * d;
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) o[i] = r[i] * scale * w[i];
  }
}

void gated_rmsnorm_forward(const float* y, int64_t ldy, const float* z, int64_t ldz, const float* w, float* out,
                           int64_t ldo, int64_t n, int64_t d, int64_t ngroups, float eps) {
  const int64_t gs = d / ngroups;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    const float* yt = y + t * ldy;
    const float* zt = z + t * ldz;
    float* o = out + t * ldo;
    for (int64_t g = 0; g < ngroups; ++g) {
      const int64_t c0 = g * gs;
      float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
      for (int64_t i = c0; i < c0 + gs; ++i) {
        const float v = yt[i] * silu(zt[i]);
        o[i] = v;
        ss += v * v;
      }
      const float scale = 1.0f / std::sqrt(ss / float(gs) + eps);
#pragma omp simd
      for (int64_t i = c0; i < c0 + gs; ++i) o[i] = o[i] * scale * w[i];
    }
  }
}

}  // namespace mamba2::cpu
