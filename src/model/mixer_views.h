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

// Falcon-Mamba's weightless RMS norm of `src`'s rows (a column slice) into `dst` (contiguous, as
// the norm takes it): a norm of weight `ones` (1s, at least src.cols of them; the CPU only).
inline void weightless_rmsnorm(MatView src, Tensor& dst, const Tensor& ones, float eps) {
  for (int64_t r = 0; r < src.rows; ++r)
    std::memcpy(MatView::of(dst).row(r), src.row(r), size_t(src.cols) * sizeof(float));
  ops::add_rmsnorm(MatView::of(dst), {}, Tensor::borrow(ones.data(), {src.cols}, nullptr), MatView::of(dst), eps);
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
