// NEON row kernels (arm64): four q registers per 16 lanes, fused vfmaq.
#include "cpu/simd/rows.h"

#if defined(__aarch64__)
#include <arm_neon.h>

#include <cmath>
#include <cstring>

namespace mamba2::cpu::simd {

namespace {

struct V {
  static constexpr bool kEightRows = false;
  struct R {
    float32x4_t v[4];
  };
  static R zero() { return {{vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)}}; }
  static R load(const float* p) { return {{vld1q_f32(p), vld1q_f32(p + 4), vld1q_f32(p + 8), vld1q_f32(p + 12)}}; }
  static R load(const uint16_t* p) {
    const uint16x8_t a = vld1q_u16(p), b = vld1q_u16(p + 8);
    return {{vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(a), 16)), vreinterpretq_f32_u32(vshll_n_u16(vget_high_u16(a), 16)),
             vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(b), 16)), vreinterpretq_f32_u32(vshll_n_u16(vget_high_u16(b), 16))}};
  }
  static R load_q8(const int8_t* p, float d) { return widen_s8(vld1q_s8(p), d); }
  static R widen_s8(int8x16_t q, float d) {
    const int16x8_t lo = vmovl_s8(vget_low_s8(q)), hi = vmovl_s8(vget_high_s8(q));
    return {{vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))), d), vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_high_s16(lo))), d),
             vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))), d), vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_high_s16(hi))), d)}};
  }
  static void load_q4(const uint8_t* qs, float d, R& lo, R& hi) {
    const uint8x16_t b = vld1q_u8(qs);
    const int8x16_t eight = vdupq_n_s8(8);
    const int8x16_t l = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(15))), eight);
    const int8x16_t h = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(b, 4)), eight);
    lo = widen_s8(l, d);
    hi = widen_s8(h, d);
  }
  static R fma(R a, R b, R c) {
    for (int q = 0; q < 4; ++q) c.v[q] = vfmaq_f32(c.v[q], a.v[q], b.v[q]);
    return c;
  }
  static R add(R a, R b) {
    for (int q = 0; q < 4; ++q) a.v[q] = vaddq_f32(a.v[q], b.v[q]);
    return a;
  }
  static float halve(R a) {
    const float32x4_t s4 = vaddq_f32(vaddq_f32(a.v[0], a.v[2]), vaddq_f32(a.v[1], a.v[3]));
    const float32x2_t s2 = vadd_f32(vget_low_f32(s4), vget_high_f32(s4));
    return vget_lane_f32(s2, 0) + vget_lane_f32(s2, 1);
  }
  static float half(uint16_t h) { return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0); }
  static void prefetch(const char* p) { __builtin_prefetch(p); }
};

#include "cpu/simd/rows_impl.h"

constexpr RowKernels kKernels = make_row_kernels(Isa::Neon);

}  // namespace

const RowKernels& row_kernels_neon() { return kKernels; }

}  // namespace mamba2::cpu::simd
#else
namespace mamba2::cpu::simd {
const RowKernels& row_kernels_neon() { return row_kernels_scalar(); }
}  // namespace mamba2::cpu::simd
#endif
