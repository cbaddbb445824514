// Register tiles of C = A·B for the row-invariant GEMM in cpu/linear.cpp, one file per
// instruction set (tile_<isa>.cpp, each compiled for its own target). They hold only leaf
// functions of intrinsics: inline code compiled for AVX-512 must never be what a machine
// without it ends up calling.
//
// A tile computes `rows` ≤ mr rows by nr columns:
//   c[i·ldc + j] = (accumulate ? c[i·ldc + j] : 0) + Σ_{p < kc} a[p·mr + i] · b[p·nr + j]
// as ONE chain of fused multiply-adds per element, in order of p. Every instruction set, tile
// shape and row count therefore gives every element the same bits: the scalar std::fma loop
// is the reference the tests hold the others to.
//   a: the packed A panel, kc × mr (p-major; rows past `rows` are not read)
//   b: the packed B panel, kc × nr (p-major)
#pragma once
#include <cstdint>

#include "cpu/simd/isa.h"

namespace mamba2::cpu::simd {

constexpr int kMaxTileRows = 16;
using TileFn = void (*)(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, bool accumulate);

struct TileKernel {
  Isa isa;
  int mr, nr;
  TileFn rows[kMaxTileRows + 1];  // rows[r]: a tile of r rows, 1 ≤ r ≤ mr
};

// The tile kernel of an instruction set (which must be available: see available_isas()).
const TileKernel& tile_kernel(Isa isa);

const TileKernel& tile_kernel_scalar();
const TileKernel& tile_kernel_avx2();
const TileKernel& tile_kernel_avx512();
const TileKernel& tile_kernel_neon();

}  // namespace mamba2::cpu::simd
