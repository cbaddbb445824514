// The CUDA kernels of the ops (through the op front ends) against the CPU kernels on random
// inputs of awkward sizes; batch invariance of the projections. Skipped without a GPU.
#include <gtest/gtest.h>

#include <numeric>

#include "cuda_test_support.h"
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

TEST(CudaOps, GatedRmsnormMatchesCpu) {
  MAMBA2_REQUIRE_GPU();
  for (int64_t groups : {1, 2, 4}) {
    for (DType out_dtype : {DType::F32, DType::BF16}) {
      SCOPED_TRACE("groups " + std::to_string(groups));
      const int64_t n = 5, d = 96, ld = 130;  // y and z are column slices of a wider buffer
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
  const int64_t n = 200, k = 72;
  const Tensor W = random_tensor({n, k}, 7);
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    for (int64_t m : {1, 3, 64, 257}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " m " + std::to_string(m));
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

// A row's bits must not depend on how many rows are computed with it (batch invariance).
TEST(CudaOps, LinearRowsDoNotDependOnTheRowCount) {
  MAMBA2_REQUIRE_GPU();
  const int64_t n = 3352, k = 768, M = 2048;  // the 130m in_proj
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
