#include "cpu/kernels.h"
#include "cuda/kernels.h"
#include "ops/check.h"
#include "ops/ops.h"

namespace mamba2::ops {

void argmax(MatView x, int64_t cols, int32_t* out) {
  check_shape("argmax", "x", x, x.rows, x.cols, x.device);
  check_dtype("argmax", "x", x.dtype, DType::F32);
  if (cols <= 0 || cols > x.cols) fail("[argmax] {} columns asked of rows of {}", cols, x.cols);
  if (x.device == Device::CUDA) {
#if MAMBA2_HAVE_CUDA
    cuda::argmax_rows(x.data(), x.ld, x.rows, cols, out);
#else
    no_cuda_backend(__func__);
#endif
    return;
  }
  cpu::argmax_rows(x.data(), x.ld, x.rows, cols, out);
}

}  // namespace mamba2::ops
