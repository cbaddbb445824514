#include "cpu/kernels.h"
#include "ops/check.h"
#include "ops/ops.h"

namespace mamba2::ops {

namespace {
void check_weights(const Tensor& w, const Tensor& bias, int64_t C) {
  if (w.rank() != 2 || w.dim(0) != C) fail("[causal_conv1d] weight is {}, expected ({}, K)", shape_str(w.shape()), C);
  check_len("causal_conv1d", "bias", bias, C);
}
}  // namespace

void causal_conv1d(MatView in, const Tensor& w, const Tensor& bias, MatView out, MatView state) {
  const int64_t L = in.rows, C = in.cols;
  check_weights(w, bias, C);
  const int64_t K = w.dim(1);
  check_shape("causal_conv1d", "out", out, L, C);
  check_shape("causal_conv1d", "state", state, K - 1, C);
  if (state.ld != C) fail("[causal_conv1d] state must be contiguous");
  cpu::causal_conv1d_forward(in.data, in.ld, w.data(), bias.data(), out.data, out.ld, state.data, L, C, K);
}

void causal_conv1d_step(MatView x, const Tensor& w, const Tensor& bias, MatView out, MatView states,
                        std::span<const int64_t> slots) {
  const int64_t nb = x.rows, C = x.cols;
  check_weights(w, bias, C);
  const int64_t K = w.dim(1);
  check_shape("causal_conv1d", "out", out, nb, C);
  check_shape("causal_conv1d", "states", states, states.rows, (K - 1) * C);
  if (int64_t(slots.size()) != nb) fail("[causal_conv1d] {} slots for {} tokens", slots.size(), nb);
  for (int64_t s : slots)
    if (s < 0 || s >= states.rows) fail("[causal_conv1d] slot {} outside the {} states", s, states.rows);
  if (states.ld != (K - 1) * C) fail("[causal_conv1d] states must be contiguous");
  cpu::causal_conv1d_step(x.data, x.ld, w.data(), bias.data(), out.data, out.ld, states.data, slots.data(), nb, C,
                          K);
}

void causal_conv1d_backward(MatView in, const Tensor& w, const Tensor& bias, MatView state, MatView d_out,
                            MatView d_in, Tensor& d_w, Tensor& d_bias) {
  const int64_t L = in.rows, C = in.cols;
  check_weights(w, bias, C);
  const int64_t K = w.dim(1);
  check_shape("causal_conv1d", "in", in, L, C);
  check_shape("causal_conv1d", "d_out", d_out, L, C);
  check_shape("causal_conv1d", "d_in", d_in, L, C);
  if (d_w.shape() != w.shape())
    fail("[causal_conv1d] d_weight is {}, expected {}", shape_str(d_w.shape()), shape_str(w.shape()));
  check_len("causal_conv1d", "d_bias", d_bias, C);
  if (state.data) {
    check_shape("causal_conv1d", "state", state, K - 1, C);
    if (state.ld != C) fail("[causal_conv1d] state must be contiguous");
  }
  cpu::causal_conv1d_backward(in.data, in.ld, w.data(), bias.data(), state.data, d_out.data, d_out.ld, d_in.data,
                              d_in.ld, d_w.data(), d_bias.data(), L, C, K);
}

}  // namespace mamba2::ops
