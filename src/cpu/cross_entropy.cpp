// Softmax cross-entropy, forward and backward fused, one row at a time: the row max is
// subtracted before every exp (all arguments ≤ 0), the exp-sum is kept in double, and the
// gradient scale·(softmax − onehot) may overwrite the logits, so nothing beyond the logits
// themselves is materialised. The gradient is an activation gradient: it is overwritten.
#include <cmath>
#include <vector>

#include "cpu/common.h"
#include "cpu/kernels.h"

namespace mamba2::cpu {

template <class T>
double cross_entropy(const T* logits, int64_t ldl, const int32_t* targets, int64_t n, int64_t V, T* d_logits,
                     int64_t lddl, T scale) {
  std::vector<double> row_loss(static_cast<size_t>(n));
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < n; ++r) {
    const T* l = logits + r * ldl;
    T mx = l[0];
#pragma omp simd reduction(max : mx)
    for (int64_t v = 0; v < V; ++v) mx = std::max(mx, l[v]);
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t v = 0; v < V; ++v) sum += double(exp_nonpos(T(l[v] - mx)));
    const double lse = double(mx) + std::log(sum);
    row_loss[size_t(r)] = lse - double(l[targets[r]]);
    if (!d_logits) continue;
    T* d = d_logits + r * lddl;
#pragma omp simd
    for (int64_t v = 0; v < V; ++v) d[v] = scale * exp_nonpos(T(double(l[v]) - lse));
    d[targets[r]] -= scale;
  }
  double total = 0.0;
  for (double v : row_loss) total += v;
  return total;
}

template double cross_entropy<float>(const float*, int64_t, const int32_t*, int64_t, int64_t, float*, int64_t, float);
template double cross_entropy<double>(const double*, int64_t, const int32_t*, int64_t, int64_t, double*, int64_t,
                                      double);

}  // namespace mamba2::cpu
