// Softmax cross-entropy on the GPU, forward and backward fused, a block per row as the CPU kernel
// takes a row: the row max subtracted before every exp (all arguments ≤ 0), the exp-sum in double
// in a fixed order, the gradient scale·(softmax − onehot) written over the logits or beside them.
// The rows' losses are added on the host in row order. A row that fits in shared memory (a 50k
// vocabulary's does) is read from memory once, by a block of kRowThreads that then has the SM to
// itself; a longer one is read three times (max, sum, gradient) by a block of kThreads.
#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "cuda/runtime.h"

namespace mamba2::cuda {

namespace {

constexpr int kThreads = 256, kRowThreads = 1024;

template <int NT>
__device__ float block_max(float v) {
  __shared__ float partial[NT / 32];
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
  __syncthreads();
  float m = partial[0];
  for (int w = 1; w < NT / 32; ++w) m = fmaxf(m, partial[w]);
  __syncthreads();
  return m;
}

// The row copied into shared memory on its one read; everything after reads it there, so the
// gradient may overwrite the logits freely.
template <class D>
__global__ void __launch_bounds__(kRowThreads) cross_entropy_row_kernel(const float* logits, int64_t ldl,
                                                                        const int32_t* targets, int64_t V,
                                                                        D* d_logits, int64_t lddl, float scale,
                                                                        double* row_loss) {
  extern __shared__ float row[];
  const int64_t r = blockIdx.x;
  const float* l = logits + r * ldl;
  float mx = -INFINITY;
#pragma unroll 8
  for (int64_t v = threadIdx.x; v < V; v += kRowThreads) {
    const float x = l[v];
    row[v] = x;
    mx = fmaxf(mx, x);
  }
  mx = block_max<kRowThreads>(mx);  // its barrier also makes the row visible
  double sum = 0.0;
  for (int64_t v = threadIdx.x; v < V; v += kRowThreads) sum += double(expf(row[v] - mx));
  sum = block_sum<kRowThreads, double>(sum);
  const double lse = double(mx) + log(sum);
  const int32_t target = targets[r];
  if (threadIdx.x == 0) row_loss[r] = lse - double(row[target]);
  if (!d_logits) return;
  D* d = d_logits + r * lddl;
  for (int64_t v = threadIdx.x; v < V; v += kRowThreads) {
    float g = scale * expf(float(double(row[v]) - lse));
    if (v == target) g -= scale;
    store_f32(d + v, g);
  }
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
  mx = block_max<kThreads>(mx);
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
  int device = 0, smem_max = 0;
  check(cudaGetDevice(&device), "cross_entropy");
  check(cudaDeviceGetAttribute(&smem_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "cross_entropy");
  const size_t row_bytes = size_t(V) * sizeof(float);
  const bool fits = row_bytes + 1024 <= size_t(smem_max);  // 1 KiB left for the reductions' partials
  with_dtype(d_dtype, "cross_entropy", [&](auto* tag) {
    using D = std::remove_pointer_t<decltype(tag)>;
    const auto* tg = static_cast<const int32_t*>(dev_targets.get());
    auto* loss = static_cast<double*>(losses.get());
    if (fits) {
      check(cudaFuncSetAttribute(cross_entropy_row_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 int(row_bytes)),
            "cross_entropy");
      cross_entropy_row_kernel<D><<<unsigned(n), kRowThreads, row_bytes, stream()>>>(
          logits, ldl, tg, V, static_cast<D*>(d_logits), lddl, scale, loss);
    } else {
      cross_entropy_kernel<D><<<unsigned(n), kThreads, 0, stream()>>>(logits, ldl, tg, V, static_cast<D*>(d_logits),
                                                                      lddl, scale, loss);
    }
  });
  check_launch("cross_entropy");
  return host_sum(static_cast<const double*>(losses.get()), n);
}

}  // namespace mamba2::cuda
