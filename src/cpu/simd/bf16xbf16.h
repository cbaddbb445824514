// bf16 weights times activations rounded to bf16: AVX-512 BF16's vdpbf16ps multiplies two pairs of
// bf16 values into each fp32 lane, so the weights are read as they are stored instead of widened
// to fp32 first (two fmas and the widening for every 32 weights become one instruction).
//
// An activation row is rounded to bf16 once per call (round_activations). Then, for row i of x and
// row r of W (n, k), with k padded by zeros to a multiple of 32 and dp the instruction's operation
// on one fp32 lane (the two products, exact in fp32, added to the lane as the CPU adds them):
//   a_l = 0,  a_l ← dp(a_l, W[r, 32c + 2l .. +1], x[i, 32c + 2l .. +1])  for c = 0, 1, … in order
// for the 16 lanes l; then t_l = a_l + a_{l+8} for l < 8, halved three more times (t_l ← t_l +
// t_{l+w}, w = 4, 2, 1) into y[i, r]. The order is fixed by k alone: decode and prefill, any row
// count and any band give each output the same bits. How dp rounds the sum of its two products
// and whether it flushes denormals is the CPU's (Intel and AMD need not agree): the tests hold the
// kernels to a double-precision sum with a tolerance derived from this order, and to themselves
// bit for bit across row counts.
//
// Only CPUs with AVX512_BF16 (and AVX512BW, for the masked tail loads) have these kernels; elsewhere
// bf16 weights keep fp32 activations against the widened weights (cpu/simd/rows.h, tile.h).
#pragma once
#include <cstdint>

#include "cpu/simd/isa.h"

namespace mamba2::cpu::simd {

// k rounded up to a whole number of 32-value steps: the length of a rounded activation row.
inline int64_t bf16_padded(int64_t k) { return (k + 31) / 32 * 32; }

// One row of k fp32 values to bf16 (round to nearest even, NaN kept NaN), then zeros up to
// bf16_padded(k); plain C++, the same bits everywhere.
void round_activations(const float* x, int64_t k, uint16_t* out);

// y[i·ldy + r] for r in [r_begin, r_end) and the i < MI rows of x (MI = 1, 2, 4, 8; row i's
// bf16_padded(k) values at x + i·ldx). W (n, k) bf16 bits.
using Bf16RowsFn = void (*)(const uint16_t* x, int64_t ldx, const uint16_t* W, float* y, int64_t ldy,
                            int64_t r_begin, int64_t r_end, int64_t k);

struct Bf16Kernels {
  const char* name;
  // Faster than fp32 activations in prefill and at batch 8, as fast at batch 1, which waits on
  // memory (bench/RESULTS.md, "bf16 × bf16"): the default there (ops::bf16_rounded_activations).
  bool default_on;
  Bf16RowsFn rows[4];     // decode: [0] one row of x, [1] two, [2] four, [3] eight
  Bf16RowsFn prefill8;  // prefill: eight rows of x, blocked for W's band in cache (the same bits)
};

// The kernels of an instruction set, or null where it has none: AVX-512 on a CPU with
// AVX512_BF16 only.
const Bf16Kernels* bf16_kernels(Isa isa);

const Bf16Kernels* bf16_kernels_avx512bf16();  // null where not built for x86-64

}  // namespace mamba2::cpu::simd
