// Embedding gather on the GPU: rows of the table (in its storage dtype) into the fp32 residual.
// Launched overlapped (common.cuh).
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace mamba2::cuda {

namespace {

constexpr int kThreads = 256;

template <class T>
__global__ void embedding_kernel(const T* table, int64_t d, const int32_t* ids, float* out, L2Warm warm) {
  TRACE_KERNEL;
  start_next();
  warm_l2(warm);
  wait_for_previous();
  const int64_t t = blockIdx.x;
  const T* row = table + int64_t(ids[t]) * d;
  for (int64_t j = threadIdx.x; j < d; j += kThreads) out[t * d + j] = load_f32(row + j);
}

}  // namespace

void embedding_forward(const void* table, DType table_dtype, int64_t d, const int32_t* ids, int64_t n, float* out,
                       const L2Warm& warm) {
  if (n == 0) return;
  with_dtype(table_dtype, "embedding", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    launch_overlapped(embedding_kernel<T>, unsigned(n), kThreads, 0, "embedding", static_cast<const T*>(table), d, ids,
                      out, fitting(warm));
  });
}

}  // namespace mamba2::cuda
