#include "cpu/kernels.h"
#include "cuda/kernels.h"
#include "ops/check.h"
#include "ops/ops.h"

namespace mamba2::ops {

double cross_entropy(MatView logits, std::span<const int32_t> targets, MatView d_logits, float scale, double* total) {
  const int64_t n = logits.rows, V = logits.cols;
  const Device dev = logits.device;
  check_shape("cross_entropy", "logits", logits, int64_t(targets.size()), V, dev);
  check_dtype("cross_entropy", "logits", logits.dtype, DType::F32);
  if (d_logits.ptr) {
    check_shape("cross_entropy", "d_logits", d_logits, n, V, dev);
    check_projection_operand_dtype("cross_entropy", "d_logits", d_logits.dtype, dev);
  }
  if (n > 0 && V == 0) fail("[cross_entropy] logits have no columns");
  for (size_t r = 0; r < targets.size(); ++r)
    if (targets[r] < 0 || targets[r] >= V)
      fail("[cross_entropy] target {} at row {} is out of range [0, {})", targets[r], r, V);
  // In place (same data and stride) or apart: a partial overlap would be read after being written.
  const auto* lo = static_cast<const char*>(logits.ptr);
  const auto* dl = static_cast<const char*>(d_logits.ptr);
  const bool same = dl == lo && d_logits.ld == logits.ld && d_logits.dtype == DType::F32;
  if (dl && n > 0 && !same && dl < lo + n * logits.ld * 4 && lo < dl + n * d_logits.ld * dtype_size(d_logits.dtype))
    fail("[cross_entropy] d_logits partly overlaps logits");
  if (dev == Device::CUDA) {
#if MAMBA2_HAVE_CUDA
    return cuda::cross_entropy(logits.data(), logits.ld, targets.data(), n, V, d_logits.ptr, d_logits.dtype,
                               d_logits.ld, scale, total);
#else
    no_cuda_backend(__func__);
#endif
  }
  const double sum =
      cpu::cross_entropy(logits.data(), logits.ld, targets.data(), n, V, d_logits.data(), d_logits.ld, scale);
  if (!total) return sum;
  *total += sum;
  return 0.0;
}

}  // namespace mamba2::ops
