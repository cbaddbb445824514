// Q8_0 and Q4_0 weights times activations quantized to 8 bits (llama.cpp's q8_0 · q8_0 and
// q4_0 · q8_0): integer dot products instead of widening every weight to fp32. One file per
// instruction set (q8x8_<isa>.cpp, each compiled for its own target and chosen at run time, as the
// tiles are), holding both formats' kernels.
//
// An activation row is quantized once per call, in blocks of 32 along k (ActBlock): d = max|x| /
// 127 in fp32, q = x / d rounded to nearest (ties to even), so |q| ≤ 127. Then, for row i of x and
// row r of W (n, k), both k/32 blocks, with w.q[j] the weight's integer (q8_0: the int8; q4_0: its
// nibble − 8, element j < 16 the low nibble of byte j, element j + 16 the high one):
//   isum_b = Σ_{j<32} w.q[j] · x.q[j]                    (exact in int32: |isum_b| < 2^20)
//   c_0 = 0,  c_{b+1} = fma(float(isum_b), fl(w.d_b · x.d_b), c_b),  y[i, r] = c_{k/32}
// with w.d the block's fp16 scale widened. The order is fixed by k alone: every instruction set,
// the prefill and the decode kernels, any row count and any band give each output the same bits
// (the scalar file is the reference the others are tested against). Non-finite activations give
// their block d = NaN and q = 0, so their outputs are NaN, as fp32 would give.
#pragma once
#include <cstdint>

#include "core/dtype.h"
#include "cpu/simd/isa.h"

namespace mamba2::cpu::simd {

struct ActBlock {
  float d;
  int32_t sum;  // Σ q: kernels that multiply unsigned w + c (q8: c = 128, q4: its nibbles, c = 8) subtract c·sum
  int8_t q[kQuantBlock];
};
static_assert(sizeof(ActBlock) == 40);

// One row of k values (a multiple of 32) into k/32 blocks; plain C++, the same bits everywhere.
void quantize_activations(const float* x, int64_t k, ActBlock* out);

// y[i·ldy + r] for r in [r_begin, r_end) and the i < MI rows of x (MI = 1, 2, 4, 8; row i's blocks
// at x + i·ldx). W (n, k) as k/32 blocks a row.
template <class Block>
using Int8RowsFn = void (*)(const ActBlock* x, int64_t ldx, const Block* W, float* y, int64_t ldy,
                            int64_t r_begin, int64_t r_end, int64_t k);
// The GEMM block of prefill: y (rows, cols) = rows of x · rows [0, cols) of W, cols ≤ gemm_cols,
// with `scratch` gemm_scratch_bytes of the caller's memory (the kernel files allocate nothing).
template <class Block>
using Int8GemmFn = void (*)(const ActBlock* x, int64_t ldx, int64_t rows, const Block* W, int64_t cols,
                            int64_t k, float* y, int64_t ldy, void* scratch);

// One weight format's kernels.
template <class Block>
struct Int8Set {
  // At least as fast as fp32 activations at every batch measured (bench/RESULTS.md, "q8 × int8",
  // "q4 × int8" and "AVX2's q8 default"): the default there (ops::int8_activations). VNNI's and
  // AVX2's for both formats; NEON's are unmeasured.
  bool default_on;
  Int8RowsFn<Block> rows[4];  // [0]: one row of x, [1]: two, [2]: four, [3]: eight
  Int8GemmFn<Block> gemm;     // null where the rows kernel is as fast (prefill then goes through rows)
  int64_t gemm_rows, gemm_cols, gemm_scratch_bytes;  // a block's preferred row multiple, most columns
  int64_t gemm_min_rows;  // prefill takes the GEMM from this many rows on (it packs W's panels per call)
};

struct Int8Kernels {
  const char* name;
  Int8Set<Q8Block> q8;
  Int8Set<Q4Block> q4;
};

// The kernels of an instruction set (which must be available): AVX-512 takes the VNNI file where
// the CPU has AVX512_VNNI, else AVX2's.
const Int8Kernels& int8_kernels(Isa isa);

const Int8Kernels& int8_kernels_scalar();
const Int8Kernels& int8_kernels_avx2();
const Int8Kernels& int8_kernels_avx512vnni();
const Int8Kernels& int8_kernels_neon();

}  // namespace mamba2::cpu::simd
