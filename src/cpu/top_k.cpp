// Sampling's candidates under top-k (ops::top_k): the columns whose value / temperature is at
// least the k-th largest such quotient, in column order. The oracle of the GPU kernel.
#include <algorithm>
#include <functional>
#include <vector>

#include "cpu/kernels.h"

namespace mamba2::cpu {

void top_k_rows(const float* x, int64_t ld, int64_t n, int64_t cols, const int32_t* k, const float* temperature,
                int64_t cap, int32_t* ids, float* values, int32_t* counts) {
  // Rows in parallel: each row's result is its own, whatever the thread count.
#pragma omp parallel for schedule(dynamic)
  for (int64_t r = 0; r < n; ++r) {
    thread_local std::vector<float> q, sorted;
    q.resize(size_t(cols));
    const float* row = x + r * ld;
    for (int64_t c = 0; c < cols; ++c) q[size_t(c)] = row[c] / temperature[r];
    sorted = q;
    std::nth_element(sorted.begin(), sorted.begin() + (k[r] - 1), sorted.end(), std::greater<float>());
    const float floor = sorted[size_t(k[r] - 1)];
    int64_t count = 0;
    for (int64_t c = 0; c < cols; ++c) {
      if (!(q[size_t(c)] >= floor)) continue;
      if (count < cap) {
        ids[r * cap + count] = int32_t(c);
        values[r * cap + count] = row[c];
      }
      ++count;
    }
    counts[r] = count <= cap ? int32_t(count) : -1;
  }
}

}  // namespace mamba2::cpu
