#include "cpu/kernels.h"
#include "ops/check.h"
#include "ops/ops.h"

namespace mamba2::ops {

void linear(MatView x, const Tensor& W, MatView y, LinearKernel kernel) {
  if (W.rank() != 2) fail("[linear] weight must be 2-D, got {}", shape_str(W.shape()));
  const int64_t n = W.dim(0), k = W.dim(1);
  check_shape("linear", "x", x, x.rows, k);
  check_shape("linear", "y", y, x.rows, n);
  check_cpu("linear", W.device());
  if (kernel == LinearKernel::Streaming)
    cpu::linear_streaming(x.data, x.ld, W.data(), y.data, y.ld, x.rows, n, k);
  else
    cpu::linear_gemm(x.data, x.ld, W.data(), y.data, y.ld, x.rows, n, k);
}

}  // namespace mamba2::ops
