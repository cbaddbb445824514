// Op front ends: check shapes and devices, name the op in every error, dispatch to the kernel of
// the tensor's device (src/cpu/<stem>.cpp). One section per op; the stems match the kernel files.
#pragma once
#include <cstdint>
#include <span>

#include "core/tensor.h"
#include "core/view.h"

namespace mamba2::ops {

// embedding: out (n, d) = table[ids]; every id must be a row of the table.
void embedding(const Tensor& table, std::span<const int32_t> ids, MatView out);

// rmsnorm: residual += h (h.data may be null); out = rmsnorm(residual) * w.
void add_rmsnorm(MatView residual, MatView h, const Tensor& w, MatView out, float eps);
// rmsnorm: out = rmsnorm per group (y * silu(z)) * w.
void gated_rmsnorm(MatView y, MatView z, const Tensor& w, MatView out, int64_t ngroups, float eps);

// linear: y = x @ Wᵀ, W (n, k). Prefill uses Gemm (many rows per sequence), decode Streaming
// (one row per sequence, bound by reading W). The kernel is chosen by the caller, not by the
// row count, so that a sequence's results do not depend on the batch it runs in.
enum class LinearKernel { Gemm, Streaming };
void linear(MatView x, const Tensor& W, MatView y, LinearKernel kernel);

// causal_conv1d: depthwise causal conv + bias + SiLU over one sequence; state ← last K-1 inputs.
void causal_conv1d(MatView in, const Tensor& w, const Tensor& bias, MatView out, MatView state);
// causal_conv1d: one token for each sequence; states (batch, (K-1)·C) indexed by slots.
void causal_conv1d_step(MatView x, const Tensor& w, const Tensor& bias, MatView out, MatView states,
                        std::span<const int64_t> slots);

struct SsdWeights {
  const Tensor& dt_bias;  // (nheads)
  const Tensor& A_log;    // (nheads)
  const Tensor& D;        // (nheads)
  int64_t headdim, ngroups, d_state;
  double dt_min, dt_max;
};
// ssd_scan: chunked scan of one sequence; state (nheads, headdim·d_state) in/out.
void ssd_scan(const SsdWeights& w, MatView x, MatView B, MatView C, MatView dt, MatView y, MatView state,
              int64_t chunk_size);
// ssd_scan: one token per sequence; states (batch, nheads·headdim·d_state) indexed by slots.
void ssd_step(const SsdWeights& w, MatView x, MatView B, MatView C, MatView dt, MatView y, MatView states,
              std::span<const int64_t> slots);

}  // namespace mamba2::ops
