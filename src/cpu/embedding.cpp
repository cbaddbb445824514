// Embedding lookup and its backward, a scatter-add into the table's gradient (the tied head adds
// its own part to the same tensor). Parameter gradients accumulate (+=).
#include <algorithm>
#include <cstring>

#include "core/dtype.h"
#include "cpu/kernels.h"

namespace mamba2::cpu {

template <class T>
void embedding_forward(const T* table, int64_t d, const int32_t* ids, int64_t n, T* out) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) std::memcpy(out + t * d, table + int64_t(ids[t]) * d, size_t(d) * sizeof(T));
}

// A bf16, Q8_0 or Q4_0 table: each looked-up row widened as convert_to_f32 widens it.
void embedding_forward_narrow(DType dtype, const void* table, int64_t d, const int32_t* ids, int64_t n, float* out) {
  const size_t row_bytes = dtype_bytes(dtype, size_t(d));
  const auto* bytes = static_cast<const unsigned char*>(table);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) convert_to_f32(dtype, bytes + size_t(ids[t]) * row_bytes, out + t * d, size_t(d));
}

// Threads own column bands, so repeated ids never race and every sum runs in token order.
template <class T>
void embedding_backward(const int32_t* ids, int64_t n, const T* d_out, T* d_table, int64_t d) {
  constexpr int64_t kBand = 64;
#pragma omp parallel for schedule(static)
  for (int64_t c0 = 0; c0 < d; c0 += kBand) {
    const int64_t c1 = std::min(d, c0 + kBand);
    for (int64_t t = 0; t < n; ++t) {
      const T* g = d_out + t * d;
      T* row = d_table + int64_t(ids[t]) * d;
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) row[c] += g[c];
    }
  }
}

template void embedding_forward<float>(const float*, int64_t, const int32_t*, int64_t, float*);
template void embedding_forward<double>(const double*, int64_t, const int32_t*, int64_t, double*);
template void embedding_backward<float>(const int32_t*, int64_t, const float*, float*, int64_t);
template void embedding_backward<double>(const int32_t*, int64_t, const double*, double*, int64_t);

}  // namespace mamba2::cpu
