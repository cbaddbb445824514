// Portable row kernels: 16 lanes as an array, std::fma per lane. The reference the vector files
// equal bit for bit.
#include <cmath>
#include <cstring>

#include "cpu/simd/rows.h"

namespace mamba2::cpu::simd {

namespace {

struct V {
  static constexpr bool kEightRows = false;
  struct R {
    float v[16];
  };
  static R zero() { return R{}; }
  static R load(const float* p) {
    R r;
    std::memcpy(r.v, p, sizeof(r.v));
    return r;
  }
  static R load(const uint16_t* p) {
    R r;
    for (int l = 0; l < 16; ++l) r.v[l] = bf16_to_f32(p[l]);
    return r;
  }
  static R load_q8(const int8_t* p, float d) {
    R r;
    for (int l = 0; l < 16; ++l) r.v[l] = float(p[l]) * d;
    return r;
  }
  static void load_q4(const uint8_t* qs, float d, R& lo, R& hi) {
    for (int l = 0; l < 16; ++l) {
      lo.v[l] = float(int(qs[l] & 15) - 8) * d;
      hi.v[l] = float(int(qs[l] >> 4) - 8) * d;
    }
  }
  static R fma(R a, R b, R c) {
    for (int l = 0; l < 16; ++l) c.v[l] = std::fma(a.v[l], b.v[l], c.v[l]);
    return c;
  }
  static R add(R a, R b) {
    for (int l = 0; l < 16; ++l) a.v[l] += b.v[l];
    return a;
  }
  static float halve(R a) {
    for (int w = 8; w >= 1; w /= 2)
      for (int l = 0; l < w; ++l) a.v[l] += a.v[l + w];
    return a.v[0];
  }
  static float half(uint16_t h) { return f16_to_f32(h); }
  static void prefetch(const char* p) { __builtin_prefetch(p); }
};

#include "cpu/simd/rows_impl.h"

constexpr RowKernels kKernels = make_row_kernels(Isa::Scalar);

}  // namespace

const RowKernels& row_kernels_scalar() { return kKernels; }

const RowKernels& row_kernels(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return row_kernels_avx512();
    case Isa::Avx2: return row_kernels_avx2();
    case Isa::Neon: return row_kernels_neon();
    case Isa::Scalar: break;
  }
  return row_kernels_scalar();
}

}  // namespace mamba2::cpu::simd
