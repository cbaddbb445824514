// AVX2 Q8_0 and Q4_0 × int8 kernels (cpu/simd/q8x8.h): eight rows of W at a time, one ymm per
// block. vpmaddubsw multiplies unsigned by signed bytes, so for Q8_0 the sign moves onto the
// activations: |w| · (x · sign w), pairs summed in int16 without saturation (|w| ≤ 128, |x| ≤ 127:
// ≤ 32512); Q4_0's nibbles go in as they are (unsigned, ≤ 15: pairs ≤ 3810) and 8·Σx comes off the
// block's sum. Then vpmaddwd by ones to the block's eight int32 lanes, which a tree of vphaddd sums
// exactly, one lane a row. Compiled with -mavx2 -mfma -mf16c (see src/CMakeLists.txt).
#include "cpu/simd/q8x8.h"

#if defined(__x86_64__)
#include <immintrin.h>

namespace mamba2::cpu::simd {

namespace {

constexpr int G = 8;  // rows of W a pass: the lanes of one ymm of sums

// Lane t = the sum of p[t]'s eight lanes.
inline __m256i sum_lanes(const __m256i p[G]) {
  const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
  const __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(p[4], p[5]), _mm256_hadd_epi32(p[6], p[7]));
  return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

// The cnt ≤ 8 outputs of rows [r0, r0 + cnt) for each of the mi rows of x.
inline void store(const __m256* acc, int mi, float* y, int64_t ldy, int64_t r0, int cnt) {
  if (cnt == G) {
    for (int i = 0; i < mi; ++i) _mm256_storeu_ps(y + i * ldy + r0, acc[i]);
    return;
  }
  const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(cnt), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  for (int i = 0; i < mi; ++i) _mm256_maskstore_ps(y + i * ldy + r0, mask, acc[i]);
}

// A block's weights as vpmaddubsw's operands, and its eight int32 lanes against activations xq:
// Q8_0 as |w| against x · sign w; Q4_0 as its nibbles in element order (low nibbles, then high
// ones), whose 8·Σx the caller takes off the block's sum (kOffset).
struct Q8Weights {
  using Block = Q8Block;
  static constexpr int kOffset = 0;
  __m256i q, a;
  explicit Q8Weights(const Q8Block& w)
      : q(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.q))), a(_mm256_abs_epi8(q)) {}
  __m256i dot(__m256i xq, __m256i ones) const {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(a, _mm256_sign_epi8(xq, q)), ones);
  }
};
struct Q4Weights {
  using Block = Q4Block;
  static constexpr int kOffset = 8;
  __m256i n;
  explicit Q4Weights(const Q4Block& w) {
    const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.qs)));
    n = _mm256_and_si256(_mm256_blend_epi32(v, _mm256_srli_epi16(v, 4), 0xF0), _mm256_set1_epi8(15));
  }
  __m256i dot(__m256i xq, __m256i ones) const { return _mm256_madd_epi16(_mm256_maddubs_epi16(n, xq), ones); }
};

template <class Weights, int MI, class Block = typename Weights::Block>
void rows(const ActBlock* x, int64_t ldx, const Block* W, float* y, int64_t ldy, int64_t r_begin, int64_t r_end,
          int64_t k) {
  const int64_t nb = k / kQuantBlock;
  constexpr int64_t kStep = G * int64_t(sizeof(Block));  // the next eight rows' bytes a block step
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t r0 = r_begin; r0 < r_end; r0 += G) {
    const int cnt = r_end - r0 < G ? int(r_end - r0) : G;
    // Rows past the band repeat its last row: their lanes are computed and never stored.
    const Block* w[G];
    for (int t = 0; t < G; ++t) w[t] = W + (r0 + (t < cnt ? t : cnt - 1)) * nb;
    const char* next = reinterpret_cast<const char*>(W + (r0 + G) * nb);
    __m256 acc[MI];
#pragma GCC unroll 8
    for (int i = 0; i < MI; ++i) acc[i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      // The next eight rows are fetched while these are summed.
      for (int64_t l = 0; l < kStep; l += 64) _mm_prefetch(next + b * kStep + l, _MM_HINT_T0);
      const Weights wt[G] = {Weights(w[0][b]), Weights(w[1][b]), Weights(w[2][b]), Weights(w[3][b]),
                             Weights(w[4][b]), Weights(w[5][b]), Weights(w[6][b]), Weights(w[7][b])};
      const __m256 dw = _mm256_cvtph_ps(_mm_setr_epi16(short(w[0][b].d), short(w[1][b].d), short(w[2][b].d),
                                                       short(w[3][b].d), short(w[4][b].d), short(w[5][b].d),
                                                       short(w[6][b].d), short(w[7][b].d)));
#pragma GCC unroll 8
      for (int i = 0; i < MI; ++i) {
        const ActBlock& xb = x[i * ldx + b];
        const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.q));
        __m256i p[G];
#pragma GCC unroll 8
        for (int t = 0; t < G; ++t) p[t] = wt[t].dot(xq, ones);
        __m256i sum = sum_lanes(p);
        if constexpr (Weights::kOffset != 0) sum = _mm256_sub_epi32(sum, _mm256_set1_epi32(Weights::kOffset * xb.sum));
        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_mul_ps(dw, _mm256_set1_ps(xb.d)), acc[i]);
      }
    }
    store(acc, MI, y, ldy, r0, cnt);
  }
}

// Int8 by default for both: Q4_0's kernel is faster at every batch; Q8_0's, once 15% slower at
// batch 1, has measured as fast as fp32 activations at batch 1 and prefill and 1.2–1.4× at batch 8
// since the prefetch fix (bench/RESULTS.md, 2026-12-02).
constexpr Int8Kernels kKernels{"avx2",
                               {true, {rows<Q8Weights, 1>, rows<Q8Weights, 2>, rows<Q8Weights, 4>, rows<Q8Weights, 8>},
                                nullptr, 0, 0, 0, 0},
                               {true, {rows<Q4Weights, 1>, rows<Q4Weights, 2>, rows<Q4Weights, 4>, rows<Q4Weights, 8>},
                                nullptr, 0, 0, 0, 0}};

}  // namespace

const Int8Kernels& int8_kernels_avx2() { return kKernels; }

}  // namespace mamba2::cpu::simd
#else
namespace mamba2::cpu::simd {
const Int8Kernels& int8_kernels_avx2() { return int8_kernels_scalar(); }
}  // namespace mamba2::cpu::simd
#endif
