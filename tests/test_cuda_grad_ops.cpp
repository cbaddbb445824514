// The CUDA kernels of training (the backwards, cross-entropy, the optimiser's, the cast) through
// the op front ends, against the CPU kernels on random inputs of awkward sizes (row counts either
// side of the weight gradients' 64-row chunks, column slices of wider buffers), and the same run
// twice for the same bits. Skipped without a GPU, but for the cast's CPU half.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "cpu/kernels.h"
#include "cuda_test_support.h"
#include "mamba2/error.h"
#include "ops/ops.h"
#include "test_support.h"

namespace mamba2 {
namespace cuda_grad_ops_test {  // named: the unity build puts this file beside test_cuda_ops.cpp
namespace {

using test::random_tensor;
using test::rounded;  // a gradient written in bf16 / f16 is the fp32 one rounded once
using test::same_bits;
using test::to_cpu;
using test::to_gpu;

// fp32 on both devices; only the order of the sums differs (block trees and 64-row chunks against
// SIMD lanes and whole columns; BLAS against cuBLASLt): relative L2 ≤ 1e-5, as the forwards.
constexpr double kF32Tol = 1e-5;

double rel(const Tensor& got, const Tensor& want) {
  EXPECT_EQ(got.shape(), want.shape());
  return test::rel_l2(got.data(), want.data(), size_t(want.numel()));
}

// A CPU tensor's copy on the GPU, and the GPU tensor's result back: the pair every test compares.
struct Both {
  Tensor cpu, gpu;
  explicit Both(const Tensor& t) : cpu(t.to(Device::CPU, DType::F32)), gpu(to_gpu(t)) {}
  MatView c() { return MatView::of(cpu); }
  MatView g() { return MatView::of(gpu); }
  Tensor back() const { return to_cpu(gpu); }
};

TEST(CudaGradOps, AddRmsnormBackwardMatchesCpu) {
  MAMBA2_REQUIRE_GPU();
  // d up to 16 × 256 runs the rows kernels (4, 8, 12 and 16 values a thread), past it the row kernel.
  for (int64_t n : {1, 63, 65, 130})
    for (int64_t d : {1, 48, 769, 1800, 2560, 4000, 4097}) {
      SCOPED_TRACE("n " + std::to_string(n) + " d " + std::to_string(d));
      Both residual(random_tensor({n, d}, 1, -2.0f, 2.0f)), w(random_tensor({d}, 2)), d_out(random_tensor({n, d}, 3));
      // Both gradients accumulate: they start from values, the second GPU pair from the same ones.
      Both d_res(random_tensor({n, d}, 4)), d_w(random_tensor({d}, 5));
      Both d_res2(random_tensor({n, d}, 4)), d_w2(random_tensor({d}, 5));
      ops::add_rmsnorm_backward(residual.c(), w.cpu, d_out.c(), d_res.c(), d_w.cpu, 1e-5f);
      ops::add_rmsnorm_backward(residual.g(), w.gpu, d_out.g(), d_res.g(), d_w.gpu, 1e-5f);
      ops::add_rmsnorm_backward(residual.g(), w.gpu, d_out.g(), d_res2.g(), d_w2.gpu, 1e-5f);
      EXPECT_LE(rel(d_res.back(), d_res.cpu), kF32Tol);
      EXPECT_LE(rel(d_w.back(), d_w.cpu), kF32Tol);
      EXPECT_TRUE(same_bits(d_res.back(), d_res2.back()) && same_bits(d_w.back(), d_w2.back())) << "not deterministic";
    }
}

TEST(CudaGradOps, GatedRmsnormBackwardMatchesCpu) {
  MAMBA2_REQUIRE_GPU();
  // y and z are column slices of a wider buffer, as in in_proj's output. Groups of 24 … 4000
  // channels run the rows kernels (4, 6, 8, 12, 16 values a thread), 4100 and 8200 the row kernel.
  for (auto [d, ld] : {std::pair<int64_t, int64_t>{96, 130}, {1536, 3352}, {3000, 3010}, {4000, 4004}, {8200, 8206}})
    for (int64_t groups : {1, 2, 4})
      for (int64_t n : {3, 64, 129}) {
        SCOPED_TRACE("d " + std::to_string(d) + " groups " + std::to_string(groups) + " n " + std::to_string(n));
        Both buf(random_tensor({n, ld}, 6, -3.0f, 3.0f)), d_out(random_tensor({n, d}, 7));
        const Tensor w = random_tensor({d}, 8), w_g = to_gpu(w);
        Both d_y(Tensor::zeros({n, d})), d_z(Tensor::zeros({n, d})), d_w(random_tensor({d}, 9));
        ops::gated_rmsnorm_backward(buf.c().cols_slice(0, d), buf.c().cols_slice(ld - d, d), w, d_out.c(), d_y.c(),
                                    d_z.c(), d_w.cpu, groups, 1e-5f);
        ops::gated_rmsnorm_backward(buf.g().cols_slice(0, d), buf.g().cols_slice(ld - d, d), w_g, d_out.g(), d_y.g(),
                                    d_z.g(), d_w.gpu, groups, 1e-5f);
        EXPECT_LE(rel(d_y.back(), d_y.cpu), kF32Tol);
        EXPECT_LE(rel(d_z.back(), d_z.cpu), kF32Tol);
        EXPECT_LE(rel(d_w.back(), d_w.cpu), kF32Tol);
        for (DType narrow : {DType::BF16, DType::F16}) {  // d_z alone, then d_y too, rounded once
          Tensor d_z_narrow = Tensor::zeros({n, d}, Device::CUDA, narrow), d_w2 = to_gpu(random_tensor({d}, 9));
          ops::gated_rmsnorm_backward(buf.g().cols_slice(0, d), buf.g().cols_slice(ld - d, d), w_g, d_out.g(), d_y.g(),
                                      MatView::of(d_z_narrow), d_w2, groups, 1e-5f);
          EXPECT_TRUE(same_bits(to_cpu(d_z_narrow), rounded(d_z.back(), narrow))) << dtype_name(narrow);
          Tensor d_y_narrow = Tensor::zeros({n, d}, Device::CUDA, narrow);
          ops::gated_rmsnorm_backward(buf.g().cols_slice(0, d), buf.g().cols_slice(ld - d, d), w_g, d_out.g(),
                                      MatView::of(d_y_narrow), MatView::of(d_z_narrow), d_w2, groups, 1e-5f);
          EXPECT_TRUE(same_bits(to_cpu(d_y_narrow), rounded(d_y.back(), narrow))) << dtype_name(narrow);
          EXPECT_TRUE(same_bits(to_cpu(d_z_narrow), rounded(d_z.back(), narrow))) << dtype_name(narrow);
          // y and z in the narrow dtype (training's scan and in_proj outputs), forward and backward
          // (with d_out, as out_proj's backward leaves it, in that dtype too): the bits of the same
          // rounded values passed in fp32.
          Tensor y_r = rounded(buf.cpu, narrow), y_r_gpu = to_gpu(y_r), y_n = to_gpu(y_r, narrow);
          const MatView yf = MatView::of(y_r_gpu).cols_slice(0, d), yn = MatView::of(y_n).cols_slice(0, d);
          const MatView zf = MatView::of(y_r_gpu).cols_slice(ld - d, d), zn = MatView::of(y_n).cols_slice(ld - d, d);
          Tensor out_f = Tensor::zeros({n, d}, Device::CUDA, narrow), out_n = Tensor::zeros({n, d}, Device::CUDA, narrow);
          ops::gated_rmsnorm(yf, zf, w_g, MatView::of(out_f), groups, 1e-5f);
          ops::gated_rmsnorm(yn, zn, w_g, MatView::of(out_n), groups, 1e-5f);
          EXPECT_TRUE(same_bits(to_cpu(out_n), to_cpu(out_f))) << dtype_name(narrow);
          Tensor dy_f = Tensor::zeros({n, d}, Device::CUDA, narrow), dy_n = Tensor::zeros({n, d}, Device::CUDA, narrow);
          Tensor dz_f = Tensor::zeros({n, d}, Device::CUDA, narrow), dz_n = Tensor::zeros({n, d}, Device::CUDA, narrow);
          Tensor dw_f = to_gpu(random_tensor({d}, 9)), dw_n = to_gpu(random_tensor({d}, 9));
          Tensor go_r = rounded(d_out.cpu, narrow), go_f = to_gpu(go_r), go_n = to_gpu(go_r, narrow);
          ops::gated_rmsnorm_backward(yf, zf, w_g, MatView::of(go_f), MatView::of(dy_f), MatView::of(dz_f), dw_f,
                                      groups, 1e-5f);
          ops::gated_rmsnorm_backward(yn, zn, w_g, MatView::of(go_n), MatView::of(dy_n), MatView::of(dz_n), dw_n,
                                      groups, 1e-5f);
          EXPECT_TRUE(same_bits(to_cpu(dy_n), to_cpu(dy_f)) && same_bits(to_cpu(dz_n), to_cpu(dz_f)) &&
                      same_bits(to_cpu(dw_n), to_cpu(dw_f)))
              << dtype_name(narrow);
        }
      }
  // Refused: y narrow on the CPU, or in another dtype than the output's (forward) or d_y's (backward).
  Tensor y = random_tensor({2, 8}, 1), w = random_tensor({8}, 2), yb = y.to(Device::CPU, DType::BF16);
  Tensor out = Tensor::zeros({2, 8}, Device::CPU, DType::BF16);
  EXPECT_EQ(test::error_message([&] { ops::gated_rmsnorm(MatView::of(yb), MatView::of(y), w, MatView::of(out), 1, 1e-5f); }),
            "[gated_rmsnorm] y is BF16, expected F32");
  Tensor yg = to_gpu(y, DType::BF16), zg = to_gpu(y), wg = to_gpu(w), og = Tensor::zeros({2, 8}, Device::CUDA, DType::F16);
  EXPECT_EQ(test::error_message([&] { ops::gated_rmsnorm(MatView::of(yg), MatView::of(zg), wg, MatView::of(og), 1, 1e-5f); }),
            "[gated_rmsnorm] y is BF16, expected F32 or out's dtype, F16");
  Tensor dyb = Tensor::zeros({2, 8}, Device::CUDA, DType::BF16), dzb = Tensor::zeros({2, 8}, Device::CUDA, DType::BF16);
  Tensor dwg = to_gpu(Tensor::zeros({8}));
  EXPECT_EQ(test::error_message([&] {
              ops::gated_rmsnorm_backward(MatView::of(yg), MatView::of(yg), wg, MatView::of(zg), MatView::of(dyb),
                                          MatView::of(dzb), dwg, 1, 1e-5f);
            }),
            "[gated_rmsnorm] d_out is F32, expected y's dtype, BF16");
  EXPECT_EQ(test::error_message([&] {
              ops::gated_rmsnorm_backward(MatView::of(yg), MatView::of(zg), wg, MatView::of(yg), MatView::of(dyb),
                                          MatView::of(dzb), dwg, 1, 1e-5f);
            }),
            "[gated_rmsnorm] z is F32, expected y's dtype, BF16");
}

// The CPU computes in fp32 only: a gradient output in bf16 there is refused, naming it.
TEST(CudaGradOps, NarrowGradientOutputsAreRefusedOnTheCpu) {
  Tensor y = random_tensor({2, 8}, 1), d_w = Tensor::zeros({8}), narrow = Tensor::zeros({2, 8}, Device::CPU, DType::BF16);
  EXPECT_EQ(test::error_message([&] {
              ops::gated_rmsnorm_backward(MatView::of(y), MatView::of(y), d_w, MatView::of(y), MatView::of(y),
                                          MatView::of(narrow), d_w, 1, 1e-5f);
            }),
            "[gated_rmsnorm] d_z is BF16, expected F32");
  EXPECT_EQ(test::error_message([&] {
              ops::gated_rmsnorm_backward(MatView::of(y), MatView::of(y), d_w, MatView::of(y), MatView::of(narrow),
                                          MatView::of(y), d_w, 1, 1e-5f);
            }),
            "[gated_rmsnorm] d_y is BF16, expected F32");
  const std::vector<int64_t> len{2}, slot{0};
  const ops::SeqBatch seqs(len, slot, 1, Device::CPU);
  Tensor w = random_tensor({8, 4}, 2), b = random_tensor({8}, 3), dw = Tensor::zeros({8, 4}), db = Tensor::zeros({8});
  EXPECT_EQ(test::error_message([&] {
              ops::causal_conv1d_backward(MatView::of(y), w, b, MatView{}, MatView::of(y), MatView::of(narrow), dw, db,
                                          seqs);
            }),
            "[causal_conv1d] d_in is BF16, expected F32");
}

TEST(CudaGradOps, EmbeddingBackwardIsTheCpusBitForBit) {
  MAMBA2_REQUIRE_GPU();
  const int64_t vocab = 37, d = 300;  // more columns than a block's threads
  const std::vector<int32_t> ids{5, 0, 36, 5, 5, 17, 0, 36, 2};
  Both d_out(random_tensor({int64_t(ids.size()), d}, 10)), d_table(random_tensor({vocab, d}, 11));
  ops::embedding_backward(ids, d_out.c(), d_table.cpu);
  ops::embedding_backward(ids, d_out.g(), d_table.gpu);
  // Each row's additions in position order on both devices: the same fp32 additions.
  EXPECT_TRUE(same_bits(d_table.back(), d_table.cpu));
}

TEST(CudaGradOps, LinearBackwardMatchesCpu) {
  MAMBA2_REQUIRE_GPU();
  struct Case {
    int64_t m, n, k;
  };
  for (const Case cs : {Case{1, 17, 130}, Case{33, 7, 65}, Case{130, 96, 48}})
    for (int dx_mode : {0, 1, 2}) {  // no d_x, d_x =, d_x += (add_dx, onto random values)
      const bool with_dx = dx_mode > 0, add_dx = dx_mode == 2;
      SCOPED_TRACE("m " + std::to_string(cs.m) + " n " + std::to_string(cs.n) + " k " + std::to_string(cs.k) +
                   " d_x mode " + std::to_string(dx_mode));
      const int64_t ldx = cs.k + 3;  // x a column slice of a wider buffer
      Both xbuf(random_tensor({cs.m, ldx}, 12)), W(random_tensor({cs.n, cs.k}, 13)), d_y(random_tensor({cs.m, cs.n}, 14));
      Both d_x(add_dx ? random_tensor({cs.m, cs.k}, 16) : Tensor::zeros({cs.m, cs.k})),
          d_W(random_tensor({cs.n, cs.k}, 15));
      Both d_W2(random_tensor({cs.n, cs.k}, 15));
      const auto train = ops::LinearKernel::Training;
      ops::linear_backward(xbuf.c().cols_slice(0, cs.k), W.cpu, d_y.c(), with_dx ? d_x.c() : MatView{}, d_W.cpu, train,
                           add_dx);
      ops::linear_backward(xbuf.g().cols_slice(0, cs.k), W.gpu, d_y.g(), with_dx ? d_x.g() : MatView{}, d_W.gpu, train,
                           add_dx);
      ops::linear_backward(xbuf.g().cols_slice(0, cs.k), W.gpu, d_y.g(), MatView{}, d_W2.gpu);
      if (with_dx) {
        EXPECT_LE(rel(d_x.back(), d_x.cpu), kF32Tol);
      }
      EXPECT_LE(rel(d_W.back(), d_W.cpu), kF32Tol);
      EXPECT_TRUE(same_bits(d_W.back(), d_W2.back())) << "not deterministic";
    }
}

// TrainingTf32 (a bf16 / f16 run's fp32 projections): operands rounded to TF32's 10-bit mantissas
// (unit roundoff 2⁻¹¹, 2⁻¹⁰ if truncated), so a product is off by at most ~2⁻⁹ relative and a
// sum of random-signed products by less: 2e-3 relative L2 to the CPU's fp32. Deterministic.
TEST(CudaGradOps, Tf32ProductsMatchCpuWithinTheirRounding) {
  MAMBA2_REQUIRE_GPU();
  constexpr double kTf32Tol = 2e-3;
  const int64_t m = 130, n = 80, k = 203;
  Both x(random_tensor({m, k}, 21)), W(random_tensor({n, k}, 22)), d_y(random_tensor({m, n}, 23));
  Both y(Tensor::zeros({m, n})), y2(Tensor::zeros({m, n})), d_x(Tensor::zeros({m, k})), d_x2(Tensor::zeros({m, k}));
  Both d_W(Tensor::zeros({n, k})), d_W2(Tensor::zeros({n, k}));  // from zero: the error is the gradient's
  ops::linear(x.c(), W.cpu, y.c(), ops::LinearKernel::Training);
  ops::linear_backward(x.c(), W.cpu, d_y.c(), d_x.c(), d_W.cpu);
  for (int run = 0; run < 2; ++run) {
    Both& yr = run ? y2 : y;
    Both& dxr = run ? d_x2 : d_x;
    Both& dwr = run ? d_W2 : d_W;
    ops::linear(x.g(), W.gpu, yr.g(), ops::LinearKernel::TrainingTf32);
    ops::linear_backward(x.g(), W.gpu, d_y.g(), dxr.g(), dwr.gpu, ops::LinearKernel::TrainingTf32);
  }
  EXPECT_LE(rel(y.back(), y.cpu), kTf32Tol);
  EXPECT_LE(rel(d_x.back(), d_x.cpu), kTf32Tol);
  EXPECT_LE(rel(d_W.back(), d_W.cpu), kTf32Tol);
  EXPECT_TRUE(same_bits(y.back(), y2.back()) && same_bits(d_x.back(), d_x2.back()) && same_bits(d_W.back(), d_W2.back()))
      << "not deterministic";
}

// Packed sequences, each from its slot's state row or from zeros: the batches of a training step.
TEST(CudaGradOps, CausalConvBackwardMatchesCpu) {
  MAMBA2_REQUIRE_GPU();
  const std::vector<std::vector<int64_t>> batches{{1}, {3}, {64}, {65}, {200}, {3, 64, 1, 65, 130}};
  for (int64_t K : {4, 2})
    for (const auto& lengths : batches)
      for (bool with_state : {false, true}) {
        SCOPED_TRACE(fmt::format("K {} lengths {} {}", K, fmt::join(lengths, ","), with_state ? "state" : ""));
        int64_t T = 0;
        std::vector<int64_t> slots;
        for (int64_t len : lengths) T += len, slots.push_back(int64_t(lengths.size() - 1 - slots.size()));
        const ops::SeqBatch on_cpu(lengths, slots, 1, Device::CPU), on_gpu(lengths, slots, 1, Device::CUDA);
        const int64_t C = 130, ld = C + 6, nseq = int64_t(lengths.size());
        Both in(random_tensor({T, ld}, 16, -2.0f, 2.0f)), w(random_tensor({C, K}, 17)), bias(random_tensor({C}, 18));
        Both states(random_tensor({nseq, (K - 1) * C}, 19)), d_out(random_tensor({T, C}, 20));
        Both d_in(Tensor::zeros({T, C})), d_w(random_tensor({C, K}, 21)), d_bias(random_tensor({C}, 22));
        ops::causal_conv1d_backward(in.c().cols_slice(0, C), w.cpu, bias.cpu, with_state ? states.c() : MatView{},
                                    d_out.c(), d_in.c(), d_w.cpu, d_bias.cpu, on_cpu);
        ops::causal_conv1d_backward(in.g().cols_slice(0, C), w.gpu, bias.gpu, with_state ? states.g() : MatView{},
                                    d_out.g(), d_in.g(), d_w.gpu, d_bias.gpu, on_gpu);
        EXPECT_LE(rel(d_in.back(), d_in.cpu), kF32Tol);
        EXPECT_LE(rel(d_w.back(), d_w.cpu), kF32Tol);
        EXPECT_LE(rel(d_bias.back(), d_bias.cpu), kF32Tol);
        Tensor d_in16 = Tensor::zeros({T, C}, Device::CUDA, DType::BF16), d_w2 = to_gpu(d_w.cpu),
               d_bias2 = to_gpu(d_bias.cpu);
        ops::causal_conv1d_backward(in.g().cols_slice(0, C), w.gpu, bias.gpu, with_state ? states.g() : MatView{},
                                    d_out.g(), MatView::of(d_in16), d_w2, d_bias2, on_gpu);
        EXPECT_TRUE(same_bits(to_cpu(d_in16), rounded(d_in.back(), DType::BF16)));
        // The input in bf16 (mixed-precision training's in_proj output): the bits of the same
        // rounded values given in fp32.
        const Tensor in_r = rounded(in.cpu, DType::BF16);
        Tensor in_f = to_gpu(in_r), in_n = to_gpu(in_r, DType::BF16);
        Tensor di_f = Tensor::zeros({T, C}, Device::CUDA, DType::BF16), di_n = Tensor::zeros({T, C}, Device::CUDA, DType::BF16);
        Tensor dw_f = to_gpu(d_w.cpu), dw_n = to_gpu(d_w.cpu), db_f = to_gpu(d_bias.cpu), db_n = to_gpu(d_bias.cpu);
        ops::causal_conv1d_backward(MatView::of(in_f).cols_slice(0, C), w.gpu, bias.gpu,
                                    with_state ? states.g() : MatView{}, d_out.g(), MatView::of(di_f), dw_f, db_f, on_gpu);
        ops::causal_conv1d_backward(MatView::of(in_n).cols_slice(0, C), w.gpu, bias.gpu,
                                    with_state ? states.g() : MatView{}, d_out.g(), MatView::of(di_n), dw_n, db_n, on_gpu);
        EXPECT_TRUE(same_bits(to_cpu(di_n), to_cpu(di_f)) && same_bits(to_cpu(dw_n), to_cpu(dw_f)) &&
                    same_bits(to_cpu(db_n), to_cpu(db_f)));
      }
}

TEST(CudaGradOps, CrossEntropyMatchesCpu) {
  MAMBA2_REQUIRE_GPU();
  // 70000 columns do not fit in shared memory: the three-pass kernel.
  for (int64_t V : {1, 1000, 50280, 70000})
    for (bool in_place : {false, true}) {
      SCOPED_TRACE("V " + std::to_string(V) + (in_place ? " in place" : ""));
      const int64_t n = 5;
      Both logits(random_tensor({n, V}, 23, -30.0f, 30.0f)), d(Tensor::zeros({n, V}));
      std::vector<int32_t> targets;
      for (int64_t r = 0; r < n; ++r) targets.push_back(int32_t((r * 7919) % V));
      const float scale = 0.125f;
      const double want = ops::cross_entropy(logits.c(), targets, in_place ? logits.c() : d.c(), scale);
      const double got = ops::cross_entropy(logits.g(), targets, in_place ? logits.g() : d.g(), scale);
      // Per row ~30 of logsumexp: the exps (the CPU's polynomial against expf) differ by ulps.
      EXPECT_NEAR(got, want, 1e-6 * std::abs(want) + 1e-9);
      const Tensor got_d = in_place ? logits.back() : d.back(), &want_d = in_place ? logits.cpu : d.cpu;
      if (V == 1) {
        EXPECT_TRUE(same_bits(got_d, want_d)) << "softmax 1 minus the one-hot 1: zeros";
      } else {
        EXPECT_LE(rel(got_d, want_d), kF32Tol);
      }
      EXPECT_DOUBLE_EQ(ops::cross_entropy(Both(random_tensor({n, V}, 24)).g(), targets, MatView{}, scale),
                       ops::cross_entropy(Both(random_tensor({n, V}, 24)).g(), targets, MatView{}, scale));
    }
}

// Into a running total (training's head), twice: the bits of the returned sums added on the host
// in order, and 0 returned. On the CPU (a host double), and on the GPU when there is one (a double
// in GPU memory), there also with more rows than its kernel stages at once (4,096).
TEST(CudaGradOps, CrossEntropyAddsIntoARunningTotal) {
  for (int64_t n : {5, 9000}) {
    const int64_t V = 1000;
    SCOPED_TRACE("n " + std::to_string(n));
    std::vector<int32_t> targets;
    for (int64_t r = 0; r < n; ++r) targets.push_back(int32_t((r * 7919) % V));
    Tensor logits = random_tensor({n, V}, 24, -5.0f, 5.0f);
    const double cpu_one = ops::cross_entropy(MatView::of(logits), targets, MatView{}, 0.5f);
    double cpu_total = 0.0;
    EXPECT_EQ(ops::cross_entropy(MatView::of(logits), targets, MatView{}, 0.5f, &cpu_total), 0.0);
    EXPECT_EQ(ops::cross_entropy(MatView::of(logits), targets, MatView{}, 0.5f, &cpu_total), 0.0);
    EXPECT_EQ(cpu_total, 0.0 + cpu_one + cpu_one);
    if (cuda::device_count() == 0) continue;
    Tensor lg = to_gpu(logits), total = Tensor::zeros({2}, Device::CUDA);  // a double's 8 bytes
    const double one = ops::cross_entropy(MatView::of(lg), targets, MatView{}, 0.5f);
    auto* t = static_cast<double*>(total.raw());
    EXPECT_EQ(ops::cross_entropy(MatView::of(lg), targets, MatView{}, 0.5f, t), 0.0);
    EXPECT_EQ(ops::cross_entropy(MatView::of(lg), targets, MatView{}, 0.5f, t), 0.0);
    double got = 0.0;
    cuda::DeviceRead(t, sizeof(double)).into(&got);
    EXPECT_EQ(got, 0.0 + one + one);
  }
}

// Mixed precision's head: cross-entropy writes its gradient rounded to bf16 / f16 (what the head's
// backward would round it to) — the same bits as the fp32 gradient cast, and the same head
// gradients from either.
TEST(CudaGradOps, CrossEntropyWritesTheHeadsRoundedGradient) {
  MAMBA2_REQUIRE_GPU();
  const int64_t n = 70, V = 1000, D = 48;
  std::vector<int32_t> targets;
  for (int64_t r = 0; r < n; ++r) targets.push_back(int32_t((r * 7919) % V));
  for (DType dt : {DType::BF16, DType::F16}) {
    SCOPED_TRACE(std::string(dtype_name(dt)));
    Tensor logits = to_gpu(random_tensor({n, V}, 80, -20.0f, 20.0f));
    Tensor d32 = Tensor::empty({n, V}, Device::CUDA), d16 = Tensor::empty({n, V}, Device::CUDA, dt);
    const double a = ops::cross_entropy(MatView::of(logits), targets, MatView::of(d32), 0.25f);
    const double b = ops::cross_entropy(MatView::of(logits), targets, MatView::of(d16), 0.25f);
    EXPECT_DOUBLE_EQ(a, b);
    Tensor cast16 = Tensor::empty({n, V}, Device::CUDA, dt);
    ops::cast(MatView::of(d32), MatView::of(cast16));
    EXPECT_TRUE(same_bits(d16.to(Device::CPU, dt), cast16.to(Device::CPU, dt)));
    Tensor x = random_tensor({n, D}, 81).to(Device::CUDA, dt), W = random_tensor({V, D}, 82).to(Device::CUDA, dt);
    Tensor dx1 = Tensor::zeros({n, D}, Device::CUDA), dx2 = Tensor::zeros({n, D}, Device::CUDA);
    Tensor dW1 = Tensor::zeros({V, D}, Device::CUDA), dW2 = Tensor::zeros({V, D}, Device::CUDA);
    ops::linear_backward(MatView::of(x), W, MatView::of(d32), MatView::of(dx1), dW1);
    ops::linear_backward(MatView::of(x), W, MatView::of(d16), MatView::of(dx2), dW2);
    EXPECT_TRUE(same_bits(to_cpu(dx1), to_cpu(dx2)));
    EXPECT_TRUE(same_bits(to_cpu(dW1), to_cpu(dW2)));
    // d_x written in the narrow dtype (out_proj's, for the gated norm): the fp32 d_x rounded once,
    // up to the product's own order of sums (cuBLASLt may pick another algorithm for a narrow
    // result): within one rounding, 2⁻⁸ relative for bf16 and 2⁻¹¹ for f16; d_W as before.
    Tensor dx3 = Tensor::zeros({n, D}, Device::CUDA, dt), dW3 = Tensor::zeros({V, D}, Device::CUDA);
    ops::linear_backward(MatView::of(x), W, MatView::of(d16), MatView::of(dx3), dW3);
    EXPECT_LE(rel(to_cpu(dx3), to_cpu(dx1)), dt == DType::BF16 ? 1.0 / 256 : 1.0 / 2048);
    EXPECT_TRUE(same_bits(to_cpu(dW3), to_cpu(dW1)));
    EXPECT_NE(test::error_message([&] {
                ops::linear_backward(MatView::of(x), W, MatView::of(d16), MatView::of(dx3), dW3,
                                     ops::LinearKernel::Training, /*add_dx=*/true);
              }).find("[linear] d_x is "),
              std::string::npos);
  }
  // Not on the CPU, and never over the logits in another dtype.
  Tensor lc = random_tensor({n, V}, 83), dc = Tensor::empty({n, V}, Device::CPU, DType::BF16);
  EXPECT_NE(test::error_message([&] { ops::cross_entropy(MatView::of(lc), targets, MatView::of(dc), 1.0f); })
                .find("[cross_entropy] d_logits is BF16"),
            std::string::npos);
}

// The cast op (mixed precision's copies of the masters) rounds as the tensors' own conversions
// do, on the CPU always and on the GPU when there is one: the same bits, column slices included.
TEST(CudaGradOps, CastRoundsAsTheTensorConversions) {
  const int64_t rows = 5, cols = 37, ld = 41;
  Tensor src = random_tensor({rows, ld}, 70, -3e4f, 3e4f);
  src.data()[3] = 1e-40f, src.data()[4] = -0.0f, src.data()[5] = 1e5f;  // a subnormal, -0, past f16's range
  Tensor packed = Tensor::empty({rows, cols});
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) packed.data()[r * cols + c] = src.data()[r * ld + c];
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    SCOPED_TRACE(std::string(dtype_name(dt)));
    const Tensor want = packed.to(Device::CPU, dt);
    Tensor got = Tensor::empty({rows, cols}, Device::CPU, dt);
    ops::cast(MatView::of(src).cols_slice(0, cols), MatView::of(got));
    EXPECT_TRUE(same_bits(got, want));
    if (cuda::device_count() == 0) continue;
    Tensor src_gpu = to_gpu(src), got_gpu = Tensor::empty({rows, cols}, Device::CUDA, dt);
    ops::cast(MatView::of(src_gpu).cols_slice(0, cols), MatView::of(got_gpu));
    EXPECT_TRUE(same_bits(got_gpu.to(Device::CPU, dt), want));
  }
  Tensor q = Tensor::empty({rows, 32}, Device::CPU, DType::Q8_0);
  EXPECT_NE(test::error_message([&] { ops::cast(MatView::of(src).cols_slice(0, 32), MatView::of(q)); })
                .find("[cast] dst is Q8_0"),
            std::string::npos);
}

TEST(CudaGradOps, OptimiserKernelsMatchCpu) {
  MAMBA2_REQUIRE_GPU();
  const int64_t n = 40000;  // three of sum_squares' blocks of 2^14
  Both p(random_tensor({n}, 25)), g(random_tensor({n}, 26)), m(random_tensor({n}, 27, -0.1f, 0.1f));
  Both v(random_tensor({n}, 28, 0.0f, 0.01f));
  const ops::AdamW h{3e-3, 0.9, 0.95, 1e-8, 0.1, 7, 0.5};
  ops::adamw(p.cpu, g.cpu, m.cpu, v.cpu, h);
  ops::adamw(p.gpu, g.gpu, m.gpu, v.gpu, h);
  // The same arithmetic element by element; contractions into FMAs may differ by an ulp.
  EXPECT_LE(rel(p.back(), p.cpu), 1e-6);
  EXPECT_LE(rel(m.back(), m.cpu), 1e-6);
  EXPECT_LE(rel(v.back(), v.cpu), 1e-6);
  // Many parameters in one launch, with and without decay: the bits of one call each.
  std::vector<Both> ps, gs, ms, vs, ps1, ms1, vs1;
  const int64_t lens[] = {1, 2047, 2048, 2049, 40000};
  for (int64_t len : lens) {
    const uint64_t seed = uint64_t(100 + len);
    ps.emplace_back(random_tensor({len}, seed)), gs.emplace_back(random_tensor({len}, seed + 1));
    ms.emplace_back(random_tensor({len}, seed + 2, -0.1f, 0.1f)), vs.emplace_back(random_tensor({len}, seed + 3, 0.0f, 0.01f));
    ps1.emplace_back(random_tensor({len}, seed)), ms1.emplace_back(random_tensor({len}, seed + 2, -0.1f, 0.1f));
    vs1.emplace_back(random_tensor({len}, seed + 3, 0.0f, 0.01f));
  }
  std::vector<ops::AdamWParam> group;
  for (size_t i = 0; i < ps.size(); ++i) {
    group.push_back({&ps[i].gpu, &gs[i].gpu, &ms[i].gpu, &vs[i].gpu, i % 2 == 0});
    ops::AdamW hi = h;
    if (i % 2) hi.weight_decay = 0.0;
    ops::adamw(ps1[i].gpu, gs[i].gpu, ms1[i].gpu, vs1[i].gpu, hi);
  }
  ops::adamw(group, h);
  for (size_t i = 0; i < ps.size(); ++i)
    EXPECT_TRUE(same_bits(ps[i].back(), ps1[i].back()) && same_bits(ms[i].back(), ms1[i].back()) &&
                same_bits(vs[i].back(), vs1[i].back()))
        << "tensor " << i;
  // Compute copies written by the same pass (bf16, f16, fp32, none): the update's bits, and the
  // copy the updated parameter cast once.
  {
    std::vector<Both> ps2, ms2, vs2;
    std::vector<Tensor> copies;
    const DType kinds[] = {DType::BF16, DType::F16, DType::F32, DType::BF16, DType::F16};
    std::vector<ops::AdamWParam> with_copies;
    for (size_t i = 0; i < ps.size(); ++i) {
      const int64_t len = lens[i];
      const uint64_t seed = uint64_t(100 + len);
      ps2.emplace_back(random_tensor({len}, seed)), ms2.emplace_back(random_tensor({len}, seed + 2, -0.1f, 0.1f));
      vs2.emplace_back(random_tensor({len}, seed + 3, 0.0f, 0.01f));
      copies.push_back(Tensor::empty({len}, Device::CUDA, kinds[i]));
    }
    for (size_t i = 0; i < ps.size(); ++i)
      with_copies.push_back({&ps2[i].gpu, &gs[i].gpu, &ms2[i].gpu, &vs2[i].gpu, i % 2 == 0, i == 3 ? nullptr : &copies[i]});
    ops::adamw(with_copies, h);
    for (size_t i = 0; i < ps.size(); ++i) {
      SCOPED_TRACE("tensor " + std::to_string(i));
      EXPECT_TRUE(same_bits(ps2[i].back(), ps[i].back()) && same_bits(ms2[i].back(), ms[i].back()));
      if (i == 3) continue;
      Tensor cast = Tensor::empty({lens[i]}, Device::CUDA, kinds[i]);
      ops::cast(ps2[i].g(), MatView::of(cast));
      EXPECT_TRUE(same_bits(copies[i].to(Device::CPU, kinds[i]), cast.to(Device::CPU, kinds[i])));
    }
    // Refused: a copy on the CPU, of another size, or the parameter itself.
    Tensor short_copy = Tensor::empty({2}, Device::CUDA, DType::BF16);
    ops::AdamWParam bad = with_copies[1];
    bad.copy = &short_copy;
    EXPECT_NE(test::error_message([&] { ops::adamw(std::span<const ops::AdamWParam>(&bad, 1), h); })
                  .find("[adamw] the compute copy must be"),
              std::string::npos);
    bad.copy = bad.param;
    EXPECT_NE(test::error_message([&] { ops::adamw(std::span<const ops::AdamWParam>(&bad, 1), h); })
                  .find("[adamw] the compute copy must be"),
              std::string::npos);
    Tensor pc = random_tensor({4}, 9), gc = random_tensor({4}, 10), mc = random_tensor({4}, 11), vc = random_tensor({4}, 12);
    Tensor cc = Tensor::empty({4}, Device::CPU, DType::BF16);
    const ops::AdamWParam on_cpu{&pc, &gc, &mc, &vc, true, &cc};
    EXPECT_NE(test::error_message([&] { ops::adamw(std::span<const ops::AdamWParam>(&on_cpu, 1), h); })
                  .find("[adamw] a compute copy of the parameter is the GPU's"),
              std::string::npos);
  }
  const double want = ops::sum_squares(g.cpu), got = ops::sum_squares(g.gpu);
  EXPECT_NEAR(got, want, 1e-12 * want);  // double sums of fp32 squares: only their order differs
  EXPECT_EQ(got, ops::sum_squares(g.gpu));
  // Many tensors in one pass (the global norm): sizes either side of the 2^14-element blocks.
  std::vector<Both> many;
  for (int64_t len : {1, 16383, 16384, 16385, 40000}) many.emplace_back(random_tensor({len}, uint64_t(60 + len)));
  std::vector<const Tensor*> on_cpu, on_gpu;
  for (const Both& b : many) on_cpu.push_back(&b.cpu), on_gpu.push_back(&b.gpu);
  const double want_many = ops::sum_squares(on_cpu), got_many = ops::sum_squares(on_gpu);
  EXPECT_NEAR(got_many, want_many, 1e-12 * want_many);
  EXPECT_EQ(got_many, ops::sum_squares(on_gpu));
  ops::scale(g.cpu, 0.37);
  ops::scale(g.gpu, 0.37);
  EXPECT_TRUE(same_bits(g.back(), g.cpu));  // one fp32 product each
}

// The scan's backward from random inputs shaped as the model's (x, B and C column slices of the
// conv's output), packed sequences each with its slot's state row, against the CPU kernel, and
// twice for the same bits. The gradients start from random values: the parameters' accumulate,
// the rest are overwritten.
struct SsdCase {
  int64_t H, P, G, N;
  std::vector<int64_t> lengths;
  int64_t chunk;
  bool state, clamp;
};
std::string name(const SsdCase& c) {
  return fmt::format("H{} P{} G{} N{} lengths {} chunk {}{}{}", c.H, c.P, c.G, c.N, fmt::join(c.lengths, ","),
                     c.chunk, c.state ? " state" : "", c.clamp ? " clamp" : "");
}

struct SsdRun {
  Tensor d_xbc, d_dt, d_state0, d_dt_bias, d_A_log, d_D;
};

// dt_out: d_dt's dtype (F32, or on the GPU the compute dtype, as Mamba2's training writes it).
// rounding: x, B, C and d_y rounded to it (BF16 / F16; F32: as drawn), passed in that dtype when
// `narrow` (on the GPU: as Mamba2's training passes them), else widened back to fp32.
SsdRun run_ssd_backward(const SsdCase& c, Device dev, DType compute = DType::F32, DType dt_out = DType::F32,
                        DType rounding = DType::F32, bool narrow = false) {
  const int64_t HP = c.H * c.P, GN = c.G * c.N, W = HP + 2 * GN, nseq = int64_t(c.lengths.size());
  int64_t L = 0;
  std::vector<int64_t> slots;
  for (int64_t len : c.lengths) L += len, slots.push_back((int64_t(slots.size()) + 1) % nseq);
  const ops::SeqBatch seqs(c.lengths, slots, c.chunk, dev);
  auto on = [&](const Tensor& t) { return t.to(dev, DType::F32); };
  auto input = [&](const Tensor& t) {
    if (rounding == DType::F32) return on(t);
    return narrow ? t.to(dev, rounding) : on(rounded(t, rounding));
  };
  Tensor xbc = input(random_tensor({L, W}, 40)), dt = on(random_tensor({L, c.H}, 41, -3.0f, 1.0f));
  Tensor dt_bias = on(random_tensor({c.H}, 42, -1.0f, 0.5f)), A_log = on(random_tensor({c.H}, 43, -1.0f, 1.5f));
  Tensor D = on(random_tensor({c.H}, 44)), d_y = input(random_tensor({L, HP}, 45));
  const int64_t S = c.H * c.P * c.N;
  Tensor state0 = on(random_tensor({nseq, S}, 46)), d_final = on(random_tensor({nseq, S}, 47));
  SsdRun r{on(random_tensor({L, W}, 48)), random_tensor({L, c.H}, 49).to(dev, dt_out), on(random_tensor({nseq, S}, 50)),
           on(random_tensor({c.H}, 51)),  on(random_tensor({c.H}, 52)),    on(random_tensor({c.H}, 53))};
  // The clamp binds for part of the tokens: softplus of dt + bias spans ~0.01 to ~2.
  const ops::SsdWeights w{dt_bias, A_log, D, c.P, c.G, c.N, c.clamp ? 0.05 : 0.0,
                          c.clamp ? 0.5 : std::numeric_limits<double>::infinity()};
  const MatView v = MatView::of(xbc), dv = MatView::of(r.d_xbc);
  const ops::SsdGrads g{dv.cols_slice(0, HP), dv.cols_slice(HP, GN), dv.cols_slice(HP + GN, GN), MatView::of(r.d_dt),
                        MatView::of(r.d_state0), r.d_dt_bias, r.d_A_log, r.d_D};
  ops::ssd_scan_backward(w, v.cols_slice(0, HP), v.cols_slice(HP, GN), v.cols_slice(HP + GN, GN), MatView::of(dt),
                         c.state ? MatView::of(state0) : MatView{}, MatView::of(d_y),
                         c.state ? MatView::of(d_final) : MatView{}, g, seqs, compute);
  for (Tensor* t : {&r.d_xbc, &r.d_dt, &r.d_state0, &r.d_dt_bias, &r.d_A_log, &r.d_D}) *t = to_cpu(*t);
  return r;
}

// d_dt_bias and d_A_log of run_ssd_backward's case from the CPU kernel in double (the same inputs,
// widened), sequence by sequence as the op runs it.
std::pair<std::vector<double>, std::vector<double>> ssd_head_sums_f64(const SsdCase& c) {
  const int64_t HP = c.H * c.P, GN = c.G * c.N, W = HP + 2 * GN, nseq = int64_t(c.lengths.size());
  const int64_t S = c.H * c.P * c.N;
  int64_t L = 0;
  for (int64_t len : c.lengths) L += len;
  auto wide = [](const Tensor& t) { return std::vector<double>(t.data(), t.data() + t.numel()); };
  const std::vector<double> xbc = wide(random_tensor({L, W}, 40)), dt = wide(random_tensor({L, c.H}, 41, -3.0f, 1.0f));
  const std::vector<double> dt_bias = wide(random_tensor({c.H}, 42, -1.0f, 0.5f)),
                            A_log = wide(random_tensor({c.H}, 43, -1.0f, 1.5f)), D = wide(random_tensor({c.H}, 44));
  const std::vector<double> d_y = wide(random_tensor({L, HP}, 45)), state0 = wide(random_tensor({nseq, S}, 46)),
                            d_final = wide(random_tensor({nseq, S}, 47));
  std::vector<double> d_bias = wide(random_tensor({c.H}, 51)), d_A = wide(random_tensor({c.H}, 52));
  std::vector<double> d_D(static_cast<size_t>(c.H)), d_xbc(static_cast<size_t>(L * W)),
      d_dt(static_cast<size_t>(L * c.H)), d_s0(static_cast<size_t>(S));
  const cpu::SsdParamsT<double> p{c.H, c.P, c.G, c.N, dt_bias.data(), A_log.data(), D.data(),
                                  c.clamp ? 0.05 : 0.0, c.clamp ? 0.5 : std::numeric_limits<double>::infinity()};
  int64_t t0 = 0;
  for (int64_t i = 0; i < nseq; ++i) {
    const int64_t len = c.lengths[size_t(i)], slot = (i + 1) % nseq;
    const cpu::SsdGradsT<double> g{d_xbc.data() + t0 * W, W,  d_xbc.data() + t0 * W + HP, W, d_xbc.data() + t0 * W + HP + GN,
                                   W, d_dt.data() + t0 * c.H, c.H, d_s0.data(), d_bias.data(), d_A.data(), d_D.data()};
    cpu::ssd_scan_backward(p, xbc.data() + t0 * W, W, xbc.data() + t0 * W + HP, W, xbc.data() + t0 * W + HP + GN, W,
                           dt.data() + t0 * c.H, c.H, c.state ? state0.data() + slot * S : nullptr,
                           d_y.data() + t0 * HP, HP, c.state ? d_final.data() + slot * S : nullptr, g, len, c.chunk);
    t0 += len;
  }
  return {d_bias, d_A};
}

double rel_f64(const Tensor& got, const std::vector<double>& want) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = double(got.data()[i]) - want[i];
    num += d * d, den += want[i] * want[i];
  }
  return std::sqrt(num / den);
}

// d_dt_bias and d_A_log are a few numbers each, sums over every token of terms that cancel to a
// small part of their size, so that the CPU kernel's own fp32 rounding shows in them at ~1e-5:
// both are held to the CPU kernel run in double, the rest to its fp32 run.
TEST(CudaGradOps, SsdScanBackwardMatchesCpu) {
  MAMBA2_REQUIRE_GPU();
  const SsdCase cases[] = {
      {4, 8, 2, 16, {1}, 4, false, false},
      {4, 8, 1, 16, {15}, 16, true, false},
      {4, 8, 1, 16, {16}, 16, false, true},
      {4, 8, 4, 16, {17}, 16, true, true},
      {4, 8, 2, 16, {15, 1, 33, 16, 17}, 16, true, true},
      {6, 40, 3, 100, {130, 7}, 64, true, false},
      {2, 64, 1, 128, {300}, 256, true, true},
      {3, 33, 1, 7, {200, 57}, 256, false, false},
      {2, 8, 1, 16, {150, 9, 40}, 8, true, true},  // 19 chunks: past the 16 whose states stay in registers
  };
  for (const SsdCase& c : cases) {
    SCOPED_TRACE(name(c));
    const SsdRun want = run_ssd_backward(c, Device::CPU), got = run_ssd_backward(c, Device::CUDA);
    EXPECT_LE(rel(got.d_xbc, want.d_xbc), kF32Tol) << "d_x, d_B, d_C";
    EXPECT_LE(rel(got.d_dt, want.d_dt), kF32Tol) << "d_dt";
    EXPECT_LE(rel(got.d_state0, want.d_state0), kF32Tol) << "d_state0";
    const auto [bias64, A64] = ssd_head_sums_f64(c);
    std::printf("ssd backward per-head sums against double (%s): d_dt_bias GPU %.2e CPU %.2e, d_A_log GPU %.2e CPU %.2e\n",
                name(c).c_str(), rel_f64(got.d_dt_bias, bias64), rel_f64(want.d_dt_bias, bias64),
                rel_f64(got.d_A_log, A64), rel_f64(want.d_A_log, A64));
    EXPECT_LE(rel_f64(got.d_dt_bias, bias64), kF32Tol) << "d_dt_bias";
    EXPECT_LE(rel_f64(got.d_A_log, A64), kF32Tol) << "d_A_log";
    EXPECT_LE(rel(got.d_D, want.d_D), kF32Tol) << "d_D";
    const SsdRun again = run_ssd_backward(c, Device::CUDA);
    for (auto [a, b] : {std::pair{&got.d_xbc, &again.d_xbc}, {&got.d_dt, &again.d_dt}, {&got.d_state0, &again.d_state0},
                        {&got.d_dt_bias, &again.d_dt_bias}, {&got.d_A_log, &again.d_A_log}, {&got.d_D, &again.d_D}})
      EXPECT_TRUE(same_bits(*a, *b)) << "not deterministic";
  }
}

// On tensor cores the products' operands are rounded to bf16 (unit roundoff u = 2⁻⁹) or f16
// (2⁻¹²): x, d_y, B, C, the states and the masked products M and dCB, and their scaled copies, each
// once. A gradient passes two or three such roundings in a row (e.g. d_x = Mᵀ d_y: M from rounded C
// and B, rounded again, times rounded d_y), each contributing ~u/√3 relative (rms) to its terms, so
// ~2u for the x, B, C and state gradients; d_dt is a difference of the pairs' row and column sums
// that cancel to a fraction of either, so its error relative to its own norm is several times
// that, and the per-head sums (d_dt_bias, d_A_log) inherit it. Bounds: 8u for x, B, C and the
// states, 32u for d_dt and the per-head sums (d_D, a plain Σ d_y·x, carries no rounding: 1e-5).
// The first four cases form the rows' products in the rows kernel (headdim ≤ 64, d_state ≤ 128,
// chunk a multiple of 8); the fifth and sixth through cuBLASLt (headdim 128; d_state 160, chunk 36).
// In the fourth every chunk is whole, so d_B and d_C are written in place rather than scattered.
TEST(CudaGradOps, SsdScanBackwardOnTensorCoresMatchesCpuWithinRounding) {
  MAMBA2_REQUIRE_GPU();
  const SsdCase cases[] = {
      {4, 8, 2, 16, {15, 1, 33, 16, 17}, 16, true, true},
      {6, 40, 3, 100, {130, 7}, 64, true, false},
      {4, 64, 2, 128, {300, 211}, 256, true, true},
      {3, 32, 1, 64, {128, 64}, 64, true, true},
      {2, 128, 1, 32, {100, 40}, 64, true, true},
      {2, 16, 1, 160, {70, 3}, 36, false, true},
      {2, 16, 1, 32, {150, 9, 40}, 8, true, true},  // 19 chunks: past the 16 whose states stay in registers
  };
  for (auto [dtype, u] : {std::pair{DType::BF16, 0x1p-9}, {DType::F16, 0x1p-12}})
    for (const SsdCase& c : cases) {
      SCOPED_TRACE(name(c) + " " + std::string(dtype_name(dtype)));
      const SsdRun want = run_ssd_backward(c, Device::CPU), got = run_ssd_backward(c, Device::CUDA, dtype);
      const double e_xbc = rel(got.d_xbc, want.d_xbc), e_dt = rel(got.d_dt, want.d_dt);
      const double e_s0 = rel(got.d_state0, want.d_state0), e_bias = rel(got.d_dt_bias, want.d_dt_bias);
      const double e_A = rel(got.d_A_log, want.d_A_log), e_D = rel(got.d_D, want.d_D);
      std::printf("ssd backward %s (%s): d_xbc %.2e d_dt %.2e d_state0 %.2e d_dt_bias %.2e d_A_log %.2e d_D %.2e\n",
                  std::string(dtype_name(dtype)).c_str(), name(c).c_str(), e_xbc, e_dt, e_s0, e_bias, e_A, e_D);
      EXPECT_LE(e_xbc, 8 * u) << "d_x, d_B, d_C";
      EXPECT_LE(e_s0, 8 * u) << "d_state0";
      EXPECT_LE(e_dt, 32 * u) << "d_dt";
      EXPECT_LE(e_bias, 32 * u) << "d_dt_bias";
      EXPECT_LE(e_A, 32 * u) << "d_A_log";
      EXPECT_LE(e_D, kF32Tol) << "d_D";
      const SsdRun again = run_ssd_backward(c, Device::CUDA, dtype);
      EXPECT_TRUE(same_bits(got.d_xbc, again.d_xbc) && same_bits(got.d_dt, again.d_dt) &&
                  same_bits(got.d_A_log, again.d_A_log))
          << "not deterministic";
      const SsdRun narrow = run_ssd_backward(c, Device::CUDA, dtype, dtype);  // d_dt written rounded
      EXPECT_TRUE(same_bits(narrow.d_dt, rounded(got.d_dt, dtype)) && same_bits(narrow.d_xbc, got.d_xbc) &&
                  same_bits(narrow.d_A_log, got.d_A_log))
          << "d_dt in " << dtype_name(dtype);
      // x, B, C and d_y passed in the compute dtype (training's form): the kernels round nothing
      // more, so the gradients are, bit for bit, those of the same rounded values passed in fp32,
      // and within the bounds above of the CPU's on those values.
      const SsdRun in_t = run_ssd_backward(c, Device::CUDA, dtype, DType::F32, dtype, true);
      const SsdRun in_f32 = run_ssd_backward(c, Device::CUDA, dtype, DType::F32, dtype, false);
      const SsdRun cpu_r = run_ssd_backward(c, Device::CPU, DType::F32, DType::F32, dtype, false);
      for (auto [a, b] : {std::pair{&in_t.d_xbc, &in_f32.d_xbc}, {&in_t.d_dt, &in_f32.d_dt},
                          {&in_t.d_state0, &in_f32.d_state0}, {&in_t.d_dt_bias, &in_f32.d_dt_bias},
                          {&in_t.d_A_log, &in_f32.d_A_log}, {&in_t.d_D, &in_f32.d_D}})
        EXPECT_TRUE(same_bits(*a, *b)) << "inputs in " << dtype_name(dtype) << " against the same values in F32";
      EXPECT_LE(rel(in_t.d_xbc, cpu_r.d_xbc), 8 * u) << "rounded inputs: d_x, d_B, d_C";
      EXPECT_LE(rel(in_t.d_state0, cpu_r.d_state0), 8 * u) << "rounded inputs: d_state0";
      EXPECT_LE(rel(in_t.d_dt, cpu_r.d_dt), 32 * u) << "rounded inputs: d_dt";
      EXPECT_LE(rel(in_t.d_dt_bias, cpu_r.d_dt_bias), 32 * u) << "rounded inputs: d_dt_bias";
      EXPECT_LE(rel(in_t.d_A_log, cpu_r.d_A_log), 32 * u) << "rounded inputs: d_A_log";
      EXPECT_LE(rel(in_t.d_D, cpu_r.d_D), kF32Tol) << "rounded inputs: d_D";
    }
}

// x, B, C and d_y share one dtype: F32, or on the GPU the products' (never on the CPU).
TEST(CudaGradOps, SsdScanBackwardInputsInAnotherDtypeAreRefused) {
  MAMBA2_REQUIRE_GPU();
  const SsdCase c{2, 8, 1, 16, {5}, 4, false, false};
  EXPECT_EQ(test::error_message([&] { run_ssd_backward(c, Device::CUDA, DType::F16, DType::F32, DType::BF16, true); }),
            "[ssd_scan] the backward's x is BF16, expected F32 or (on the GPU) the compute dtype, F16");
  // d_dt likewise: F32 or the compute dtype.
  EXPECT_EQ(test::error_message([&] { run_ssd_backward(c, Device::CUDA, DType::F16, DType::BF16); }),
            "[ssd_scan] d_dt is BF16, expected F32 or (on the GPU) the compute dtype, F16");
}

TEST(CudaGradOps, SsdScanBackwardInputsInBf16AreRefusedOnTheCpu) {
  const SsdCase c{2, 8, 1, 16, {5}, 4, false, false};
  EXPECT_EQ(test::error_message([&] { run_ssd_backward(c, Device::CPU, DType::F32, DType::F32, DType::BF16, true); }),
            "[ssd_scan] x is BF16, expected F32");
}

TEST(CudaGradOps, OperandsOnTheWrongDeviceAreRefused) {
  MAMBA2_REQUIRE_GPU();
  Tensor x = Tensor::zeros({2, 8}), d_y = Tensor::zeros({2, 4}, Device::CUDA);
  const Tensor W = Tensor::zeros({4, 8}, Device::CUDA);
  Tensor d_W = Tensor::zeros({4, 8}, Device::CUDA);
  try {
    ops::linear_backward(MatView::of(x), W, MatView::of(d_y), MatView{}, d_W);
    FAIL() << "a CPU input to a GPU weight was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[linear] x is on the cpu"), std::string::npos) << e.what();
  }
  Tensor p = Tensor::zeros({8}, Device::CUDA), gr = Tensor::zeros({8}), m = Tensor::zeros({8}, Device::CUDA);
  Tensor v = Tensor::zeros({8}, Device::CUDA);
  try {
    ops::adamw(p, gr, m, v, ops::AdamW{});
    FAIL() << "a CPU gradient for a GPU parameter was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[adamw] grad is on the cpu"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace cuda_grad_ops_test
}  // namespace mamba2
