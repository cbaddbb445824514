// Greedy selection: the index of each row's largest value (the first of equal ones).
#include "cpu/kernels.h"

namespace mamba2::cpu {

void argmax_rows(const float* x, int64_t ld, int64_t n, int64_t cols, int32_t* out) {
  for (int64_t r = 0; r < n; ++r) {
    const float* row = x + r * ld;
    int64_t best = 0;
    for (int64_t i = 1; i < cols; ++i)
      if (row[i] > row[best]) best = i;
    out[r] = int32_t(best);
  }
}

}  // namespace mamba2::cpu
