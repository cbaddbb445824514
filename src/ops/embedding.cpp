#include "cpu/kernels.h"
#include "cuda/kernels.h"
#include "cuda/runtime.h"
#include "ops/check.h"
#include "ops/ops.h"

namespace mamba2::ops {

void embedding(const Tensor& table, std::span<const int32_t> ids, MatView out, const int32_t* device_ids,
               const Tensor* warm) {
  if (table.rank() != 2) fail("[embedding] table must be 2-D, got {}", shape_str(table.shape()));
  const int64_t vocab = table.dim(0), d = table.dim(1), n = int64_t(ids.size());
  const Device dev = table.device();
  check_shape("embedding", "out", out, n, d, dev);
  check_dtype("embedding", "out", out.dtype, DType::F32);
  if (out.ld != d) fail("[embedding] out must be contiguous");
  for (size_t t = 0; t < ids.size(); ++t)
    if (ids[t] < 0 || ids[t] >= vocab)
      fail("[embedding] token id {} at position {} is out of range [0, {})", ids[t], t, vocab);
  if (dev == Device::CUDA) {
#if MAMBA2_HAVE_CUDA
    if (device_ids) {
      cuda::embedding_forward(table.raw(), table.dtype(), d, device_ids, n, out.data(), l2_warm(warm));
      return;
    }
    auto dev_ids = cuda::allocate(ids.size_bytes(), "token ids");
    cuda::copy_to_device(dev_ids.get(), ids.data(), ids.size_bytes());
    cuda::embedding_forward(table.raw(), table.dtype(), d, static_cast<const int32_t*>(dev_ids.get()), n, out.data(),
                            l2_warm(warm));
#else
    no_cuda_backend(__func__);
#endif
    return;
  }
  if (table.dtype() == DType::BF16 || is_quantized(table.dtype())) {
    cpu::embedding_forward_narrow(table.dtype(), table.raw(), d, ids.data(), n, out.data());
    return;
  }
  cpu::embedding_forward(table.data(), d, ids.data(), n, out.data());
}

void embedding_backward(std::span<const int32_t> ids, MatView d_out, Tensor& d_table) {
  if (d_table.rank() != 2) fail("[embedding] d_table must be 2-D, got {}", shape_str(d_table.shape()));
  const int64_t vocab = d_table.dim(0), d = d_table.dim(1);
  const Device dev = d_table.device();
  check_dtype("embedding", "d_table", d_table.dtype(), DType::F32);
  check_shape("embedding", "d_out", d_out, int64_t(ids.size()), d, dev);
  check_dtype("embedding", "d_out", d_out.dtype, DType::F32);
  if (d_out.ld != d) fail("[embedding] d_out must be contiguous");
  for (size_t t = 0; t < ids.size(); ++t)
    if (ids[t] < 0 || ids[t] >= vocab)
      fail("[embedding] token id {} at position {} is out of range [0, {})", ids[t], t, vocab);
  if (dev == Device::CUDA) {
#if MAMBA2_HAVE_CUDA
    cuda::embedding_backward(ids.data(), int64_t(ids.size()), d_out.data(), d_table.data(), d);
#else
    no_cuda_backend(__func__);
#endif
    return;
  }
  cpu::embedding_backward(ids.data(), int64_t(ids.size()), d_out.data(), d_table.data(), d);
}

}  // namespace mamba2::ops
