// Softmax cross-entropy on the GPU, forward and backward fused, a block per row as the CPU kernel
// takes a row: the row max subtracted before every exp (all arguments ≤ 0), the exp-sum in double
// in a fixed order, the gradient scale·(softmax − onehot) written over the logits or beside them.
// The rows' losses are added on the host in row order.
#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "cuda/runtime.h"

namespace mamba2::cuda {

namespace {

constexpr int kThreads = 256;

__device__ float block_max(float v) {
  __shared__ float partial[kThreads / 32];
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
  __syncthreads();
  float m = partial[0];
  for (int w = 1; w < kThreads / 32; ++w) m = fmaxf(m, partial[w]);
  __syncthreads();
  return m;
}

template <class D>
__global__ void cross_entropy_kernel(const float* logits, int64_t ldl, const int32_t* targets, int64_t V,
                                     D* d_logits, int64_t lddl, float scale, double* row_loss) {
  const int64_t r = blockIdx.x;
  const float* l = logits + r * ldl;
  const int32_t target = targets[r];
  const float picked = l[target];  // read before any thread overwrites the row (in place)
  float mx = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += kThreads) mx = fmaxf(mx, l[v]);
  mx = block_max(mx);
  double sum = 0.0;
  for (int64_t v = threadIdx.x; v < V; v += kThreads) sum += double(expf(l[v] - mx));
  sum = block_sum<kThreads, double>(sum);
  const double lse = double(mx) + log(sum);
  if (threadIdx.x == 0) row_loss[r] = lse - double(picked);
  if (!d_logits) return;
  D* d = d_logits + r * lddl;
  for (int64_t v = threadIdx.x; v < V; v += kThreads) {
    float g = scale * expf(float(double(l[v]) - lse));
    if (v == target) g -= scale;
    store_f32(d + v, g);
  }
}

}  // namespace

double cross_entropy(const float* logits, int64_t ldl, const int32_t* targets, int64_t n, int64_t V, void* d_logits,
                     DType d_dtype, int64_t lddl, float scale) {
  if (n == 0) return 0.0;
  auto dev_targets = allocate(size_t(n) * sizeof(int32_t), "cross_entropy targets");
  auto losses = allocate(size_t(n) * sizeof(double), "cross_entropy losses");
  copy_to_device(dev_targets.get(), targets, size_t(n) * sizeof(int32_t));
  with_dtype(d_dtype, "cross_entropy", [&](auto* tag) {
    using D = std::remove_pointer_t<decltype(tag)>;
    cross_entropy_kernel<D><<<unsigned(n), kThreads, 0, stream()>>>(
        logits, ldl, static_cast<const int32_t*>(dev_targets.get()), V, static_cast<D*>(d_logits), lddl, scale,
        static_cast<double*>(losses.get()));
  });
  check_launch("cross_entropy");
  return host_sum(static_cast<const double*>(losses.get()), n);
}

}  // namespace mamba2::cuda
