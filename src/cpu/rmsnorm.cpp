// RMSNorm with the residual add, and the gated grouped RMSNorm of the mixer output; forward and
// backward. Parameter gradients ACCUMULATE (+=), activation gradients OVERWRITE (the residual
// gradient is updated in place: see add_rmsnorm_backward in kernels.h).
//
// With r the normed row (d channels), s = 1/sqrt(mean(r²) + eps) and out = r·s·w:
//   d_r = s·(d_out∘w) - r·s³·Σ(d_out∘w∘r)/d,    d_w += Σ_rows d_out∘r·s
// The weight gradients are summed over rows by column bands in row order, in double.
#include <cmath>
#include <vector>

#include "cpu/common.h"
#include "cpu/kernels.h"

namespace mamba2::cpu {

namespace {
constexpr int64_t kColumnBand = 64;  // columns a thread sums the weight gradient of
}

template <class T>
void add_rmsnorm_forward(const T* residual, const T* h, T* sum, const T* w, T* out, int64_t n, int64_t d, T eps) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    const T* r0 = residual + t * d;
    T* r = sum + t * d;
    if (h) {
      const T* ht = h + t * d;
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) r[i] = r0[i] + ht[i];
    } else if (r != r0) {
      std::copy(r0, r0 + d, r);
    }
    T ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < d; ++i) ss += r[i] * r[i];
    const T scale = T(1) / std::sqrt(ss / T(d) + eps);
    T* o = out + t * d;
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) o[i] = r[i] * scale * w[i];
  }
}

template <class T>
void add_rmsnorm_backward(const T* residual, const T* w, const T* d_out, T* d_residual, T* d_w, int64_t n, int64_t d,
                          T eps) {
  std::vector<T> rstd(static_cast<size_t>(n));
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    const T* r = residual + t * d;
    const T* go = d_out + t * d;
    T* dr = d_residual + t * d;
    T ss = 0, dot = 0;
#pragma omp simd reduction(+ : ss, dot)
    for (int64_t i = 0; i < d; ++i) {
      ss += r[i] * r[i];
      dot += go[i] * w[i] * r[i];
    }
    const T s = T(1) / std::sqrt(ss / T(d) + eps);
    rstd[size_t(t)] = s;
    const T k = s * s * s * dot / T(d);
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) dr[i] += s * go[i] * w[i] - r[i] * k;
  }
#pragma omp parallel for schedule(static)
  for (int64_t c0 = 0; c0 < d; c0 += kColumnBand) {
    const int64_t c1 = std::min(d, c0 + kColumnBand);
    double acc[kColumnBand] = {};
    for (int64_t t = 0; t < n; ++t) {
      const T* r = residual + t * d;
      const T* go = d_out + t * d;
      const double s = double(rstd[size_t(t)]);
      for (int64_t c = c0; c < c1; ++c) acc[c - c0] += double(go[c]) * double(r[c]) * s;
    }
    for (int64_t c = c0; c < c1; ++c) d_w[c] += T(acc[c - c0]);
  }
}

template <class T>
void gated_rmsnorm_forward(const T* y, int64_t ldy, const T* z, int64_t ldz, const T* w, T* out, int64_t ldo,
                           int64_t n, int64_t d, int64_t ngroups, T eps) {
  const int64_t gs = d / ngroups;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    const T* yt = y + t * ldy;
    const T* zt = z + t * ldz;
    T* o = out + t * ldo;
    for (int64_t g = 0; g < ngroups; ++g) {
      const int64_t c0 = g * gs;
      T ss = 0;
#pragma omp simd reduction(+ : ss)
      for (int64_t i = c0; i < c0 + gs; ++i) {
        const T v = yt[i] * silu(zt[i]);
        o[i] = v;
        ss += v * v;
      }
      const T scale = T(1) / std::sqrt(ss / T(gs) + eps);
#pragma omp simd
      for (int64_t i = c0; i < c0 + gs; ++i) o[i] = o[i] * scale * w[i];
    }
  }
}

// v = y∘silu(z) is normed per group as above; then d_y = d_v∘silu(z), d_z = d_v∘y∘silu'(z).
template <class T>
void gated_rmsnorm_backward(const T* y, int64_t ldy, const T* z, int64_t ldz, const T* w, const T* d_out,
                            int64_t ldd, T* d_y, int64_t lddy, T* d_z, int64_t lddz, T* d_w, int64_t n, int64_t d,
                            int64_t ngroups, T eps) {
  const int64_t gs = d / ngroups;
  std::vector<T> rstd(static_cast<size_t>(n * ngroups));
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    const T* yt = y + t * ldy;
    const T* zt = z + t * ldz;
    const T* go = d_out + t * ldd;
    T* dy = d_y + t * lddy;
    T* dz = d_z + t * lddz;
    for (int64_t g = 0; g < ngroups; ++g) {
      const int64_t c0 = g * gs;
      T ss = 0, dot = 0;
#pragma omp simd reduction(+ : ss, dot)
      for (int64_t i = c0; i < c0 + gs; ++i) {
        const T v = yt[i] * silu(zt[i]);
        ss += v * v;
        dot += go[i] * w[i] * v;
      }
      const T s = T(1) / std::sqrt(ss / T(gs) + eps);
      rstd[size_t(t * ngroups + g)] = s;
      const T k = s * s * s * dot / T(gs);
#pragma omp simd
      for (int64_t i = c0; i < c0 + gs; ++i) {
        const T sz = silu(zt[i]);
        const T dv = s * go[i] * w[i] - yt[i] * sz * k;
        dy[i] = dv * sz;
        dz[i] = dv * yt[i] * silu_grad(zt[i]);
      }
    }
  }
#pragma omp parallel for schedule(static)
  for (int64_t c0 = 0; c0 < d; c0 += kColumnBand) {
    const int64_t c1 = std::min(d, c0 + kColumnBand);
    double acc[kColumnBand] = {};
    for (int64_t t = 0; t < n; ++t) {
      const T* yt = y + t * ldy;
      const T* zt = z + t * ldz;
      const T* go = d_out + t * ldd;
      for (int64_t c = c0; c < c1; ++c)
        acc[c - c0] += double(go[c]) * double(yt[c] * silu(zt[c])) * double(rstd[size_t(t * ngroups + c / gs)]);
    }
    for (int64_t c = c0; c < c1; ++c) d_w[c] += T(acc[c - c0]);
  }
}

#define MAMBA2_INSTANTIATE(T)                                                                                       \
  template void add_rmsnorm_forward<T>(const T*, const T*, T*, const T*, T*, int64_t, int64_t, T);              \
  template void add_rmsnorm_backward<T>(const T*, const T*, const T*, T*, T*, int64_t, int64_t, T);               \
  template void gated_rmsnorm_forward<T>(const T*, int64_t, const T*, int64_t, const T*, T*, int64_t, int64_t,     \
                                         int64_t, int64_t, T);                                                    \
  template void gated_rmsnorm_backward<T>(const T*, int64_t, const T*, int64_t, const T*, const T*, int64_t, T*,  \
                                          int64_t, T*, int64_t, T*, int64_t, int64_t, int64_t, T);
MAMBA2_INSTANTIATE(float)
MAMBA2_INSTANTIATE(double)
#undef MAMBA2_INSTANTIATE

}  // namespace mamba2::cpu
