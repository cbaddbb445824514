// fp32 rows to fp32, bf16 or f16, rounded to nearest even: the projections' operands in the
// compute dtype (training's bf16 copies of the fp32 master weights, gradients as mma operands).
#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace mamba2::cuda {

namespace {

// A thread takes kPer elements of a row, kThreads apart (coalesced), all loaded before any store.
constexpr int kThreads = 256, kPer = 8;

template <class T>
__global__ void cast_kernel(const float* __restrict__ src, int64_t lds, T* __restrict__ dst, int64_t ldd,
                            int64_t cols) {
  const int64_t r = blockIdx.y, c0 = int64_t(blockIdx.x) * kThreads * kPer + threadIdx.x;
  float v[kPer];
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int64_t c = c0 + j * kThreads;
    v[j] = c < cols ? src[r * lds + c] : 0.0f;
  }
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int64_t c = c0 + j * kThreads;
    if (c < cols) store_f32(dst + r * ldd + c, v[j]);
  }
}

}  // namespace

void cast_rows(const float* src, int64_t lds, void* dst, DType dtype, int64_t ldd, int64_t rows, int64_t cols) {
  if (rows == 0 || cols == 0) return;
  if (rows > 65535) {  // grid y: rows in pieces
    for (int64_t r0 = 0; r0 < rows; r0 += 65535)
      cast_rows(src + r0 * lds, lds, static_cast<char*>(dst) + size_t(r0 * ldd) * dtype_size(dtype), dtype, ldd,
                std::min<int64_t>(65535, rows - r0), cols);
    return;
  }
  with_dtype(dtype, "cast", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    cast_kernel<T><<<dim3(unsigned(ceil_div(cols, kThreads * kPer)), unsigned(rows)), kThreads, 0, stream()>>>(
        src, lds, static_cast<T*>(dst), ldd, cols);
  });
  check_launch("cast");
}

}  // namespace mamba2::cuda
