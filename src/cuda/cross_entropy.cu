// Softmax cross-entropy on the GPU, forward and backward fused, a block per row as the CPU kernel
// takes a row: the row max subtracted before every exp (all arguments ≤ 0), the exp-sum in double
// in a fixed order, the gradient scale·(softmax − onehot) written over the logits or beside them.
// The rows' losses are added on the host in row order. A row that fits in shared memory (a 50k
// vocabulary's does) is read from memory once, by a block of kRowThreads that then has the SM to
// itself; a longer one is read three times (max, sum, gradient) by a block of kThreads.
// The per-element work is a few instructions (ncu, 2026-12-05: the kernel was issue-bound at ~56
// instructions an element): exps by the SFU (exp_nonpos: every argument is ≤ 0, and a term's
// error, |v|·2⁻²⁴ relative, is largest where the term is smallest), 32-bit indices, and no fp32 ↔
// fp64 conversion per element (they run at 16 a clock an SM): the exp-sum adds kSumRun terms (each
// ≤ 1) in fp32 before each double add, and the gradient's exponent x − lse is (x − lse_hi) − lse_lo
// with lse = lse_hi + lse_lo in fp32, within an ulp of float(double(x) − lse).
#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "cuda/runtime.h"

namespace mamba2::cuda {

namespace {

constexpr int kThreads = 256, kRowThreads = 1024, kSumRun = 8;

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

// Σ exp(l[v] − mx) over this thread's v = threadIdx.x + k·NT, k < n, and (kBounded: a row not
// padded to whole columns) v < V: kSumRun terms at a time in fp32, each run's sum added in double;
// then the block's.
template <int NT, bool kBounded>
__device__ double exp_sum(const float* l, int n, float mx, int V) {
  double sum = 0.0;
  for (int k0 = 0; k0 < n; k0 += kSumRun) {
    float run = 0.0f;
#pragma unroll
    for (int j = 0; j < kSumRun; ++j) {
      const int v = int(threadIdx.x) + (k0 + j) * NT;
      if (k0 + j < n && (!kBounded || v < V)) run += exp_nonpos(l[v] - mx);
    }
    sum += double(run);
  }
  return block_sum<NT, double>(sum);
}

// lse as an unevaluated sum of two floats, for the gradient's exponents.
struct SplitLse {
  float hi, lo;
  __device__ explicit SplitLse(double lse) : hi(float(lse)), lo(float(lse - double(hi))) {}
  __device__ float exp_minus(float x) const { return exp_nonpos((x - hi) - lo); }
};

// scale·(softmax − onehot) for this thread's v = threadIdx.x + k·NT < V.
template <int NT, class D>
__device__ void write_gradient(const float* l, int V, int target, const SplitLse& e, float scale, D* d) {
  for (int v = int(threadIdx.x); v < V; v += NT) {
    float g = scale * e.exp_minus(l[v]);
    if (v == target) g -= scale;
    store_f32(d + v, g);
  }
}

// The row copied into shared memory on its one read; everything after reads it there, so the
// gradient may overwrite the logits freely. The copy is cp.async, all of a thread's pieces issued
// at once (16 bytes each where the row allows): the whole row in flight, where loads through
// registers kept 32 KB an SM in flight and waited on DRAM latency a dozen times a row. The row is
// padded with −inf to whole kRowThreads, so every thread takes the same n elements.
template <class D>
__global__ void __launch_bounds__(kRowThreads) cross_entropy_row_kernel(const float* logits, int64_t ldl,
                                                                        const int32_t* targets, int V,
                                                                        D* d_logits, int64_t lddl, float scale,
                                                                        double* row_loss) {
  extern __shared__ __align__(16) float row[];
  const int64_t r = blockIdx.x;
  const int tid = int(threadIdx.x), n = (V + kRowThreads - 1) / kRowThreads;
  const float* l = logits + r * ldl;
  if (V % 4 == 0 && reinterpret_cast<uintptr_t>(l) % 16 == 0) {
    for (int q = 4 * tid; q < V; q += 4 * kRowThreads) cp_async16(row + q, l + q, 16);
  } else {
    for (int v = tid; v < V; v += kRowThreads) cp_async4(row + v, l + v, 4);
  }
  cp_async_commit();
  if (V + tid < n * kRowThreads) row[V + tid] = -INFINITY;
  cp_async_wait_all();
  __syncthreads();
  float mx = -INFINITY;
  for (int k = 0; k < n; ++k) mx = fmaxf(mx, row[tid + k * kRowThreads]);
  mx = block_max<kRowThreads>(mx);
  const double lse = double(mx) + log(exp_sum<kRowThreads, false>(row, n, mx, V));
  const int32_t target = targets[r];
  if (tid == 0) row_loss[r] = lse - double(row[target]);
  if (d_logits) write_gradient<kRowThreads>(row, V, target, SplitLse(lse), scale, d_logits + r * lddl);
}

template <class D>
__global__ void cross_entropy_kernel(const float* logits, int64_t ldl, const int32_t* targets, int V, D* d_logits,
                                     int64_t lddl, float scale, double* row_loss) {
  const int64_t r = blockIdx.x;
  const float* l = logits + r * ldl;
  const int32_t target = targets[r];
  const float picked = l[target];  // read before any thread overwrites the row (in place)
  float mx = -INFINITY;
  for (int v = int(threadIdx.x); v < V; v += kThreads) mx = fmaxf(mx, l[v]);
  mx = block_max<kThreads>(mx);
  const double lse = double(mx) + log(exp_sum<kThreads, true>(l, (V + kThreads - 1) / kThreads, mx, V));
  if (threadIdx.x == 0) row_loss[r] = lse - double(picked);
  if (d_logits) write_gradient<kThreads>(l, V, target, SplitLse(lse), scale, d_logits + r * lddl);
}

// *total += Σ row_loss[0..n) in row order, the bits of the host's sum: the block stages the rows
// in shared memory a piece at a time, one thread adds them (from global memory, each add waiting
// for its load, 2,700 rows took 150 µs).
constexpr int kSumThreads = 256, kSumPiece = 4096;
__global__ void __launch_bounds__(kSumThreads) add_loss_sum_kernel(const double* row_loss, int64_t n, double* total) {
  __shared__ double piece[kSumPiece];
  double s = 0.0;
  for (int64_t r0 = 0; r0 < n; r0 += kSumPiece) {
    const int m = int(min(int64_t(kSumPiece), n - r0));
    for (int i = int(threadIdx.x); i < m; i += kSumThreads) piece[i] = row_loss[r0 + i];
    __syncthreads();
    if (threadIdx.x == 0)
      for (int i = 0; i < m; ++i) s += piece[i];
    __syncthreads();
  }
  if (threadIdx.x == 0) *total += s;
}

}  // namespace

double cross_entropy(const float* logits, int64_t ldl, const int32_t* targets, int64_t n, int64_t V, void* d_logits,
                     DType d_dtype, int64_t lddl, float scale, double* total) {
  if (n == 0) return 0.0;
  if (V >= (int64_t(1) << 30)) raise(cat("[cross_entropy] a vocabulary of ", V, " columns: at most 2^30"));
  auto dev_targets = allocate(size_t(n) * sizeof(int32_t), "cross_entropy targets");
  auto losses = allocate(size_t(n) * sizeof(double), "cross_entropy losses");
  copy_to_device(dev_targets.get(), targets, size_t(n) * sizeof(int32_t));
  int device = 0, smem_max = 0;
  check(cudaGetDevice(&device), "cross_entropy");
  check(cudaDeviceGetAttribute(&smem_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "cross_entropy");
  const size_t row_bytes = size_t((V + kRowThreads - 1) / kRowThreads) * kRowThreads * sizeof(float);
  with_dtype(d_dtype, "cross_entropy", [&](auto* tag) {
    using D = std::remove_pointer_t<decltype(tag)>;
    const auto* tg = static_cast<const int32_t*>(dev_targets.get());
    auto* loss = static_cast<double*>(losses.get());
    cudaFuncAttributes attr{};  // its static shared memory: the reductions' partials
    check(cudaFuncGetAttributes(&attr, cross_entropy_row_kernel<D>), "cross_entropy");
    if (row_bytes + attr.sharedSizeBytes <= size_t(smem_max)) {
      check(cudaFuncSetAttribute(cross_entropy_row_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 int(row_bytes)),
            "cross_entropy");
      cross_entropy_row_kernel<D><<<unsigned(n), kRowThreads, row_bytes, stream()>>>(
          logits, ldl, tg, int(V), static_cast<D*>(d_logits), lddl, scale, loss);
    } else {
      cross_entropy_kernel<D><<<unsigned(n), kThreads, 0, stream()>>>(logits, ldl, tg, int(V),
                                                                      static_cast<D*>(d_logits), lddl, scale, loss);
    }
  });
  check_launch("cross_entropy");
  if (!total) return host_sum(static_cast<const double*>(losses.get()), n);
  add_loss_sum_kernel<<<1, kSumThreads, 0, stream()>>>(static_cast<const double*>(losses.get()), n, total);
  check_launch("cross_entropy");
  return 0.0;
}

}  // namespace mamba2::cuda
