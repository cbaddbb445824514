#include <cmath>
#include <vector>

#include "cpu/kernels.h"
#include "cuda/kernels.h"
#include "ops/check.h"
#include "ops/ops.h"

namespace mamba2::ops {

void adamw(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamW& h) {
  const int64_t n = param.numel();
  const Device dev = param.device();
  check_len("adamw", "param", param, n, dev);
  check_len("adamw", "grad", grad, n, dev);
  check_len("adamw", "m", m, n, dev);
  check_len("adamw", "v", v, n, dev);
  if (h.step < 1) fail("[adamw] step must be at least 1 (bias correction), got {}", h.step);
  if (!(h.lr >= 0.0) || !std::isfinite(h.lr)) fail("[adamw] lr must be finite and non-negative, got {}", h.lr);
  if (!(h.beta1 >= 0.0 && h.beta1 < 1.0)) fail("[adamw] beta1 must be in [0, 1), got {}", h.beta1);
  if (!(h.beta2 >= 0.0 && h.beta2 < 1.0)) fail("[adamw] beta2 must be in [0, 1), got {}", h.beta2);
  if (!(h.eps > 0.0)) fail("[adamw] eps must be positive, got {}", h.eps);
  if (!(h.weight_decay >= 0.0)) fail("[adamw] weight_decay must be non-negative, got {}", h.weight_decay);
  if (!std::isfinite(h.grad_scale)) fail("[adamw] grad_scale must be finite, got {}", h.grad_scale);
  // In double, then rounded once: 1 − β and 1 − β^t lose digits when formed in fp32 (β2 = 0.999
  // is 0.99900001 in fp32, so 1 − β2 would be off by 1.3e-5).
  const double bc1 = 1.0 - std::pow(h.beta1, double(h.step)), bc2 = 1.0 - std::pow(h.beta2, double(h.step));
  const cpu::AdamWScalars<float> s{float(h.beta1),
                                   float(1.0 - h.beta1),
                                   float(h.beta2),
                                   float(1.0 - h.beta2),
                                   float(h.eps),
                                   float(1.0 - h.lr * h.weight_decay),
                                   float(h.lr / bc1),
                                   float(1.0 / std::sqrt(bc2)),
                                   float(h.grad_scale)};
  if (dev == Device::CUDA) {
#if MAMBA2_HAVE_CUDA
    const cuda::AdamWScalars cs{s.beta1, s.one_minus_beta1, s.beta2,        s.one_minus_beta2, s.eps,
                                s.decay, s.step_size,       s.inv_sqrt_bc2, s.grad_scale};
    cuda::adamw_step(param.data(), grad.data(), m.data(), v.data(), n, cs);
#else
    no_cuda_backend(__func__);
#endif
    return;
  }
  cpu::adamw_step(param.data(), grad.data(), m.data(), v.data(), n, s);
}

double sum_squares(const Tensor& t) {
  check_dtype("sum_squares", "the tensor", t.dtype(), DType::F32);
  if (t.device() == Device::CUDA) {
#if MAMBA2_HAVE_CUDA
    return cuda::sum_squares(t.data(), t.numel());
#else
    no_cuda_backend(__func__);
#endif
  }
  return cpu::sum_squares(t.data(), t.numel());
}

double sum_squares(std::span<const Tensor* const> ts) {
  if (ts.empty()) return 0.0;
  const Device dev = ts.front()->device();
  for (const Tensor* t : ts) {
    check_device("sum_squares", "a tensor", t->device(), dev);
    check_dtype("sum_squares", "a tensor", t->dtype(), DType::F32);
  }
  if (dev == Device::CUDA) {
#if MAMBA2_HAVE_CUDA
    std::vector<const float*> ptrs;
    std::vector<int64_t> sizes;
    for (const Tensor* t : ts) ptrs.push_back(t->data()), sizes.push_back(t->numel());
    return cuda::sum_squares_many(ptrs.data(), sizes.data(), int64_t(ts.size()));
#else
    no_cuda_backend(__func__);
#endif
  }
  double s = 0.0;
  for (const Tensor* t : ts) s += cpu::sum_squares(t->data(), t->numel());
  return s;
}

void scale(Tensor& t, double s) {
  check_dtype("scale", "the tensor", t.dtype(), DType::F32);
  if (t.device() == Device::CUDA) {
#if MAMBA2_HAVE_CUDA
    cuda::scale_inplace(t.data(), t.numel(), float(s));
#else
    no_cuda_backend(__func__);
#endif
    return;
  }
  cpu::scale_inplace(t.data(), t.numel(), float(s));
}

}  // namespace mamba2::ops
