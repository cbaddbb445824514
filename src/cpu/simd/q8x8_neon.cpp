// NEON Q8_0 and Q4_0 × int8 kernels (arm64), one output at a time: a block's 32 products summed
// exactly by sdot where the compiler may use it (-march with dotprod), else by widening multiplies
// (vmull_s8: int16 products, pairwise added into int32), then the lanes added and the scale applied
// as cpu/simd/q8x8.h says. A Q4_0 block's nibbles become signed bytes (q − 8) first.
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

// A block's weights as two vectors of 16 signed bytes (elements 0–15, 16–31).
inline void unpack(const Q8Block& w, int8x16_t& lo, int8x16_t& hi) {
  lo = vld1q_s8(w.q);
  hi = vld1q_s8(w.q + 16);
}
inline void unpack(const Q4Block& w, int8x16_t& lo, int8x16_t& hi) {
  const uint8x16_t q = vld1q_u8(w.qs), eight = vdupq_n_u8(8);
  lo = vreinterpretq_s8_u8(vsubq_u8(vandq_u8(q, vdupq_n_u8(15)), eight));
  hi = vreinterpretq_s8_u8(vsubq_u8(vshrq_n_u8(q, 4), eight));
}

template <class Block, int MI>
void rows(const ActBlock* x, int64_t ldx, const Block* W, float* y, int64_t ldy, int64_t r_begin, int64_t r_end,
          int64_t k) {
  const int64_t nb = k / kQuantBlock;
  for (int64_t r = r_begin; r < r_end; ++r) {
    const Block* w = W + r * nb;
    float c[MI] = {};
    for (int64_t b = 0; b < nb; ++b) {
      int8x16_t w0, w1;
      unpack(w[b], w0, w1);
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

constexpr Int8Kernels kKernels{
    "neon",
    {false, {rows<Q8Block, 1>, rows<Q8Block, 2>, rows<Q8Block, 4>, rows<Q8Block, 8>}, nullptr, 0, 0, 0, 0},
    {false, {rows<Q4Block, 1>, rows<Q4Block, 2>, rows<Q4Block, 4>, rows<Q4Block, 8>}, nullptr, 0, 0, 0, 0}};

}  // namespace

const Int8Kernels& int8_kernels_neon() { return kKernels; }

}  // namespace mamba2::cpu::simd
#else
namespace mamba2::cpu::simd {
const Int8Kernels& int8_kernels_neon() { return int8_kernels_scalar(); }
}  // namespace mamba2::cpu::simd
#endif
