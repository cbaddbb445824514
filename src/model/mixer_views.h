// Views into one layer's mixer activations, shared by the inference forward (mamba2_lm.cpp)
// and the training pass (mamba2_grad.cpp): the column slices of in_proj's and the conv's
// outputs, and the scan's weights.
#pragma once
#include <cstring>

#include "core/view.h"
#include "mamba2/config.h"
#include "model/weights.h"
#include "ops/ops.h"

namespace mamba2 {

inline ops::SsdWeights ssd_weights(const LayerWeights& l, const ModelConfig& c) {
  return {l.dt_bias, l.A_log, l.D, c.headdim, c.ngroups, c.d_state, c.dt_limit_min, c.dt_limit_max};
}

// Mamba-1: the selective scan's weights.
inline ops::SelectiveScanWeights selective_weights(const LayerWeights& l, const ModelConfig& c) {
  return {l.A_log, c.complex_scan ? &l.A_imag : nullptr, l.D, l.dt_bias};
}

// Falcon-Mamba's weightless RMS norm of `src`'s rows (a column slice, fp32) into `dst` (fp32,
// contiguous): copied into `scratch` (at least src.cols wide, contiguous, as the norm takes its
// input), then a norm of weight `ones` (1s, at least src.cols of them), on src's device.
inline void weightless_rmsnorm(MatView src, Tensor& scratch, Tensor& dst, const Tensor& ones, float eps) {
  const MatView in{scratch.raw(), src.rows, src.cols, src.cols, scratch.device(), DType::F32};
  ops::cast(src, in);
  ops::add_rmsnorm(in, {}, ones.prefix(src.cols), MatView::of(dst), eps);
}

// Column slices of in_proj's output: z | xBC | dt.
struct Projections {
  MatView z, xBC, dt;
};
inline Projections split(MatView zxbcdt, const ModelConfig& c) {
  return {zxbcdt.cols_slice(0, c.d_inner()), zxbcdt.cols_slice(c.d_inner(), c.conv_dim()),
          zxbcdt.cols_slice(c.d_inner() + c.conv_dim(), c.nheads())};
}

// Column slices of the conv's output: x | B | C.
struct ConvOut {
  MatView x, B, C;
};
inline ConvOut split_conv(MatView xbc, const ModelConfig& c) {
  const int64_t gn = c.ngroups * c.d_state;
  return {xbc.cols_slice(0, c.d_inner()), xbc.cols_slice(c.d_inner(), gn), xbc.cols_slice(c.d_inner() + gn, gn)};
}

}  // namespace mamba2
