#include "cpu/kernels.h"
#include "cuda/kernels.h"
#include "ops/check.h"
#include "ops/ops.h"

namespace mamba2::ops {

void linear(MatView x, const Tensor& W, MatView y, LinearKernel kernel) {
  if (W.rank() != 2) fail("[linear] weight must be 2-D, got {}", shape_str(W.shape()));
  const int64_t n = W.dim(0), k = W.dim(1);
  const Device dev = W.device();
  check_shape("linear", "x", x, x.rows, k, dev);
  check_shape("linear", "y", y, x.rows, n, dev);
  check_dtype("linear", "x", x.dtype, W.dtype());
  check_dtype("linear", "y", y.dtype, DType::F32);
  if (dev == Device::CUDA) {
    if (kernel == LinearKernel::Training) fail("[linear] training on the GPU is not built yet");
#if MAMBA2_HAVE_CUDA
    cuda::linear_forward(x.ptr, x.ld, W.raw(), W.dtype(), y.data(), y.ld, x.rows, n, k, kernel == LinearKernel::Decode);
#else
    no_cuda_backend(__func__);
#endif
    return;
  }
  check_dtype("linear", "weight", W.dtype(), DType::F32);
  switch (kernel) {
    case LinearKernel::Prefill: cpu::linear_tiled(x.data(), x.ld, W.data(), y.data(), y.ld, x.rows, n, k); break;
    case LinearKernel::Decode: cpu::linear_streaming(x.data(), x.ld, W.data(), y.data(), y.ld, x.rows, n, k); break;
    case LinearKernel::Training: cpu::linear_gemm(x.data(), x.ld, W.data(), y.data(), y.ld, x.rows, n, k); break;
  }
}

void linear_backward(MatView x, const Tensor& W, MatView d_y, MatView d_x, Tensor& d_W) {
  if (W.rank() != 2) fail("[linear] weight must be 2-D, got {}", shape_str(W.shape()));
  const int64_t n = W.dim(0), k = W.dim(1), m = x.rows;
  check_shape("linear", "x", x, m, k);
  check_shape("linear", "d_y", d_y, m, n);
  if (d_x.data()) check_shape("linear", "d_x", d_x, m, k);
  if (d_W.shape() != W.shape())
    fail("[linear] d_W is {}, expected {}", shape_str(d_W.shape()), shape_str(W.shape()));
  check_cpu("linear", W.device());
  check_cpu("linear", d_W.device());
  cpu::linear_backward(x.data(), x.ld, W.data(), d_y.data(), d_y.ld, d_x.data(), d_x.ld, d_W.data(), m, n, k);
}

}  // namespace mamba2::ops
