// The optimiser's kernels: one AdamW update of a parameter tensor (as torch.optim.AdamW, decoupled
// weight decay, bias-corrected moments), the sum of squares behind global-norm clipping, and the
// scaling that weights accumulated gradients.
// Elementwise, so every element gets the same arithmetic whatever the thread count.
#include <cmath>
#include <vector>

#include "cpu/kernels.h"

namespace mamba2::cpu {

// p ← p·decay; m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²; p ← p − step_size · m / (sqrt(v)·inv_sqrt_bc2 + eps)
template <class T>
void adamw_step(T* param, const T* grad, T* m, T* v, int64_t n, const AdamWScalars<T>& s) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T g = grad[i] * s.grad_scale;
    const T mi = s.beta1 * m[i] + s.one_minus_beta1 * g;
    const T vi = s.beta2 * v[i] + s.one_minus_beta2 * g * g;
    m[i] = mi;
    v[i] = vi;
    param[i] = param[i] * s.decay - s.step_size * mi / (std::sqrt(vi) * s.inv_sqrt_bc2 + s.eps);
  }
}

// Fixed blocks summed in order: the result does not depend on the number of threads.
template <class T>
double sum_squares(const T* x, int64_t n) {
  constexpr int64_t kBlock = int64_t(1) << 14;
  const int64_t nblocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(size_t(nblocks), 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t lo = b * kBlock, hi = std::min(n, lo + kBlock);
    double s = 0.0;
    for (int64_t i = lo; i < hi; ++i) s += double(x[i]) * double(x[i]);
    partial[size_t(b)] = s;
  }
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

template <class T>
void scale_inplace(T* x, int64_t n, T s) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

template void adamw_step<float>(float*, const float*, float*, float*, int64_t, const AdamWScalars<float>&);
template void adamw_step<double>(double*, const double*, double*, double*, int64_t, const AdamWScalars<double>&);
template double sum_squares<float>(const float*, int64_t);
template double sum_squares<double>(const double*, int64_t);
template void scale_inplace<float>(float*, int64_t, float);
template void scale_inplace<double>(double*, int64_t, double);

}  // namespace mamba2::cpu
