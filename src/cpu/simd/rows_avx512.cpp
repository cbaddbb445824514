// AVX-512 row kernels: one zmm per 16 lanes. Compiled with -mavx512f -mfma -mf16c (see
// src/CMakeLists.txt); AVX-512F instructions only.
#include "cpu/simd/rows.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include <cmath>
#include <cstring>

// GCC 12's AVX-512 conversion intrinsics start from _mm512_undefined_*, which it then reports.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace mamba2::cpu::simd {

namespace {

struct V {
  static constexpr bool kEightRows = true;
  using R = __m512;
  static R zero() { return _mm512_setzero_ps(); }
  static R load(const float* p) { return _mm512_loadu_ps(p); }
  // bf16 bits zero-extended into the top half of each lane.
  static R load(const uint16_t* p) {
    const __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
  }
  static R load_q8(const int8_t* p, float d) {
    const __m512i q = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(q), _mm512_set1_ps(d));
  }
  // The block's 16 values (q − 8)·d (exact) as a table, looked up by each nibble: vpermps reads
  // only an index's low 4 bits, so the low nibbles need no mask.
  static void load_q4(const uint8_t* qs, float d, R& lo, R& hi) {
    const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
    const __m512 table = _mm512_mul_ps(
        _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7), _mm512_set1_ps(d));
    lo = _mm512_permutexvar_ps(b, table);
    hi = _mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), table);
  }
  static R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static R add(R a, R b) { return _mm512_add_ps(a, b); }
  static float halve(R a) {
    const __m256 hi8 = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
    const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(a), hi8);
    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
  }
  static float half(uint16_t h) { return _cvtsh_ss(h); }
  static void prefetch(const char* p) { _mm_prefetch(p, _MM_HINT_T0); }
};

#include "cpu/simd/rows_impl.h"

constexpr RowKernels kKernels = make_row_kernels(Isa::Avx512);

}  // namespace

const RowKernels& row_kernels_avx512() { return kKernels; }

}  // namespace mamba2::cpu::simd
#else
namespace mamba2::cpu::simd {
const RowKernels& row_kernels_avx512() { return row_kernels_scalar(); }
}  // namespace mamba2::cpu::simd
#endif
