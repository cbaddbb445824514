// The last step of the parameter gradients' sums over rows (common.cuh, kGradRows): the chunks'
// double partials added in chunk order, the total rounded once and added to the gradient; and
// the host's ordered sum of a few device doubles (losses, sums of squares).
#include <vector>

#include "cuda/common.cuh"
#include "cuda/runtime.h"

namespace mamba2::cuda {

namespace {

__global__ void add_column_partials_kernel(const double* __restrict__ partial, int64_t ld, int64_t chunks, int64_t cols,
                                           float* __restrict__ grad) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  // kBatch loads in flight before their (ordered) adds: a column's chunks are a dependent chain
  // of adds, and one load at a time left a few-column launch waiting on memory for each.
  constexpr int kBatch = 16;
  double s = 0.0;
  int64_t i = 0;
  for (; i + kBatch <= chunks; i += kBatch) {
    double v[kBatch];
#pragma unroll
    for (int j = 0; j < kBatch; ++j) v[j] = partial[(i + j) * ld + c];
#pragma unroll
    for (int j = 0; j < kBatch; ++j) s += v[j];
  }
  for (; i < chunks; ++i) s += partial[i * ld + c];
  grad[c] += float(s);
}

}  // namespace

double host_sum(const double* values, int64_t n) {
  std::vector<double> v(static_cast<size_t>(n));
  copy_to_host(v.data(), values, v.size() * sizeof(double));
  double total = 0.0;
  for (double x : v) total += x;
  return total;
}

void add_column_partials(const double* partial, int64_t ld, int64_t chunks, int64_t cols, float* grad,
                         const char* op) {
  if (cols == 0) return;
  constexpr int kThreads = 256;
  add_column_partials_kernel<<<unsigned(ceil_div(cols, kThreads)), kThreads, 0, stream()>>>(partial, ld, chunks,
                                                                                           cols, grad);
  check_launch(op);
}

}  // namespace mamba2::cuda
