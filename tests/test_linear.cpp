// The linear kernels against the definition: every element of the tiled GEMM (prefill) is the
// chain of fused multiply-adds over k in order — written here as a plain std::fma loop —
// bit for bit, under every instruction set this CPU runs, for any row count, offset, thread
// count and row stride; and a row of every inference kernel does not depend on the rows
// that share its call (batch invariance rests on it).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "cpu/kernels.h"
#include "cpu/simd/bf16xbf16.h"
#include "cpu/simd/isa.h"
#include "cpu/simd/q8x8.h"
#include "cpu/simd/tile.h"
#include "mamba2/error.h"
#include "ops/ops.h"
#include "activations_as.h"

namespace mamba2 {
namespace {

using cpu::simd::Isa;

// Restores the instruction set the process started with.
struct IsaScope {
  Isa saved = cpu::simd::active_isa();
  ~IsaScope() { cpu::simd::set_isa(saved); }
};

std::vector<float> randn(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// A (rows, cols) tensor of randn(rows·cols, seed).
Tensor randn_matrix(int64_t rows, int64_t cols, uint32_t seed) {
  Tensor t = Tensor::empty({rows, cols});
  const auto v = randn(size_t(rows * cols), seed);
  std::copy(v.begin(), v.end(), t.data());
  return t;
}

// y[i, j] = fma chain over p = 0..k-1 of x[i, p]·W[j, p], starting from 0.
std::vector<float> fma_chain(const std::vector<float>& x, int64_t ldx, const std::vector<float>& W, int64_t m,
                             int64_t n, int64_t k) {
  std::vector<float> y(size_t(m * n));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      float acc = 0.0f;
      for (int64_t p = 0; p < k; ++p) acc = std::fma(x[size_t(i * ldx + p)], W[size_t(j * k + p)], acc);
      y[size_t(i * n + j)] = acc;
    }
  return y;
}

TEST(LinearTiled, EveryElementIsOneFmaChainOverKUnderEveryIsa) {
  IsaScope scope;
  // Shapes that leave partial tiles on both sides and a partial last k block (256), and row
  // strides wider than the rows (column slices of a wider matrix, as in_proj's output is used).
  struct Case { int64_t m, n, k; };
  for (const Case c : {Case{1, 1, 1}, Case{13, 37, 5}, Case{25, 70, 300}, Case{100, 300, 513}, Case{7, 33, 1024},
                       Case{130, 97, 256}}) {
    const int64_t ldx = c.k + 3, ldy = c.n + 5;
    const auto x = randn(size_t(c.m * ldx), 1), W = randn(size_t(c.n * c.k), 2);
    const auto ref = fma_chain(x, ldx, W, c.m, c.n, c.k);
    for (Isa isa : cpu::simd::available_isas()) {
      cpu::simd::set_isa(isa);
      std::vector<float> y(size_t(c.m * ldy), -7.0f);
      cpu::linear_tiled(x.data(), ldx, W.data(), y.data(), ldy, c.m, c.n, c.k);
      for (int64_t i = 0; i < c.m; ++i) {
        ASSERT_EQ(std::memcmp(y.data() + i * ldy, ref.data() + i * c.n, sizeof(float) * size_t(c.n)), 0)
            << cpu::simd::isa_name(isa) << " m " << c.m << " n " << c.n << " k " << c.k << " row " << i;
        for (int64_t j = c.n; j < ldy; ++j) ASSERT_EQ(y[size_t(i * ldy + j)], -7.0f) << "wrote past row " << i;
      }
    }
  }
}

TEST(LinearTiled, SameBitsForAnyThreadCount) {
  IsaScope scope;
  const int saved = omp_get_max_threads();
  const int64_t m = 200, n = 700, k = 600;
  const auto x = randn(size_t(m * k), 3), W = randn(size_t(n * k), 4);
  for (Isa isa : cpu::simd::available_isas()) {
    cpu::simd::set_isa(isa);
    std::vector<float> ref(size_t(m * n)), y(size_t(m * n));
    omp_set_num_threads(1);
    cpu::linear_tiled(x.data(), k, W.data(), ref.data(), n, m, n, k);
    for (int threads : {2, 3, 5}) {
      omp_set_num_threads(threads);
      cpu::linear_tiled(x.data(), k, W.data(), y.data(), n, m, n, k);
      EXPECT_EQ(std::memcmp(y.data(), ref.data(), sizeof(float) * y.size()), 0)
          << cpu::simd::isa_name(isa) << " threads " << threads;
    }
  }
  omp_set_num_threads(saved);
}

// The fma chain is also accurate: against a double sum, at the 130m in_proj's k.
TEST(LinearTiled, CloseToTheDoubleSum) {
  const int64_t m = 9, n = 40, k = 768;
  const auto x = randn(size_t(m * k), 5), W = randn(size_t(n * k), 6);
  std::vector<float> y(size_t(m * n));
  cpu::linear_tiled(x.data(), k, W.data(), y.data(), n, m, n, k);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0.0, mag = 0.0;
      for (int64_t p = 0; p < k; ++p) {
        s += double(x[size_t(i * k + p)]) * W[size_t(j * k + p)];
        mag += std::fabs(double(x[size_t(i * k + p)]) * W[size_t(j * k + p)]);
      }
      // Sequential fp32 summation: error ≤ k·eps·Σ|terms| (a loose, rigorous bound).
      EXPECT_LE(std::fabs(y[size_t(i * n + j)] - s), double(k) * 6e-8 * mag) << i << "," << j;
    }
}

// The streaming (decode) kernel's order, as cpu/simd/rows.h defines it: 32 lanes of fma chains
// over the whole 32-column steps, lanes l and l+16 added, the 16 sums halved four times (lane l +
// lane l+w for w = 8, 4, 2, 1), then the remaining columns as fmas. W here is fp32 (the weights
// already widened).
std::vector<float> lane_sums(const std::vector<float>& x, int64_t ldx, const std::vector<float>& W, int64_t m,
                             int64_t n, int64_t k) {
  std::vector<float> y(size_t(m * n));
  const int64_t whole = k / 32 * 32;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      float lane[32] = {};
      for (int64_t p = 0; p < whole; ++p)
        lane[p % 32] = std::fma(W[size_t(j * k + p)], x[size_t(i * ldx + p)], lane[p % 32]);
      float t[16];
      for (int l = 0; l < 16; ++l) t[l] = lane[l] + lane[l + 16];
      for (int w = 8; w >= 1; w /= 2)
        for (int l = 0; l < w; ++l) t[l] += t[l + w];
      float s = t[0];
      for (int64_t p = whole; p < k; ++p) s = std::fma(W[size_t(j * k + p)], x[size_t(i * ldx + p)], s);
      y[size_t(i * n + j)] = s;
    }
  return y;
}

// The decode kernel on fp32, bf16, Q8_0 and Q4_0 weights is that order on the widened weights, bit
// for bit, under every instruction set here (the scalar file is one of them), for 1–7 rows of x at
// a row stride wider than k; k with and without a tail (the block formats: whole blocks only).
TEST(LinearStreaming, IsTheLaneOrderOnTheWidenedWeightsUnderEveryIsa) {
  IsaScope scope;
  for (const auto& [n, k] : {std::pair<int64_t, int64_t>{37, 1}, {37, 31}, {70, 32}, {70, 33}, {45, 100},
                             {130, 768}, {9, 1536}}) {
    const int64_t M = 7, ldx = k + 3;
    Tensor W = Tensor::empty({n, k});
    const auto wv = randn(size_t(n * k), 41), xv = randn(size_t(M * ldx), 42);
    std::copy(wv.begin(), wv.end(), W.data());
    std::vector<DType> types{DType::F32, DType::BF16};
    if (k % 32 == 0) types.insert(types.end(), {DType::Q8_0, DType::Q4_0});
    for (DType dt : types) {
      const Tensor narrow = W.to(Device::CPU, dt), widened = narrow.to(Device::CPU, DType::F32);
      const std::vector<float> wide(widened.data(), widened.data() + n * k);
      const auto want = lane_sums(xv, ldx, wide, M, n, k);
      for (Isa isa : cpu::simd::available_isas()) {
        cpu::simd::set_isa(isa);
        for (int64_t m = 1; m <= M; ++m) {
          std::vector<float> y(size_t(m * n));
          if (dt == DType::F32)
            cpu::linear_streaming(xv.data(), ldx, narrow.data(), y.data(), n, m, n, k);
          else if (dt == DType::BF16)
            cpu::linear_streaming(xv.data(), ldx, static_cast<const uint16_t*>(narrow.raw()), y.data(), n, m, n, k);
          else if (dt == DType::Q8_0)
            cpu::linear_streaming(xv.data(), ldx, static_cast<const Q8Block*>(narrow.raw()), y.data(), n, m, n, k);
          else
            cpu::linear_streaming(xv.data(), ldx, static_cast<const Q4Block*>(narrow.raw()), y.data(), n, m, n, k);
          ASSERT_EQ(std::memcmp(y.data(), want.data(), sizeof(float) * y.size()), 0)
              << dtype_name(dt) << " " << cpu::simd::isa_name(isa) << " n " << n << " k " << k << " rows " << m;
        }
      }
    }
  }
}

// Both inference kernels (prefill: tiled, decode: streaming) under every instruction set here.
std::vector<std::pair<Isa, ops::LinearKernel>> every_path() {
  std::vector<std::pair<Isa, ops::LinearKernel>> paths;
  for (Isa isa : cpu::simd::available_isas())
    for (auto kernel : {ops::LinearKernel::Prefill, ops::LinearKernel::Decode}) paths.emplace_back(isa, kernel);
  return paths;
}

// The row-count sweeps below run at a small width and, as tests of their own, at the 130m model's
// projection widths (in_proj, out_proj), which take ~70 s under qemu and ~120 CPU-seconds under the
// sanitizer: those runs leave them to the optimised build (scripts/test-arm64.sh, run-tests.sh).
using Widths = std::vector<std::pair<int64_t, int64_t>>;  // (n, k)
const Widths kSmallWidths{{296, 64}};
const Widths k130mWidths{{3352, 768}, {768, 1536}};

// Batch invariance rests on this: each row of an inference linear is summed the same way
// whatever the number of rows and their offset in the call, bitwise, under every instruction
// set, for both kernels.
void expect_rows_do_not_depend_on_the_row_count(const Widths& widths) {
  IsaScope scope;
  for (const auto& [n, k] : widths) {
    const int64_t M = 70;
    Tensor W = randn_matrix(n, k, 7), x = randn_matrix(M, k, 8);
    for (const auto& [isa, kernel] : every_path()) {
      cpu::simd::set_isa(isa);
      {
        Tensor ref = Tensor::empty({M, n});
        ops::linear(MatView::of(x), W, MatView::of(ref), kernel);
        for (int64_t m : {1, 2, 3, 5, 8, 9, 13, 17, 33}) {
          for (int64_t off : {int64_t(0), int64_t(1), M - m}) {
            Tensor y = Tensor::empty({m, n});
            ops::linear(MatView::of(x).rows_slice(off, m), W, MatView::of(y), kernel);
            ASSERT_EQ(std::memcmp(y.data(), ref.data() + off * n, sizeof(float) * size_t(m * n)), 0)
                << cpu::simd::isa_name(isa) << (kernel == ops::LinearKernel::Prefill ? " prefill" : " decode")
                << " n " << n << " k " << k << " rows " << m << " at " << off;
          }
        }
      }
    }
  }
}

TEST(LinearRows, DoNotDependOnTheRowCount) { expect_rows_do_not_depend_on_the_row_count(kSmallWidths); }
TEST(LinearRows, DoNotDependOnTheRowCountAt130mWidths) { expect_rows_do_not_depend_on_the_row_count(k130mWidths); }

// Inference on narrow weights (bf16, Q8_0) is exactly the fp32 kernel on `widened` (the weights
// rounded or dequantized): both kernels, every instruction set, 1, 3 and all of x's rows; training
// refuses them.
void expect_widened_kernels(Tensor x, const Tensor& narrow, const Tensor& widened) {  // x: MatView::of wants it mutable
  const int64_t M = x.dim(0), n = narrow.dim(0), k = narrow.dim(1);
  for (const auto& [isa, kernel] : every_path()) {
    cpu::simd::set_isa(isa);
    for (int64_t m : {int64_t(1), int64_t(3), M}) {
      Tensor got = Tensor::empty({m, n}), want = Tensor::empty({m, n});
      ops::linear(MatView::of(x).rows_slice(0, m), narrow, MatView::of(got), kernel);
      ops::linear(MatView::of(x).rows_slice(0, m), widened, MatView::of(want), kernel);
      ASSERT_EQ(std::memcmp(got.data(), want.data(), sizeof(float) * size_t(m * n)), 0)
          << dtype_name(narrow.dtype()) << " " << cpu::simd::isa_name(isa)
          << (kernel == ops::LinearKernel::Prefill ? " prefill" : " decode") << " n " << n << " k " << k << " rows "
          << m;
    }
  }
  Tensor y = Tensor::empty({M, n});
  try {
    ops::linear(MatView::of(x), narrow, MatView::of(y), ops::LinearKernel::Training);
    FAIL() << "training on " << dtype_name(narrow.dtype()) << " weights was not refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[linear] weight"), std::string::npos) << e.what();
  }
}

// bf16 weights (CPU inference) with fp32 activations: column counts with and without a tail.
TEST(LinearBf16, IsTheF32KernelOnTheRoundedWeights) {
  IsaScope scope;
  const test::Bf16ActivationsAs act(ops::Bf16Activations::F32);
  for (const auto& [n, k] : {std::pair<int64_t, int64_t>{296, 64}, {200, 1001}, {768, 256}}) {
    const int64_t M = 33;
    Tensor W = randn_matrix(n, k, 17), x = randn_matrix(M, k, 18);
    const Tensor w16 = W.to(Device::CPU, DType::BF16);
    expect_widened_kernels(x, w16, w16.to(Device::CPU, DType::F32));
  }
}

// Q8_0 weights (CPU inference): each block of 32 as llama.cpp's q8_0 (scale max|w|/127 in fp16,
// values rounded to ±127), recomputed here from the definition; then, with fp32 activations, the
// kernels on the dequantized weights (expect_widened_kernels; the int8 activations' kernels are
// LinearQ8x8's); rows that are not whole blocks and the GPU are refused.
TEST(LinearQ8, QuantizesAsQ8_0AndIsTheF32KernelOnTheDequantizedWeights) {
  IsaScope scope;
  const test::Q8ActivationsAs act(ops::Q8Activations::F32);
  for (const auto& [n, k] : {std::pair<int64_t, int64_t>{296, 64}, {200, 992}, {768, 256}}) {
    const int64_t M = 33;
    Tensor W = Tensor::empty({n, k}), x = Tensor::empty({M, k});
    auto wv = randn(size_t(n * k), 27);
    const auto xv = randn(size_t(M * k), 28);
    for (int64_t j = 0; j < 32; ++j) wv[size_t(j)] = 0.0f;  // an all-zero block: scale 0
    wv[40] = 1e-6f;                                          // a block of one tiny value
    std::copy(wv.begin(), wv.end(), W.data());
    std::copy(xv.begin(), xv.end(), x.data());
    const Tensor q8 = W.to(Device::CPU, DType::Q8_0), deq = q8.to(Device::CPU, DType::F32);
    ASSERT_EQ(q8.nbytes(), size_t(n * k / 32 * 34));
    for (int64_t b = 0; b < n * k / 32; ++b) {
      float amax = 0.0f;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(wv[size_t(b * 32 + j)]));
      const float d = f16_to_f32(f32_to_f16(amax / 127.0f));
      for (int j = 0; j < 32; ++j) {
        const float w = wv[size_t(b * 32 + j)];
        const float want = d > 0.0f ? d * std::clamp(std::round(w / d), -127.0f, 127.0f) : 0.0f;
        ASSERT_EQ(deq.data()[b * 32 + j], want) << "block " << b << " element " << j;
        ASSERT_LE(std::fabs(deq.data()[b * 32 + j] - w), 0.5f * d * (1 + 1e-6f)) << "block " << b;
      }
    }
    expect_widened_kernels(x, q8, deq);
  }
  try {
    (void)Tensor::zeros({4, 40}).to(Device::CPU, DType::Q8_0);
    FAIL() << "rows of 40 were quantized";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[tensor] Q8_0 quantizes rows of a multiple of 32"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW((void)Tensor::zeros({4, 64}).to(Device::CUDA, DType::Q8_0), Error);
}

TEST(Isa, NamesAreParsedAndBadOnesRefused) {
  EXPECT_EQ(cpu::simd::parse_isa("scalar"), Isa::Scalar);
  EXPECT_EQ(cpu::simd::available_isas().back(), Isa::Scalar);
  try {
    cpu::simd::parse_isa("avx9");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("MAMBA2_ISA=avx9 is not one of"), std::string::npos) << e.what();
  }
  const auto avail = cpu::simd::available_isas();
  for (const char* name : {"avx512", "avx2", "neon"}) {
    const bool here = std::any_of(avail.begin(), avail.end(), [&](Isa i) { return std::string(cpu::simd::isa_name(i)) == name; });
    if (here) EXPECT_EQ(cpu::simd::isa_name(cpu::simd::parse_isa(name)), std::string(name));
    else EXPECT_THROW(cpu::simd::parse_isa(name), Error) << name;
  }
}

}  // namespace
}  // namespace mamba2

namespace mamba2 {
namespace {

// The squared error of llama.cpp's q4_0 rule on one block (ggml's quantize_row_q4_0_ref): d =
// extreme / −8, q = min(15, trunc(x / d + 8.5)), d stored in fp16.
double llama_q4_0_error(const float* x) {
  float extreme = 0.0f;
  for (int i = 0; i < 32; ++i)
    if (std::fabs(x[i]) > std::fabs(extreme)) extreme = x[i];
  const float d = extreme / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f, stored = f16_to_f32(f32_to_f16(d));
  double err = 0.0;
  for (int i = 0; i < 32; ++i) {
    const int q = std::min(15, int(int8_t(x[i] * id + 8.5f)));
    const double e = double(x[i]) - double(stored) * (q - 8);
    err += e * e;
  }
  return err;
}

// Q4_0 weights (CPU inference): the block layout read back by hand (element j < 16 in the low
// nibble of byte j, j ≥ 16 in the high nibble of byte j − 16, value d·(q − 8)) equals the
// dequantization; every block's squared error is at most that of llama.cpp's q4_0 rule (the
// search includes its scale, then keeps the best), and over the matrix below 0.95 of it; then the
// kernels with fp32 activations on the dequantized weights (expect_widened_kernels; the int8
// activations' kernels are LinearQ4x8's).
TEST(LinearQ4, BlocksAreQ4_0AtMostLlamasErrorAndTheF32KernelOnTheDequantizedWeights) {
  IsaScope scope;
  const test::Q8ActivationsAs act(ops::Q8Activations::F32);
  for (const auto& [n, k] : {std::pair<int64_t, int64_t>{296, 64}, {200, 992}, {768, 256}}) {
    const int64_t M = 33;
    Tensor W = Tensor::empty({n, k}), x = Tensor::empty({M, k});
    auto wv = randn(size_t(n * k), 37);
    const auto xv = randn(size_t(M * k), 38);
    for (int64_t j = 0; j < 32; ++j) wv[size_t(j)] = 0.0f;  // an all-zero block: scale 0
    wv[40] = 1e-6f;                                          // a block of one tiny value
    std::copy(wv.begin(), wv.end(), W.data());
    std::copy(xv.begin(), xv.end(), x.data());
    const Tensor q4 = W.to(Device::CPU, DType::Q4_0), deq = q4.to(Device::CPU, DType::F32);
    ASSERT_EQ(q4.nbytes(), size_t(n * k / 32 * 18));
    const auto* blocks = static_cast<const unsigned char*>(q4.raw());
    double ours = 0.0, llama = 0.0;
    for (int64_t b = 0; b < n * k / 32; ++b) {
      const unsigned char* blk = blocks + b * 18;
      const float d = f16_to_f32(uint16_t(blk[0] | (blk[1] << 8)));
      double err = 0.0;
      for (int j = 0; j < 32; ++j) {
        const int q = j < 16 ? blk[2 + j] & 15 : blk[2 + j - 16] >> 4;
        ASSERT_EQ(deq.data()[b * 32 + j], d * float(q - 8)) << "block " << b << " element " << j;
        const double e = double(wv[size_t(b * 32 + j)]) - double(deq.data()[b * 32 + j]);
        err += e * e;
      }
      const double theirs = llama_q4_0_error(wv.data() + b * 32);
      ASSERT_LE(err, theirs) << "block " << b;
      ours += err;
      llama += theirs;
    }
    EXPECT_LT(ours, 0.95 * llama) << "n " << n << " k " << k;  // measured 0.928–0.934 on normal weights
    expect_widened_kernels(x, q4, deq);
  }
  EXPECT_THROW((void)Tensor::zeros({4, 40}).to(Device::CPU, DType::Q4_0), Error);
  EXPECT_THROW((void)Tensor::zeros({4, 64}).to(Device::CUDA, DType::Q4_0), Error);
}

}  // namespace
}  // namespace mamba2

namespace mamba2 {
namespace {

// cpu/simd/q8x8.h's definition written out from the math: a block of 32 activations gets d =
// max|x| / 127 and q = x / d rounded to nearest, ties to even (d NaN and q 0 if the block holds a
// NaN or an infinity; q 0 if it is all zeros).
struct QuantizedRow {
  std::vector<float> d;
  std::vector<int> q;
};
QuantizedRow quantize_by_definition(const float* x, int64_t k) {
  QuantizedRow r{std::vector<float>(size_t(k / 32)), std::vector<int>(size_t(k), 0)};
  for (int64_t b = 0; b < k / 32; ++b) {
    float amax = 0.0f;
    bool finite = true;
    for (int j = 0; j < 32; ++j) {
      finite = finite && std::isfinite(x[b * 32 + j]);
      if (std::isfinite(x[b * 32 + j])) amax = std::max(amax, std::fabs(x[b * 32 + j]));
    }
    const float d = finite ? amax / 127.0f : NAN;
    r.d[size_t(b)] = d;
    if (!finite || d == 0.0f) continue;
    for (int j = 0; j < 32; ++j) {
      const double v = double(x[b * 32 + j] / d), lo = std::floor(v);
      r.q[size_t(b * 32 + j)] = int(v - lo > 0.5 || (v - lo == 0.5 && std::fmod(lo, 2.0) != 0.0) ? lo + 1 : lo);
    }
  }
  return r;
}

// A weight block's element j as the integer its scale multiplies (q8_0: the int8; q4_0: the nibble
// − 8, its place in the block as LinearQ4 reads it and holds to the dequantization).
int weight_int(const Q8Block& w, int j) { return w.q[j]; }
int weight_int(const Q4Block& w, int j) { return (j < 16 ? w.qs[j] & 15 : w.qs[j - 16] >> 4) - 8; }

struct Int8Reference {
  std::vector<float> chain;     // the definition's fp32 fma chain over the blocks
  std::vector<double> exact;    // Σ_b dw·dx·isum in double
  std::vector<double> terms;    // Σ_b |dw·dx·isum|
  std::vector<double> f32_act;  // Σ w_deq · x in double (activations not quantized)
  std::vector<double> act_err;  // Σ_b |dw|·Σ_j |wq_j| · dx/2: the most quantizing x can move the sum
};
template <class Block>
Int8Reference int8_by_definition(const std::vector<float>& x, int64_t ldx, const Block* W, int64_t m, int64_t n,
                                 int64_t k) {
  Int8Reference ref;
  for (auto* v : {&ref.exact, &ref.terms, &ref.f32_act, &ref.act_err}) v->assign(size_t(m * n), 0.0);
  ref.chain.assign(size_t(m * n), 0.0f);
  const int64_t nb = k / 32;
  for (int64_t i = 0; i < m; ++i) {
    const QuantizedRow xq = quantize_by_definition(x.data() + i * ldx, k);
    for (int64_t r = 0; r < n; ++r) {
      float c = 0.0f;
      const size_t o = size_t(i * n + r);
      for (int64_t b = 0; b < nb; ++b) {
        const Block& w = W[r * nb + b];
        const float dw = f16_to_f32(w.d), dx = xq.d[size_t(b)];
        int64_t s = 0, wabs = 0;
        for (int j = 0; j < 32; ++j) {
          const int wq = weight_int(w, j);
          s += int64_t(wq) * xq.q[size_t(b * 32 + j)];
          wabs += std::abs(wq);
          ref.f32_act[o] += double(dw) * wq * x[size_t(i * ldx + b * 32 + j)];
        }
        c = std::fma(float(s), dw * dx, c);
        ref.exact[o] += double(dw) * double(dx) * double(s);
        ref.terms[o] += std::fabs(double(dw) * double(dx) * double(s));
        ref.act_err[o] += std::fabs(double(dw)) * double(wabs) * double(dx) / 2;  // q4_0 scales may be negative
      }
      ref.chain[o] = c;
    }
  }
  return ref;
}

// The quantized activations: each block by the definition (and so |x − d·q| ≤ d/2 with |q| ≤ 127,
// its largest magnitude at ±127), Σq carried, non-finite blocks marked NaN.
TEST(LinearQ8x8, ActivationsAreQuantizedPerBlockOf32) {
  auto x = randn(32 * 6, 51);
  for (int j = 0; j < 32; ++j) x[size_t(j)] = 0.0f;  // all zeros: d 0
  x[40] = 1e-30f;                                    // a block of tiny values
  for (int j = 64; j < 96; ++j) x[size_t(j)] *= 1e20f;
  x[100] = NAN;
  x[140] = -INFINITY;
  for (int j = 160; j < 192; ++j) x[size_t(j)] = float(j - 176) * 0.5f;  // exact halves: ties
  std::vector<cpu::simd::ActBlock> blocks(6);
  cpu::simd::quantize_activations(x.data(), 192, blocks.data());
  const QuantizedRow want = quantize_by_definition(x.data(), 192);
  for (int b = 0; b < 6; ++b) {
    const auto& blk = blocks[size_t(b)];
    int sum = 0, top = 0;
    for (int j = 0; j < 32; ++j) {
      ASSERT_EQ(blk.q[j], want.q[size_t(b * 32 + j)]) << "block " << b << " element " << j;
      sum += blk.q[j];
      top = std::max(top, std::abs(int(blk.q[j])));
      if (std::isfinite(blk.d)) {
        ASSERT_LE(std::fabs(x[size_t(b * 32 + j)] - blk.d * blk.q[j]), 0.5f * blk.d * (1 + 1e-6f)) << b;
      }
    }
    EXPECT_EQ(blk.sum, sum) << "block " << b;
    if (b == 3 || b == 4) {
      EXPECT_TRUE(std::isnan(blk.d)) << "block " << b;
      EXPECT_EQ(top, 0);
    } else {
      EXPECT_EQ(blk.d, want.d[size_t(b)]) << "block " << b;
      EXPECT_EQ(top, b == 0 ? 0 : 127) << "block " << b;
    }
  }
}

// The kernels against the definition computed here: bit for bit the fp32 fma chain, under every
// instruction set this CPU runs, prefill (the GEMM where the set has one, from gemm_min_rows) and
// decode alike, for 1–40 rows of x at strides wider than the rows; shapes that leave partial row groups (n odd), partial
// GEMM tiles and column blocks, and k over several of the GEMM's 16-block panels. The chain is also
// held to two sums in double: the same products (error ≤ (k/32 + 1)·2⁻²⁴·Σ|terms|, fp32
// accumulation plus the rounded scale product, doubled for slack), and the fp32 activations (the
// difference ≤ what quantizing x can move it, Σ|w|·dx/2, plus that rounding). The test reads a block's
// integers as the dequantization does (weight_int, checked here element by element).
template <class Block>
void expect_int8_kernels_are_the_definition(DType dtype) {
  IsaScope scope;
  std::string covered;
  for (const auto& [n, k] : {std::pair<int64_t, int64_t>{1, 32}, {37, 64}, {45, 96}, {300, 1056}, {129, 768},
                             {17, 1536}}) {
    const int64_t M = 40, ldx = k + 5, ldy = n + 3;
    Tensor W = Tensor::empty({n, k});
    auto wv = randn(size_t(n * k), 61);
    if (n * k >= 64)
      for (int64_t j = 32; j < 64; ++j) wv[size_t(j)] = 0.0f;  // an all-zero weight block: scale 0
    auto xv = randn(size_t(M * ldx), 62);
    for (int64_t j = 0; j < std::min<int64_t>(k, 32); ++j) xv[size_t(ldx + j)] = 0.0f;  // row 1: a zero block
    std::copy(wv.begin(), wv.end(), W.data());
    const Tensor q = W.to(Device::CPU, dtype), deq = q.to(Device::CPU, DType::F32);
    const auto* blocks = static_cast<const Block*>(q.raw());
    for (int64_t e = 0; e < n * k; ++e)  // the reference reads the blocks as the dequantization does
      ASSERT_EQ(f16_to_f32(blocks[e / 32].d) * float(weight_int(blocks[e / 32], int(e % 32))), deq.data()[e]) << e;
    const Int8Reference ref = int8_by_definition(xv, ldx, blocks, M, n, k);
    for (int64_t o = 0; o < M * n; ++o) {
      const double u = std::ldexp(1.0, -24), nb = double(k / 32);
      ASSERT_LE(std::fabs(ref.chain[size_t(o)] - ref.exact[size_t(o)]), 2 * (nb + 1) * u * ref.terms[size_t(o)]) << o;
      ASSERT_LE(std::fabs(ref.chain[size_t(o)] - ref.f32_act[size_t(o)]),
                ref.act_err[size_t(o)] * (1 + 1e-6) + 2 * (nb + 1) * u * ref.terms[size_t(o)])
          << o;
    }
    for (Isa isa : cpu::simd::available_isas()) {
      cpu::simd::set_isa(isa);
      const std::string name = cpu::simd::int8_kernels(isa).name;
      if (covered.find(name) == std::string::npos) covered += " " + name;
      for (bool prefill : {true, false})
        for (int64_t m : {1, 3, 7, 8, 17, 33, 40}) {
          std::vector<float> y(size_t(m * ldy), -7.0f);
          cpu::linear_int8(xv.data(), ldx, blocks, y.data(), ldy, m, n, k, prefill);
          for (int64_t i = 0; i < m; ++i) {
            ASSERT_EQ(std::memcmp(y.data() + i * ldy, ref.chain.data() + i * n, sizeof(float) * size_t(n)), 0)
                << name << (prefill ? " prefill" : " decode") << " n " << n << " k " << k << " rows " << m << " row "
                << i;
            for (int64_t j = n; j < ldy; ++j) ASSERT_EQ(y[size_t(i * ldy + j)], -7.0f) << "wrote past row " << i;
          }
        }
    }
  }
  std::printf("[ %s x int8 ] kernels tested:%s\n", std::string(dtype_name(dtype)).c_str(), covered.c_str());
}

TEST(LinearQ8x8, EveryIsaIsTheDefinitionBitForBit) { expect_int8_kernels_are_the_definition<Q8Block>(DType::Q8_0); }

// The same for Q4_0 weights (llama.cpp's q4_0 · q8_0).
TEST(LinearQ4x8, EveryIsaIsTheDefinitionBitForBit) { expect_int8_kernels_are_the_definition<Q4Block>(DType::Q4_0); }

// The VNNI kernels are among those the test above ran, where this CPU has them.
TEST(LinearQ8x8, VnniKernelsWhereTheCpuHasThem) {
  if (!cpu::simd::cpu_has_avx512_vnni()) GTEST_SKIP() << "no AVX512_VNNI on this CPU: the VNNI kernels were not run";
  EXPECT_EQ(std::string(cpu::simd::int8_kernels(Isa::Avx512).name), "avx512vnni");
}

// A NaN or an infinity in a row of x makes that row's outputs NaN (and no other row's), as fp32
// arithmetic would, on every path.
template <class Block>
void expect_non_finite_activations_give_nan(DType dtype) {
  IsaScope scope;
  const int64_t m = 3, n = 40, k = 64;
  Tensor W = Tensor::empty({n, k});
  const auto wv = randn(size_t(n * k), 63);
  auto xv = randn(size_t(m * k), 64);
  xv[size_t(k + 5)] = INFINITY;
  std::copy(wv.begin(), wv.end(), W.data());
  const Tensor q = W.to(Device::CPU, dtype);
  for (Isa isa : cpu::simd::available_isas()) {
    cpu::simd::set_isa(isa);
    for (bool prefill : {true, false}) {
      std::vector<float> y(size_t(m * n));
      cpu::linear_int8(xv.data(), k, static_cast<const Block*>(q.raw()), y.data(), n, m, n, k, prefill);
      for (int64_t j = 0; j < n; ++j) {
        EXPECT_TRUE(std::isfinite(y[size_t(j)]) && std::isfinite(y[size_t(2 * n + j)])) << j;
        EXPECT_TRUE(std::isnan(y[size_t(n + j)])) << cpu::simd::isa_name(isa) << " " << j;
      }
    }
  }
}

TEST(LinearQ8x8, NonFiniteActivationsGiveNaN) { expect_non_finite_activations_give_nan<Q8Block>(DType::Q8_0); }
TEST(LinearQ4x8, NonFiniteActivationsGiveNaN) { expect_non_finite_activations_give_nan<Q4Block>(DType::Q4_0); }

// Batch invariance through the op (int8 activations): each row's bits do not depend on the rows
// that share the call, under every instruction set; prefill and decode give the same bits (one
// definition), and so does every instruction set: those of the kernels the test above holds to the
// definition.
template <class Block>
void expect_int8_rows_do_not_depend_on_the_row_count(DType dtype, const Widths& widths) {
  IsaScope scope;
  const test::Q8ActivationsAs act(ops::Q8Activations::Int8);
  for (const auto& [n, k] : widths) {
    const int64_t M = 70;
    Tensor W = randn_matrix(n, k, 71), x = randn_matrix(M, k, 72);
    const Tensor q = W.to(Device::CPU, dtype);
    Tensor first = Tensor::empty({M, n});
    bool have_first = false;
    for (const auto& [isa, kernel] : every_path()) {
      cpu::simd::set_isa(isa);
      const std::string where = std::string(cpu::simd::isa_name(isa)) +
                                (kernel == ops::LinearKernel::Prefill ? " prefill" : " decode");
      Tensor ref = Tensor::empty({M, n});
      ops::linear(MatView::of(x), q, MatView::of(ref), kernel);
      if (!have_first) {  // the op runs the kernels the definition's test holds
        cpu::linear_int8(x.data(), k, static_cast<const Block*>(q.raw()), first.data(), n, M, n, k, false);
        have_first = true;
      }
      ASSERT_EQ(std::memcmp(ref.data(), first.data(), sizeof(float) * size_t(M * n)), 0) << where << " vs the first";
      for (int64_t m : {1, 2, 3, 5, 8, 9, 13, 17, 33}) {
        for (int64_t off : {int64_t(0), int64_t(1), M - m}) {
          Tensor y = Tensor::empty({m, n});
          ops::linear(MatView::of(x).rows_slice(off, m), q, MatView::of(y), kernel);
          ASSERT_EQ(std::memcmp(y.data(), ref.data() + off * n, sizeof(float) * size_t(m * n)), 0)
              << dtype_name(dtype) << " " << where << " n " << n << " k " << k << " rows " << m << " at " << off;
        }
      }
    }
  }
}

TEST(LinearQ8x8, RowsDoNotDependOnTheRowCountAndPrefillIsDecode) {
  expect_int8_rows_do_not_depend_on_the_row_count<Q8Block>(DType::Q8_0, kSmallWidths);
}
TEST(LinearQ8x8, RowsDoNotDependOnTheRowCountAndPrefillIsDecodeAt130mWidths) {
  expect_int8_rows_do_not_depend_on_the_row_count<Q8Block>(DType::Q8_0, k130mWidths);
}
TEST(LinearQ4x8, RowsDoNotDependOnTheRowCountAndPrefillIsDecode) {
  expect_int8_rows_do_not_depend_on_the_row_count<Q4Block>(DType::Q4_0, kSmallWidths);
}
TEST(LinearQ4x8, RowsDoNotDependOnTheRowCountAndPrefillIsDecodeAt130mWidths) {
  expect_int8_rows_do_not_depend_on_the_row_count<Q4Block>(DType::Q4_0, k130mWidths);
}

// ---- bf16 weights × bf16 activations (cpu/simd/bf16xbf16.h) ----

// Where the CPU has no AVX512_BF16 the kernels do not exist and these tests have nothing to run.
#define SKIP_WITHOUT_AVX512_BF16()                                                                        \
  if (!cpu::simd::cpu_has_avx512_bf16()) GTEST_SKIP() << "no AVX512_BF16 on this CPU: the bf16 x bf16 kernels " \
                                                         "were not run"

// x's rounding: to nearest, ties to even, NaN and infinities kept, zeros after k up to a whole step.
TEST(LinearBf16x16, ActivationsRoundToNearestEvenAndArePaddedWithZeros) {
  const float tie_down = 1.0f + std::ldexp(1.0f, -8), tie_up = 1.0f + 3 * std::ldexp(1.0f, -8);
  const std::vector<float> x{tie_down, tie_up, -tie_up, 1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20), NAN,
                             INFINITY, -0.0f, 3.4028235e38f};
  std::vector<uint16_t> out(32, 0xFFFF);
  cpu::simd::round_activations(x.data(), int64_t(x.size()), out.data());
  EXPECT_EQ(bf16_to_f32(out[0]), 1.0f);
  EXPECT_EQ(bf16_to_f32(out[1]), 1.0f + std::ldexp(1.0f, -6));
  EXPECT_EQ(bf16_to_f32(out[2]), -(1.0f + std::ldexp(1.0f, -6)));
  EXPECT_EQ(bf16_to_f32(out[3]), 1.0f + std::ldexp(1.0f, -7));
  EXPECT_TRUE(std::isnan(bf16_to_f32(out[4])));
  EXPECT_EQ(bf16_to_f32(out[5]), INFINITY);
  EXPECT_EQ(out[6], 0x8000);
  EXPECT_EQ(bf16_to_f32(out[7]), INFINITY);  // FLT_MAX lies past the last bf16's half step
  for (size_t j = x.size(); j < out.size(); ++j) EXPECT_EQ(out[j], 0) << j;
  EXPECT_EQ(cpu::simd::bf16_padded(1), 32);
  EXPECT_EQ(cpu::simd::bf16_padded(64), 64);
}

// The hardware kernels against the exact sum (double) of the products of the bf16 weights and the
// rounded activations, whatever the CPU does inside an instruction. Each of an output's 16 lanes is
// a chain of s = ⌈k/32⌉ steps, each adding two exact products (at most two roundings a step), then
// four levels of the lane tree: the error is at most γ_{2s+4}·Σ|w·x̂| (γ_n = n·2⁻²⁴/(1 − n·2⁻²⁴))
// for normal numbers. The data are normal: no denormal product or sum that a flush could move.
// And the distance to the fp32 activations is at most what rounding x moves, 2⁻⁸·Σ|w·x|, plus that.
// Both kernels (prefill and decode), 1–17 rows of x at a stride wider than k, k with and without a
// tail, n leaving partial row groups and bands.
TEST(LinearBf16x16, IsTheDoubleSumWithinTheBoundOfItsOrder) {
  SKIP_WITHOUT_AVX512_BF16();
  for (const auto& [n, k] : {std::pair<int64_t, int64_t>{37, 1}, {37, 31}, {70, 32}, {45, 100}, {130, 768},
                             {17, 1001}, {9, 1536}}) {
    const int64_t M = 17, ldx = k + 5, ldy = n + 3, steps = cpu::simd::bf16_padded(k) / 32;
    Tensor W = Tensor::empty({n, k});
    const auto wv = randn(size_t(n * k), 81), xv = randn(size_t(M * ldx), 82);
    std::copy(wv.begin(), wv.end(), W.data());
    const Tensor w16 = W.to(Device::CPU, DType::BF16);
    const auto* wb = static_cast<const uint16_t*>(w16.raw());
    std::vector<double> exact(size_t(M * n)), bound(size_t(M * n)), f32_act(size_t(M * n)), act_err(size_t(M * n));
    const double u = std::ldexp(1.0, -24), gamma = (2 * steps + 4) * u / (1 - (2 * steps + 4) * u);
    for (int64_t i = 0; i < M; ++i)
      for (int64_t r = 0; r < n; ++r) {
        double s = 0, a = 0, f = 0, fa = 0;
        for (int64_t j = 0; j < k; ++j) {
          const double w = bf16_to_f32(wb[r * k + j]), xr = bf16_to_f32(f32_to_bf16(xv[size_t(i * ldx + j)]));
          s += w * xr;
          a += std::fabs(w * xr);
          f += w * xv[size_t(i * ldx + j)];
          fa += std::fabs(w * xv[size_t(i * ldx + j)]);
        }
        exact[size_t(i * n + r)] = s;
        bound[size_t(i * n + r)] = gamma * a;
        f32_act[size_t(i * n + r)] = f;
        act_err[size_t(i * n + r)] = std::ldexp(fa, -8) + gamma * a;
      }
    for (bool prefill : {true, false})
      for (int64_t m : {1, 2, 3, 4, 7, 8, 9, 16, 17}) {
        std::vector<float> y(size_t(m * ldy), -7.0f);
        {
          IsaScope scope;
          cpu::simd::set_isa(Isa::Avx512);
          cpu::linear_bf16(xv.data(), ldx, wb, y.data(), ldy, m, n, k, prefill);
        }
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t r = 0; r < n; ++r) {
            const size_t o = size_t(i * n + r);
            ASSERT_LE(std::fabs(y[size_t(i * ldy + r)] - exact[o]), bound[o])
                << (prefill ? "prefill" : "decode") << " n " << n << " k " << k << " rows " << m << " at " << i << ", "
                << r;
            ASSERT_LE(std::fabs(y[size_t(i * ldy + r)] - f32_act[o]), act_err[o]) << i << ", " << r;
          }
          for (int64_t j = n; j < ldy; ++j) ASSERT_EQ(y[size_t(i * ldy + j)], -7.0f) << "wrote past row " << i;
        }
      }
  }
}

// A NaN in a row of x makes that row's outputs NaN and no other row's, in both kernels.
TEST(LinearBf16x16, NanActivationsStayInTheirRow) {
  SKIP_WITHOUT_AVX512_BF16();
  IsaScope scope;
  cpu::simd::set_isa(Isa::Avx512);
  const int64_t n = 40, k = 100;
  for (int64_t m : {3, 11}) {
    Tensor W = Tensor::empty({n, k});
    const auto wv = randn(size_t(n * k), 93);
    auto xv = randn(size_t(m * k), 94);
    xv[size_t(k + 5)] = NAN;
    std::copy(wv.begin(), wv.end(), W.data());
    const Tensor w16 = W.to(Device::CPU, DType::BF16);
    for (bool prefill : {true, false}) {
      std::vector<float> y(size_t(m * n));
      cpu::linear_bf16(xv.data(), k, static_cast<const uint16_t*>(w16.raw()), y.data(), n, m, n, k, prefill);
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j)
          EXPECT_EQ(std::isnan(y[size_t(i * n + j)]), i == 1) << (prefill ? "prefill" : "decode") << " " << i << ", " << j;
    }
  }
}

// Batch invariance through the op on the hardware path: each row's bits do not depend on the rows
// that share the call (count and offset), and prefill (its own kernel, blocked for W in cache)
// gives decode's bits; at the 130m projection widths, a small one and one with a tail.
TEST(LinearBf16x16, RowsDoNotDependOnTheRowCountAndPrefillIsDecode) {
  SKIP_WITHOUT_AVX512_BF16();
  IsaScope scope;
  cpu::simd::set_isa(Isa::Avx512);
  const test::Bf16ActivationsAs act(ops::Bf16Activations::Bf16);
  for (const auto& [n, k] : {std::pair<int64_t, int64_t>{3352, 768}, {768, 1536}, {296, 64}, {100, 1001}}) {
    const int64_t M = 70;
    Tensor W = randn_matrix(n, k, 91), x = randn_matrix(M, k, 92);
    const Tensor w16 = W.to(Device::CPU, DType::BF16);
    Tensor ref = Tensor::empty({M, n});
    ops::linear(MatView::of(x), w16, MatView::of(ref), ops::LinearKernel::Decode);
    for (auto kernel : {ops::LinearKernel::Prefill, ops::LinearKernel::Decode})
      for (int64_t m : {1, 2, 3, 5, 8, 9, 13, 17, 33, 70})
        for (int64_t off : {int64_t(0), int64_t(1), M - m}) {
          if (off + m > M) continue;
          Tensor y = Tensor::empty({m, n});
          ops::linear(MatView::of(x).rows_slice(off, m), w16, MatView::of(y), kernel);
          ASSERT_EQ(std::memcmp(y.data(), ref.data() + off * n, sizeof(float) * size_t(m * n)), 0)
              << (kernel == ops::LinearKernel::Prefill ? "prefill" : "decode") << " n " << n << " k " << k << " rows "
              << m << " at " << off;
        }
  }
}

// The choice: the default follows the kernels (on with AVX512_BF16, off elsewhere and under
// another instruction set), f32 turns them off, and bf16 where they are missing is refused.
TEST(LinearBf16x16, ActivationsFollowTheKernelsAndBf16IsRefusedWithout) {
  IsaScope scope;
  for (Isa isa : cpu::simd::available_isas()) {
    cpu::simd::set_isa(isa);
    const bool has = cpu::simd::bf16_kernels(isa) != nullptr;
    EXPECT_EQ(has, isa == Isa::Avx512 && cpu::simd::cpu_has_avx512_bf16()) << cpu::simd::isa_name(isa);
    {
      const test::Bf16ActivationsAs act(ops::Bf16Activations::Default);
      EXPECT_EQ(ops::bf16_rounded_activations(), has) << cpu::simd::isa_name(isa);
    }
    {
      const test::Bf16ActivationsAs act(ops::Bf16Activations::F32);
      EXPECT_FALSE(ops::bf16_rounded_activations());
    }
    const test::Bf16ActivationsAs act(ops::Bf16Activations::Bf16);
    if (has) {
      EXPECT_TRUE(ops::bf16_rounded_activations());
      continue;
    }
    try {
      ops::bf16_rounded_activations();
      FAIL() << "bf16 activations without their kernels were not refused";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("[linear] bf16 activations"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace mamba2
