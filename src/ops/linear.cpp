#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "cpu/kernels.h"
#include "cpu/simd/bf16xbf16.h"
#include "cpu/simd/q8x8.h"
#include "cuda/kernels.h"
#include "ops/check.h"
#include "ops/ops.h"

namespace mamba2::ops {

namespace {

Q8Activations initial_q8_activations() {
  const char* env = std::getenv("MAMBA2_Q8_ACTIVATIONS");
  if (!env || !*env) return Q8Activations::Default;
  if (std::string(env) == "int8") return Q8Activations::Int8;
  if (std::string(env) == "f32") return Q8Activations::F32;
  fail("[linear] MAMBA2_Q8_ACTIVATIONS={} is not one of int8, f32", env);
}

std::atomic<int> g_q8_activations{-1};

Bf16Activations initial_bf16_activations() {
  const char* env = std::getenv("MAMBA2_BF16_ACTIVATIONS");
  if (!env || !*env) return Bf16Activations::Default;
  if (std::string(env) == "bf16") return Bf16Activations::Bf16;
  if (std::string(env) == "f32") return Bf16Activations::F32;
  fail("[linear] MAMBA2_BF16_ACTIVATIONS={} is not one of bf16, f32", env);
}

std::atomic<int> g_bf16_activations{-1};

// The choice held in g (-1: none yet): the environment's, read once at first use, unless set before.
template <class E>
E chosen(std::atomic<int>& g, E (*initial)()) {
  int v = g.load(std::memory_order_acquire);
  if (v < 0) {
    v = int(initial());
    int expected = -1;
    if (!g.compare_exchange_strong(expected, v)) v = expected;
  }
  return E(v);
}

}  // namespace

Q8Activations q8_activations() { return chosen(g_q8_activations, initial_q8_activations); }

void set_q8_activations(Q8Activations a) { g_q8_activations.store(int(a), std::memory_order_release); }

bool int8_activations(DType weights) {
  switch (q8_activations()) {
    case Q8Activations::Int8: return true;
    case Q8Activations::F32: return false;
    case Q8Activations::Default: break;
  }
  const cpu::simd::Int8Kernels& t = cpu::simd::int8_kernels(cpu::simd::active_isa());
  if (weights == DType::Q8_0) return t.q8.default_on;
  if (weights == DType::Q4_0) return t.q4.default_on;
  fail("[linear] int8 activations are for Q8_0 and Q4_0 weights, not {}", dtype_name(weights));
}

Bf16Activations bf16_activations() { return chosen(g_bf16_activations, initial_bf16_activations); }

void set_bf16_activations(Bf16Activations a) { g_bf16_activations.store(int(a), std::memory_order_release); }

bool bf16_rounded_activations() {
  const cpu::simd::Isa isa = cpu::simd::active_isa();
  const cpu::simd::Bf16Kernels* t = cpu::simd::bf16_kernels(isa);
  switch (bf16_activations()) {
    case Bf16Activations::F32: return false;
    case Bf16Activations::Bf16:
      if (!t)
        fail("[linear] bf16 activations asked for (MAMBA2_BF16_ACTIVATIONS=bf16), but the {} kernels have none: "
             "they need AVX-512 with AVX512_BF16",
             cpu::simd::isa_name(isa));
      return true;
    case Bf16Activations::Default: break;
  }
  return t && t->default_on;
}

namespace {

void linear_product(MatView x, const Tensor& W, MatView y, LinearKernel kernel);

}  // namespace

void linear(MatView x, const Tensor& W, MatView y, LinearKernel kernel, const Tensor* bias) {
  if (W.rank() != 2) fail("[linear] weight must be 2-D, got {}", shape_str(W.shape()));
  const int64_t n = W.dim(0), k = W.dim(1);
  const Device dev = W.device();
  check_shape("linear", "x", x, x.rows, k, dev);
  check_shape("linear", "y", y, x.rows, n, dev);
  // y fp32, or a training product's on the GPU rounded to W's dtype (without a bias).
  const bool training = kernel == LinearKernel::Training || kernel == LinearKernel::TrainingTf32;
  check_f32_or("linear", "y", y.dtype, dev == Device::CUDA && training && !bias, "W", W.dtype());
  if (bias) check_len("linear", "bias", *bias, n, dev);
  linear_product(x, W, y, kernel);
  if (!bias) return;
  if (dev == Device::CUDA) {
#if MAMBA2_HAVE_CUDA
    cuda::add_bias(y.data(), y.ld, bias->data(), y.rows, n);
#else
    no_cuda_backend(__func__);
#endif
    return;
  }
  cpu::add_bias(y.data(), y.ld, bias->data(), y.rows, n);
}

namespace {

void linear_product(MatView x, const Tensor& W, MatView y, LinearKernel kernel) {
  const int64_t n = W.dim(0), k = W.dim(1);
  const Device dev = W.device();
  if (dev == Device::CUDA) {
    check_dtype("linear", "x", x.dtype, W.dtype());
    // Training runs the prefill's products (cuBLASLt, one algorithm per shape: deterministic).
#if MAMBA2_HAVE_CUDA
    cuda::linear_forward(x.ptr, x.ld, W.raw(), W.dtype(), y.ptr, y.dtype, y.ld, x.rows, n, k,
                         kernel == LinearKernel::Decode,
                         kernel == LinearKernel::TrainingTf32 || kernel == LinearKernel::PrefillTf32);
#else
    no_cuda_backend(__func__);
#endif
    return;
  }
  // The CPU computes in fp32; inference may read bf16, Q8_0 or Q4_0 weights (and round the
  // activations to their bf16 or int8 counterparts).
  check_dtype("linear", "x", x.dtype, DType::F32);
  const bool prefill = kernel == LinearKernel::Prefill || kernel == LinearKernel::PrefillTf32;  // TF32: GPU only
  const auto narrow = [&](const auto* w) {
    if (prefill)
      cpu::linear_tiled(x.data(), x.ld, w, y.data(), y.ld, x.rows, n, k);
    else
      cpu::linear_streaming(x.data(), x.ld, w, y.data(), y.ld, x.rows, n, k);
  };
  const bool training = kernel == LinearKernel::Training || kernel == LinearKernel::TrainingTf32;
  if (W.dtype() == DType::BF16 && !training) {
    const auto* w = static_cast<const uint16_t*>(W.raw());
    if (!bf16_rounded_activations()) return narrow(w);
    return cpu::linear_bf16(x.data(), x.ld, w, y.data(), y.ld, x.rows, n, k, prefill);
  }
  // Q8_0 and Q4_0: against int8 activations, or fp32 ones as the other narrow formats.
  const auto blocks = [&](const auto* w) {
    if (!int8_activations(W.dtype())) return narrow(w);
    cpu::linear_int8(x.data(), x.ld, w, y.data(), y.ld, x.rows, n, k, prefill);
  };
  if (W.dtype() == DType::Q8_0 && !training) return blocks(static_cast<const Q8Block*>(W.raw()));
  if (W.dtype() == DType::Q4_0 && !training) return blocks(static_cast<const Q4Block*>(W.raw()));
  check_dtype("linear", "weight", W.dtype(), DType::F32);
  switch (kernel) {
    case LinearKernel::Prefill:
    case LinearKernel::PrefillTf32: cpu::linear_tiled(x.data(), x.ld, W.data(), y.data(), y.ld, x.rows, n, k); break;
    case LinearKernel::Decode: cpu::linear_streaming(x.data(), x.ld, W.data(), y.data(), y.ld, x.rows, n, k); break;
    case LinearKernel::Training:
    case LinearKernel::TrainingTf32: cpu::linear_gemm(x.data(), x.ld, W.data(), y.data(), y.ld, x.rows, n, k); break;
  }
}

}  // namespace

namespace {

// The fused decode projection: y = norm(src) @ Wᵀ (y set) or residual += it.
void linear_normed_into(MatView src, const RowNorm& norm, const Tensor& W, MatView y, MatView residual,
                        const ConvStepFusion* conv, const Tensor* warm) {
  if (W.rank() != 2) fail("[linear] weight must be 2-D, got {}", shape_str(W.shape()));
  const int64_t n = W.dim(0), k = W.dim(1), m = src.rows;
  const Device dev = W.device();
  if (dev != Device::CUDA) fail("[linear] the fused decode projections run on the GPU only");
  check_shape("linear", "src", src, m, k, dev);
  check_dtype("linear", "src", src.dtype, DType::F32);
  check_len("linear", "norm weight", norm.weight, k, dev);
  if (k > INT32_MAX) fail("[linear] the fused decode projections take at most 2^31 - 1 columns, got {}", k);
  if (norm.sums.ptr) {
    if (norm.groups <= 0 || k % norm.groups || norm.sums.cols % norm.groups)
      fail("[linear] {} norm groups do not divide {} columns and {} sums", norm.groups, k, norm.sums.cols);
    check_shape("linear", "norm sums", norm.sums, m, norm.sums.cols, dev);
    check_dtype("linear", "norm sums", norm.sums.dtype, DType::F32);
  } else if (norm.groups != 1) {
    fail("[linear] a norm of {} groups needs their partial sums", norm.groups);
  }
  if (y.ptr) {
    check_shape("linear", "y", y, m, n, dev);
    check_dtype("linear", "y", y.dtype, DType::F32);
  } else {
    check_shape("linear", "residual", residual, m, n, dev);
    check_dtype("linear", "residual", residual.dtype, DType::F32);
  }
#if MAMBA2_HAVE_CUDA
  cuda::ConvStepArgs cs;
  if (conv) {
    if (conv->w.rank() != 2) fail("[linear] conv weight must be 2-D, got {}", shape_str(conv->w.shape()));
    const int64_t C = conv->w.dim(0), K = conv->w.dim(1);
    if (K < 1) fail("[linear] the conv has {} taps", K);
    if (conv->first < 0 || conv->first + C > n)
      fail("[linear] the conv's {} columns from {} are not within the {} outputs", C, conv->first, n);
    check_len("linear", "conv weight", conv->w, C * K, dev);
    check_len("linear", "conv bias", conv->bias, C, dev);
    check_shape("linear", "conv out", conv->out, m, C, dev);
    check_dtype("linear", "conv out", conv->out.dtype, DType::F32);
    check_shape("linear", "conv states", conv->states, conv->states.rows, (K - 1) * C, dev);
    check_dtype("linear", "conv states", conv->states.dtype, DType::F32);
    if (conv->states.ld != conv->states.cols) fail("[linear] conv states must be contiguous");
    conv->seqs.check("linear", m, dev, conv->states.rows);
    if (conv->seqs.count() != m) fail("[linear] a conv step takes one token per sequence");
    cs = {conv->first, C, K, conv->w.data(), conv->bias.data(), conv->states.data(), conv->seqs.device_slots(),
          conv->out.data(), conv->out.ld};
  }
  const cuda::RowNorm rn{norm.sums.ptr ? norm.sums.data() : nullptr, norm.sums.ld, norm.groups,
                         norm.sums.cols / norm.groups, norm.weight.data(), norm.eps};
  cuda::linear_decode_normed(src.data(), src.ld, rn, W.raw(), W.dtype(), y.ptr ? y.data() : nullptr, y.ld,
                             residual.ptr ? residual.data() : nullptr, residual.ld, cs, l2_warm(warm), m, n, k);
#else
  no_cuda_backend("linear");
#endif
}

}  // namespace

void linear_normed(MatView src, const RowNorm& norm, const Tensor& W, MatView y, const ConvStepFusion* conv,
                   const Tensor* warm) {
  if (!y.ptr) fail("[linear] no output given");
  linear_normed_into(src, norm, W, y, {}, conv, warm);
}

void linear_residual(MatView x, const Tensor& W, MatView residual) {
  if (W.rank() != 2) fail("[linear] weight must be 2-D, got {}", shape_str(W.shape()));
  const int64_t n = W.dim(0), k = W.dim(1);
  const Device dev = W.device();
  if (dev != Device::CUDA) fail("[linear] the residual-adding decode projection runs on the GPU only");
  check_shape("linear", "x", x, x.rows, k, dev);
  check_dtype("linear", "x", x.dtype, W.dtype());
  check_shape("linear", "residual", residual, x.rows, n, dev);
  check_dtype("linear", "residual", residual.dtype, DType::F32);
#if MAMBA2_HAVE_CUDA
  cuda::linear_decode_residual(x.ptr, x.ld, W.raw(), W.dtype(), residual.data(), residual.ld, x.rows, n, k);
#else
  no_cuda_backend("linear");
#endif
}

void linear_normed_residual(MatView src, const RowNorm& norm, const Tensor& W, MatView residual, const Tensor* warm) {
  if (!residual.ptr) fail("[linear] no residual given");
  linear_normed_into(src, norm, W, {}, residual, nullptr, warm);
}

void linear_backward(MatView x, const Tensor& W, MatView d_y, MatView d_x, Tensor& d_W, LinearKernel kernel,
                     bool add_dx) {
  if (kernel != LinearKernel::Training && kernel != LinearKernel::TrainingTf32)
    fail("[linear] the backward takes the Training or TrainingTf32 kernel");
  if (W.rank() != 2) fail("[linear] weight must be 2-D, got {}", shape_str(W.shape()));
  const int64_t n = W.dim(0), k = W.dim(1), m = x.rows;
  const Device dev = W.device();
  check_shape("linear", "x", x, m, k, dev);
  check_shape("linear", "d_y", d_y, m, n, dev);
  if (d_x.ptr) check_shape("linear", "d_x", d_x, m, k, dev);
  if (d_W.shape() != W.shape())
    fail("[linear] d_W is {}, expected {}", shape_str(d_W.shape()), shape_str(W.shape()));
  check_len("linear", "d_W", d_W, W.numel(), dev);
  // x and W in one dtype: fp32, or on the GPU bf16 / f16 (mixed precision); gradients fp32.
  if (dev == Device::CPU || !(W.dtype() == DType::BF16 || W.dtype() == DType::F16))
    check_dtype("linear", "W", W.dtype(), DType::F32);
  check_dtype("linear", "x", x.dtype, W.dtype());
  // d_y fp32, or already rounded to W's dtype (cross_entropy writes the head's so).
  if (d_y.dtype != W.dtype()) check_dtype("linear", "d_y", d_y.dtype, DType::F32);
  // d_x fp32, or written (not added) rounded to W's dtype on the GPU, where only a narrow reader takes it.
  if (d_x.ptr) check_f32_or("linear", "d_x", d_x.dtype, dev == Device::CUDA && !add_dx, "W", W.dtype());
  if (dev == Device::CUDA) {
#if MAMBA2_HAVE_CUDA
    cuda::linear_backward(x.ptr, x.ld, W.raw(), W.dtype(), d_y.ptr, d_y.dtype, d_y.ld, d_x.ptr, d_x.dtype, d_x.ld,
                          d_W.data(), m, n, k, kernel == LinearKernel::TrainingTf32, add_dx);
#else
    no_cuda_backend(__func__);
#endif
    return;
  }
  cpu::linear_backward(x.data(), x.ld, W.data(), d_y.data(), d_y.ld, d_x.data(), d_x.ld, d_W.data(), m, n, k, add_dx);
}

void bias_backward(MatView d_y, Tensor& d_b) {
  const Device dev = d_b.device();
  check_len("linear", "d_bias", d_b, d_y.cols, dev);
  check_shape("linear", "d_y", d_y, d_y.rows, d_y.cols, dev);
  check_dtype("linear", "d_y", d_y.dtype, DType::F32);
  if (dev == Device::CUDA) {
#if MAMBA2_HAVE_CUDA
    cuda::bias_backward(d_y.data(), d_y.ld, d_y.rows, d_y.cols, d_b.data());
#else
    no_cuda_backend(__func__);
#endif
    return;
  }
  cpu::bias_backward(d_y.data(), d_y.ld, d_y.rows, d_y.cols, d_b.data());
}

}  // namespace mamba2::ops
