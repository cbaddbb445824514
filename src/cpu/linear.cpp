// y = x @ Wᵀ: our tiled GEMM for prefill (float), a streaming kernel for decode (float, cpu/simd/rows.h), BLAS for
// training (templated, also the backward). Backward: d_x = d_y @ W overwrites, d_W += d_yᵀ @ x
// accumulates. The inference kernels also take bf16 weights (uint16_t, the top half of an fp32)
// and Q8_0 or Q4_0 blocks (core/dtype.h), widened as they are read: the arithmetic, and so every
// bit of y, is that of the fp32 kernel on the weights rounded to bf16 or dequantized, at 0.5, 0.27
// or 0.14 of the bytes read. linear_bf16 and linear_int8 instead round x to bf16 or int8 and
// multiply the narrow values themselves (cpu/simd/bf16xbf16.h, q8x8.h).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "core/dtype.h"
#include "cpu/blas.h"
#include "cpu/kernels.h"
#include "cpu/simd/bf16xbf16.h"
#include "cpu/simd/q8x8.h"
#include "cpu/simd/rows.h"
#include "cpu/simd/tile.h"
#include "mamba2/error.h"

namespace mamba2::cpu {

namespace {

// Row r of W (n, k).
template <class Wt>
inline const Wt* w_row(const Wt* W, int64_t r, int64_t k) {
  return W + r * k;
}
inline const Q8Block* w_row(const Q8Block* W, int64_t r, int64_t k) { return W + r * (k / kQuantBlock); }
inline const Q4Block* w_row(const Q4Block* W, int64_t r, int64_t k) { return W + r * (k / kQuantBlock); }

// The row kernels of each weight type (cpu/simd/rows.h), by the number of x rows: 1, 2, 4.
const simd::RowsFn<float>* rows_fns(const simd::RowKernels& t, const float*) { return t.f32; }
const simd::RowsFn<uint16_t>* rows_fns(const simd::RowKernels& t, const uint16_t*) { return t.bf16; }
const simd::RowsFn<Q8Block>* rows_fns(const simd::RowKernels& t, const Q8Block*) { return t.q8; }
const simd::RowsFn<Q4Block>* rows_fns(const simd::RowKernels& t, const Q4Block*) { return t.q4; }

// The m rows of x over W's rows [b0, b1): rows[3], [2], [1], [0] on 8, 4, 2 and 1 rows at a time
// (each output's sum is the same whichever, so the split follows m freely).
template <class Fn, class X, class Wt>
void rows_over_band(const Fn* rows, const X* x, int64_t ldx, const Wt* W, float* y, int64_t ldy, int64_t m,
                    int64_t b0, int64_t b1, int64_t k) {
  int64_t i = 0;
  for (; i + 8 <= m; i += 8) rows[3](x + i * ldx, ldx, W, y + i * ldy, ldy, b0, b1, k);
  for (; i + 4 <= m; i += 4) rows[2](x + i * ldx, ldx, W, y + i * ldy, ldy, b0, b1, k);
  for (; i + 2 <= m; i += 2) rows[1](x + i * ldx, ldx, W, y + i * ldy, ldy, b0, b1, k);
  for (; i < m; ++i) rows[0](x + i * ldx, ldx, W, y + i * ldy, ldy, b0, b1, k);
}

// Bound by reading W once. Each thread streams a band of W's rows; the band stays in cache
// while every row of x passes over it.
template <class Wt>
void linear_rows(const float* x, int64_t ldx, const Wt* W, float* y, int64_t ldy, int64_t m, int64_t n, int64_t k) {
  const auto* rows = rows_fns(simd::row_kernels(simd::active_isa()), W);
  // About four bands per thread, so that many cores share even the narrow out_proj.
  const int64_t band = std::clamp<int64_t>(n / (4 * omp_get_max_threads()), 4, 64);
#pragma omp parallel for schedule(static)
  for (int64_t b0 = 0; b0 < n; b0 += band) rows_over_band(rows, x, ldx, W, y, ldy, m, b0, std::min(b0 + band, n), k);
}

// The tiled GEMM, as BLAS libraries block theirs (Goto's scheme), with one difference that
// matters here: every y element is one chain of fused multiply-adds over k in order (see
// simd/tile.h), so its bits do not depend on the number of rows, the tiling, the thread count
// or the instruction set. (BLAS kernels pick different code for edge rows and small row
// counts, so there a row's result depends on how many rows share the call.)
//
// x is packed once, whole (panels of mr rows, k × mr each). The output is cut into blocks of
// rows × at most kNcMax columns, one per OpenMP iteration; each packs its B panel (nc × kKc, kept
// in L2) once per k block and reuses it for all of its rows, walking the tiles with one A
// micro-panel (mr × kKc) in L1 while B streams from L2.
constexpr int64_t kKc = 256, kNcMax = 256;

// x's rows as ⌈m/mr⌉ panels of k × mr (p-major); rows past m in the last panel are not written.
void pack_a(const float* x, int64_t ldx, int64_t m, int64_t k, int mr, float* out) {
  const int64_t panels = (m + mr - 1) / mr;
#pragma omp for schedule(static)
  for (int64_t pi = 0; pi < panels; ++pi) {
    const int64_t i0 = pi * mr, r = std::min<int64_t>(mr, m - i0);
    float* blk = out + i0 * k;
    for (int64_t i = 0; i < r; ++i) {
      const float* src = x + (i0 + i) * ldx;
      for (int64_t p = 0; p < k; ++p) blk[p * mr + i] = src[p];
    }
  }
}

// B panel: rows [0, cols) of W (columns of y), columns [p0, p0 + kc), as ⌈cols/nr⌉ blocks of
// kc × nr; columns past the last W row are zeros.
// Columns [p0, p0 + kc) of a row of W as fp32: the row itself, or widened into tmp (kc floats).
inline const float* row_segment(const float* row, int64_t p0, int64_t kc, float*) { return row + p0; }
template <class Wt>
const float* row_segment(const Wt* row, int64_t p0, int64_t kc, float* tmp) {
  if constexpr (std::is_same_v<Wt, Q8Block>)  // whole blocks: p0, kKc and k are multiples of 32
    dequantize_q8(row + p0 / kQuantBlock, tmp, size_t(kc / kQuantBlock));
  else if constexpr (std::is_same_v<Wt, Q4Block>)
    dequantize_q4(row + p0 / kQuantBlock, tmp, size_t(kc / kQuantBlock));
  else
    for (int64_t p = 0; p < kc; ++p) tmp[p] = bf16_to_f32(row[p0 + p]);
  return tmp;
}

template <class Wt>
void pack_b(const Wt* W, int64_t k, int64_t cols, int64_t p0, int64_t kc, int nr, float* out) {
  float tmp[8][kKc];
  for (int64_t j0 = 0; j0 < cols; j0 += nr) {
    const int64_t c = std::min<int64_t>(nr, cols - j0);
    float* blk = out + j0 * kc;
    // 8 × 8 blocks: rows read 8 values at a time, the panel written 8 values at a time.
    int64_t j = 0;
    for (; j + 8 <= c; j += 8) {
      const float* src[8];
      for (int jj = 0; jj < 8; ++jj) src[jj] = row_segment(w_row(W, j0 + j + jj, k), p0, kc, tmp[jj]);
      int64_t p = 0;
      for (; p + 8 <= kc; p += 8) {
        float t[8][8];
        for (int jj = 0; jj < 8; ++jj)
          for (int pp = 0; pp < 8; ++pp) t[pp][jj] = src[jj][p + pp];
        for (int pp = 0; pp < 8; ++pp)
          for (int jj = 0; jj < 8; ++jj) blk[(p + pp) * nr + j + jj] = t[pp][jj];
      }
      for (; p < kc; ++p)
        for (int jj = 0; jj < 8; ++jj) blk[p * nr + j + jj] = src[jj][p];
    }
    for (; j < c; ++j) {
      const float* src = row_segment(w_row(W, j0 + j, k), p0, kc, tmp[0]);
      for (int64_t p = 0; p < kc; ++p) blk[p * nr + j] = src[p];
    }
    for (; j < nr; ++j)
      for (int64_t p = 0; p < kc; ++p) blk[p * nr + j] = 0.0f;
  }
}

struct Scratch {
  std::vector<float> b, edge;
};

// y block (rows × cols) from the packed panels of its rows (ap) and W's rows for its columns.
template <class Wt>
void tiled_block(const simd::TileKernel& t, const float* ap, const Wt* W, float* y, int64_t ldy, int64_t rows,
                 int64_t cols, int64_t k, Scratch& buf) {
  const int mr = t.mr, nr = t.nr;
  buf.b.resize(size_t(kNcMax + nr) * kKc);
  buf.edge.resize(size_t(mr) * nr);
  for (int64_t p0 = 0; p0 < k; p0 += kKc) {
    const int64_t kc = std::min(kKc, k - p0);
    const bool accumulate = p0 > 0;
    pack_b(W, k, cols, p0, kc, nr, buf.b.data());
    for (int64_t i0 = 0; i0 < rows; i0 += mr) {
      const int r = int(std::min<int64_t>(mr, rows - i0));
      const float* a = ap + i0 * k + p0 * mr;
      for (int64_t j0 = 0; j0 < cols; j0 += nr) {
        const float* b = buf.b.data() + j0 * kc;
        float* c = y + i0 * ldy + j0;
        const int64_t c_cols = std::min<int64_t>(nr, cols - j0);
        if (c_cols == nr) {
          t.rows[r](kc, a, b, c, ldy, accumulate);
          continue;
        }
        // The last columns: through a full-width scratch tile, so nothing past y's row is written.
        float* e = buf.edge.data();
        for (int i = 0; i < r; ++i) {
          if (accumulate) std::copy_n(c + i * ldy, c_cols, e + i * nr);
          else std::fill_n(e + i * nr, nr, 0.0f);
        }
        t.rows[r](kc, a, b, e, nr, accumulate);
        for (int i = 0; i < r; ++i) std::copy_n(e + i * nr, c_cols, c + i * ldy);
      }
    }
  }
}

template <class Wt>
void tiled(const float* x, int64_t ldx, const Wt* W, float* y, int64_t ldy, int64_t m, int64_t n, int64_t k) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i) std::fill_n(y + i * ldy, n, 0.0f);
    return;
  }
  const simd::TileKernel& t = simd::tile_kernel(simd::active_isa());
  // About four blocks per thread: columns first (each column block packs its B panel once per
  // row block), rows split only when the columns are too few. The blocking never changes the bits.
  const int64_t want = 4 * omp_get_max_threads();
  const int64_t nc = std::clamp<int64_t>(((n + want - 1) / want + t.nr - 1) / t.nr * t.nr, t.nr, kNcMax);
  const int64_t col_blocks = (n + nc - 1) / nc;
  const int64_t panels = (m + t.mr - 1) / t.mr;
  const int64_t row_blocks = std::clamp<int64_t>((want + col_blocks - 1) / col_blocks, 1, (panels + 7) / 8);
  const int64_t mc = (panels + row_blocks - 1) / row_blocks * t.mr;
  thread_local std::vector<float> packed_a;  // kept between calls: the caller's thread persists
  packed_a.resize(size_t(panels * t.mr * k));
  float* ap = packed_a.data();
#pragma omp parallel
  {
    pack_a(x, ldx, m, k, t.mr, ap);  // ends with the loop's barrier
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < row_blocks * col_blocks; ++blk) {
      thread_local Scratch buf;  // kept: OpenMP's threads persist, and these are too big to malloc per call
      const int64_t i0 = (blk / col_blocks) * mc, j0 = (blk % col_blocks) * nc;
      if (i0 >= m) continue;
      tiled_block(t, ap + i0 * k, w_row(W, j0, k), y + i0 * ldy + j0, ldy, std::min(mc, m - i0),
                  std::min(nc, n - j0), k, buf);
    }
  }
}

// The int8 kernels of a weight format.
const simd::Int8Set<Q8Block>& int8_set(const simd::Int8Kernels& t, const Q8Block*) { return t.q8; }
const simd::Int8Set<Q4Block>& int8_set(const simd::Int8Kernels& t, const Q4Block*) { return t.q4; }

// Q8_0 or Q4_0 × int8 (cpu/simd/q8x8.h): x's rows quantized once, then the GEMM blocks of the kernel
// set (prefill, where it has them) or its rows in bands (decode, and prefill without). Each output
// is the definition's one sum whichever runs, so prefill and decode give a row the same bits.
// The rows kernels of narrow activations (int8 blocks, bf16) over bands of W's rows: each row of x
// converted once (convert(row, out): `stride` values of A), then rows_over_band, `band` rows of W a
// task. A few rows (decode) each thread converts for itself: cheaper than the barrier after
// sharing the work; more share it, in `shared` (the caller's thread's buffer, sized here).
template <class A, class Wt, class Fn, class Convert>
void banded_rows(const float* x, int64_t ldx, int64_t m, int64_t stride, std::vector<A>& shared, Convert convert,
                 const Fn (&rows)[4], const Wt* W, float* y, int64_t ldy, int64_t n, int64_t k, int64_t band) {
  const bool own = m <= 8;
  if (!own) shared.resize(size_t(m * stride));
  A* const common = shared.data();  // a thread_local vector names another one in each thread
#pragma omp parallel
  {
    thread_local std::vector<A> mine;
    A* xa = common;
    if (own) {
      mine.resize(size_t(m * stride));
      xa = mine.data();
      for (int64_t i = 0; i < m; ++i) convert(x + i * ldx, xa + i * stride);
    } else {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < m; ++i) convert(x + i * ldx, xa + i * stride);
    }
#pragma omp for schedule(static)
    for (int64_t b0 = 0; b0 < n; b0 += band)
      rows_over_band(rows, xa, stride, W, y, ldy, m, b0, std::min(b0 + band, n), k);
  }
}

template <class Block>
void int8_linear(const float* x, int64_t ldx, const Block* W, float* y, int64_t ldy, int64_t m, int64_t n, int64_t k,
                 bool prefill) {
  if (m == 0 || n == 0) return;
  const int64_t nb = k / kQuantBlock;
  if (nb == 0) {
    for (int64_t i = 0; i < m; ++i) std::fill_n(y + i * ldy, n, 0.0f);
    return;
  }
  const simd::Int8Set<Block>& t = int8_set(simd::int8_kernels(simd::active_isa()), W);
  thread_local std::vector<simd::ActBlock> quantized;  // kept between calls: the caller's thread persists
  quantized.resize(size_t(m * nb));
  simd::ActBlock* xq = quantized.data();
  const int64_t want = 4 * omp_get_max_threads();
  if (prefill && t.gemm && m >= t.gemm_min_rows) {
    // Blocks of rows × at most gemm_cols columns, about four per thread, as tiled() cuts them.
    const int64_t col_blocks = (n + t.gemm_cols - 1) / t.gemm_cols;
    const int64_t panels = (m + t.gemm_rows - 1) / t.gemm_rows;
    const int64_t row_blocks = std::clamp<int64_t>((want + col_blocks - 1) / col_blocks, 1, (panels + 7) / 8);
    const int64_t mc = (panels + row_blocks - 1) / row_blocks * t.gemm_rows;
#pragma omp parallel
    {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < m; ++i) simd::quantize_activations(x + i * ldx, k, xq + i * nb);
#pragma omp for schedule(static)
      for (int64_t blk = 0; blk < row_blocks * col_blocks; ++blk) {
        thread_local std::vector<unsigned char> scratch;  // the packed W panels (kernel files allocate nothing)
        scratch.resize(size_t(t.gemm_scratch_bytes));
        const int64_t i0 = (blk / col_blocks) * mc, j0 = (blk % col_blocks) * t.gemm_cols;
        if (i0 >= m) continue;
        t.gemm(xq + i0 * nb, nb, std::min(mc, m - i0), W + j0 * nb, std::min(t.gemm_cols, n - j0), k,
               y + i0 * ldy + j0, ldy, scratch.data());
      }
    }
    return;
  }
  // Bands of whole 16-row groups (the widest kernel's), about four per thread.
  const int64_t band = std::clamp<int64_t>(n / want, 16, 64) / 16 * 16;
  banded_rows(
      x, ldx, m, nb, quantized, [k](const float* row, simd::ActBlock* out) { simd::quantize_activations(row, k, out); },
      t.rows, W, y, ldy, n, k, band);
}

}  // namespace

// bf16 weights × x's rows rounded to bf16 (cpu/simd/bf16xbf16.h): x rounded once, then bands of
// W's rows as the fp32 row kernels take them, for decode and prefill alike (the kernels read W
// as stored, so prefill needs no packing: its kernel is a rows kernel blocked for W in cache).
// Each output is the definition's one sum, so a row's bits do not depend on m or on the kernel.
void linear_bf16(const float* x, int64_t ldx, const uint16_t* W, float* y, int64_t ldy, int64_t m, int64_t n,
                 int64_t k, bool prefill) {
  if (m == 0 || n == 0) return;
  const simd::Bf16Kernels* t = simd::bf16_kernels(simd::active_isa());
  if (!t)
    fail("[linear] bf16 activations: the {} kernels have no bf16 dot products", simd::isa_name(simd::active_isa()));
  const int64_t kp = simd::bf16_padded(k);
  const simd::Bf16RowsFn rows[4] = {t->rows[0], t->rows[1], t->rows[2], prefill ? t->prefill8 : t->rows[3]};
  // Bands of a multiple of 24 rows (every kernel's rows a pass divide it), about four per thread.
  const int64_t band = std::clamp<int64_t>(n / (4 * omp_get_max_threads()), 24, 48) / 24 * 24;
  thread_local std::vector<uint16_t> rounded;  // kept between calls: the caller's thread persists
  banded_rows(
      x, ldx, m, kp, rounded, [k](const float* row, uint16_t* out) { simd::round_activations(row, k, out); },
      rows, W, y, ldy, n, k, band);
}

void linear_int8(const float* x, int64_t ldx, const Q8Block* W, float* y, int64_t ldy, int64_t m, int64_t n,
                 int64_t k, bool prefill) {
  int8_linear(x, ldx, W, y, ldy, m, n, k, prefill);
}

void linear_int8(const float* x, int64_t ldx, const Q4Block* W, float* y, int64_t ldy, int64_t m, int64_t n,
                 int64_t k, bool prefill) {
  int8_linear(x, ldx, W, y, ldy, m, n, k, prefill);
}

void linear_tiled(const float* x, int64_t ldx, const float* W, float* y, int64_t ldy, int64_t m, int64_t n,
                  int64_t k) {
  tiled(x, ldx, W, y, ldy, m, n, k);
}

void linear_tiled(const float* x, int64_t ldx, const uint16_t* W, float* y, int64_t ldy, int64_t m, int64_t n,
                  int64_t k) {
  tiled(x, ldx, W, y, ldy, m, n, k);
}

void linear_tiled(const float* x, int64_t ldx, const Q8Block* W, float* y, int64_t ldy, int64_t m, int64_t n,
                  int64_t k) {
  tiled(x, ldx, W, y, ldy, m, n, k);
}

void linear_tiled(const float* x, int64_t ldx, const Q4Block* W, float* y, int64_t ldy, int64_t m, int64_t n,
                  int64_t k) {
  tiled(x, ldx, W, y, ldy, m, n, k);
}

void linear_streaming(const float* x, int64_t ldx, const float* W, float* y, int64_t ldy, int64_t m, int64_t n,
                      int64_t k) {
  if (m > 0 && n > 0) linear_rows(x, ldx, W, y, ldy, m, n, k);
}

void linear_streaming(const float* x, int64_t ldx, const Q8Block* W, float* y, int64_t ldy, int64_t m, int64_t n,
                      int64_t k) {
  if (m > 0 && n > 0) linear_rows(x, ldx, W, y, ldy, m, n, k);
}

void linear_streaming(const float* x, int64_t ldx, const Q4Block* W, float* y, int64_t ldy, int64_t m, int64_t n,
                      int64_t k) {
  if (m > 0 && n > 0) linear_rows(x, ldx, W, y, ldy, m, n, k);
}

void linear_streaming(const float* x, int64_t ldx, const uint16_t* W, float* y, int64_t ldy, int64_t m, int64_t n,
                      int64_t k) {
  if (m > 0 && n > 0) linear_rows(x, ldx, W, y, ldy, m, n, k);
}

template <class T>
void linear_gemm(const T* x, int64_t ldx, const T* W, T* y, int64_t ldy, int64_t m, int64_t n, int64_t k) {
  if (m == 0 || n == 0) return;
  gemm(CblasNoTrans, CblasTrans, m, n, k, T(1), x, ldx, W, k, T(0), y, ldy);
}

template <class T>
void linear_backward(const T* x, int64_t ldx, const T* W, const T* d_y, int64_t lddy, T* d_x, int64_t lddx, T* d_W,
                     int64_t m, int64_t n, int64_t k, bool add_dx) {
  if (m == 0 || k == 0) return;
  if (n == 0) {
    for (int64_t i = 0; d_x && !add_dx && i < m; ++i) std::fill_n(d_x + i * lddx, k, T(0));
    return;
  }
  if (d_x) gemm(CblasNoTrans, CblasNoTrans, m, k, n, T(1), d_y, lddy, W, k, T(add_dx ? 1 : 0), d_x, lddx);
  gemm(CblasTrans, CblasNoTrans, n, k, m, T(1), d_y, lddy, x, ldx, T(1), d_W, k);
}

template void linear_gemm<float>(const float*, int64_t, const float*, float*, int64_t, int64_t, int64_t, int64_t);
template void linear_gemm<double>(const double*, int64_t, const double*, double*, int64_t, int64_t, int64_t, int64_t);
template void linear_backward<float>(const float*, int64_t, const float*, const float*, int64_t, float*, int64_t,
                                     float*, int64_t, int64_t, int64_t, bool);
template void linear_backward<double>(const double*, int64_t, const double*, const double*, int64_t, double*, int64_t,
                                      double*, int64_t, int64_t, int64_t, bool);

void add_bias(float* y, int64_t ldy, const float* bias, int64_t m, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < m; ++r) {
    float* yr = y + r * ldy;
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) yr[c] += bias[c];
  }
}

void bias_backward(const float* d_y, int64_t ld, int64_t m, int64_t n, float* d_b) {
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < n; ++j) {
    double sum = 0.0;
    for (int64_t r = 0; r < m; ++r) sum += d_y[r * ld + j];
    d_b[j] += float(sum);
  }
}

}  // namespace mamba2::cpu
