// The optimiser's kernels on the GPU: one AdamW update (the CPU kernel's arithmetic, element by
// element), the sum of squares behind global-norm clipping (the CPU's fixed blocks of 2¹⁴
// elements, each reduced in a fixed tree in double, the blocks' sums added in order on the host),
// and scaling in place.
#include <cstring>
#include <vector>

#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "cuda/runtime.h"

namespace mamba2::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kSumBlock = int64_t(1) << 14;

__global__ void adamw_kernel(float* param, const float* grad, float* m, float* v, int64_t n, AdamWScalars s) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= n) return;
  const float g = grad[i] * s.grad_scale;
  const float mi = s.beta1 * m[i] + s.one_minus_beta1 * g;
  const float vi = s.beta2 * v[i] + s.one_minus_beta2 * g * g;
  m[i] = mi;
  v[i] = vi;
  param[i] = param[i] * s.decay - s.step_size * mi / (sqrtf(vi) * s.inv_sqrt_bc2 + s.eps);
}

__global__ void sum_squares_kernel(const float* x, int64_t n, double* partial) {
  const int64_t lo = int64_t(blockIdx.x) * kSumBlock, hi = min(n, lo + kSumBlock);
  double s = 0.0;
  for (int64_t i = lo + threadIdx.x; i < hi; i += kThreads) s += double(x[i]) * double(x[i]);
  s = block_sum<kThreads, double>(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// Block b: block j of tensor i, where starts[i] ≤ b < starts[i + 1] (binary search).
__global__ void sum_squares_many_kernel(const float* const* xs, const int64_t* sizes, const int64_t* starts,
                                        int64_t count, double* partial) {
  const int64_t b = blockIdx.x;
  int64_t lo = 0, hi = count - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (starts[mid] <= b) lo = mid; else hi = mid - 1;
  }
  const float* x = xs[lo];
  const int64_t from = (b - starts[lo]) * kSumBlock, to = min(sizes[lo], from + kSumBlock);
  double s = 0.0;
  for (int64_t i = from + threadIdx.x; i < to; i += kThreads) s += double(x[i]) * double(x[i]);
  s = block_sum<kThreads, double>(s);
  if (threadIdx.x == 0) partial[b] = s;
}

__global__ void scale_kernel(float* x, int64_t n, float s) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i < n) x[i] *= s;
}

}  // namespace

void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n, const AdamWScalars& s) {
  if (n == 0) return;
  adamw_kernel<<<unsigned(ceil_div(n, kThreads)), kThreads, 0, stream()>>>(param, grad, m, v, n, s);
  check_launch("adamw");
}

double sum_squares(const float* x, int64_t n) {
  if (n == 0) return 0.0;
  const int64_t blocks = ceil_div(n, kSumBlock);
  auto dev = allocate(size_t(blocks) * sizeof(double), "sum_squares partials");
  sum_squares_kernel<<<unsigned(blocks), kThreads, 0, stream()>>>(x, n, static_cast<double*>(dev.get()));
  check_launch("sum_squares");
  return host_sum(static_cast<const double*>(dev.get()), blocks);
}

double sum_squares_many(const float* const* xs, const int64_t* sizes, int64_t count) {
  std::vector<int64_t> starts{0};
  for (int64_t i = 0; i < count; ++i) starts.push_back(starts.back() + ceil_div(sizes[i], kSumBlock));
  const int64_t blocks = starts.back();
  if (blocks == 0) return 0.0;
  // One upload: the pointers, the sizes and the block starts, then the partials' room.
  const size_t table = size_t(count) * (sizeof(float*) + sizeof(int64_t)) + starts.size() * sizeof(int64_t);
  std::vector<char> host(table);
  std::memcpy(host.data(), xs, size_t(count) * sizeof(float*));
  std::memcpy(host.data() + count * sizeof(float*), sizes, size_t(count) * sizeof(int64_t));
  std::memcpy(host.data() + count * (sizeof(float*) + sizeof(int64_t)), starts.data(), starts.size() * sizeof(int64_t));
  auto dev = allocate(table + size_t(blocks) * sizeof(double), "sum_squares partials");
  char* base = static_cast<char*>(dev.get());
  copy_to_device(base, host.data(), table);
  double* partial = reinterpret_cast<double*>(base + table);
  sum_squares_many_kernel<<<unsigned(blocks), kThreads, 0, stream()>>>(
      reinterpret_cast<const float* const*>(base), reinterpret_cast<const int64_t*>(base + count * sizeof(float*)),
      reinterpret_cast<const int64_t*>(base + count * (sizeof(float*) + sizeof(int64_t))), count, partial);
  check_launch("sum_squares");
  return host_sum(partial, blocks);
}

void scale_inplace(float* x, int64_t n, float s) {
  if (n == 0) return;
  scale_kernel<<<unsigned(ceil_div(n, kThreads)), kThreads, 0, stream()>>>(x, n, s);
  check_launch("scale");
}

}  // namespace mamba2::cuda
