// Portable Q8_0 × int8 kernels (cpu/simd/q8x8.h): the definition as plain loops, the reference the
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

template <int MI>
void rows(const ActBlock* x, int64_t ldx, const Q8Block* W, float* y, int64_t ldy, int64_t r_begin, int64_t r_end,
          int64_t k) {
  const int64_t nb = k / kQuantBlock;
  for (int64_t r = r_begin; r < r_end; ++r) {
    const Q8Block* w = W + r * nb;
    for (int i = 0; i < MI; ++i) {
      const ActBlock* xi = x + i * ldx;
      float c = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        int32_t s = 0;
        for (int j = 0; j < kQuantBlock; ++j) s += int32_t(w[b].q[j]) * xi[b].q[j];
        c = std::fma(float(s), f16_to_f32(w[b].d) * xi[b].d, c);
      }
      y[i * ldy + r] = c;
    }
  }
}

const Q8x8Kernels kKernels{"scalar", false, {rows<1>, rows<2>, rows<4>, rows<8>}, nullptr, 0, 0, 0};

}  // namespace

const Q8x8Kernels& q8x8_kernels_scalar() { return kKernels; }

const Q8x8Kernels& q8x8_kernels(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return cpu_has_avx512_vnni() ? q8x8_kernels_avx512vnni() : q8x8_kernels_avx2();
    case Isa::Avx2: return q8x8_kernels_avx2();
    case Isa::Neon: return q8x8_kernels_neon();
    case Isa::Scalar: break;
  }
  return q8x8_kernels_scalar();
}

}  // namespace mamba2::cpu::simd
