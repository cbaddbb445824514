// AVX-512 BF16 kernels of bf16 weights × bf16 activations (cpu/simd/bf16xbf16.h): one zmm of a W
// row's 32 values against the same 32 of an x row, vdpbf16ps into that output's 16 lanes. Compiled
// with -mavx512f -mavx512bw -mavx512bf16 -mfma (see src/CMakeLists.txt); only leaf functions of
// intrinsics (no inline code of shared headers, which a machine without AVX-512 could end up
// calling).
#include "cpu/simd/bf16xbf16.h"

#if defined(__x86_64__)
#include <immintrin.h>

// GCC 12's AVX-512 conversion intrinsics start from _mm512_undefined_*, which it then reports.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace mamba2::cpu::simd {

namespace {

// W's rows are read as one stream (a band's rows are contiguous), fetched this far ahead in
// software as the fp32 row kernels do (cpu/simd/rows_impl.h).
constexpr int64_t kPrefetchValues = 2048;

inline __m512bh bh(__m512i v) { return reinterpret_cast<__m512bh&>(v); }

// The definition's lane tree: l + l+8, then l + l+4, l + l+2, l + l+1.
inline float lanes_sum(__m512 a) {
  const __m256 hi8 = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
  const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(a), hi8);
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

// Rows [r, r + G) of W against the MI rows of x: G·MI independent accumulators, so the
// instruction's latency is hidden without splitting any one output's chain.
template <int MI, int G>
inline void group(const uint16_t* x, int64_t ldx, const uint16_t* W, float* y, int64_t ldy, int64_t r, int64_t k) {
  __m512 acc[MI][G];
#pragma GCC unroll 8
  for (int i = 0; i < MI; ++i)
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) acc[i][g] = _mm512_setzero_ps();
  const uint16_t* w = W + r * k;
  int64_t j = 0;
  for (; j + 32 <= k; j += 32) {
    __m512i wv[G];
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      _mm_prefetch(reinterpret_cast<const char*>(w + g * k + j + kPrefetchValues), _MM_HINT_T0);
      wv[g] = _mm512_loadu_si512(w + g * k + j);
    }
#pragma GCC unroll 8
    for (int i = 0; i < MI; ++i) {
      const __m512bh xv = bh(_mm512_loadu_si512(x + i * ldx + j));
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g) acc[i][g] = _mm512_dpbf16_ps(acc[i][g], bh(wv[g]), xv);
    }
  }
  if (j < k) {  // the last step: W's values past k read as zeros, as x's padding is
    const __mmask32 m = __mmask32((1ull << (k - j)) - 1);
    __m512i wv[G];
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) wv[g] = _mm512_maskz_loadu_epi16(m, w + g * k + j);
#pragma GCC unroll 8
    for (int i = 0; i < MI; ++i) {
      const __m512bh xv = bh(_mm512_loadu_si512(x + i * ldx + j));
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g) acc[i][g] = _mm512_dpbf16_ps(acc[i][g], bh(wv[g]), xv);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MI; ++i)
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) y[i * ldy + r + g] = lanes_sum(acc[i][g]);
}

// G rows of W a pass, then the band's last rows one at a time.
template <int MI, int G>
void rows(const uint16_t* x, int64_t ldx, const uint16_t* W, float* y, int64_t ldy, int64_t r_begin, int64_t r_end,
          int64_t k) {
  int64_t r = r_begin;
  for (; r + G <= r_end; r += G) group<MI, G>(x, ldx, W, y, ldy, r, k);
  for (; r < r_end; ++r) group<MI, 1>(x, ldx, W, y, ldy, r, k);
}

// Decode reads W from memory once: one row at a time keeps it one sequential stream, which the
// head (50280 × 768) read at 2.4–2.6 ms against 3.4–4.4 ms with 2–8 rows a pass; the
// out-of-order core overlaps the next rows' chains. Prefill sums eight rows of x against a band
// of W in cache: three rows of W a pass (24 accumulators) load less per product, 512 × 3352 × 768
// in 7.5–8.9 ms against 8.8–10.4 ms one row a pass (`mamba2 bench --linear`, 2 threads).
constexpr Bf16Kernels kKernels{"avx512bf16", true, {rows<1, 1>, rows<2, 1>, rows<4, 1>, rows<8, 1>}, rows<8, 3>};

}  // namespace

const Bf16Kernels* bf16_kernels_avx512bf16() { return &kKernels; }

}  // namespace mamba2::cpu::simd
#else
namespace mamba2::cpu::simd {
const Bf16Kernels* bf16_kernels_avx512bf16() { return nullptr; }
}  // namespace mamba2::cpu::simd
#endif
