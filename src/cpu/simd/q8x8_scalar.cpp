// Portable Q8_0 and Q4_0 × int8 kernels (cpu/simd/q8x8.h): the definition as plain loops, the reference the
// vector files equal bit for bit; and the activations' quantization, which every instruction set
// shares.
#include <cmath>

#include "cpu/simd/q8x8.h"

namespace mamba2::cpu::simd {

void quantize_activations(const float* x, int64_t k, ActBlock* out) {
  for (int64_t b = 0; b < k / kQuantBlock; ++b, x += kQuantBlock) {
    ActBlock& blk = out[b];
    float amax = 0.0f;
    bool finite = true;
    for (int j = 0; j < kQuantBlock; ++j) {
      const float a = std::fabs(x[j]);
      amax = a > amax ? a : amax;  // not std::fmax: GCC calls libm for it
      finite = finite && std::isfinite(x[j]);
    }
    blk.sum = 0;
    const float d = amax / 127.0f;
    if (!finite || d == 0.0f) {
      blk.d = finite ? 0.0f : NAN;
      for (int j = 0; j < kQuantBlock; ++j) blk.q[j] = 0;
      continue;
    }
    blk.d = d;
    for (int j = 0; j < kQuantBlock; ++j) {
      // |x / d| ≤ 127·(1 + 2^-23)²: it rounds to at most 127 in magnitude, and the clamp only documents that.
      const float r = std::nearbyint(x[j] / d), q = r > 127.0f ? 127.0f : r < -127.0f ? -127.0f : r;
      blk.q[j] = int8_t(q);
      blk.sum += blk.q[j];
    }
  }
}

namespace {

// Block b's element j as an integer (cpu/simd/q8x8.h).
inline int weight(const Q8Block& w, int j) { return w.q[j]; }
inline int weight(const Q4Block& w, int j) { return (j < 16 ? w.qs[j] & 15 : w.qs[j - 16] >> 4) - 8; }

template <class Block, int MI>
void rows(const ActBlock* x, int64_t ldx, const Block* W, float* y, int64_t ldy, int64_t r_begin, int64_t r_end,
          int64_t k) {
  const int64_t nb = k / kQuantBlock;
  for (int64_t r = r_begin; r < r_end; ++r) {
    const Block* w = W + r * nb;
    for (int i = 0; i < MI; ++i) {
      const ActBlock* xi = x + i * ldx;
      float c = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        int32_t s = 0;
        for (int j = 0; j < kQuantBlock; ++j) s += weight(w[b], j) * xi[b].q[j];
        c = std::fma(float(s), f16_to_f32(w[b].d) * xi[b].d, c);
      }
      y[i * ldy + r] = c;
    }
  }
}

constexpr Int8Kernels kKernels{
    "scalar",
    {false, {rows<Q8Block, 1>, rows<Q8Block, 2>, rows<Q8Block, 4>, rows<Q8Block, 8>}, nullptr, 0, 0, 0, 0},
    {false, {rows<Q4Block, 1>, rows<Q4Block, 2>, rows<Q4Block, 4>, rows<Q4Block, 8>}, nullptr, 0, 0, 0, 0}};

}  // namespace

const Int8Kernels& int8_kernels_scalar() { return kKernels; }

const Int8Kernels& int8_kernels(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return cpu_has_avx512_vnni() ? int8_kernels_avx512vnni() : int8_kernels_avx2();
    case Isa::Avx2: return int8_kernels_avx2();
    case Isa::Neon: return int8_kernels_neon();
    case Isa::Scalar: break;
  }
  return int8_kernels_scalar();
}

}  // namespace mamba2::cpu::simd
