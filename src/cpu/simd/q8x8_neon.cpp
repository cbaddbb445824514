// NEON Q8_0 × int8 kernels (arm64), one output at a time: a block's 32 products summed exactly by
// sdot where the compiler may use it (-march with dotprod), else by widening multiplies (vmull_s8:
// int16 products, pairwise added into int32), then the lanes added and the scale applied as
// cpu/simd/q8x8.h says.
#include "cpu/simd/q8x8.h"

#if defined(__aarch64__)
#include <arm_neon.h>

#include <cmath>

namespace mamba2::cpu::simd {

namespace {

inline int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t b) {
#if defined(__ARM_FEATURE_DOTPROD)
  return vdotq_s32(acc, a, b);
#else
  acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
  return vpadalq_s16(acc, vmull_s8(vget_high_s8(a), vget_high_s8(b)));
#endif
}

template <int MI>
void rows(const ActBlock* x, int64_t ldx, const Q8Block* W, float* y, int64_t ldy, int64_t r_begin, int64_t r_end,
          int64_t k) {
  const int64_t nb = k / kQuantBlock;
  for (int64_t r = r_begin; r < r_end; ++r) {
    const Q8Block* w = W + r * nb;
    float c[MI] = {};
    for (int64_t b = 0; b < nb; ++b) {
      const int8x16_t w0 = vld1q_s8(w[b].q), w1 = vld1q_s8(w[b].q + 16);
      const float dw = vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(w[b].d))), 0);
#pragma GCC unroll 8
      for (int i = 0; i < MI; ++i) {
        const ActBlock& xb = x[i * ldx + b];
        const int32x4_t s = dot16(dot16(vdupq_n_s32(0), w0, vld1q_s8(xb.q)), w1, vld1q_s8(xb.q + 16));
        c[i] = std::fma(float(vaddvq_s32(s)), dw * xb.d, c[i]);
      }
    }
    for (int i = 0; i < MI; ++i) y[i * ldy + r] = c[i];
  }
}

const Q8x8Kernels kKernels{"neon", false, {rows<1>, rows<2>, rows<4>, rows<8>}, nullptr, 0, 0, 0};

}  // namespace

const Q8x8Kernels& q8x8_kernels_neon() { return kKernels; }

}  // namespace mamba2::cpu::simd
#else
namespace mamba2::cpu::simd {
const Q8x8Kernels& q8x8_kernels_neon() { return q8x8_kernels_scalar(); }
}  // namespace mamba2::cpu::simd
#endif
