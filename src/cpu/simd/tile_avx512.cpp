// AVX-512 tiles: 12 rows × 32 columns, 24 zmm accumulators; each step loads two B vectors and
// broadcasts one A value per row. Compiled with -mavx512f -mfma (see src/CMakeLists.txt).
#include "cpu/simd/tile.h"

#if defined(__x86_64__)
#include <immintrin.h>

namespace mamba2::cpu::simd {

namespace {

constexpr int MR = 12, NR = 32;

template <int R>
void tile(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, bool accumulate) {
  __m512 c0[R], c1[R];
  if (accumulate) {
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      c0[i] = _mm512_loadu_ps(c + i * ldc);
      c1[i] = _mm512_loadu_ps(c + i * ldc + 16);
    }
  } else {
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) c0[i] = c1[i] = _mm512_setzero_ps();
  }
  for (int64_t p = 0; p < kc; ++p) {
    const __m512 b0 = _mm512_loadu_ps(b + p * NR), b1 = _mm512_loadu_ps(b + p * NR + 16);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const __m512 av = _mm512_set1_ps(a[p * MR + i]);
      c0[i] = _mm512_fmadd_ps(av, b0, c0[i]);
      c1[i] = _mm512_fmadd_ps(av, b1, c1[i]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
    _mm512_storeu_ps(c + i * ldc, c0[i]);
    _mm512_storeu_ps(c + i * ldc + 16, c1[i]);
  }
}

constexpr TileKernel kKernel{Isa::Avx512, MR, NR,
                             {nullptr, tile<1>, tile<2>, tile<3>, tile<4>, tile<5>, tile<6>, tile<7>, tile<8>, tile<9>,
                              tile<10>, tile<11>, tile<12>}};

}  // namespace

const TileKernel& tile_kernel_avx512() { return kKernel; }

}  // namespace mamba2::cpu::simd
#else
namespace mamba2::cpu::simd {
const TileKernel& tile_kernel_avx512() { return tile_kernel_scalar(); }
}  // namespace mamba2::cpu::simd
#endif
