// The activations' rounding of the bf16 × bf16 kernels (cpu/simd/bf16xbf16.h), which every kernel
// shares, and which instruction sets have them.
#include "cpu/simd/bf16xbf16.h"

#include "core/dtype.h"

namespace mamba2::cpu::simd {

void round_activations(const float* x, int64_t k, uint16_t* out) {
  int64_t j = 0;
  for (; j < k; ++j) out[j] = f32_to_bf16(x[j]);
  for (; j < bf16_padded(k); ++j) out[j] = 0;
}

const Bf16Kernels* bf16_kernels(Isa isa) {
  return isa == Isa::Avx512 && cpu_has_avx512_bf16() ? bf16_kernels_avx512bf16() : nullptr;
}

}  // namespace mamba2::cpu::simd
