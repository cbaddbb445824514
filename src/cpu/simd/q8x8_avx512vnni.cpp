// AVX-512 VNNI Q8_0 and Q4_0 × int8 kernels (cpu/simd/q8x8.h). vpdpbusd multiplies unsigned by
// signed bytes and adds each four products into an int32 lane; the weights go in as unsigned w + c
// (Q8_0: w ^ 0x80 = w + 128; Q4_0: its nibbles, q + 8) and c·Σx, which the activations' blocks
// carry, comes off each block's sum (exact: no int16 stage, no saturation). Compiled with
// -mavx512f -mavx512vnni -mfma -mf16c (see src/CMakeLists.txt); only leaf functions of intrinsics
// (no inline code of shared headers, which a machine without AVX-512 could end up calling).
#include "cpu/simd/q8x8.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include <cstring>
#include <type_traits>

// GCC 12's AVX-512 conversion intrinsics start from _mm512_undefined_*, which it then reports.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace mamba2::cpu::simd {

namespace {

inline int64_t lesser(int64_t a, int64_t b) { return a < b ? a : b; }

// What the unsigned bytes add to each weight: c·Σx comes off a block's sum.
template <class Block>
constexpr int32_t kOffset = std::is_same_v<Block, Q8Block> ? 128 : 8;

// ---- decode: sixteen rows of W a pass ----
//
// Per block, eight vpdpbusd of two rows each (a zmm of two rows' 32 unsigned weights against the
// activations' block in both halves), then their 8-lane sums reduced exactly in three
// shuffle-and-add levels to one zmm whose lane t is row t's block sum. Pair p holds rows a and
// a + 4, a = p < 4 ? p : p + 4: the order the levels leave lane t = row t in.
constexpr int G = 16;

// Written out: as loops over arrays GCC kept the partial sums in memory.
inline __m512i pair_sum64(__m512i a, __m512i b) {
  return _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
}
inline __m512i pair_sum32(__m512i a, __m512i b) {
  const __m512 fa = _mm512_castsi512_ps(a), fb = _mm512_castsi512_ps(b);
  return _mm512_add_epi32(_mm512_castps_si512(_mm512_shuffle_ps(fa, fb, _MM_SHUFFLE(2, 0, 2, 0))),
                          _mm512_castps_si512(_mm512_shuffle_ps(fa, fb, _MM_SHUFFLE(3, 1, 3, 1))));
}
inline __m512i sum_lanes(__m512i p0, __m512i p1, __m512i p2, __m512i p3, __m512i p4, __m512i p5, __m512i p6,
                         __m512i p7) {
  const __m512i r0 = pair_sum32(pair_sum64(p0, p1), pair_sum64(p2, p3));
  const __m512i r1 = pair_sum32(pair_sum64(p4, p5), pair_sum64(p6, p7));
  return _mm512_add_epi32(_mm512_shuffle_i64x2(r0, r1, _MM_SHUFFLE(2, 0, 2, 0)),
                          _mm512_shuffle_i64x2(r0, r1, _MM_SHUFFLE(3, 1, 3, 1)));
}

// The unsigned weights of the blocks at a and b (a's in the low half), in element order.
inline __m512i pair(const Q8Block* a, const Q8Block* b) {
  const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a->q));
  const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->q));
  return _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1), _mm512_set1_epi8(char(0x80)));
}
// Q4_0: each block's 16 bytes in two 128-bit lanes, the second shifted by 4 (high nibbles), masked.
inline __m512i pair(const Q4Block* a, const Q4Block* b) {
  const __m256i lo = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a->qs)));
  const __m256i hi = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b->qs)));
  const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
  return _mm512_and_si512(_mm512_mask_srli_epi32(v, 0xF0F0, v, 4), _mm512_set1_epi8(15));
}

template <class Block, int MI>
void rows(const ActBlock* x, int64_t ldx, const Block* W, float* y, int64_t ldy, int64_t r_begin, int64_t r_end,
          int64_t k) {
  constexpr int64_t kBlockBytes = sizeof(Block), kLines = (G * kBlockBytes + 63) / 64;
  const int64_t nb = k / kQuantBlock, row_bytes = nb * kBlockBytes;
  for (int64_t r0 = r_begin; r0 < r_end; r0 += G) {
    const int cnt = int(lesser(G, r_end - r0));
    // Rows past the band repeat its last row: their lanes are computed and never stored.
    const char* row[G];
    for (int t = 0; t < G; ++t) row[t] = reinterpret_cast<const char*>(W + (r0 + (t < cnt ? t : cnt - 1)) * nb);
    int32_t offset[G];
    for (int t = 0; t < G; ++t) offset[t] = int32_t(row[t] - row[0]);
    const __m512i offsets = _mm512_loadu_si512(offset);
    const char* next = row[0] + G * row_bytes;
    __m512 acc[MI];
#pragma GCC unroll 8
    for (int i = 0; i < MI; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      // The next sixteen rows (16 blocks a step) are fetched while these are summed.
      for (int l = 0; l < kLines; ++l) _mm_prefetch(next + (b * kLines + l) * 64, _MM_HINT_T0);
      const int64_t at = b * kBlockBytes;
      __m512i wu[8];
#pragma GCC unroll 8
      for (int p = 0; p < 8; ++p) {
        const int a = p < 4 ? p : p + 4;
        wu[p] = pair(reinterpret_cast<const Block*>(row[a] + at), reinterpret_cast<const Block*>(row[a + 4] + at));
      }
      // Each row's fp16 scale: the low half of the 4 bytes at its block's start.
      const __m512i scales = _mm512_i32gather_epi32(offsets, row[0] + at, 1);
      const __m512 dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(scales));
#pragma GCC unroll 8
      for (int i = 0; i < MI; ++i) {
        const ActBlock& xb = x[i * ldx + b];
        const __m512i xv = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.q)));
        const __m512i z = _mm512_setzero_si512();
        const __m512i sum = _mm512_sub_epi32(
            sum_lanes(_mm512_dpbusd_epi32(z, wu[0], xv), _mm512_dpbusd_epi32(z, wu[1], xv),
                      _mm512_dpbusd_epi32(z, wu[2], xv), _mm512_dpbusd_epi32(z, wu[3], xv),
                      _mm512_dpbusd_epi32(z, wu[4], xv), _mm512_dpbusd_epi32(z, wu[5], xv),
                      _mm512_dpbusd_epi32(z, wu[6], xv), _mm512_dpbusd_epi32(z, wu[7], xv)),
            _mm512_set1_epi32(kOffset<Block> * xb.sum));
        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(dw, _mm512_set1_ps(xb.d)), acc[i]);
      }
    }
    const __mmask16 keep = __mmask16((1u << cnt) - 1);
    for (int i = 0; i < MI; ++i) _mm512_mask_storeu_ps(y + i * ldy + r0, keep, acc[i]);
  }
}

// ---- prefill: a GEMM over W packed per call ----
//
// W's rows for a block of columns are packed per 16 blocks of k into panels of 32 columns: for
// each block and each 4 of its 32 values, the 32 columns' 4 bytes (unsigned, w + c) side by side,
// so one vpdpbusd adds 4 products to 16 columns' sums against 4 activation bytes broadcast; after a
// block's 8 steps each lane holds its column's exact block sum, and the scale multiplies it in as
// the definition says. A tile is MR rows × 32 columns: 2·MR int32 and 2·MR fp32 accumulators.
constexpr int MR = 6, NR = 32;
constexpr int64_t KB = 16, NC = 128;  // blocks of k a panel holds; columns a GEMM block takes
constexpr int64_t kPanelBlockBytes = 8 * NR * 4;
constexpr int64_t kPanelBytes = NC / NR * KB * kPanelBlockBytes, kScaleBytes = NC * KB * 4;
constexpr int64_t kScratchBytes = kPanelBytes + kScaleBytes + MR * NR * 4;

// Values 4s … 4s + 3 of a block as unsigned bytes.
inline uint32_t four(const Q8Block& w, int s) {
  uint32_t v;
  std::memcpy(&v, w.q + 4 * s, 4);
  return v ^ 0x80808080u;
}
inline uint32_t four(const Q4Block& w, int s) {
  uint32_t v;
  std::memcpy(&v, w.qs + 4 * (s & 3), 4);
  return (s < 4 ? v : v >> 4) & 0x0F0F0F0Fu;
}

// Columns [0, cols) of W, blocks [b0, b0 + kb): panels [cols/32][kb][8][32][4] bytes, scales
// [cols/32][kb][32]; columns past cols are zero weights of scale 0.
template <class Block>
void pack(const Block* W, int64_t nb, int64_t cols, int64_t b0, int64_t kb, uint8_t* panels, float* scales) {
  for (int64_t j0 = 0; j0 < cols; j0 += NR) {
    uint8_t* pp = panels + j0 / NR * kb * kPanelBlockBytes;
    float* ps = scales + j0 / NR * kb * NR;
    for (int c = 0; c < NR; ++c) {
      const bool real = j0 + c < cols;
      const Block* w = W + (j0 + c) * nb + b0;
      const uint32_t zero = uint32_t(kOffset<Block>) * 0x01010101u;
      for (int64_t b = 0; b < kb; ++b) {
        for (int s = 0; s < 8; ++s) {
          const uint32_t u = real ? four(w[b], s) : zero;
          std::memcpy(pp + b * kPanelBlockBytes + (s * NR + c) * 4, &u, 4);
        }
        ps[b * NR + c] = real ? _cvtsh_ss(w[b].d) : 0.0f;
      }
    }
  }
}

template <int R, int32_t Offset>
void tile(int64_t kb, const ActBlock* x, int64_t ldx, const uint8_t* pp, const float* ps, float* c, int64_t ldc,
          bool accumulate) {
  __m512 acc0[R], acc1[R];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
    acc0[i] = accumulate ? _mm512_loadu_ps(c + i * ldc) : _mm512_setzero_ps();
    acc1[i] = accumulate ? _mm512_loadu_ps(c + i * ldc + 16) : _mm512_setzero_ps();
  }
  for (int64_t b = 0; b < kb; ++b) {
    __m512i s0[R], s1[R];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) s0[i] = s1[i] = _mm512_set1_epi32(-Offset * x[i * ldx + b].sum);
    const uint8_t* pb = pp + b * kPanelBlockBytes;
#pragma GCC unroll 8
    for (int s = 0; s < 8; ++s) {
      const __m512i b0 = _mm512_loadu_si512(pb + s * NR * 4), b1 = _mm512_loadu_si512(pb + s * NR * 4 + 64);
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) {
        int32_t four;
        std::memcpy(&four, x[i * ldx + b].q + 4 * s, 4);
        const __m512i xv = _mm512_set1_epi32(four);
        s0[i] = _mm512_dpbusd_epi32(s0[i], b0, xv);
        s1[i] = _mm512_dpbusd_epi32(s1[i], b1, xv);
      }
    }
    const __m512 dw0 = _mm512_loadu_ps(ps + b * NR), dw1 = _mm512_loadu_ps(ps + b * NR + 16);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const __m512 dx = _mm512_set1_ps(x[i * ldx + b].d);
      acc0[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0[i]), _mm512_mul_ps(dw0, dx), acc0[i]);
      acc1[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1[i]), _mm512_mul_ps(dw1, dx), acc1[i]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
    _mm512_storeu_ps(c + i * ldc, acc0[i]);
    _mm512_storeu_ps(c + i * ldc + 16, acc1[i]);
  }
}

using TileFn = void (*)(int64_t, const ActBlock*, int64_t, const uint8_t*, const float*, float*, int64_t, bool);
template <int32_t C>
constexpr TileFn kTiles[MR + 1] = {nullptr, tile<1, C>, tile<2, C>, tile<3, C>, tile<4, C>, tile<5, C>, tile<6, C>};

template <class Block>
void gemm(const ActBlock* x, int64_t ldx, int64_t rows, const Block* W, int64_t cols, int64_t k, float* y,
          int64_t ldy, void* scratch) {
  const int64_t nb = k / kQuantBlock;
  uint8_t* panels = static_cast<uint8_t*>(scratch);
  float* scales = reinterpret_cast<float*>(panels + kPanelBytes);
  float* edge = scales + NC * KB;
  for (int64_t b0 = 0; b0 < nb; b0 += KB) {
    const int64_t kb = lesser(KB, nb - b0);
    const bool accumulate = b0 > 0;
    pack(W, nb, cols, b0, kb, panels, scales);
    for (int64_t i0 = 0; i0 < rows; i0 += MR) {
      const int r = int(lesser(MR, rows - i0));
      const ActBlock* xa = x + i0 * ldx + b0;
      for (int64_t j0 = 0; j0 < cols; j0 += NR) {
        const uint8_t* pp = panels + j0 / NR * kb * kPanelBlockBytes;
        const float* ps = scales + j0 / NR * kb * NR;
        float* c = y + i0 * ldy + j0;
        const int64_t cc = lesser(NR, cols - j0);
        if (cc == NR) {
          kTiles<kOffset<Block>>[r](kb, xa, ldx, pp, ps, c, ldy, accumulate);
          continue;
        }
        // The last columns: through a full-width scratch tile, so nothing past y's row is written.
        for (int i = 0; i < r; ++i)
          for (int j = 0; j < NR; ++j) edge[i * NR + j] = accumulate && j < cc ? c[i * ldy + j] : 0.0f;
        kTiles<kOffset<Block>>[r](kb, xa, ldx, pp, ps, edge, NR, accumulate);
        for (int i = 0; i < r; ++i)
          for (int j = 0; j < cc; ++j) c[i * ldy + j] = edge[i * NR + j];
      }
    }
  }
}

// Prefill takes the GEMM from 20 rows for Q8_0 and from 32 for Q4_0 (whose nibbles cost more to
// pack): below that the rows kernel was as fast or faster. `mamba2 bench --linear` on 130m's
// in_proj (3352 × 768), rows kernel against GEMM, µs: 8 rows 160 / 300 (Q8_0), 186 / 421 (Q4_0);
// 16 rows 368 / 387, 342 / 492; 20 rows (Q8_0) 428 / 412; 24 rows (Q8_0) 529 / 419; 32 rows
// 719 / 552, 711 / 667; 64 rows (Q4_0) 1,402 / 984.
constexpr Int8Kernels kKernels{
    "avx512vnni",
    {true, {rows<Q8Block, 1>, rows<Q8Block, 2>, rows<Q8Block, 4>, rows<Q8Block, 8>}, gemm<Q8Block>, MR, NC,
     kScratchBytes, 20},
    {true, {rows<Q4Block, 1>, rows<Q4Block, 2>, rows<Q4Block, 4>, rows<Q4Block, 8>}, gemm<Q4Block>, MR, NC,
     kScratchBytes, 32}};

}  // namespace

const Int8Kernels& int8_kernels_avx512vnni() { return kKernels; }

}  // namespace mamba2::cpu::simd
#else
namespace mamba2::cpu::simd {
const Int8Kernels& int8_kernels_avx512vnni() { return int8_kernels_scalar(); }
}  // namespace mamba2::cpu::simd
#endif
