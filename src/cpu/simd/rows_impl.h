// The row kernels' algorithm (cpu/simd/rows.h) over a 16-lane vector type V, included INSIDE the
// anonymous namespace of each rows_<isa>.cpp after its V: every function here then has internal
// linkage, so code compiled for one instruction set is never what another file's call reaches.
// No #include here: the including file has <cmath> and <cstring> and the rows.h declarations.
//
// The loops over the MI rows are unrolled by pragma: left as loops (GCC does at MI = 8) the
// accumulators live in memory, a store and a load around every fma.
//
// V provides: kEightRows (whether 16 accumulators R fit its registers); R (16 fp32 lanes); zero();
// load(const float*), load(const uint16_t*) (bf16 bits, widened), load_q8(const int8_t*, float d)
// (16 values · d), load_q4(const uint8_t* qs, float d) ((low nibbles − 8) · d, high nibbles
// likewise: two R); fma(a, b, c) = a·b + c rounded once; add(a, b); halve(R) (lanes summed as
// lanes_sum says); half(uint16_t) (fp16 → fp32); prefetch(const char*).

constexpr int64_t kPrefetchBytes = 4096;  // swept 512–8192 on the 130m's decode: 4 KB and up hold the best

inline float widen(float w) { return w; }
inline float widen(uint16_t w) {
  const uint32_t u = uint32_t(w) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// The 16 lanes of a0 + a1 halved four times (lane l + lane l + w, w = 8, 4, 2, 1): four dependent
// adds instead of sixteen, which the short rows (768 columns: 24 steps) felt; V::halve does it in
// registers (through memory, the halves' loads stalled on the store and cost 7–11% at batch 8).
inline float lanes_sum(typename V::R a0, typename V::R a1) { return V::halve(V::add(a0, a1)); }

template <int MI, class Wt>
inline void row_dot(const float* x, int64_t ldx, const Wt* w, float* y, int64_t ldy, int64_t k) {
  typename V::R acc0[MI], acc1[MI];
#pragma GCC unroll 8
  for (int i = 0; i < MI; ++i) acc0[i] = acc1[i] = V::zero();
  int64_t j = 0;
  for (; j + 32 <= k; j += 32) {
    const char* ahead = reinterpret_cast<const char*>(w + j) + kPrefetchBytes;
    V::prefetch(ahead);
    if constexpr (sizeof(Wt) == 4) V::prefetch(ahead + 64);
    const typename V::R w0 = V::load(w + j), w1 = V::load(w + j + 16);
#pragma GCC unroll 8
    for (int i = 0; i < MI; ++i) {
      acc0[i] = V::fma(w0, V::load(x + i * ldx + j), acc0[i]);
      acc1[i] = V::fma(w1, V::load(x + i * ldx + j + 16), acc1[i]);
    }
  }
  for (int i = 0; i < MI; ++i) {
    float s = lanes_sum(acc0[i], acc1[i]);
    for (int64_t jj = j; jj < k; ++jj) s = std::fma(widen(w[jj]), x[i * ldx + jj], s);
    y[i * ldy] = s;
  }
}

// Q8_0 and Q4_0: a block is the 32 lanes of one step; its scale widened once.
inline void widen_block(const Q8Block& blk, typename V::R& w0, typename V::R& w1) {
  const float d = V::half(blk.d);
  w0 = V::load_q8(blk.q, d);
  w1 = V::load_q8(blk.q + 16, d);
}
inline void widen_block(const Q4Block& blk, typename V::R& w0, typename V::R& w1) {
  V::load_q4(blk.qs, V::half(blk.d), w0, w1);
}

template <int MI, class Block>
inline void block_dot(const float* x, int64_t ldx, const Block* w, float* y, int64_t ldy, int64_t k) {
  typename V::R acc0[MI], acc1[MI];
#pragma GCC unroll 8
  for (int i = 0; i < MI; ++i) acc0[i] = acc1[i] = V::zero();
  const int64_t blocks = k / kQuantBlock;
  // A line a step for Q8_0 (prefetching every 34-byte block is one instruction too many), or
  // every 64 bytes of Q4_0's 18-byte blocks.
  constexpr int64_t kEvery = sizeof(Block) > 32 ? 2 : 4;
  for (int64_t b = 0; b < blocks; ++b) {
    if (b % kEvery == 0) V::prefetch(reinterpret_cast<const char*>(w + b) + kPrefetchBytes);
    typename V::R w0, w1;
    widen_block(w[b], w0, w1);
    const float* xb = x + b * kQuantBlock;
#pragma GCC unroll 8
    for (int i = 0; i < MI; ++i) {
      acc0[i] = V::fma(w0, V::load(xb + i * ldx), acc0[i]);
      acc1[i] = V::fma(w1, V::load(xb + i * ldx + 16), acc1[i]);
    }
  }
  for (int i = 0; i < MI; ++i) y[i * ldy] = lanes_sum(acc0[i], acc1[i]);
}
template <int MI>
inline void row_dot(const float* x, int64_t ldx, const Q8Block* w, float* y, int64_t ldy, int64_t k) {
  block_dot<MI>(x, ldx, w, y, ldy, k);
}
template <int MI>
inline void row_dot(const float* x, int64_t ldx, const Q4Block* w, float* y, int64_t ldy, int64_t k) {
  block_dot<MI>(x, ldx, w, y, ldy, k);
}

inline const float* w_row(const float* W, int64_t r, int64_t k) { return W + r * k; }
inline const uint16_t* w_row(const uint16_t* W, int64_t r, int64_t k) { return W + r * k; }
inline const Q8Block* w_row(const Q8Block* W, int64_t r, int64_t k) { return W + r * (k / kQuantBlock); }
inline const Q4Block* w_row(const Q4Block* W, int64_t r, int64_t k) { return W + r * (k / kQuantBlock); }

template <int MI, class Wt>
void band(const float* x, int64_t ldx, const Wt* W, float* y, int64_t ldy, int64_t r_begin, int64_t r_end,
          int64_t k) {
  for (int64_t r = r_begin; r < r_end; ++r) row_dot<MI>(x, ldx, w_row(W, r, k), y + r, ldy, k);
}

// Eight rows of x: one pass over the band, each weight widened once for all eight (decode at batch
// 8 and up spent most of its time widening q8/q4 blocks, once a group of four), where the
// instruction set has registers for 16 accumulators (V::kEightRows); else two passes of four.
// Either way each row is summed as alone.
template <class Wt>
void band_two_fours(const float* x, int64_t ldx, const Wt* W, float* y, int64_t ldy, int64_t r_begin, int64_t r_end,
                    int64_t k) {
  band<4>(x, ldx, W, y, ldy, r_begin, r_end, k);
  band<4>(x + 4 * ldx, ldx, W, y + 4 * ldy, ldy, r_begin, r_end, k);
}
template <class Wt>
constexpr RowsFn<Wt> band_eight() {
  if constexpr (V::kEightRows) return band<8, Wt>;
  else return band_two_fours<Wt>;
}

constexpr RowKernels make_row_kernels(Isa isa) {
  return RowKernels{isa,
                    {band<1, float>, band<2, float>, band<4, float>, band_eight<float>()},
                    {band<1, uint16_t>, band<2, uint16_t>, band<4, uint16_t>, band_eight<uint16_t>()},
                    {band<1, Q8Block>, band<2, Q8Block>, band<4, Q8Block>, band_eight<Q8Block>()},
                    {band<1, Q4Block>, band<2, Q4Block>, band<4, Q4Block>, band_eight<Q4Block>()}};
}
