// Small numeric helpers shared by the CPU kernels.
#pragma once
#include <algorithm>
#include <cmath>

namespace mamba2::cpu {

inline float silu(float v) { return v / (1.0f + std::exp(-v)); }

// softplus as torch.nn.functional.softplus (threshold 20), then the dt_limit clamp.
inline float dt_activation(float raw, float bias, float lo, float hi) {
  const float v = raw + bias;
  const float sp = v > 20.0f ? v : std::log1p(std::exp(v));
  return std::clamp(sp, lo, hi);
}

}  // namespace mamba2::cpu
