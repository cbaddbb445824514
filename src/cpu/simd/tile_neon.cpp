// NEON tiles (arm64): 8 rows × 12 columns, 24 q-register accumulators (of 32); each step loads
// three B vectors and two A vectors, and multiplies by A's lanes (fmla by element, fused).
#include "cpu/simd/tile.h"

#if defined(__aarch64__)
#include <arm_neon.h>

namespace mamba2::cpu::simd {

namespace {

constexpr int MR = 8, NR = 12;

template <int R>
void tile(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, bool accumulate) {
  float32x4_t acc[R][3];
  for (int i = 0; i < R; ++i)
    for (int v = 0; v < 3; ++v) acc[i][v] = accumulate ? vld1q_f32(c + i * ldc + 4 * v) : vdupq_n_f32(0.0f);
  for (int64_t p = 0; p < kc; ++p) {
    const float32x4_t b0 = vld1q_f32(b + p * NR), b1 = vld1q_f32(b + p * NR + 4), b2 = vld1q_f32(b + p * NR + 8);
    for (int i = 0; i < R; ++i) {
      const float32x4_t av = vdupq_n_f32(a[p * MR + i]);
      acc[i][0] = vfmaq_f32(acc[i][0], b0, av);
      acc[i][1] = vfmaq_f32(acc[i][1], b1, av);
      acc[i][2] = vfmaq_f32(acc[i][2], b2, av);
    }
  }
  for (int i = 0; i < R; ++i)
    for (int v = 0; v < 3; ++v) vst1q_f32(c + i * ldc + 4 * v, acc[i][v]);
}

constexpr TileKernel kKernel{Isa::Neon, MR, NR,
                             {nullptr, tile<1>, tile<2>, tile<3>, tile<4>, tile<5>, tile<6>, tile<7>, tile<8>}};

}  // namespace

const TileKernel& tile_kernel_neon() { return kKernel; }

}  // namespace mamba2::cpu::simd
#else
namespace mamba2::cpu::simd {
const TileKernel& tile_kernel_neon() { return tile_kernel_scalar(); }
}  // namespace mamba2::cpu::simd
#endif
