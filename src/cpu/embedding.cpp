#include <cstring>

#include "cpu/kernels.h"

namespace mamba2::cpu {

void embedding_forward(const float* table, int64_t d, const int32_t* ids, int64_t n, float* out) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) std::memcpy(out + t * d, table + int64_t(ids[t]) * d, size_t(d) * sizeof(float));
}

}  // namespace mamba2::cpu
