#include "cpu/kernels.h"
#include "cuda/kernels.h"
#include "ops/check.h"
#include "ops/ops.h"

namespace mamba2::ops {

void cast(MatView src, MatView dst) {
  const Device dev = src.device;
  check_shape("cast", "src", src, src.rows, src.cols, dev);
  check_dtype("cast", "src", src.dtype, DType::F32);
  // dst as check_shape would, but in any dtype (on the CPU too).
  if (dst.rows != src.rows || dst.cols != src.cols)
    fail("[cast] dst is ({}, {}), expected ({}, {})", dst.rows, dst.cols, src.rows, src.cols);
  if (dst.ld < dst.cols) fail("[cast] dst has row stride {} < {} columns", dst.ld, dst.cols);
  check_device("cast", "dst", dst.device, dev);
  if (dst.dtype != DType::F32 && dst.dtype != DType::BF16 && dst.dtype != DType::F16)
    fail("[cast] dst is {}: casts go to F32, BF16 or F16", dtype_name(dst.dtype));
  if (dev == Device::CUDA) {
#if MAMBA2_HAVE_CUDA
    cuda::cast_rows(src.data(), src.ld, dst.ptr, dst.dtype, dst.ld, src.rows, src.cols);
#else
    no_cuda_backend(__func__);
#endif
    return;
  }
  cpu::cast_rows(src.data(), src.ld, dst.ptr, dst.dtype, dst.ld, src.rows, src.cols);
}

}  // namespace mamba2::ops
