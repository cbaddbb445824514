// Embedding gather on the GPU: rows of the table (in its storage dtype) into the fp32 residual.
// Launched overlapped (common.cuh). Backward: each id's rows of d_out added to its table row in
// position order, as the CPU adds them (the same bits, and no float atomics).
#include <algorithm>
#include <numeric>
#include <vector>

#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "cuda/runtime.h"

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

// Block (id, column tile): positions order[first[i] .. first[i+1]) are those of id ids[i], in order.
__global__ void embedding_backward_kernel(const int32_t* order, const int64_t* first, const int32_t* ids,
                                          const float* d_out, float* d_table, int64_t d) {
  const int64_t i = blockIdx.x, c = int64_t(blockIdx.y) * kThreads + threadIdx.x;
  if (c >= d) return;
  float* row = d_table + int64_t(ids[i]) * d + c;
  float acc = *row;
  for (int64_t p = first[i]; p < first[i + 1]; ++p) acc += d_out[int64_t(order[p]) * d + c];
  *row = acc;
}

}  // namespace

void embedding_backward(const int32_t* ids, int64_t n, const float* d_out, float* d_table, int64_t d) {
  if (n == 0 || d == 0) return;
  // The positions grouped by id, each group in position order (a stable sort), on the host.
  std::vector<int32_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return ids[a] < ids[b]; });
  std::vector<int64_t> first;
  std::vector<int32_t> unique;
  for (int64_t p = 0; p < n; ++p)
    if (p == 0 || ids[order[size_t(p)]] != ids[order[size_t(p - 1)]]) {
      first.push_back(p);
      unique.push_back(ids[order[size_t(p)]]);
    }
  first.push_back(n);
  auto dev_order = allocate(order.size() * sizeof(int32_t), "embedding gradient order");
  auto dev_first = allocate(first.size() * sizeof(int64_t), "embedding gradient order");
  auto dev_ids = allocate(unique.size() * sizeof(int32_t), "embedding gradient order");
  copy_to_device(dev_order.get(), order.data(), order.size() * sizeof(int32_t));
  copy_to_device(dev_first.get(), first.data(), first.size() * sizeof(int64_t));
  copy_to_device(dev_ids.get(), unique.data(), unique.size() * sizeof(int32_t));
  const dim3 grid(unsigned(unique.size()), unsigned(ceil_div(d, kThreads)));
  embedding_backward_kernel<<<grid, kThreads, 0, stream()>>>(
      static_cast<const int32_t*>(dev_order.get()), static_cast<const int64_t*>(dev_first.get()),
      static_cast<const int32_t*>(dev_ids.get()), d_out, d_table, d);
  check_launch("embedding");
}

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
