// The CUDA kernels of the ops (through the op front ends) against the CPU kernels on random
// inputs of awkward sizes; batch invariance of the projections. Skipped without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <tuple>

#include "cuda_test_support.h"
#if MAMBA2_HAVE_CUDA
#include "cuda/kernels.h"
#endif
#include "ops/ops.h"
#include "test_support.h"

namespace mamba2 {
namespace {

using test::random_tensor;
using test::rel_l2;
using test::to_cpu;
using test::to_gpu;

// fp32 on both devices, only the summation order differs (block reductions vs SIMD lanes).
constexpr double kF32Tol = 1e-5;
// An output stored in bf16 is the fp32 result rounded once: relative error ≤ 2⁻⁹ per element,
// so ≤ 2⁻⁹ ≈ 2e-3 in relative L2; f16 (2⁻¹²) is inside it.
constexpr double kRoundedOutputTol = 2.5e-3;

double rel(const Tensor& got, const Tensor& want) {
  EXPECT_EQ(got.numel(), want.numel());
  return rel_l2(got.data(), want.data(), size_t(want.numel()));
}

TEST(CudaOps, EmbeddingGathersRowsInEveryDtype) {
  MAMBA2_REQUIRE_GPU();
  const Tensor table = random_tensor({37, 24}, 1);
  const std::vector<int32_t> ids{0, 36, 5, 5, 17};
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    const Tensor ref_table = test::rounded(table, dt);
    Tensor want = Tensor::empty({5, 24});
    ops::embedding(ref_table, ids, MatView::of(want));
    Tensor got = test::gpu_nan({5, 24});
    ops::embedding(to_gpu(table, dt), ids, MatView::of(got));
    EXPECT_TRUE(test::same_bits(to_cpu(got), want)) << dtype_name(dt);
  }
}

TEST(CudaOps, AddRmsnormMatchesCpu) {
  MAMBA2_REQUIRE_GPU();
  for (int64_t d : {int64_t(1), int64_t(48), int64_t(768), int64_t(2561)}) {
    for (DType out_dtype : {DType::F32, DType::BF16, DType::F16}) {
      SCOPED_TRACE("d " + std::to_string(d) + " " + std::string(dtype_name(out_dtype)));
      const int64_t n = 7;
      const Tensor residual = random_tensor({n, d}, 2), h = random_tensor({n, d}, 3), w = random_tensor({d}, 4);
      Tensor res_cpu = residual.to(Device::CPU, DType::F32), out_cpu = Tensor::empty({n, d});
      ops::add_rmsnorm(MatView::of(res_cpu), MatView::of(const_cast<Tensor&>(h)), w, MatView::of(out_cpu), 1e-5f);
      Tensor res_gpu = to_gpu(residual), h_gpu = to_gpu(h), out_gpu = Tensor::empty({n, d}, Device::CUDA, out_dtype);
      ops::add_rmsnorm(MatView::of(res_gpu), MatView::of(h_gpu), to_gpu(w), MatView::of(out_gpu), 1e-5f);
      EXPECT_LE(rel(to_cpu(res_gpu), res_cpu), 0.0) << "the residual add is one fp32 addition";
      EXPECT_LE(rel(to_cpu(out_gpu), out_cpu), out_dtype == DType::F32 ? kF32Tol : kRoundedOutputTol);
      // Without h: the residual is taken as is.
      Tensor out2 = Tensor::empty({n, d}, Device::CUDA, out_dtype), out2_cpu = Tensor::empty({n, d});
      ops::add_rmsnorm(MatView::of(res_gpu), MatView{}, to_gpu(w), MatView::of(out2), 1e-5f);
      ops::add_rmsnorm(MatView::of(res_cpu), MatView{}, w, MatView::of(out2_cpu), 1e-5f);
      EXPECT_LE(rel(to_cpu(out2), out2_cpu), out_dtype == DType::F32 ? kF32Tol : kRoundedOutputTol);
    }
  }
}

// Into `sum` (training keeps each layer's residual): the bits of the add in place, the residual
// left as it was; without h, sum is the residual. On the CPU, and on the GPU when there is one.
TEST(CudaOps, AddRmsnormIntoSumKeepsTheResidual) {
  const int64_t n = 7, d = 768;
  const Tensor residual = random_tensor({n, d}, 2), h = random_tensor({n, d}, 3), w = random_tensor({d}, 4);
  for (Device dev : {Device::CPU, Device::CUDA}) {
    if (dev == Device::CUDA && cuda::device_count() == 0) continue;
    for (DType odt : {DType::F32, DType::BF16}) {
      if (dev == Device::CPU && odt != DType::F32) continue;
      SCOPED_TRACE(std::string(device_name(dev)) + " " + std::string(dtype_name(odt)));
      Tensor r = residual.to(dev, DType::F32), hh = h.to(dev, DType::F32), ww = w.to(dev, DType::F32);
      Tensor sum = Tensor::empty({n, d}, dev), o = Tensor::empty({n, d}, dev, odt);
      Tensor r_in = residual.to(dev, DType::F32), o_in = Tensor::empty({n, d}, dev, odt);
      ops::add_rmsnorm(MatView::of(r), MatView::of(hh), ww, MatView::of(o), 1e-5f, MatView::of(sum));
      ops::add_rmsnorm(MatView::of(r_in), MatView::of(hh), ww, MatView::of(o_in), 1e-5f);
      EXPECT_TRUE(test::same_bits(to_cpu(sum), to_cpu(r_in)));
      EXPECT_TRUE(test::same_bits(to_cpu(o), to_cpu(o_in)));
      EXPECT_TRUE(test::same_bits(to_cpu(r), residual));
      ops::add_rmsnorm(MatView::of(r), MatView{}, ww, MatView::of(o), 1e-5f, MatView::of(sum));
      EXPECT_TRUE(test::same_bits(to_cpu(sum), residual));
    }
  }
}

TEST(CudaOps, GatedRmsnormMatchesCpu) {
  MAMBA2_REQUIRE_GPU();
  // y and z are column slices of a wider buffer. Groups of 24 … 1536 channels: 4 and 6 values a
  // thread.
  for (auto [d, ld] : {std::pair<int64_t, int64_t>{96, 130}, {1536, 3352}})
    for (int64_t groups : {1, 2, 4}) {
      for (DType out_dtype : {DType::F32, DType::BF16}) {
        SCOPED_TRACE("d " + std::to_string(d) + " groups " + std::to_string(groups));
        const int64_t n = 5;
        const Tensor buf = random_tensor({n, ld}, 5, -3.0f, 3.0f), w = random_tensor({d}, 6);
        Tensor buf_cpu = buf.to(Device::CPU, DType::F32), out_cpu = Tensor::empty({n, d});
        ops::gated_rmsnorm(MatView::of(buf_cpu).cols_slice(0, d), MatView::of(buf_cpu).cols_slice(ld - d, d), w,
                           MatView::of(out_cpu), groups, 1e-5f);
        Tensor buf_gpu = to_gpu(buf), out_gpu = Tensor::empty({n, d}, Device::CUDA, out_dtype);
        ops::gated_rmsnorm(MatView::of(buf_gpu).cols_slice(0, d), MatView::of(buf_gpu).cols_slice(ld - d, d), to_gpu(w),
                           MatView::of(out_gpu), groups, 1e-5f);
        EXPECT_LE(rel(to_cpu(out_gpu), out_cpu), out_dtype == DType::F32 ? kF32Tol : kRoundedOutputTol);
      }
    }
}

TEST(CudaOps, LinearMatchesCpuInEveryDtype) {
  MAMBA2_REQUIRE_GPU();
  // k = 72: whole 16-byte loads with a partial last k-step; k = 77: the element-wise loads;
  // k = 1000, 1001: k split over a cluster of blocks (decode_splits), the last range partial;
  // n = 4800: two 16-column tiles a block at a few rows (decode_tiles_per_block). f32 at n = 200:
  // the skinny kernel, k over a cluster of blocks (skinny_splits; k = 9000: two passes a block).
  for (const auto& [n, k] : std::vector<std::pair<int64_t, int64_t>>{
           {200, 72}, {200, 77}, {200, 1000}, {200, 1001}, {200, 9000}, {4800, 72}, {4800, 77}}) {
    for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
      // k = 9000 is there for the f32 kernel; fp32 sums' error grows with k past this bound.
      if (k > 2000 && dt != DType::F32) continue;
      const Tensor W = random_tensor({n, k}, 7);
      for (int64_t m : {1, 3, 9, 64, 257}) {
        SCOPED_TRACE(std::string(dtype_name(dt)) + " n " + std::to_string(n) + " k " + std::to_string(k) + " m " +
                     std::to_string(m));
        const Tensor x = random_tensor({m, k}, 8 + uint64_t(m));
        // The oracle sees the inputs as the GPU does (rounded to the dtype); the products of
        // bf16/f16 values are exact in fp32, so only the summation order differs.
        const Tensor Wr = test::rounded(W, dt), xr = test::rounded(x, dt);
        Tensor want = Tensor::empty({m, n});
        ops::linear(MatView::of(const_cast<Tensor&>(xr)), Wr, MatView::of(want), ops::LinearKernel::Prefill);
        for (auto kind : {ops::LinearKernel::Prefill, ops::LinearKernel::Decode}) {
          Tensor xg = to_gpu(x, dt), got = test::gpu_nan({m, n});
          ops::linear(MatView::of(xg), to_gpu(W, dt), MatView::of(got), kind);
          EXPECT_LE(rel(to_cpu(got), want), kF32Tol);
        }
      }
    }
  }
}

// PrefillTf32 (a bf16 / f16 run's fp32 Mamba-1 x_proj and dt_proj in prefill): within TF32's
// rounding of the CPU's fp32 (2e-3 relative L2, as CudaGradOps.Tf32ProductsMatchCpuWithinTheirRounding
// derives), and a row's bits the same whatever the row count, past kPlanRows (4096) rows too, where
// a split-K plan runs in several calls. Shapes: the 2.8b's x_proj (192 × 5120, split over k) and
// dt_proj (5120 × 160), odd ones. On the CPU it is Prefill, bit for bit.
TEST(CudaOps, LinearPrefillTf32IsBatchInvariantWithinTf32Rounding) {
  MAMBA2_REQUIRE_GPU();
  constexpr double kTf32Tol = 2e-3;
  for (const auto& [n, k] : std::vector<std::pair<int64_t, int64_t>>{{192, 5120}, {5120, 160}, {77, 203}}) {
    SCOPED_TRACE("n " + std::to_string(n) + " k " + std::to_string(k));
    const int64_t M = 4100;
    const Tensor W = random_tensor({n, k}, 31), x = random_tensor({M, k}, 32);
    Tensor want = Tensor::empty({M, n}), cpu_tf32 = Tensor::empty({M, n});
    ops::linear(MatView::of(const_cast<Tensor&>(x)), W, MatView::of(want), ops::LinearKernel::Prefill);
    ops::linear(MatView::of(const_cast<Tensor&>(x)), W, MatView::of(cpu_tf32), ops::LinearKernel::PrefillTf32);
    EXPECT_TRUE(test::same_bits(cpu_tf32, want)) << "the CPU's PrefillTf32 is its Prefill";
    const Tensor Wg = to_gpu(W), xg = to_gpu(x);
    Tensor all = test::gpu_nan({M, n});
    ops::linear(MatView::of(const_cast<Tensor&>(xg)), Wg, MatView::of(all), ops::LinearKernel::PrefillTf32);
    const Tensor all_c = to_cpu(all);
    EXPECT_LE(rel(all_c, want), kTf32Tol);
    for (int64_t m : {1, 7, 300}) {
      Tensor part = test::gpu_nan({m, n});
      ops::linear(MatView::of(const_cast<Tensor&>(xg)).rows_slice(0, m), Wg, MatView::of(part),
                  ops::LinearKernel::PrefillTf32);
      const Tensor part_c = to_cpu(part);
      EXPECT_EQ(std::memcmp(part_c.data(), all_c.data(), size_t(m * n) * sizeof(float)), 0) << "rows " << m;
    }
  }
}

// The decode step's fused projections against the unfused computation done here in double, in
// both forms of the norm (ops::RowNorm). From partial sums of squares (each a quarter of a group's
// columns): x = src·scale·w rounded to the compute dtype, then the product with W rounded alike.
// Without sums (one group): x = src·w rounded (the same fp32 product the kernel forms), the product,
// then times the row's scale.
TEST(CudaOps, FusedNormedProjectionsMatchTheUnfusedOps) {
  MAMBA2_REQUIRE_GPU();
  // k = 768: the tensor-core kernel splits k over a cluster of blocks (decode_splits); n = 4800:
  // blocks of two 16-column tiles at a few rows, n = 20000 four (decode_tiles_per_block, a tall
  // W: on the H200's 132 SMs); n = 2200, k = 520: k split two ways over a W of a tile an SM or
  // more, two tiles a block at 9–16 rows (the 2.7b out_proj's case, a partial last tile and k
  // range); m = 1, 5, 12, 70: each kernel variant, whose rows must agree.
  const int64_t per = 4;
  const float eps = 1e-5f;
  for (const auto& [n, k, groups] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {40, 96, 1}, {40, 96, 3}, {40, 768, 1}, {40, 768, 3}, {4800, 96, 1}, {4800, 768, 3}, {4800, 768, 1},
           {20000, 96, 1}, {2200, 520, 1}}) {
    for (const bool with_sums : {true, false}) {
      if (!with_sums && groups != 1) continue;
      for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
        for (int64_t m : {1, 5, 12, 70}) {
          SCOPED_TRACE(testing::Message() << "n " << n << " k " << k << " groups " << groups << " " << dtype_name(dt)
                                          << " m " << m << (with_sums ? " sums" : " own norm"));
          const Tensor src = random_tensor({m, k}, 50 + uint64_t(m), -2.0f, 2.0f), w = random_tensor({k}, 51);
          const Tensor W = random_tensor({n, k}, 52), res0 = random_tensor({m, n}, 53);
          const int64_t gs = k / groups;
          Tensor sums = Tensor::zeros({m, groups * per}), x = Tensor::empty({m, k});
          std::vector<double> row_scale(size_t(m), 1.0);
          for (int64_t r = 0; r < m; ++r) {
            for (int64_t c = 0; c < k; ++c) {
              const float v = src.data()[r * k + c];
              sums.data()[r * groups * per + c / gs * per + c % per] += v * v;
            }
            for (int64_t g = 0; g < groups; ++g) {
              double ss = 0.0;
              for (int64_t c = g * gs; c < (g + 1) * gs; ++c)
                ss += double(src.data()[r * k + c]) * src.data()[r * k + c];
              const double scale = 1.0 / std::sqrt(ss / double(gs) + eps);
              for (int64_t c = g * gs; c < (g + 1) * gs; ++c)
                x.data()[r * k + c] = with_sums ? float(double(src.data()[r * k + c]) * scale * w.data()[c])
                                                : src.data()[r * k + c] * w.data()[c];
              if (!with_sums) row_scale[size_t(r)] = scale;
            }
          }
          const Tensor xr = test::rounded(x, dt), Wr = test::rounded(W, dt);
          Tensor want = Tensor::empty({m, n}), want_res = Tensor::empty({m, n});
          for (int64_t r = 0; r < m; ++r)
            for (int64_t o = 0; o < n; ++o) {
              double acc = 0.0;
              for (int64_t c = 0; c < k; ++c) acc += double(xr.data()[r * k + c]) * Wr.data()[o * k + c];
              acc *= row_scale[size_t(r)];
              want.data()[r * n + o] = float(acc);
              want_res.data()[r * n + o] = float(acc + res0.data()[r * n + o]);
            }
          // fp32: summation order only. bf16/f16 from sums: where the fp32 scale's last bit differs
          // from the double one, an element of x near a rounding boundary may round the other way, by
          // one unit (2⁻⁸ relative, bf16) of that element: rare, 1e-3 in relative L2 is far above it.
          // Without sums x's rounding is the kernel's exactly, and the scale (fp32 sum, rsqrtf: a few
          // units of 2⁻²⁴) multiplies the sum: summation order and that, as in fp32.
          const double tol = dt == DType::F32 || !with_sums ? kF32Tol : 1e-3;
          const Tensor gsrc = to_gpu(src), gw = to_gpu(w), gW = to_gpu(W, dt), gsums = to_gpu(sums);
          const MatView sums_view = with_sums ? MatView::of(const_cast<Tensor&>(gsums)) : MatView{};
          const ops::RowNorm norm{sums_view, groups, gw, eps};
          Tensor y = test::gpu_nan({m, n});
          ops::linear_normed(MatView::of(const_cast<Tensor&>(gsrc)), norm, gW, MatView::of(y));
          EXPECT_LE(rel(to_cpu(y), want), tol);
          // Rows computed alone (a decode batch of one, and of a slice) have the bits they have here.
          const Tensor got_y = to_cpu(y);
          for (const auto& [r0, rows] : {std::pair<int64_t, int64_t>{0, 1}, {m - 1, 1}, {m / 2, m - m / 2}}) {
            Tensor part = test::gpu_nan({rows, n});
            const MatView part_sums = with_sums ? sums_view.rows_slice(r0, rows) : MatView{};
            const ops::RowNorm part_norm{part_sums, groups, gw, eps};
            ops::linear_normed(MatView::of(const_cast<Tensor&>(gsrc)).rows_slice(r0, rows), part_norm, gW,
                               MatView::of(part));
            EXPECT_EQ(std::memcmp(to_cpu(part).data(), got_y.data() + r0 * n, sizeof(float) * size_t(rows * n)), 0)
                << "rows " << r0 << " + " << rows;
          }
          Tensor res = to_gpu(res0);
          ops::linear_normed_residual(MatView::of(const_cast<Tensor&>(gsrc)), norm, gW, MatView::of(res));
          EXPECT_LE(rel(to_cpu(res), want_res), tol);
        }
      }
    }
  }
}

// The in projection's fused conv step gives the bits of the projection followed by the conv step
// op, states included (the same operations on the same values): with either form of the norm,
// at a few rows (taps and old inputs loaded into registers before the product, up to 4 taps;
// 6 taps from memory) and at many (from memory).
TEST(CudaOps, FusedConvStepGivesTheBitsOfTheConvStepOp) {
  MAMBA2_REQUIRE_GPU();
  const int64_t k = 512, first = 24, C = 40, n = first + C + 8, rows = 24;
  const Tensor src = random_tensor({20, k}, 60), w = random_tensor({k}, 61), W = random_tensor({n, k}, 62);
  const Tensor sums = random_tensor({20, 2}, 63, 10.0f, 20.0f);
  for (const int64_t K : {4, 6}) {
    const Tensor conv_w = random_tensor({C, K}, 64), conv_b = random_tensor({C}, 65);
    const Tensor states0 = random_tensor({rows, (K - 1) * C}, 66);
    for (const int64_t nb : {3, 20}) {
      std::vector<int64_t> slots(static_cast<size_t>(nb), 0);  // distinct, out of order
      for (int64_t i = 0; i < nb; ++i) slots[size_t(i)] = (7 * i + 2) % rows;
      const ops::SeqBatch seqs = ops::SeqBatch::decode(slots, Device::CUDA);
      for (const bool with_sums : {true, false}) {
        for (DType dt : {DType::F32, DType::BF16}) {
          SCOPED_TRACE(testing::Message() << "K " << K << " nb " << nb << (with_sums ? " sums " : " own norm ")
                                          << dtype_name(dt));
          const Tensor gsrc = to_gpu(src), gw = to_gpu(w), gW = to_gpu(W, dt), gsums = to_gpu(sums);
          const Tensor gcw = to_gpu(conv_w), gcb = to_gpu(conv_b);
          const MatView x = MatView::of(const_cast<Tensor&>(gsrc)).rows_slice(0, nb);
          const ops::RowNorm norm{with_sums ? MatView::of(const_cast<Tensor&>(gsums)).rows_slice(0, nb) : MatView{},
                                  1, gw, 1e-5f};
          Tensor y1 = test::gpu_nan({nb, n}), out1 = test::gpu_nan({nb, C}), st1 = to_gpu(states0);
          const ops::ConvStepFusion conv{first, gcw, gcb, MatView::of(out1), MatView::of(st1), seqs};
          ops::linear_normed(x, norm, gW, MatView::of(y1), &conv);
          Tensor y2 = test::gpu_nan({nb, n}), out2 = test::gpu_nan({nb, C}), st2 = to_gpu(states0);
          ops::linear_normed(x, norm, gW, MatView::of(y2));
          ops::causal_conv1d_step(MatView::of(y2).cols_slice(first, C), gcw, gcb, MatView::of(out2), MatView::of(st2),
                                  seqs);
          EXPECT_TRUE(test::same_bits(to_cpu(y1), to_cpu(y2)));
          EXPECT_TRUE(test::same_bits(to_cpu(out1), to_cpu(out2)));
          EXPECT_TRUE(test::same_bits(to_cpu(st1), to_cpu(st2)));
        }
      }
    }
  }
}

// Greedy ids: the GPU's argmax is the CPU's (the first of the largest, a NaN never wins) on rows
// with ties, NaNs and infinities, of sizes that leave partial groups of four, aligned or not.
TEST(CudaOps, ArgmaxIsTheCpusFirstLargest) {
  MAMBA2_REQUIRE_GPU();
  const int64_t rows = 6;
  for (int64_t cols : {1, 5, 4099, 50280}) {
    for (int64_t ld : {cols, cols + 1}) {
      SCOPED_TRACE(testing::Message() << "cols " << cols << " ld " << ld);
      Tensor x = random_tensor({rows, ld}, 70 + uint64_t(cols));
      float* d = x.data();
      const float nan = std::nanf("");
      d[1 * ld + cols / 3] = 5.0f, d[1 * ld + cols - 1] = 5.0f;  // the largest twice
      d[2 * ld] = nan;                                            // NaN first: it keeps its place
      d[3 * ld + cols / 2] = nan, d[3 * ld + cols - 1] = 7.0f;    // a NaN among the rest
      std::fill(d + 4 * ld, d + 4 * ld + cols, 0.25f);            // all equal
      d[5 * ld + cols / 2] = INFINITY, d[5 * ld] = -INFINITY;
      std::vector<int32_t> want(rows), got(rows, -1);
      ops::argmax(MatView::of(x), cols, want.data());
      const Tensor xg = to_gpu(x);
      auto out = cuda::allocate(sizeof(int32_t) * rows, "test");
      ops::argmax(MatView::of(const_cast<Tensor&>(xg)), cols, static_cast<int32_t*>(out.get()));
      cuda::copy_to_host(got.data(), out.get(), sizeof(int32_t) * rows);
      EXPECT_EQ(got, want);
    }
  }
}

// Sampling candidates: the GPU's radix select gives the CPU's sets bit for bit, on rows with ties
// (a 0.25 grid, values a few ulps apart that the temperature merges, all equal: over cap),
// infinities, per-row k and temperatures, sizes below and past one thread's share.
TEST(CudaOps, TopKIsTheCpus) {
  MAMBA2_REQUIRE_GPU();
  const int64_t rows = 6, cap = 300;
  for (int64_t cols : {1, 7, 1000, 50280}) {
    const int64_t ld = cols + 3;
    SCOPED_TRACE(testing::Message() << "cols " << cols);
    Tensor x = random_tensor({rows, ld}, 90 + uint64_t(cols));
    float* d = x.data();
    for (int64_t c = 0; c < cols; ++c) {
      d[1 * ld + c] = 0.25f * float(int(d[1 * ld + c] * 40.0f));
      d[2 * ld + c] = 1.0f + float(c % 5) * 0x1p-22f;
      d[3 * ld + c] = 0.5f;
    }
    d[4 * ld + cols / 2] = INFINITY, d[4 * ld] = -INFINITY;
    std::vector<int32_t> k{1, 40, int32_t(std::min<int64_t>(cols, 257)), 2, 3, int32_t(cols)};
    for (int32_t& v : k) v = int32_t(std::min<int64_t>(v, cols));
    const std::vector<float> temperature{1.0f, 0.7f, 3.0f, 1.0f, 1.3f, 0.9f};
    std::vector<int32_t> want_ids(rows * cap), want_count(rows), got_ids(rows * cap), got_count(rows);
    std::vector<float> want_values(rows * cap), got_values(rows * cap);
    ops::top_k(MatView::of(x), cols, k, temperature, cap, want_ids.data(), want_values.data(), want_count.data());
    const Tensor xg = to_gpu(x);
    auto ids = cuda::allocate(sizeof(int32_t) * rows * cap, "test");
    auto values = cuda::allocate(sizeof(float) * rows * cap, "test");
    auto count = cuda::allocate(sizeof(int32_t) * rows, "test");
    ops::top_k(MatView::of(const_cast<Tensor&>(xg)), cols, k, temperature, cap, static_cast<int32_t*>(ids.get()),
               static_cast<float*>(values.get()), static_cast<int32_t*>(count.get()));
    cuda::copy_to_host(got_count.data(), count.get(), sizeof(int32_t) * rows);
    cuda::copy_to_host(got_ids.data(), ids.get(), sizeof(int32_t) * rows * cap);
    cuda::copy_to_host(got_values.data(), values.get(), sizeof(float) * rows * cap);
    ASSERT_EQ(got_count, want_count);
    if (cols >= cap) {
      EXPECT_EQ(got_count[3], -1);  // all equal: every column reaches the cut
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < want_count[size_t(r)]; ++i) {
        ASSERT_EQ(got_ids[size_t(r * cap + i)], want_ids[size_t(r * cap + i)]) << "row " << r << " at " << i;
        ASSERT_EQ(got_values[size_t(r * cap + i)], want_values[size_t(r * cap + i)]) << "row " << r << " at " << i;
      }
  }
}

// A row's bits must not depend on how many rows are computed with it (batch invariance).
TEST(CudaOps, LinearRowsDoNotDependOnTheRowCount) {
  MAMBA2_REQUIRE_GPU();
  // The 130m in_proj, and its out_proj (k split over a cluster of blocks, decode_splits); the
  // 2.7b in_proj's rows at a short k (two 16-column tiles a block at a few rows); Mamba-1's x_proj
  // at 130m and 2.8b (f32: the skinny kernel, k over a cluster of blocks).
  const int64_t M = 2048;
  for (const auto& [n, k] : std::vector<std::pair<int64_t, int64_t>>{
           {3352, 768}, {768, 1536}, {10576, 256}, {80, 1536}, {192, 5120}}) {
    const Tensor W = random_tensor({n, k}, 9), x = random_tensor({M, k}, 10);
    for (DType dt : {DType::F32, DType::BF16}) {
      const Tensor Wg = to_gpu(W, dt), xg = to_gpu(x, dt);
      for (auto kind : {ops::LinearKernel::Prefill, ops::LinearKernel::Decode}) {
        Tensor full = Tensor::empty({M, n}, Device::CUDA);
        ops::linear(MatView::of(const_cast<Tensor&>(xg)), Wg, MatView::of(full), kind);
        const Tensor ref = to_cpu(full);
        for (int64_t m : {1, 2, 7, 16, 33, 300, 1000}) {
          for (int64_t off : {int64_t(0), M - m, int64_t(5)}) {
            Tensor part = Tensor::empty({m, n}, Device::CUDA);
            ops::linear(MatView::of(const_cast<Tensor&>(xg)).rows_slice(off, m), Wg, MatView::of(part), kind);
            const Tensor got = to_cpu(part);
            EXPECT_EQ(std::memcmp(got.data(), ref.data() + off * n, size_t(m * n) * sizeof(float)), 0)
                << dtype_name(dt) << (kind == ops::LinearKernel::Decode ? " decode" : " prefill") << " m " << m
                << " offset " << off;
          }
        }
      }
    }
  }
}

// Packed sequences with states in shuffled slots: the conv of each equals the CPU's alone.
TEST(CudaOps, CausalConvPackedMatchesCpu) {
  MAMBA2_REQUIRE_GPU();
  const int64_t C = 70, K = 4, ld = 90;
  const std::vector<int64_t> lengths{1, 2, 3, 5, 64, 7}, slots{4, 0, 6, 2, 1, 3};
  const int64_t T = std::accumulate(lengths.begin(), lengths.end(), int64_t(0)), rows = 7;
  const Tensor in = random_tensor({T, ld}, 11), w = random_tensor({C, K}, 12), b = random_tensor({C}, 13);
  const Tensor states = random_tensor({rows, (K - 1) * C}, 14);
  Tensor in_c = in.to(Device::CPU, DType::F32), st_c = states.to(Device::CPU, DType::F32), out_c = Tensor::empty({T, C});
  const ops::SeqBatch cpu_seqs(lengths, slots, 16, Device::CPU), gpu_seqs(lengths, slots, 16, Device::CUDA);
  ops::causal_conv1d(MatView::of(in_c).cols_slice(3, C), w, b, MatView::of(out_c), MatView::of(st_c), cpu_seqs);
  Tensor in_g = to_gpu(in), st_g = to_gpu(states), out_g = test::gpu_nan({T, C});
  ops::causal_conv1d(MatView::of(in_g).cols_slice(3, C), to_gpu(w), to_gpu(b), MatView::of(out_g), MatView::of(st_g),
                     gpu_seqs);
  EXPECT_LE(rel(to_cpu(out_g), out_c), kF32Tol);
  EXPECT_TRUE(test::same_bits(to_cpu(st_g), st_c)) << "states are copies of inputs";
  // The same conv into bf16 and f16 (the SSD scan's operands in the model): its fp32 results
  // rounded once, bit for bit; the states as in fp32.
  for (const DType dt : {DType::BF16, DType::F16}) {
    Tensor st16 = to_gpu(states), out16 = Tensor::empty({T, C}, Device::CUDA, dt);
    ops::causal_conv1d(MatView::of(in_g).cols_slice(3, C), to_gpu(w), to_gpu(b), MatView::of(out16),
                       MatView::of(st16), gpu_seqs);
    const Tensor got = out16.to(Device::CPU, dt), want = to_cpu(out_g).to(Device::CPU, dt);
    EXPECT_EQ(std::memcmp(got.raw(), want.raw(), want.nbytes()), 0) << dtype_name(dt);
    EXPECT_TRUE(test::same_bits(to_cpu(st16), st_c)) << dtype_name(dt);
    // The input in that dtype too (mixed-precision training's in_proj output): the bits of the same
    // rounded values given in fp32, outputs and states alike.
    const Tensor in_r = test::rounded(in, dt);
    Tensor in_f = to_gpu(in_r), in_n = to_gpu(in_r, dt), st_f = to_gpu(states), st_n = to_gpu(states);
    Tensor out_f = Tensor::empty({T, C}, Device::CUDA, dt), out_n = Tensor::empty({T, C}, Device::CUDA, dt);
    ops::causal_conv1d(MatView::of(in_f).cols_slice(3, C), to_gpu(w), to_gpu(b), MatView::of(out_f), MatView::of(st_f),
                       gpu_seqs);
    ops::causal_conv1d(MatView::of(in_n).cols_slice(3, C), to_gpu(w), to_gpu(b), MatView::of(out_n), MatView::of(st_n),
                       gpu_seqs);
    const Tensor got_n = out_n.to(Device::CPU, dt), want_n = out_f.to(Device::CPU, dt);
    EXPECT_EQ(std::memcmp(got_n.raw(), want_n.raw(), want_n.nbytes()), 0) << dtype_name(dt);
    EXPECT_TRUE(test::same_bits(to_cpu(st_n), to_cpu(st_f))) << dtype_name(dt);
    Tensor out32 = Tensor::empty({T, C}, Device::CUDA);
    EXPECT_NE(test::error_message([&] {
                ops::causal_conv1d(MatView::of(in_n).cols_slice(3, C), to_gpu(w), to_gpu(b), MatView::of(out32),
                                   MatView::of(st_n), gpu_seqs);
              }).find("[causal_conv1d] in is "),
              std::string::npos);
  }
  // One decode step from those states.
  const Tensor x = random_tensor({4, C}, 15);
  const std::vector<int64_t> step_slots{3, 5, 0, 6};
  Tensor out2_c = Tensor::empty({4, C}), out2_g = test::gpu_nan({4, C});
  ops::causal_conv1d_step(MatView::of(const_cast<Tensor&>(x)), w, b, MatView::of(out2_c), MatView::of(st_c),
                          ops::SeqBatch::decode(step_slots, Device::CPU));
  Tensor x_g = to_gpu(x);
  ops::causal_conv1d_step(MatView::of(x_g), to_gpu(w), to_gpu(b), MatView::of(out2_g), MatView::of(st_g),
                          ops::SeqBatch::decode(step_slots, Device::CUDA));
  EXPECT_LE(rel(to_cpu(out2_g), out2_c), kF32Tol);
  EXPECT_TRUE(test::same_bits(to_cpu(st_g), st_c));
}

// The GPU scan takes x, B and C in fp32 or in its compute dtype, the decode step in fp32 only:
// anything else is one clear error naming the op.
TEST(CudaOps, ScanInputsInAnotherDtypeAreRefused) {
  MAMBA2_REQUIRE_GPU();
  const int64_t T = 4, H = 2, P = 8, N = 8;
  const std::vector<int64_t> lengths{T}, slots{0};
  const ops::SeqBatch seqs(lengths, slots, 4, Device::CUDA);
  Tensor dt_bias = Tensor::zeros({H}, Device::CUDA), A_log = Tensor::zeros({H}, Device::CUDA),
         D = Tensor::zeros({H}, Device::CUDA);
  const ops::SsdWeights sw{dt_bias, A_log, D, P, 1, N, 0.0, std::numeric_limits<double>::infinity()};
  Tensor x = Tensor::zeros({T, H * P}, Device::CUDA, DType::BF16), bc = Tensor::zeros({T, N}, Device::CUDA, DType::BF16);
  Tensor dt = Tensor::zeros({T, H}, Device::CUDA), y = Tensor::zeros({T, H * P}, Device::CUDA),
         st = Tensor::zeros({1, H * P * N}, Device::CUDA);
  const auto refused = [](auto&& call, const std::string& want) {
    const std::string got = test::error_message(call);
    EXPECT_NE(got.find(want), std::string::npos) << got;
  };
  refused([&] { ops::ssd_scan(sw, MatView::of(x), MatView::of(bc), MatView::of(bc), MatView::of(dt), MatView::of(y),
                              MatView::of(st), seqs, DType::F16); },
          "[ssd_scan] x, B and C are BF16: the F16 scan takes them in F32");
  refused([&] { ops::ssd_scan(sw, MatView::of(x), MatView::of(bc), MatView::of(bc), MatView::of(dt), MatView::of(y),
                              MatView::of(st), seqs, DType::F32); },
          "[ssd_scan] x, B and C are BF16: the F32 scan takes them in F32");
  const ops::SeqBatch step = ops::SeqBatch::decode(slots, Device::CUDA);
  const auto row = [](Tensor& t) { return MatView::of(t).rows_slice(0, 1); };
  refused([&] { ops::ssd_step(sw, row(x), row(bc), row(bc), row(dt), row(y), MatView::of(st), step); },
          "[ssd_scan] x, B and C of a decode step is BF16, expected F32");
  // The scan in bf16 from bf16 inputs runs (zeros in, zeros out over an output of NaN).
  Tensor y_nan = test::gpu_nan({T, H * P});
  ops::ssd_scan(sw, MatView::of(x), MatView::of(bc), MatView::of(bc), MatView::of(dt), MatView::of(y_nan),
                MatView::of(st), seqs, DType::BF16);
  const Tensor got = to_cpu(y_nan);
  for (int64_t i = 0; i < got.numel(); ++i) ASSERT_EQ(got.data()[i], 0.0f) << "y[" << i << "]";
}

#if MAMBA2_HAVE_CUDA
// The kernels' launchers refuse a dtype they have no instance for (the weight formats) by name,
// before anything is launched.
TEST(CudaOps, LaunchersRefuseTheWeightFormatsAsActivations) {
  MAMBA2_REQUIRE_GPU();
  const auto refused = [](auto&& call, const std::string& want) {
    const std::string got = test::error_message(call);
    EXPECT_NE(got.find(want), std::string::npos) << got;
  };
  const ops::SeqBatch seqs(std::vector<int64_t>{4}, std::vector<int64_t>{0}, 4, Device::CUDA);
  for (const DType dt : {DType::Q8_0, DType::Q4_0}) {
    const std::string tail = std::string(dtype_name(dt)) + ": the CUDA kernels take F32, BF16 or F16";
    refused([&] { cuda::add_rmsnorm_forward(nullptr, nullptr, nullptr, nullptr, nullptr, dt, 1, 8, 1e-5f); },
            "[rmsnorm] " + tail);
    refused([&] { cuda::gated_rmsnorm_forward(nullptr, DType::F32, 8, nullptr, 8, nullptr, nullptr, dt, 8, 1, 8, 1,
                                                   1e-5f); },
            "[gated_rmsnorm] " + tail);
    refused([&] { cuda::embedding_forward(nullptr, dt, 8, nullptr, 1, nullptr); }, "[embedding] " + tail);
    refused([&] { cuda::causal_conv1d_forward(nullptr, DType::F32, 8, nullptr, nullptr, nullptr, 8, dt, nullptr,
                                              seqs.packed(), 8, 4); },
            "[causal_conv1d] " + tail);
  }
}
#endif

// Asking for more than the GPU has is one clear error naming the size, not a crash; the pool
// still serves later allocations.
TEST(CudaOps, OutOfMemoryIsAClearError) {
  MAMBA2_REQUIRE_GPU();
  try {
    Tensor::empty({int64_t(1) << 40}, Device::CUDA);  // 4 TiB
    FAIL() << "a 4 TiB allocation succeeded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[cuda] out of GPU memory: 4194304 MiB asked for a tensor"), std::string::npos)
        << e.what();
  }
  Tensor t = Tensor::zeros({1024}, Device::CUDA);
  EXPECT_EQ(to_cpu(t).data()[1023], 0.0f);
}

TEST(CudaOps, OperandsOnTheWrongDeviceAreRefused) {
  MAMBA2_REQUIRE_GPU();
  Tensor x = Tensor::zeros({2, 8}), y = Tensor::empty({2, 4}, Device::CUDA);
  const Tensor W = Tensor::zeros({4, 8}, Device::CUDA);
  try {
    ops::linear(MatView::of(x), W, MatView::of(y), ops::LinearKernel::Prefill);
    FAIL() << "a CPU input to a GPU weight was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[linear] x is on the cpu"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mamba2
