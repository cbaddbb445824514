// The last step of the parameter gradients' sums over rows (common.cuh, kGradRows): the chunks'
// double partials added in chunk order, the total rounded once and added to the gradient; and
// the host's ordered sum of a few device doubles (losses, sums of squares).
#include <vector>

#include "cuda/common.cuh"
#include "cuda/runtime.h"

namespace mamba2::cuda {

namespace {

// Block: 32 columns × kParts warps. Warp w adds its own contiguous part of the chunks in order
// (kBatch loads in flight before their adds), then the parts are added in warp order: a fixed
// order set by the chunk count alone. A thread a column over every chunk left a few-column launch
// (a norm's 768 weights: 3 blocks) waiting on one chain of ~256 loads.
constexpr int kParts = 8;
__global__ void add_column_partials_kernel(const double* __restrict__ partial, int64_t ld, int64_t chunks, int64_t cols,
                                           ColumnParts grads) {
  __shared__ double s_part[kParts][32];
  const int lane = threadIdx.x % 32, part = threadIdx.x / 32;
  const int64_t c = int64_t(blockIdx.x) * 32 + lane;
  const int64_t per = (chunks + kParts - 1) / kParts, i0 = part * per, i1 = min(chunks, i0 + per);
  constexpr int kBatch = 8;
  double s = 0.0;
  if (c < cols) {
    int64_t i = i0;
    for (; i + kBatch <= i1; i += kBatch) {
      double v[kBatch];
#pragma unroll
      for (int j = 0; j < kBatch; ++j) v[j] = partial[(i + j) * ld + c];
#pragma unroll
      for (int j = 0; j < kBatch; ++j) s += v[j];
    }
    for (; i < i1; ++i) s += partial[i * ld + c];
  }
  s_part[part][lane] = s;
  __syncthreads();
  if (part != 0 || c >= cols) return;
  double total = s_part[0][lane];
  for (int w = 1; w < kParts; ++w) total += s_part[w][lane];
  int k = 0;
  int64_t first = 0;  // the first column of gradient k
  while (k + 1 < grads.count && c >= first + grads.cols[k]) first += grads.cols[k++];
  grads.grad[k][c - first] += float(total);
}

}  // namespace

double host_sum(const double* values, int64_t n) {
  std::vector<double> v(static_cast<size_t>(n));
  copy_to_host(v.data(), values, v.size() * sizeof(double));
  double total = 0.0;
  for (double x : v) total += x;
  return total;
}

void add_column_partials(const double* partial, int64_t ld, int64_t chunks, const ColumnParts& parts, const char* op) {
  int64_t cols = 0;
  for (int k = 0; k < parts.count; ++k) cols += parts.cols[k];
  if (cols == 0) return;
  add_column_partials_kernel<<<unsigned(ceil_div(cols, int64_t(32))), 32 * kParts, 0, stream()>>>(partial, ld, chunks,
                                                                                                 cols, parts);
  check_launch(op);
}

void add_column_partials(const double* partial, int64_t ld, int64_t chunks, int64_t cols, float* grad,
                         const char* op) {
  ColumnParts one;
  one.count = 1, one.cols[0] = cols, one.grad[0] = grad;
  add_column_partials(partial, ld, chunks, one, op);
}

}  // namespace mamba2::cuda
