// Portable tiles: std::fma per element (hardware FMA where the target has it). The reference
// the vector tiles must equal bit for bit.
#include <cmath>

#include "cpu/simd/tile.h"

namespace mamba2::cpu::simd {

namespace {

constexpr int MR = 4, NR = 8;

template <int R>
void tile(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, bool accumulate) {
  float acc[R][NR];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = accumulate ? c[i * ldc + j] : 0.0f;
  for (int64_t p = 0; p < kc; ++p)
    for (int i = 0; i < R; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] = std::fma(a[p * MR + i], b[p * NR + j], acc[i][j]);
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < NR; ++j) c[i * ldc + j] = acc[i][j];
}

constexpr TileKernel kKernel{Isa::Scalar, MR, NR, {nullptr, tile<1>, tile<2>, tile<3>, tile<4>}};

}  // namespace

const TileKernel& tile_kernel_scalar() { return kKernel; }

const TileKernel& tile_kernel(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return tile_kernel_avx512();
    case Isa::Avx2: return tile_kernel_avx2();
    case Isa::Neon: return tile_kernel_neon();
    case Isa::Scalar: break;
  }
  return tile_kernel_scalar();
}

}  // namespace mamba2::cpu::simd
