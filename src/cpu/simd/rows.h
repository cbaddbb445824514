// The streaming (decode) kernel of cpu/linear.cpp, y = x @ Wᵀ for a few rows of x, one file per
// instruction set (rows_<isa>.cpp, each compiled for its own target and chosen at run time, as
// the tiles are). Each row of W is one sequential stream, prefetched 4 KB ahead in software: the
// hardware prefetcher alone left the q8 and bf16 streams latency-bound (q8 130m decode 79 → 122
// tokens/s with it, 2 threads; bench/RESULTS.md).
//
// A band computes y[i·ldy + r] = row r of W · row i of x for r in [r_begin, r_end), i < mi rows
// (mi = 1, 2, 4 or 8), every element summed the same way whatever mi, the band or the instruction
// set: 32 lanes, lane l taking the products of columns j ≡ l (mod 32) below k rounded down to 32
// as one fused multiply-add chain in order of j; then t_l = lane l + lane l+16 for l < 16, halved
// four times (t_l ← t_l + t_{l+w} for l < w, w = 8, 4, 2, 1); then the remaining columns as fused
// multiply-adds in order from t_0. The scalar file is
// the reference the vector files equal bit for bit. bf16 weights are widened exactly and Q8_0 and
// Q4_0 blocks dequantized exactly (a block is one 32-column step; d·q is exact in fp32), so each
// weight type computes the fp32 arithmetic on its widened weights.
#pragma once
#include <cstdint>

#include "core/dtype.h"
#include "cpu/simd/isa.h"

namespace mamba2::cpu::simd {

template <class Wt>
using RowsFn = void (*)(const float* x, int64_t ldx, const Wt* W, float* y, int64_t ldy, int64_t r_begin,
                        int64_t r_end, int64_t k);

struct RowKernels {
  Isa isa;
  // [0]: one row of x, [1]: two, [2]: four, [3]: eight. W is (n, k): floats, bf16 bits, or k/32
  // Q8_0 or Q4_0 blocks a row.
  RowsFn<float> f32[4];
  RowsFn<uint16_t> bf16[4];
  RowsFn<Q8Block> q8[4];
  RowsFn<Q4Block> q4[4];
};

// The row kernels of an instruction set (which must be available: see available_isas()).
const RowKernels& row_kernels(Isa isa);

const RowKernels& row_kernels_scalar();
const RowKernels& row_kernels_avx2();
const RowKernels& row_kernels_avx512();
const RowKernels& row_kernels_neon();

}  // namespace mamba2::cpu::simd
