#include <cstdint>
#include <utility>

#include "cpu/kernels.h"
#include "cuda/kernels.h"
#include "ops/check.h"
#include "ops/ops.h"

namespace mamba2::ops {

namespace {
void check_weights(const Tensor& w, const Tensor& bias, int64_t C, Device dev) {
  if (w.rank() != 2 || w.dim(0) != C) fail("[causal_conv1d] weight is {}, expected ({}, K)", shape_str(w.shape()), C);
  check_len("causal_conv1d", "weight", w, w.numel(), dev);
  check_len("causal_conv1d", "bias", bias, C, dev);
}

// The activations and states of a forward over `seqs` (fp32 on either device; the prefill's
// output on the GPU may be bf16 or f16, the SSD scan's operands there).
void check_forward(MatView in, MatView out, MatView states, const SeqBatch& seqs, int64_t K,
                   bool reduced_out = false) {
  const int64_t T = in.rows, C = in.cols;
  const Device dev = in.device;
  check_shape("causal_conv1d", "in", in, T, C, dev);
  check_shape("causal_conv1d", "out", out, T, C, dev);
  check_shape("causal_conv1d", "states", states, states.rows, (K - 1) * C, dev);
  check_dtype("causal_conv1d", "states", states.dtype, DType::F32);
  if (!(reduced_out && dev == Device::CUDA && (out.dtype == DType::BF16 || out.dtype == DType::F16)))
    check_dtype("causal_conv1d", "out", out.dtype, DType::F32);
  // in fp32, or (GPU) in out's dtype: mixed-precision training's in_proj output.
  check_f32_or("causal_conv1d", "in", in.dtype, reduced_out && dev == Device::CUDA, "out", out.dtype);
  if (states.ld != (K - 1) * C) fail("[causal_conv1d] states must be contiguous");
  seqs.check("causal_conv1d", T, dev, states.rows);
}
}  // namespace

void causal_conv1d(MatView in, const Tensor& w, const Tensor& bias, MatView out, MatView states,
                   const SeqBatch& seqs) {
  const int64_t C = in.cols;
  check_weights(w, bias, C, in.device);
  const int64_t K = w.dim(1);
  check_forward(in, out, states, seqs, K, true);
  if (in.device == Device::CUDA) {
#if MAMBA2_HAVE_CUDA
    cuda::causal_conv1d_forward(in.ptr, in.dtype, in.ld, w.data(), bias.data(), out.ptr, out.ld, out.dtype,
                                states.data(), seqs.packed(), C, K);
#else
    no_cuda_backend(__func__);
#endif
    return;
  }
  for (int64_t s = 0; s < seqs.count(); ++s) {
    const int64_t t0 = seqs.starts()[size_t(s)], L = seqs.lengths()[size_t(s)];
    cpu::causal_conv1d_forward(in.row(t0), in.ld, w.data(), bias.data(), out.row(t0), out.ld,
                               states.row(seqs.slots()[size_t(s)]), L, C, K);
  }
}

void causal_conv1d_step(MatView x, const Tensor& w, const Tensor& bias, MatView out, MatView states,
                        const SeqBatch& seqs) {
  const int64_t nb = x.rows, C = x.cols;
  check_weights(w, bias, C, x.device);
  const int64_t K = w.dim(1);
  check_forward(x, out, states, seqs, K);
  if (seqs.count() != nb) fail("[causal_conv1d] a decode step takes one token per sequence");
  if (x.device == Device::CUDA) {
#if MAMBA2_HAVE_CUDA
    cuda::causal_conv1d_step(x.data(), x.ld, w.data(), bias.data(), out.data(), out.ld, states.data(),
                             seqs.device_slots(), nb, C, K);
#else
    no_cuda_backend(__func__);
#endif
    return;
  }
  cpu::causal_conv1d_step(x.data(), x.ld, w.data(), bias.data(), out.data(), out.ld, states.data(), seqs.slots().data(),
                          nb, C, K);
}

void causal_conv1d_backward(MatView in, const Tensor& w, const Tensor& bias, MatView states, MatView d_out,
                            MatView d_in, Tensor& d_w, Tensor& d_bias, const SeqBatch& seqs) {
  const int64_t T = in.rows, C = in.cols;
  const Device dev = in.device;
  check_weights(w, bias, C, dev);
  const int64_t K = w.dim(1);
  for (auto [m, what] : {std::pair{&in, "in"}, {&d_out, "d_out"}, {&d_in, "d_in"}}) {
    check_shape("causal_conv1d", what, *m, T, C, dev);
    if (m == &d_out) check_dtype("causal_conv1d", what, m->dtype, DType::F32);
  }
  check_projection_operand_dtype("causal_conv1d", "d_in", d_in.dtype, dev);
  // in fp32, or (GPU) in d_in's dtype: mixed-precision training's in_proj output.
  check_f32_or("causal_conv1d", "in", in.dtype, dev == Device::CUDA, "d_in", d_in.dtype);
  if (d_w.shape() != w.shape())
    fail("[causal_conv1d] d_weight is {}, expected {}", shape_str(d_w.shape()), shape_str(w.shape()));
  check_len("causal_conv1d", "d_weight", d_w, w.numel(), dev);
  check_len("causal_conv1d", "d_bias", d_bias, C, dev);
  if (states.ptr) {
    check_shape("causal_conv1d", "states", states, states.rows, (K - 1) * C, dev);
    check_dtype("causal_conv1d", "states", states.dtype, DType::F32);
    if (states.ld != (K - 1) * C) fail("[causal_conv1d] states must be contiguous");
  }
  seqs.check("causal_conv1d", T, dev, states.ptr ? states.rows : INT64_MAX);
  if (T == 0) return;
  if (dev == Device::CUDA) {
#if MAMBA2_HAVE_CUDA
    cuda::causal_conv1d_backward(in.ptr, in.dtype, in.ld, w.data(), bias.data(), states.ptr ? states.data() : nullptr,
                                 d_out.data(), d_out.ld, d_in.ptr, d_in.dtype, d_in.ld, d_w.data(), d_bias.data(),
                                 seqs.packed(), C, K);
#else
    no_cuda_backend(__func__);
#endif
    return;
  }
  for (int64_t s = 0; s < seqs.count(); ++s) {
    const int64_t t0 = seqs.starts()[size_t(s)], L = seqs.lengths()[size_t(s)];
    cpu::causal_conv1d_backward(in.row(t0), in.ld, w.data(), bias.data(),
                                states.ptr ? states.row(seqs.slots()[size_t(s)]) : nullptr, d_out.row(t0), d_out.ld,
                                d_in.row(t0), d_in.ld, d_w.data(), d_bias.data(), L, C, K);
  }
}

}  // namespace mamba2::ops
