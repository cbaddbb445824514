// AVX2 row kernels: two ymm per 16 lanes. Compiled with -mavx2 -mfma -mf16c (see src/CMakeLists.txt).
#include "cpu/simd/rows.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include <cmath>
#include <cstring>

namespace mamba2::cpu::simd {

namespace {

struct V {
  static constexpr bool kEightRows = false;
  struct R {
    __m256 lo, hi;
  };
  static R zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
  static R load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
  static __m256 bf16x8(const uint16_t* p) {
    const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
  }
  static R load(const uint16_t* p) { return {bf16x8(p), bf16x8(p + 8)}; }
  static __m256 q8x8(const int8_t* p, __m256 d) {
    const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(q), d);
  }
  static R load_q8(const int8_t* p, float d) {
    const __m256 dv = _mm256_set1_ps(d);
    return {q8x8(p, dv), q8x8(p + 8, dv)};
  }
  // q·d − 8d in one fma is d·(q − 8) exactly (the exact value is representable).
  static void q4x8(const uint8_t* qs, __m256 d, __m256 minus_8d, __m256& lo, __m256& hi) {
    const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(qs)));
    lo = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(b, _mm256_set1_epi32(15))), d, minus_8d);
    hi = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4)), d, minus_8d);
  }
  static void load_q4(const uint8_t* qs, float d, R& lo, R& hi) {
    const __m256 dv = _mm256_set1_ps(d), m8d = _mm256_set1_ps(-8.0f * d);
    q4x8(qs, dv, m8d, lo.lo, hi.lo);
    q4x8(qs + 8, dv, m8d, lo.hi, hi.hi);
  }
  static R fma(R a, R b, R c) { return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)}; }
  static R add(R a, R b) { return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
  static float halve(R a) {
    const __m256 s8 = _mm256_add_ps(a.lo, a.hi);
    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
  }
  static float half(uint16_t h) { return _cvtsh_ss(h); }
  static void prefetch(const char* p) { _mm_prefetch(p, _MM_HINT_T0); }
};

#include "cpu/simd/rows_impl.h"

constexpr RowKernels kKernels = make_row_kernels(Isa::Avx2);

}  // namespace

const RowKernels& row_kernels_avx2() { return kKernels; }

}  // namespace mamba2::cpu::simd
#else
namespace mamba2::cpu::simd {
const RowKernels& row_kernels_avx2() { return row_kernels_scalar(); }
}  // namespace mamba2::cpu::simd
#endif
