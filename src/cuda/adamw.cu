// The optimiser's kernels on the GPU: the AdamW update of all parameters in one launch (the CPU
// kernel's arithmetic, element by element; mixed precision's compute copies written in the same
// pass, which saved a cast kernel a matrix, ~49 a 130m step), the sum of squares behind
// global-norm clipping (the CPU's fixed blocks of 2¹⁴ elements, each reduced in a fixed tree in
// double, the blocks' sums added in order on the host), and scaling in place. Both multi-tensor
// kernels find their tensor from the block index in a table uploaded once a call.
#include <cstring>
#include <vector>

#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "cuda/runtime.h"

namespace mamba2::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kSumBlock = int64_t(1) << 14;

// The tensor of block b: the last i with starts[i] ≤ b.
__device__ int64_t tensor_of(const int64_t* starts, int64_t count, int64_t b) {
  int64_t lo = 0, hi = count - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (starts[mid] <= b) lo = mid; else hi = mid - 1;
  }
  return lo;
}

constexpr int64_t kAdamBlock = 8 * kThreads;  // elements a block of the update

__global__ void adamw_many_kernel(const AdamWTensor* ts, const int64_t* starts, int64_t count, AdamWScalars s) {
  const int64_t b = blockIdx.x, k = tensor_of(starts, count, b);
  const AdamWTensor t = ts[k];
  const float decay = t.decays ? s.decay : 1.0f;
  const int64_t from = (b - starts[k]) * kAdamBlock, to = min(t.n, from + kAdamBlock);
  for (int64_t i = from + threadIdx.x; i < to; i += kThreads) {
    const float g = t.grad[i] * s.grad_scale;
    const float mi = s.beta1 * t.m[i] + s.one_minus_beta1 * g;
    const float vi = s.beta2 * t.v[i] + s.one_minus_beta2 * g * g;
    t.m[i] = mi;
    t.v[i] = vi;
    const float p = t.param[i] * decay - s.step_size * mi / (sqrtf(vi) * s.inv_sqrt_bc2 + s.eps);
    t.param[i] = p;
    if (t.copy) store_f32(t.copy, t.copy_dtype, i, p);
  }
}

// Block b: block j of tensor i (tensor_of).
__global__ void sum_squares_many_kernel(const float* const* xs, const int64_t* sizes, const int64_t* starts,
                                        int64_t count, double* partial) {
  const int64_t b = blockIdx.x, i = tensor_of(starts, count, b);
  const float* x = xs[i];
  const int64_t from = (b - starts[i]) * kSumBlock, to = min(sizes[i], from + kSumBlock);
  double s = 0.0;
  for (int64_t j = from + threadIdx.x; j < to; j += kThreads) s += double(x[j]) * double(x[j]);
  s = block_sum<kThreads, double>(s);
  if (threadIdx.x == 0) partial[b] = s;
}

__global__ void scale_kernel(float* x, int64_t n, float s) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i < n) x[i] *= s;
}

}  // namespace

void adamw_step_many(const AdamWTensor* tensors, int64_t count, const AdamWScalars& s) {
  std::vector<int64_t> starts{0};
  for (int64_t i = 0; i < count; ++i) starts.push_back(starts.back() + ceil_div(tensors[i].n, kAdamBlock));
  const int64_t blocks = starts.back();
  if (blocks == 0) return;
  const size_t table = size_t(count) * sizeof(AdamWTensor);
  std::vector<char> host(table + starts.size() * sizeof(int64_t));
  std::memcpy(host.data(), tensors, table);
  std::memcpy(host.data() + table, starts.data(), starts.size() * sizeof(int64_t));
  auto dev = allocate(host.size(), "adamw table");
  char* base = static_cast<char*>(dev.get());
  copy_to_device(base, host.data(), host.size());
  adamw_many_kernel<<<unsigned(blocks), kThreads, 0, stream()>>>(
      reinterpret_cast<const AdamWTensor*>(base), reinterpret_cast<const int64_t*>(base + table), count, s);
  check_launch("adamw");
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
