#include <utility>

#include "cpu/kernels.h"
#include "cuda/kernels.h"
#include "ops/check.h"
#include "ops/ops.h"

namespace mamba2::ops {

void add_rmsnorm(MatView residual, MatView h, const Tensor& w, MatView out, float eps, MatView sum) {
  const int64_t n = residual.rows, d = residual.cols;
  const Device dev = residual.device;
  check_shape("rmsnorm", "residual", residual, n, d, dev);
  check_dtype("rmsnorm", "residual", residual.dtype, DType::F32);
  check_len("rmsnorm", "weight", w, d, dev);
  check_shape("rmsnorm", "out", out, n, d, dev);
  if (h.ptr) {
    check_shape("rmsnorm", "h", h, n, d, dev);
    check_dtype("rmsnorm", "h", h.dtype, DType::F32);
  }
  if (sum.ptr) {
    check_shape("rmsnorm", "sum", sum, n, d, dev);
    check_dtype("rmsnorm", "sum", sum.dtype, DType::F32);
  } else {
    sum = residual;
  }
  if (residual.ld != d || out.ld != d || (h.ptr && h.ld != d) || sum.ld != d)
    fail("[rmsnorm] operands must be contiguous");
  if (dev == Device::CUDA) {
#if MAMBA2_HAVE_CUDA
    cuda::add_rmsnorm_forward(residual.data(), h.ptr ? h.data() : nullptr, sum.data(), w.data(), out.ptr, out.dtype, n,
                              d, eps);
#else
    no_cuda_backend(__func__);
#endif
    return;
  }
  cpu::add_rmsnorm_forward(residual.data(), h.data(), sum.data(), w.data(), out.data(), n, d, eps);
}

void gated_rmsnorm(MatView y, MatView z, const Tensor& w, MatView out, int64_t ngroups, float eps) {
  const int64_t n = y.rows, d = y.cols;
  const Device dev = y.device;
  check_shape("gated_rmsnorm", "y", y, n, d, dev);
  check_shape("gated_rmsnorm", "z", z, n, d, dev);
  // y and z in fp32, or on the GPU both in out's dtype (mixed-precision training's scan output
  // and in_proj output).
  check_f32_or("gated_rmsnorm", "y", y.dtype, dev == Device::CUDA, "out", out.dtype);
  if (z.dtype != y.dtype) fail("[gated_rmsnorm] z is {}, expected y's dtype, {}", dtype_name(z.dtype), dtype_name(y.dtype));
  check_shape("gated_rmsnorm", "out", out, n, d, dev);
  check_len("gated_rmsnorm", "weight", w, d, dev);
  if (ngroups <= 0 || d % ngroups != 0) fail("[gated_rmsnorm] {} channels do not split into {} groups", d, ngroups);
  if (dev == Device::CUDA) {
#if MAMBA2_HAVE_CUDA
    cuda::gated_rmsnorm_forward(y.ptr, y.dtype, y.ld, z.ptr, z.ld, w.data(), out.ptr, out.dtype, out.ld, n, d,
                                ngroups, eps);
#else
    no_cuda_backend(__func__);
#endif
    return;
  }
  cpu::gated_rmsnorm_forward(y.data(), y.ld, z.data(), z.ld, w.data(), out.data(), out.ld, n, d, ngroups, eps);
}

void add_rmsnorm_backward(MatView residual, const Tensor& w, MatView d_out, MatView d_residual, Tensor& d_w,
                          float eps) {
  const int64_t n = residual.rows, d = residual.cols;
  const Device dev = residual.device;
  check_len("rmsnorm", "weight", w, d, dev);
  check_len("rmsnorm", "d_weight", d_w, d, dev);
  check_shape("rmsnorm", "residual", residual, n, d, dev);
  check_shape("rmsnorm", "d_out", d_out, n, d, dev);
  check_shape("rmsnorm", "d_residual", d_residual, n, d, dev);
  for (const MatView* m : {&residual, &d_out, &d_residual}) check_dtype("rmsnorm", "an operand", m->dtype, DType::F32);
  if (residual.ld != d || d_out.ld != d || d_residual.ld != d) fail("[rmsnorm] operands must be contiguous");
  if (dev == Device::CUDA) {
#if MAMBA2_HAVE_CUDA
    cuda::add_rmsnorm_backward(residual.data(), w.data(), d_out.data(), d_residual.data(), d_w.data(), n, d, eps);
#else
    no_cuda_backend(__func__);
#endif
    return;
  }
  cpu::add_rmsnorm_backward(residual.data(), w.data(), d_out.data(), d_residual.data(), d_w.data(), n, d, eps);
}

void gated_rmsnorm_backward(MatView y, MatView z, const Tensor& w, MatView d_out, MatView d_y, MatView d_z,
                            Tensor& d_w, int64_t ngroups, float eps) {
  const int64_t n = y.rows, d = y.cols;
  const Device dev = y.device;
  for (auto [m, what] : {std::pair{&y, "y"}, {&z, "z"}, {&d_out, "d_out"}, {&d_y, "d_y"}, {&d_z, "d_z"}}) {
    check_shape("gated_rmsnorm", what, *m, n, d, dev);
  }
  // y, z and d_out in fp32, or on the GPU all in d_y's dtype (mixed-precision training's scan
  // output, in_proj output and out_proj's rounded gradient).
  check_f32_or("gated_rmsnorm", "y", y.dtype, dev == Device::CUDA, "d_y", d_y.dtype);
  for (auto [m, what] : {std::pair{&z, "z"}, {&d_out, "d_out"}})
    if (m->dtype != y.dtype) fail("[gated_rmsnorm] {} is {}, expected y's dtype, {}", what, dtype_name(m->dtype),
                                  dtype_name(y.dtype));
  check_projection_operand_dtype("gated_rmsnorm", "d_y", d_y.dtype, dev);
  check_projection_operand_dtype("gated_rmsnorm", "d_z", d_z.dtype, dev);
  check_len("gated_rmsnorm", "weight", w, d, dev);
  check_len("gated_rmsnorm", "d_weight", d_w, d, dev);
  if (ngroups <= 0 || d % ngroups != 0) fail("[gated_rmsnorm] {} channels do not split into {} groups", d, ngroups);
  if (d_y.ptr == d_out.ptr || d_z.ptr == d_out.ptr) fail("[gated_rmsnorm] d_y and d_z must not alias d_out");
  if (dev == Device::CUDA) {
#if MAMBA2_HAVE_CUDA
    cuda::gated_rmsnorm_backward(y.ptr, y.dtype, y.ld, z.ptr, z.ld, w.data(), d_out.ptr, d_out.ld, d_y.ptr,
                                 d_y.dtype, d_y.ld, d_z.ptr, d_z.dtype, d_z.ld, d_w.data(), n, d, ngroups, eps);
#else
    no_cuda_backend(__func__);
#endif
    return;
  }
  cpu::gated_rmsnorm_backward(y.data(), y.ld, z.data(), z.ld, w.data(), d_out.data(), d_out.ld, d_y.data(), d_y.ld, d_z.data(),
                              d_z.ld, d_w.data(), n, d, ngroups, eps);
}

}  // namespace mamba2::ops
