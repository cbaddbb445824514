// AVX2 tiles: 6 rows × 16 columns, 12 ymm accumulators (of 16 registers); each step loads two B
// vectors and broadcasts one A value per row. Compiled with -mavx2 -mfma (see src/CMakeLists.txt).
#include "cpu/simd/tile.h"

#if defined(__x86_64__)
#include <immintrin.h>

namespace mamba2::cpu::simd {

namespace {

constexpr int MR = 6, NR = 16;

template <int R>
void tile(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, bool accumulate) {
  __m256 c0[R], c1[R];
  if (accumulate) {
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      c0[i] = _mm256_loadu_ps(c + i * ldc);
      c1[i] = _mm256_loadu_ps(c + i * ldc + 8);
    }
  } else {
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) c0[i] = c1[i] = _mm256_setzero_ps();
  }
  for (int64_t p = 0; p < kc; ++p) {
    const __m256 b0 = _mm256_loadu_ps(b + p * NR), b1 = _mm256_loadu_ps(b + p * NR + 8);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const __m256 av = _mm256_broadcast_ss(a + p * MR + i);
      c0[i] = _mm256_fmadd_ps(av, b0, c0[i]);
      c1[i] = _mm256_fmadd_ps(av, b1, c1[i]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
    _mm256_storeu_ps(c + i * ldc, c0[i]);
    _mm256_storeu_ps(c + i * ldc + 8, c1[i]);
  }
}

constexpr TileKernel kKernel{Isa::Avx2, MR, NR, {nullptr, tile<1>, tile<2>, tile<3>, tile<4>, tile<5>, tile<6>}};

}  // namespace

const TileKernel& tile_kernel_avx2() { return kKernel; }

}  // namespace mamba2::cpu::simd
#else
namespace mamba2::cpu::simd {
const TileKernel& tile_kernel_avx2() { return tile_kernel_scalar(); }
}  // namespace mamba2::cpu::simd
#endif
