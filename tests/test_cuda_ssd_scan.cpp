// The CUDA SSD scan against the CPU kernels: the chunked prefill over packed sequences against
// cpu::ssd_scan_forward<double> run sequence by sequence (lengths around the chunk size, group
// counts, head and state sizes, shuffled slots in a larger state buffer, the dt_limit clamp), the
// decode step against cpu::ssd_step, prefill-then-step against a longer prefill, and batch
// invariance bit for bit; the same for the tensor-core (bf16 and f16) scan against the double
// oracle on inputs rounded to that type, given to it in that type (as the model's conv leaves them)
// in the model's 16-byte layout and in odd ones, and in fp32. Outputs start as NaN so that an
// element never written shows.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <vector>

#include "cpu/kernels.h"
#include "cuda/kernels.h"
#include "cuda/runtime.h"
#include "cuda_test_support.h"
#include "mamba2/error.h"
#include "ops/seq_batch.h"
#include "test_support.h"

// The launchers exist in a build with the CUDA backend only.
#if MAMBA2_HAVE_CUDA

namespace mamba2 {
namespace {

using test::rel_l2;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

template <class T>
std::shared_ptr<void> upload(const std::vector<T>& h) {
  auto d = cuda::allocate(std::max<size_t>(1, h.size()) * sizeof(T), "test");
  if (!h.empty()) cuda::copy_to_device(d.get(), h.data(), h.size() * sizeof(T));
  return d;
}
template <class T>
std::vector<T> download(const std::shared_ptr<void>& d, size_t n) {
  std::vector<T> h(n);
  cuda::copy_to_host(h.data(), d.get(), n * sizeof(T));
  return h;
}
float* f32(const std::shared_ptr<void>& d) { return static_cast<float*>(d.get()); }

// Inputs of T tokens with row strides wider than the rows (column slices, as in the model): odd
// strides, or (aligned) strides of whole 16-byte pieces of bf16 / f16 as the model's.
struct Problem {
  int64_t H = 0, P = 0, G = 0, N = 0, T = 0;
  bool aligned = false;
  float dt_min = 0.0f, dt_max = std::numeric_limits<float>::infinity();
  std::vector<float> x, B, C, dt_raw, dt_bias, A_log, D;
  int64_t ldx() const { return H * P + (aligned ? 8 : 3); }
  int64_t ldbc() const { return G * N + (aligned ? 8 : 5); }
  int64_t lddt() const { return H + 1; }
  int64_t ldy() const { return H * P + 2; }
  int64_t S() const { return H * P * N; }  // one state row
};

// fast_decay: every head at the init's fastest (dt 0.1 at zero input, A = -16), so that a falls
// to ~-400 within a chunk of 256.
Problem make_problem(int64_t H, int64_t P, int64_t G, int64_t N, int64_t T, uint32_t seed, bool fast_decay = false,
                     bool aligned = false) {
  Problem pb;
  pb.H = H, pb.P = P, pb.G = G, pb.N = N, pb.T = T, pb.aligned = aligned;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<double> u01(0.0, 1.0);
  const auto fill = [&](std::vector<float>& v, size_t n, auto&& draw) {
    v.resize(n);
    for (auto& e : v) e = float(draw());
  };
  fill(pb.x, size_t(T * pb.ldx()), [&] { return normal(rng); });
  fill(pb.B, size_t(T * pb.ldbc()), [&] { return normal(rng); });
  fill(pb.C, size_t(T * pb.ldbc()), [&] { return normal(rng); });
  fill(pb.dt_raw, size_t(T * pb.lddt()), [&] { return -2.0 + 3.0 * u01(rng); });
  // As the model's init: dt log-uniform in [0.001, 0.1] through the inverse softplus, A in [1, 16].
  fill(pb.dt_bias, size_t(H), [&] {
    const double u = fast_decay ? 1.0 : u01(rng);
    const double dt = std::exp(std::log(0.001) + u * (std::log(0.1) - std::log(0.001)));
    return dt + std::log(-std::expm1(-dt));
  });
  fill(pb.A_log, size_t(H), [&] { return std::log(1.0 + 15.0 * (fast_decay ? 1.0 : u01(rng))); });
  fill(pb.D, size_t(H), [&] { return 0.5 + u01(rng); });
  return pb;
}

// x, B and C rounded to `dtype` (kept in fp32): what the tensor cores see of them, so that the
// double oracle on the rounded inputs leaves only the kernels' own roundings to measure.
Problem rounded(Problem pb, DType dtype) {
  for (std::vector<float>* v : {&pb.x, &pb.B, &pb.C}) {
    std::vector<uint16_t> bits(v->size());
    convert_from_f32(dtype, v->data(), bits.data(), v->size());
    convert_to_f32(dtype, bits.data(), v->data(), v->size());
  }
  return pb;
}

// Rows [t0, t0 + L) of pb's inputs, as a problem of their own.
Problem rows_of(const Problem& pb, int64_t t0, int64_t L) {
  Problem r = pb;
  r.T = L;
  const auto cut = [&](const std::vector<float>& v, int64_t ld) {
    return std::vector<float>(v.begin() + t0 * ld, v.begin() + (t0 + L) * ld);
  };
  r.x = cut(pb.x, pb.ldx());
  r.B = cut(pb.B, pb.ldbc());
  r.C = cut(pb.C, pb.ldbc());
  r.dt_raw = cut(pb.dt_raw, pb.lddt());
  return r;
}

std::vector<float> random_states(int64_t rows, int64_t S, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.5f);
  std::vector<float> s(size_t(rows * S));
  for (auto& e : s) e = normal(rng);
  return s;
}

// v on the GPU in `dtype` (F32, BF16 or F16).
std::shared_ptr<void> upload_as(const std::vector<float>& v, DType dtype) {
  if (dtype == DType::F32) return upload(v);
  std::vector<uint16_t> bits(v.size());
  convert_from_f32(dtype, v.data(), bits.data(), v.size());
  return upload(bits);
}

// The problem's inputs (x, B and C in `inputs`) and weights on the GPU.
struct DeviceProblem {
  std::shared_ptr<void> x, B, C, dt_raw, dt_bias, A_log, D;
  cuda::SsdParams params;
  explicit DeviceProblem(const Problem& pb, DType inputs = DType::F32)
      : x(upload_as(pb.x, inputs)), B(upload_as(pb.B, inputs)), C(upload_as(pb.C, inputs)), dt_raw(upload(pb.dt_raw)),
        dt_bias(upload(pb.dt_bias)), A_log(upload(pb.A_log)), D(upload(pb.D)),
        params{pb.H, pb.P, pb.G, pb.N, f32(dt_bias), f32(A_log), f32(D), pb.dt_min, pb.dt_max} {}
};

struct Result {
  std::vector<float> y;       // (T, ldy), NaN where not written
  std::vector<float> states;  // the whole state buffer after the call
};

// The CUDA scan over sequences of `lengths` tokens packed from pb's first row; sequence i starts
// from and ends in row slots[i] of `states`. x, B and C given in `inputs` (by default the compute
// dtype, as the model gives them); y written in y_dtype, returned widened to fp32.
Result gpu_scan(const Problem& pb, const std::vector<int64_t>& lengths, const std::vector<int64_t>& slots,
                const std::vector<float>& states, int64_t Q, DType compute = DType::F32,
                std::optional<DType> inputs = std::nullopt, DType y_dtype = DType::F32) {
  const ops::SeqBatch batch(lengths, slots, Q, Device::CUDA);
  EXPECT_EQ(batch.tokens(), pb.T);
  const DType in = inputs.value_or(compute);
  const DeviceProblem d(pb, in);
  const size_t ny = size_t(pb.T * pb.ldy());
  auto y = upload_as(std::vector<float>(ny, kNaN), y_dtype);
  auto st = upload(states);
  const cuda::PackedSeqs seqs = batch.packed();
  cuda::ssd_scan_forward(d.params, d.x.get(), pb.ldx(), d.B.get(), pb.ldbc(), d.C.get(), pb.ldbc(), in,
                         f32(d.dt_raw), pb.lddt(), y.get(), y_dtype, pb.ldy(), f32(st), seqs, Q, compute);
  std::vector<float> yf(ny);
  if (y_dtype == DType::F32) {
    yf = download<float>(y, ny);
  } else {
    const std::vector<uint16_t> bits = download<uint16_t>(y, ny);
    convert_to_f32(y_dtype, bits.data(), yf.data(), ny);
  }
  return {yf, download<float>(st, states.size())};
}

// cpu::ssd_scan_forward<T> over rows [t0, t0 + L) from `state` (S values, updated in place):
// y as (L, H·P) rows.
template <class T>
std::vector<T> cpu_scan(const Problem& pb, int64_t t0, int64_t L, int64_t Q, std::vector<T>& state) {
  const auto conv = [&](const std::vector<float>& v, int64_t ld) {
    return std::vector<T>(v.begin() + t0 * ld, v.begin() + (t0 + L) * ld);
  };
  const auto x = conv(pb.x, pb.ldx()), B = conv(pb.B, pb.ldbc()), C = conv(pb.C, pb.ldbc());
  const auto dt_raw = conv(pb.dt_raw, pb.lddt());
  const std::vector<T> dt_bias(pb.dt_bias.begin(), pb.dt_bias.end()), A_log(pb.A_log.begin(), pb.A_log.end()),
      D(pb.D.begin(), pb.D.end());
  const cpu::SsdParamsT<T> p{pb.H, pb.P, pb.G, pb.N, dt_bias.data(), A_log.data(), D.data(), T(pb.dt_min),
                             T(pb.dt_max)};
  const int64_t HP = pb.H * pb.P;
  std::vector<T> y(size_t(L * HP));
  cpu::ssd_scan_forward<T>(p, x.data(), pb.ldx(), B.data(), pb.ldbc(), C.data(), pb.ldbc(), dt_raw.data(), pb.lddt(),
                           y.data(), HP, state.data(), L, Q);
  return y;
}

// Rows [t0, t0 + L) of a (T, ldy) output, the padding dropped.
std::vector<float> rows_y(const Problem& pb, const std::vector<float>& y, int64_t t0, int64_t L) {
  const int64_t HP = pb.H * pb.P;
  std::vector<float> r(size_t(L * HP));
  for (int64_t t = 0; t < L; ++t)
    std::copy_n(y.begin() + (t0 + t) * pb.ldy(), HP, r.begin() + t * HP);
  return r;
}

std::vector<int64_t> shuffled_slots(size_t count, int64_t rows, uint32_t seed) {
  std::vector<int64_t> all(static_cast<size_t>(rows));
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), std::mt19937(seed));
  all.resize(count);
  return all;
}

struct ScanCase {
  int64_t Q, H, P, G, N;
  std::vector<int64_t> lengths;
  float dt_min = 0.0f, dt_max = std::numeric_limits<float>::infinity();
  bool fast_decay = false;
  bool aligned = false;  // the model's layout: the tensor-core scan reads bf16 / f16 inputs in place
};

// Lengths 1, Q-1, Q, Q+1, 2Q+3 and 5: partial, exact and one-token chunks.
std::vector<int64_t> awkward_lengths(int64_t Q) { return {1, std::max<int64_t>(Q - 1, 1), Q, Q + 1, 2 * Q + 3, 5}; }

// The bound on relative L2 error against the double oracle, for y and for the states.
// f32: fp32 products and sums of at most 256 + N terms, every exp of a difference of chunk-local
// sums kept in double as on the CPU: a few 1e-7 (the CPU's fp32 result, printed, is of that
// order). An fp32 a would reach ~1e-5 on the fast-decay case; a wrong term, far more.
// bf16 / f16 (inputs already rounded): the kernels round three intermediates to the operand type,
// each element once, with relative error |δ| ≤ u (2⁻⁸ bf16, 2⁻¹¹ f16), of rms ≈ u/√3 and
// independent from element to element: w∘x in the chunk states, the start state S in C·Sᵀ, and
// M = C Bᵀ∘decay∘dt in M·X. A sum Σ aᵢ(1 + δᵢ) of random-sign terms is then off by ≈ u/√3 of
// its size, so a state by ≈ u/√3 and y, which adds the three in quadrature, by ≈ u (D·x, exact,
// only dilutes it); fp32 accumulation adds ~1e-7. That is ~4e-3 for bf16 and ~5e-4 for f16: the
// bounds 1e-2 and 2e-3 leave a factor 2.5 to 4, while a wrong or missing term (≥ a few % of y) or
// an operand truncated instead of rounded (a bias of u/2 per product) still fails.
double scan_bound(DType compute) {
  switch (compute) {
    case DType::F32: return 1e-5;
    case DType::BF16: return 1e-2;
    case DType::F16: return 2e-3;
    default: break;  // the weight formats (q8, q4) are not compute types
  }
  return 0.0;
}

void check_scan(const ScanCase& c, uint32_t seed, DType compute = DType::F32) {
  const int64_t T = std::accumulate(c.lengths.begin(), c.lengths.end(), int64_t(0));
  Problem pb = make_problem(c.H, c.P, c.G, c.N, T, seed, c.fast_decay, c.aligned);
  if (compute != DType::F32) pb = rounded(pb, compute);
  pb.dt_min = c.dt_min;
  pb.dt_max = c.dt_max;
  const int64_t rows = int64_t(c.lengths.size()) + 3, S = pb.S();
  const auto slots = shuffled_slots(c.lengths.size(), rows, seed + 1);
  const auto states0 = random_states(rows, S, seed + 2);
  const Result r = gpu_scan(pb, c.lengths, slots, states0, c.Q, compute);
  const double bound = scan_bound(compute);

  int64_t t0 = 0;
  std::vector<bool> used(size_t(rows), false);
  for (size_t i = 0; i < c.lengths.size(); ++i) {
    const int64_t L = c.lengths[i], slot = slots[i];
    used[size_t(slot)] = true;
    const auto row0 = states0.begin() + slot * S;
    std::vector<double> st_ref(row0, row0 + S);
    std::vector<float> st32(row0, row0 + S);
    const auto y_ref = cpu_scan<double>(pb, t0, L, c.Q, st_ref);
    const auto y32 = cpu_scan<float>(pb, t0, L, c.Q, st32);
    const auto y = rows_y(pb, r.y, t0, L);
    const float* st = r.states.data() + slot * S;
    EXPECT_LE(rel_l2(y.data(), y_ref.data(), y.size()), bound)
        << "y of sequence " << i << " (L " << L << "); CPU fp32: " << rel_l2(y32.data(), y_ref.data(), y.size());
    EXPECT_LE(rel_l2(st, st_ref.data(), size_t(S)), bound)
        << "state of sequence " << i << " (L " << L << "); CPU fp32: " << rel_l2(st32.data(), st_ref.data(), size_t(S));
    t0 += L;
  }
  for (int64_t row = 0; row < rows; ++row) {
    if (used[size_t(row)]) continue;
    EXPECT_EQ(std::memcmp(r.states.data() + row * S, states0.data() + row * S, sizeof(float) * size_t(S)), 0)
        << "state row " << row << " belongs to no sequence";
  }
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = pb.H * pb.P; j < pb.ldy(); ++j)
      ASSERT_TRUE(std::isnan(r.y[size_t(t * pb.ldy() + j)])) << "wrote past row " << t;
}

// Lengths around the chunk size, group counts, head and state sizes; sizes that fill no tile.
std::vector<ScanCase> scan_cases() {
  return {
      {.Q = 16, .H = 4, .P = 64, .G = 1, .N = 16, .lengths = awkward_lengths(16)},
      {.Q = 64, .H = 4, .P = 32, .G = 2, .N = 64, .lengths = awkward_lengths(64)},
      {.Q = 256, .H = 4, .P = 64, .G = 4, .N = 128, .lengths = awkward_lengths(256)},
      {.Q = 256, .H = 4, .P = 64, .G = 4, .N = 128, .lengths = awkward_lengths(256), .aligned = true},
      {.Q = 64, .H = 2, .P = 128, .G = 1, .N = 128, .lengths = {70, 1, 64}, .aligned = true},
      {.Q = 64, .H = 4, .P = 40, .G = 2, .N = 64, .lengths = {70, 1, 64}, .aligned = true},
      // Sizes that fill no tile: chunk, headdim and state not multiples of 16.
      {.Q = 48, .H = 3, .P = 40, .G = 1, .N = 20, .lengths = {1, 47, 48, 49, 99}},
      {.Q = 32, .H = 1, .P = 256, .G = 1, .N = 32, .lengths = {33, 2}},
      {.Q = 1, .H = 2, .P = 32, .G = 2, .N = 16, .lengths = {3, 1}},
      // More chunks than the state pass takes in one batch of loads (8): 19 and 3.
      {.Q = 8, .H = 2, .P = 32, .G = 1, .N = 16, .lengths = {150, 17}},
      {.Q = 256, .H = 2, .P = 64, .G = 1, .N = 64, .lengths = {300, 7}, .fast_decay = true},
      // A state past 128 (the passes in every compute dtype) and one of 128 with a head of 80 (the
      // one-kernel scan's partial column tile).
      {.Q = 64, .H = 2, .P = 48, .G = 2, .N = 200, .lengths = {70, 1, 130}},
      {.Q = 128, .H = 3, .P = 80, .G = 1, .N = 128, .lengths = {129, 64, 3}},
      // A state of 65 to 128 and a head that fill no tile; the 130m head and state, fast decay.
      {.Q = 64, .H = 3, .P = 40, .G = 1, .N = 100, .lengths = {130, 1, 64}},
      {.Q = 256, .H = 2, .P = 64, .G = 1, .N = 128, .lengths = {300, 7}, .fast_decay = true},
      // An odd head and state: states and y element by element.
      {.Q = 64, .H = 2, .P = 33, .G = 1, .N = 17, .lengths = {130, 5, 64}},
  };
}

void check_scan_cases(DType compute) {
  uint32_t seed = 10;
  for (const ScanCase& c : scan_cases()) {
    SCOPED_TRACE(testing::Message() << "Q " << c.Q << " H " << c.H << " P " << c.P << " G " << c.G << " N " << c.N);
    check_scan(c, seed += 10, compute);
  }
}

TEST(CudaSsdScan, MatchesTheCpuScanInDouble) {
  MAMBA2_REQUIRE_GPU();
  check_scan_cases(DType::F32);
}

TEST(CudaSsdScan, Bf16MatchesTheCpuScanOnRoundedInputs) {
  MAMBA2_REQUIRE_GPU();
  check_scan_cases(DType::BF16);
}

TEST(CudaSsdScan, F16MatchesTheCpuScanOnRoundedInputs) {
  MAMBA2_REQUIRE_GPU();
  check_scan_cases(DType::F16);
}

// The 130m model's shape (24 heads of 64, one group, d_state 128, chunks of 256) at a full
// prefill and at lengths around the chunk, in every compute dtype, in the model's layout.
TEST(CudaSsdScan, MatchesTheCpuScanAtThe130mShape) {
  MAMBA2_REQUIRE_GPU();
  for (const DType compute : {DType::F32, DType::BF16, DType::F16})
    for (const std::vector<int64_t>& lengths : {std::vector<int64_t>{2048}, {1, 255, 257, 513}}) {
      SCOPED_TRACE(testing::Message() << dtype_name(compute) << ", " << lengths.size() << " sequences");
      check_scan({.Q = 256, .H = 24, .P = 64, .G = 1, .N = 128, .lengths = lengths, .aligned = true}, 90, compute);
    }
}

// On tensor cores x, B and C given in T (read in place where their rows are whole 16-byte
// pieces, else copied) and the same values given in fp32 (always copied) give the same bits:
// every layout reaches the kernel as the same operands.
TEST(CudaSsdScan, TakesItsOperandsInTheComputeDtypeOrInFp32Alike) {
  MAMBA2_REQUIRE_GPU();
  const ScanCase cases[] = {
      {.Q = 256, .H = 24, .P = 64, .G = 1, .N = 128, .lengths = {300, 1, 40}, .aligned = true},
      {.Q = 256, .H = 24, .P = 64, .G = 1, .N = 128, .lengths = {300, 1, 40}},
      {.Q = 64, .H = 4, .P = 40, .G = 2, .N = 64, .lengths = {70, 1, 64}, .aligned = true},
      {.Q = 64, .H = 2, .P = 33, .G = 1, .N = 17, .lengths = {130, 5}},
      {.Q = 64, .H = 2, .P = 48, .G = 2, .N = 200, .lengths = {70, 1}, .aligned = true},  // the passes
  };
  for (const DType compute : {DType::BF16, DType::F16})
    for (const ScanCase& c : cases) {
      SCOPED_TRACE(testing::Message() << dtype_name(compute) << ", P " << c.P << " N " << c.N
                                      << (c.aligned ? ", aligned" : ""));
      const int64_t T = std::accumulate(c.lengths.begin(), c.lengths.end(), int64_t(0));
      const Problem pb = rounded(make_problem(c.H, c.P, c.G, c.N, T, 77, false, c.aligned), compute);
      const int64_t n = int64_t(c.lengths.size());
      std::vector<int64_t> slots(static_cast<size_t>(n));
      std::iota(slots.begin(), slots.end(), int64_t(0));
      const auto states0 = random_states(n, pb.S(), 78);
      const Result in_t = gpu_scan(pb, c.lengths, slots, states0, c.Q, compute);
      const Result in_f32 = gpu_scan(pb, c.lengths, slots, states0, c.Q, compute, DType::F32);
      EXPECT_EQ(std::memcmp(in_t.states.data(), in_f32.states.data(), sizeof(float) * states0.size()), 0);
      // The padding past each row's outputs is the same NaN in both (never written).
      EXPECT_EQ(std::memcmp(in_t.y.data(), in_f32.y.data(), sizeof(float) * in_t.y.size()), 0);
      // y in the compute dtype (training's): the fp32 y rounded once, bit for bit (NaN padding too),
      // from the one-kernel scan and (d_state 200) through the passes' fp32 copy.
      const Result narrow = gpu_scan(pb, c.lengths, slots, states0, c.Q, compute, std::nullopt, compute);
      std::vector<uint16_t> bits(in_t.y.size());
      std::vector<float> want(in_t.y.size());
      convert_from_f32(compute, in_t.y.data(), bits.data(), bits.size());
      convert_to_f32(compute, bits.data(), want.data(), want.size());
      EXPECT_EQ(std::memcmp(narrow.y.data(), want.data(), sizeof(float) * want.size()), 0);
      EXPECT_EQ(std::memcmp(narrow.states.data(), in_t.states.data(), sizeof(float) * states0.size()), 0);
    }
  // Refused: y in another narrow dtype than the compute one.
  const Problem pb = make_problem(2, 16, 1, 16, 8, 79, false, true);
  const std::vector<int64_t> one{8}, slot0{0};
  EXPECT_NE(test::error_message([&] {
              gpu_scan(pb, one, slot0, random_states(1, pb.S(), 80), 64, DType::BF16, DType::F32, DType::F16);
            }).find("[ssd_scan] y in F16: the BF16 scan writes fp32 or BF16"),
            std::string::npos);
}

// Pass 1 hands each chunk's end state to the next chunk's block (a chain of blocks) when many
// sequences fill the GPU, and walks long sequences in a separate pass: both, with many more
// blocks than the GPU holds at once (16-token chunks, 24 heads: 3,000 to 8,000 blocks a launch;
// on an H200 the first case is chained, the second is chained in bf16 (the one-kernel scan chains
// from fewer blocks a chunk index) and not in fp32), in both kernels.
TEST(CudaSsdScan, PassesStatesThroughLongChainsOfChunks) {
  MAMBA2_REQUIRE_GPU();
  for (const DType compute : {DType::F32, DType::BF16})
    for (const std::vector<int64_t>& lengths :
         {std::vector<int64_t>{600, 500, 400, 300, 200, 170, 100, 90}, {4096, 1000, 17}}) {
      SCOPED_TRACE(testing::Message() << dtype_name(compute) << ", " << lengths.size() << " sequences");
      check_scan({.Q = 16, .H = 24, .P = 64, .G = 1, .N = 128, .lengths = lengths}, 31, compute);
    }
  // An odd head and state (chained): the states and y move element by element instead of in pairs.
  for (const DType compute : {DType::F32, DType::BF16}) {
    SCOPED_TRACE(testing::Message() << dtype_name(compute) << ", P 33, N 17");
    check_scan({.Q = 16, .H = 24, .P = 33, .G = 1, .N = 17, .lengths = {600, 500, 400, 300, 200, 170, 100, 90}}, 37,
               compute);
  }
}

TEST(CudaSsdScan, MatchesTheCpuScanWithTheDtLimit) {
  MAMBA2_REQUIRE_GPU();
  check_scan({.Q = 64, .H = 4, .P = 64, .G = 2, .N = 64, .lengths = awkward_lengths(64), .dt_min = 0.001f,
              .dt_max = 0.1f},
             7);
}

// A sequence's outputs and final state are the same bits alone as packed among others, in any
// slot: nothing in a sequence's arithmetic depends on the rest of the launch.
void check_batch_invariance(DType compute, int64_t N = 64) {
  const int64_t Q = 64;
  const std::vector<int64_t> lengths = awkward_lengths(Q);
  const int64_t T = std::accumulate(lengths.begin(), lengths.end(), int64_t(0));
  const Problem pb = make_problem(4, 64, 2, N, T, 3);
  const int64_t rows = int64_t(lengths.size()), S = pb.S();
  const auto slots = shuffled_slots(lengths.size(), rows, 4);
  const auto states0 = random_states(rows, S, 5);
  const Result packed = gpu_scan(pb, lengths, slots, states0, Q, compute);
  int64_t t0 = 0;
  for (size_t i = 0; i < lengths.size(); ++i) {
    const int64_t L = lengths[i];
    const auto row0 = states0.begin() + slots[i] * S;
    const Result alone = gpu_scan(rows_of(pb, t0, L), {L}, {0}, std::vector<float>(row0, row0 + S), Q, compute);
    const auto y_packed = rows_y(pb, packed.y, t0, L), y_alone = rows_y(pb, alone.y, 0, L);
    EXPECT_EQ(std::memcmp(y_packed.data(), y_alone.data(), sizeof(float) * y_alone.size()), 0) << "y of sequence " << i;
    EXPECT_EQ(std::memcmp(packed.states.data() + slots[i] * S, alone.states.data(), sizeof(float) * size_t(S)), 0)
        << "state of sequence " << i;
    t0 += L;
  }
}

// A short sequence alone (a grid the GPU holds at once: the separate state pass) and packed among
// eight (thousands of blocks: the chain of blocks, on an H200) gives the same bits: the two ways
// of passing the states do the same operations in the same order.
TEST(CudaSsdScan, ChainedAndSeparateStatePassesAgreeBitForBit) {
  MAMBA2_REQUIRE_GPU();
  const int64_t Q = 16;
  const std::vector<int64_t> lengths{600, 500, 400, 40, 200, 170, 100, 90};
  const int64_t T = std::accumulate(lengths.begin(), lengths.end(), int64_t(0)), t0 = 1500;
  const Problem pb = make_problem(24, 64, 1, 128, T, 41);
  const int64_t S = pb.S(), n = int64_t(lengths.size());
  const auto states0 = random_states(n, S, 42);
  std::vector<int64_t> slots(static_cast<size_t>(n));
  std::iota(slots.begin(), slots.end(), int64_t(0));
  for (const DType compute : {DType::F32, DType::BF16}) {
    SCOPED_TRACE(dtype_name(compute));
    const Result packed = gpu_scan(pb, lengths, slots, states0, Q, compute);
    const auto row3 = states0.begin() + 3 * S;
    const Result alone = gpu_scan(rows_of(pb, t0, 40), {40}, {0}, std::vector<float>(row3, row3 + S), Q, compute);
    const auto y_packed = rows_y(pb, packed.y, t0, 40), y_alone = rows_y(pb, alone.y, 0, 40);
    EXPECT_EQ(std::memcmp(y_packed.data(), y_alone.data(), sizeof(float) * y_alone.size()), 0);
    EXPECT_EQ(std::memcmp(packed.states.data() + 3 * S, alone.states.data(), sizeof(float) * size_t(S)), 0);
  }
}

TEST(CudaSsdScan, BatchInvariant) {
  MAMBA2_REQUIRE_GPU();
  check_batch_invariance(DType::F32);
}

TEST(CudaSsdScan, Bf16BatchInvariant) {
  MAMBA2_REQUIRE_GPU();
  check_batch_invariance(DType::BF16);
  check_batch_invariance(DType::BF16, 128);
}

struct StepResult {
  std::vector<float> y, states;
};

// The CUDA step on pb's nb rows, token b on state row slots[b].
StepResult gpu_step(const Problem& pb, const std::vector<int64_t>& slots, const std::vector<float>& states) {
  const DeviceProblem d(pb);
  auto d_slots = upload(slots);
  auto y = upload(std::vector<float>(size_t(pb.T * pb.ldy()), kNaN));
  auto st = upload(states);
  cuda::ssd_step(d.params, f32(d.x), pb.ldx(), f32(d.B), pb.ldbc(), f32(d.C), pb.ldbc(), f32(d.dt_raw), pb.lddt(),
                 f32(y), pb.ldy(), f32(st), static_cast<const int64_t*>(d_slots.get()), pb.T);
  return {download<float>(y, size_t(pb.T * pb.ldy())), download<float>(st, states.size())};
}

TEST(CudaSsdStep, MatchesTheCpuStep) {
  MAMBA2_REQUIRE_GPU();
  struct Case { int64_t H, P, G, N; };
  for (const Case c : {Case{4, 64, 1, 128}, Case{4, 32, 2, 64}, Case{3, 40, 3, 20}, Case{2, 256, 1, 256}}) {
    SCOPED_TRACE(testing::Message() << "H " << c.H << " P " << c.P << " G " << c.G << " N " << c.N);
    const int64_t nb = 5, rows = 8;
    const Problem pb = make_problem(c.H, c.P, c.G, c.N, nb, 20);
    const int64_t S = pb.S();
    const auto slots = shuffled_slots(size_t(nb), rows, 21);
    const auto states0 = random_states(rows, S, 22);
    const StepResult r = gpu_step(pb, slots, states0);

    std::vector<float> y_ref(size_t(nb * pb.ldy()), kNaN), st_ref = states0;
    const cpu::SsdParams p{pb.H, pb.P, pb.G, pb.N, pb.dt_bias.data(), pb.A_log.data(), pb.D.data(), pb.dt_min,
                           pb.dt_max};
    cpu::ssd_step(p, pb.x.data(), pb.ldx(), pb.B.data(), pb.ldbc(), pb.C.data(), pb.ldbc(), pb.dt_raw.data(),
                  pb.lddt(), y_ref.data(), pb.ldy(), st_ref.data(), slots.data(), nb);
    // The same fp32 operations but for exp's last bit, FMA contraction and the order of the
    // N-term sum of y (lanes and a butterfly against a sequential or SIMD sum): a few fp32
    // roundings, ~1e-7 relative; 1e-6 leaves room and still catches any wrong term.
    const auto y = rows_y(pb, r.y, 0, nb), yr = rows_y(pb, y_ref, 0, nb);
    EXPECT_LE(rel_l2(y.data(), yr.data(), y.size()), 1e-6);
    EXPECT_LE(rel_l2(r.states.data(), st_ref.data(), st_ref.size()), 1e-6);
    for (int64_t row = 0; row < rows; ++row) {
      if (std::find(slots.begin(), slots.end(), row) != slots.end()) continue;
      EXPECT_EQ(std::memcmp(r.states.data() + row * S, states0.data() + row * S, sizeof(float) * size_t(S)), 0)
          << "state row " << row << " belongs to no sequence";
    }
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t j = pb.H * pb.P; j < pb.ldy(); ++j)
        ASSERT_TRUE(std::isnan(r.y[size_t(b * pb.ldy() + j)])) << "wrote past row " << b;

    // Each row alone: the same bits.
    for (int64_t b = 0; b < nb; ++b) {
      const auto row0 = states0.begin() + slots[size_t(b)] * S;
      const StepResult alone = gpu_step(rows_of(pb, b, 1), {0}, std::vector<float>(row0, row0 + S));
      EXPECT_EQ(std::memcmp(alone.y.data(), r.y.data() + b * pb.ldy(), sizeof(float) * size_t(pb.H * pb.P)), 0)
          << "y of row " << b;
      EXPECT_EQ(std::memcmp(alone.states.data(), r.states.data() + slots[size_t(b)] * S, sizeof(float) * size_t(S)), 0)
          << "state of row " << b;
    }
  }
}

// The decode step's fusion: y gated by silu(z), and the partial sums of y² per head that the out
// projection's norm reads, against the CPU step and the gate computed here in double.
TEST(CudaSsdStep, GatedStepMatchesTheCpuStepTimesSiluZ) {
  MAMBA2_REQUIRE_GPU();
  struct Case { int64_t H, P, G, N; };
  for (const Case c : {Case{4, 64, 1, 128}, Case{3, 40, 3, 20}}) {
    SCOPED_TRACE(testing::Message() << "H " << c.H << " P " << c.P << " G " << c.G << " N " << c.N);
    const int64_t nb = 3, rows = 5, HP = c.H * c.P;
    const Problem pb = make_problem(c.H, c.P, c.G, c.N, nb, 40);
    const auto slots = shuffled_slots(size_t(nb), rows, 41);
    const auto states0 = random_states(rows, pb.S(), 42);
    std::vector<float> z(size_t(nb * HP));
    std::mt19937 rng(43);
    std::normal_distribution<float> normal(0.0f, 2.0f);
    for (auto& v : z) v = normal(rng);
    const int64_t nsums = cuda::ssd_step_sum_count(c.H, c.P), per_head = nsums / c.H;
    ASSERT_EQ(nsums % c.H, 0);

    const DeviceProblem d(pb);
    auto d_slots = upload(slots);
    auto y = upload(std::vector<float>(size_t(nb * pb.ldy()), kNaN));
    auto st = upload(states0);
    auto dz = upload(z);
    auto sums = upload(std::vector<float>(size_t(nb * nsums), kNaN));
    cuda::ssd_step(d.params, f32(d.x), pb.ldx(), f32(d.B), pb.ldbc(), f32(d.C), pb.ldbc(), f32(d.dt_raw), pb.lddt(),
                   f32(y), pb.ldy(), f32(st), static_cast<const int64_t*>(d_slots.get()), nb, f32(dz), HP, f32(sums),
                   nsums);
    const auto got_y = download<float>(y, size_t(nb * pb.ldy()));
    const auto got_sums = download<float>(sums, size_t(nb * nsums));

    std::vector<float> y_ref(size_t(nb * pb.ldy()), kNaN), st_ref = states0;
    const cpu::SsdParams p{pb.H, pb.P, pb.G, pb.N, pb.dt_bias.data(), pb.A_log.data(), pb.D.data(), pb.dt_min,
                           pb.dt_max};
    cpu::ssd_step(p, pb.x.data(), pb.ldx(), pb.B.data(), pb.ldbc(), pb.C.data(), pb.ldbc(), pb.dt_raw.data(),
                  pb.lddt(), y_ref.data(), pb.ldy(), st_ref.data(), slots.data(), nb);
    std::vector<float> gated, want;
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t h = 0; h < c.H; ++h) {
        double head_sum = 0.0, got_sum = 0.0;
        for (int64_t q = 0; q < c.P; ++q) {
          const double zv = z[size_t(b * HP + h * c.P + q)];
          const double g = double(y_ref[size_t(b * pb.ldy() + h * c.P + q)]) * zv / (1.0 + std::exp(-zv));
          want.push_back(float(g));
          gated.push_back(got_y[size_t(b * pb.ldy() + h * c.P + q)]);
          head_sum += g * g;
        }
        for (int64_t j = 0; j < per_head; ++j) got_sum += got_sums[size_t(b * nsums + h * per_head + j)];
        // A few fp32 roundings over ≤ 40 terms of the same sign.
        EXPECT_NEAR(got_sum, head_sum, 1e-5 * head_sum) << "row " << b << " head " << h;
      }
    // The step's ~1e-7 (MatchesTheCpuStep) plus silu's exp and division: a few more roundings.
    EXPECT_LE(rel_l2(gated.data(), want.data(), want.size()), 2e-6);
  }
}

// Prefill of L tokens then one step equals a prefill of L + 1 tokens, for sequences packed
// together and stepped as one batch.
TEST(CudaSsdStep, ContinuesThePrefill) {
  MAMBA2_REQUIRE_GPU();
  const int64_t Q = 64;
  const std::vector<int64_t> lengths = {1, Q - 1, Q, 2 * Q + 3};
  const int64_t n = int64_t(lengths.size());
  std::vector<int64_t> longer;
  for (int64_t L : lengths) longer.push_back(L + 1);
  const int64_t T1 = std::accumulate(longer.begin(), longer.end(), int64_t(0));
  const Problem full = make_problem(4, 64, 2, 128, T1, 30);
  const int64_t rows = n + 2, S = full.S();
  const auto slots = shuffled_slots(size_t(n), rows, 31);
  const auto states0 = random_states(rows, S, 32);
  const Result ref = gpu_scan(full, longer, slots, states0, Q);

  // The same tokens split: each sequence's first L rows packed, then its last row as a step.
  Problem head = full, last = full;
  head.T = T1 - n;
  last.T = n;
  for (std::vector<float> Problem::* v : {&Problem::x, &Problem::B, &Problem::C, &Problem::dt_raw}) {
    (head.*v).clear();
    (last.*v).clear();
  }
  int64_t t0 = 0;
  for (int64_t i = 0; i < n; ++i) {
    const Problem a = rows_of(full, t0, lengths[size_t(i)]), b = rows_of(full, t0 + lengths[size_t(i)], 1);
    for (std::vector<float> Problem::* v : {&Problem::x, &Problem::B, &Problem::C, &Problem::dt_raw}) {
      (head.*v).insert((head.*v).end(), (a.*v).begin(), (a.*v).end());
      (last.*v).insert((last.*v).end(), (b.*v).begin(), (b.*v).end());
    }
    t0 += longer[size_t(i)];
  }
  const Result pre = gpu_scan(head, lengths, slots, states0, Q);
  const StepResult step = gpu_step(last, slots, pre.states);

  // Both fp32 on the GPU, by different routes (chunked vs recurrent last token): as the scan's
  // bound against double.
  t0 = 0;
  for (int64_t i = 0; i < n; ++i) {
    t0 += longer[size_t(i)];
    const auto y_ref = rows_y(full, ref.y, t0 - 1, 1), y = rows_y(last, step.y, i, 1);
    EXPECT_LE(rel_l2(y.data(), y_ref.data(), y.size()), 1e-5) << "y of sequence " << i;
  }
  EXPECT_LE(rel_l2(step.states.data(), ref.states.data(), ref.states.size()), 1e-5);
}

TEST(CudaSsdScan, RejectsSizesItDoesNotTake) {
  MAMBA2_REQUIRE_GPU();
  const Problem pb = make_problem(2, 32, 1, 16, 4, 40);
  const auto states = random_states(1, pb.S(), 41);
  EXPECT_THROW(gpu_scan(pb, {4}, {0}, states, 512), Error);
  const Problem wide = make_problem(1, 512, 1, 16, 2, 42);
  EXPECT_THROW(gpu_scan(wide, {2}, {0}, random_states(1, wide.S(), 43), 64), Error);
  const Problem big_state = make_problem(1, 16, 1, 512, 2, 44);
  EXPECT_THROW(gpu_scan(big_state, {2}, {0}, random_states(1, big_state.S(), 45), 64, DType::BF16), Error);
  // Inputs in a reduced type other than the compute dtype, or reduced with fp32 products.
  EXPECT_THROW(gpu_scan(pb, {4}, {0}, states, 64, DType::BF16, DType::F16), Error);
  EXPECT_THROW(gpu_scan(pb, {4}, {0}, states, 64, DType::F32, DType::BF16), Error);
}

}  // namespace
}  // namespace mamba2

#endif  // MAMBA2_HAVE_CUDA
