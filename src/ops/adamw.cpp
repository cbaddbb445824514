#include <cmath>
#include <vector>

#include "cpu/kernels.h"
#include "cuda/kernels.h"
#include "ops/check.h"
#include "ops/ops.h"

namespace mamba2::ops {

void adamw(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamW& h) {
  const AdamWParam one{&param, &grad, &m, &v, true};
  adamw(std::span<const AdamWParam>(&one, 1), h);
}

void adamw(std::span<const AdamWParam> params, const AdamW& h) {
  if (params.empty()) return;
  const Device dev = params.front().param->device();
  for (const AdamWParam& p : params) {
    const int64_t n = p.param->numel();
    check_len("adamw", "param", *p.param, n, dev);
    check_len("adamw", "grad", *p.grad, n, dev);
    check_len("adamw", "m", *p.m, n, dev);
    check_len("adamw", "v", *p.v, n, dev);
    if (p.copy) {
      if (dev != Device::CUDA) fail("[adamw] a compute copy of the parameter is the GPU's: the CPU trains in fp32");
      const DType cd = p.copy->dtype();
      if (p.copy->device() != dev || p.copy->numel() != n || p.copy->raw() == p.param->raw() ||
          !(cd == DType::F32 || cd == DType::BF16 || cd == DType::F16))
        fail("[adamw] the compute copy must be another f32, bf16 or f16 tensor of the parameter's {} elements on its "
             "device, got {} {} on the {}",
             n, dtype_name(cd), shape_str(p.copy->shape()), device_name(p.copy->device()));
    }
  }
  if (h.step < 1) fail("[adamw] step must be at least 1 (bias correction), got {}", h.step);
  if (!(h.lr >= 0.0) || !std::isfinite(h.lr)) fail("[adamw] lr must be finite and non-negative, got {}", h.lr);
  if (!(h.beta1 >= 0.0 && h.beta1 < 1.0)) fail("[adamw] beta1 must be in [0, 1), got {}", h.beta1);
  if (!(h.beta2 >= 0.0 && h.beta2 < 1.0)) fail("[adamw] beta2 must be in [0, 1), got {}", h.beta2);
  if (!(h.eps > 0.0)) fail("[adamw] eps must be positive, got {}", h.eps);
  if (!(h.weight_decay >= 0.0)) fail("[adamw] weight_decay must be non-negative, got {}", h.weight_decay);
  if (!std::isfinite(h.grad_scale)) fail("[adamw] grad_scale must be finite, got {}", h.grad_scale);
  // In double, then rounded once: 1 − β and 1 − β^t lose digits when formed in fp32 (β2 = 0.999
  // is 0.99900001 in fp32, so 1 − β2 would be off by 1.3e-5). No decay: a factor of exactly 1.
  const double bc1 = 1.0 - std::pow(h.beta1, double(h.step)), bc2 = 1.0 - std::pow(h.beta2, double(h.step));
  const auto scalars = [&](bool decay) {
    return cpu::AdamWScalars<float>{float(h.beta1),
                                    float(1.0 - h.beta1),
                                    float(h.beta2),
                                    float(1.0 - h.beta2),
                                    float(h.eps),
                                    float(1.0 - h.lr * (decay ? h.weight_decay : 0.0)),
                                    float(h.lr / bc1),
                                    float(1.0 / std::sqrt(bc2)),
                                    float(h.grad_scale)};
  };
  const cpu::AdamWScalars<float> s = scalars(true), s_nodecay = scalars(false);
  if (dev == Device::CUDA) {
#if MAMBA2_HAVE_CUDA
    const cuda::AdamWScalars cs{s.beta1, s.one_minus_beta1, s.beta2,        s.one_minus_beta2, s.eps,
                                s.decay, s.step_size,       s.inv_sqrt_bc2, s.grad_scale};
    std::vector<cuda::AdamWTensor> ts;
    for (const AdamWParam& p : params)
      ts.push_back({p.param->data(), p.grad->data(), p.m->data(), p.v->data(), p.param->numel(), p.decay,
                    p.copy ? p.copy->raw() : nullptr, p.copy ? p.copy->dtype() : DType::F32});
    cuda::adamw_step_many(ts.data(), int64_t(ts.size()), cs);
#else
    no_cuda_backend(__func__);
#endif
    return;
  }
  for (const AdamWParam& p : params)
    cpu::adamw_step(p.param->data(), p.grad->data(), p.m->data(), p.v->data(), p.param->numel(),
                    p.decay ? s : s_nodecay);
}

double sum_squares(const Tensor& t) {
  const Tensor* one = &t;
  return sum_squares(std::span<const Tensor* const>(&one, 1));
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
