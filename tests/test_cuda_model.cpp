// The model on the GPU: against the CPU (the oracle of the CUDA kernels) and the float64 golden
// fixtures, batch invariance bit for bit, prefill → decode hand-over, a 1M-token prefill, the
// CLI's --device/--dtype. Skipped without a GPU, except the flag checks.
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <numeric>

#include "cuda_test_support.h"
#include "golden_case.h"
#include "io/npy.h"
#include "mamba2/model.h"
#include "mamba2/state.h"
#include "model/inference_state.h"
#include "model/weights.h"
#include "ops/ops.h"
#include "test_support.h"

namespace mamba2 {
namespace {

namespace fs = std::filesystem;
using test::decode_all;
using test::GoldenCase;
using test::kGoldenTol;
using test::worst_sequence_error;
using test::rel_l2;

// GPU fp32 against CPU fp32 on the same weights: two fp32 computations that differ only in
// summation order (GEMM tiling, block reductions), through 2 layers.
constexpr double kCpuTol = 1e-5;
// bf16/f16 weights, projection inputs and the SSD scan's inputs (x, B, C from the conv, as
// mamba_ssm's), fp32 everywhere else, against mamba_ssm in bf16 on the same fixtures
// (test::mamba_ssm_bf16_error): the weights' own rounding to bf16 (2⁻⁹) is most of the error of
// both; with fp32 states and residual ours must stay clearly below theirs: at most 3/4 of it. f16
// rounds 8× finer: at most an eighth of it (the roundings of theirs, at f16's unit roundoff).
using test::mamba_ssm_bf16_error;

ModelConfig tiny_config(int64_t chunk = 8) {
  ModelConfig c;
  c.d_model = 64;
  c.n_layer = 2;
  c.vocab_size = 100;
  c.d_state = 16;
  c.headdim = 16;
  c.ngroups = 2;
  c.chunk_size = chunk;
  c.validate("test");
  return c;
}

struct Pair {
  Model cpu, gpu;
};

Pair tiny_models(DType dtype, int64_t chunk = 8) {
  const ModelConfig c = tiny_config(chunk);
  auto w = std::make_shared<ModelWeights>(init_weights(c, 4321));
  test::perturb_weights(*w, 77);
  Model cpu(c, w);
  return {cpu, cpu.to(Device::CUDA, dtype)};
}

TEST(CudaModel, PrefillAndDecodeMatchTheCpuInF32) {
  MAMBA2_REQUIRE_GPU();
  const auto [cpu, gpu] = tiny_models(DType::F32);
  const std::vector<int64_t> lengths{1, 7, 8, 9, 29};
  const auto ids = test::random_ids(std::accumulate(lengths.begin(), lengths.end(), int64_t(0)), 100, 3);
  std::vector<float> want, got;
  cpu.prefill(ids, lengths, nullptr, true, want);
  gpu.prefill(ids, lengths, nullptr, true, got);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_LE(rel_l2(got.data(), want.data(), want.size()), kCpuTol) << "prefill";
  const auto want_d = decode_all(cpu, ids, lengths), got_d = decode_all(gpu, ids, lengths);
  EXPECT_LE(rel_l2(got_d.data(), want_d.data(), want_d.size()), kCpuTol) << "decode";
}

// A sequence's logits do not depend on what it is batched with: equal bits, in every dtype.
TEST(CudaModel, BatchInvariantBitForBit) {
  MAMBA2_REQUIRE_GPU();
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    SCOPED_TRACE(dtype_name(dt));
    const Model gpu = tiny_models(dt).gpu;
    const int64_t V = gpu.vocab();
    const std::vector<int64_t> lengths{1, 5, 2, 33, 1, 11};
    const int64_t T = std::accumulate(lengths.begin(), lengths.end(), int64_t(0));
    const auto ids = test::random_ids(T, 100, 5);
    std::vector<float> batched, alone;
    gpu.prefill(ids, lengths, nullptr, true, batched);
    const auto dec_batched = decode_all(gpu, ids, lengths);
    int64_t t0 = 0;
    for (int64_t L : lengths) {
      const std::span<const int32_t> one(ids.data() + t0, size_t(L));
      const std::vector<int64_t> len1{L};
      gpu.prefill(one, len1, nullptr, true, alone);
      EXPECT_EQ(std::memcmp(alone.data(), batched.data() + t0 * V, alone.size() * sizeof(float)), 0)
          << "prefill, sequence at " << t0;
      const auto dec_alone = decode_all(gpu, one, len1);
      EXPECT_EQ(std::memcmp(dec_alone.data(), dec_batched.data() + t0 * V, dec_alone.size() * sizeof(float)), 0)
          << "decode, sequence at " << t0;
      t0 += L;
    }
  }
}

// Replaying the captured decode step gives the bits of launching its kernels one by one, also
// when sequences leave the batch (a new batch size) and slots move.
TEST(CudaModel, DecodeGraphsGiveTheEagerBits) {
  MAMBA2_REQUIRE_GPU();
  for (DType dt : {DType::F32, DType::BF16}) {
    Model graphed = tiny_models(dt).gpu, eager = graphed;
    eager.set_decode_graphs(false);
    const std::vector<int64_t> lengths{3, 17, 9, 17};
    const auto ids = test::random_ids(46, 100, 31);
    const auto a = decode_all(graphed, ids, lengths), b = decode_all(eager, ids, lengths);
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << dtype_name(dt);
  }
}

TEST(CudaModel, PrefillThenDecodeAgreesWithDecodeFromTheStart) {
  MAMBA2_REQUIRE_GPU();
  const Model gpu = tiny_models(DType::F32).gpu;
  const int64_t V = gpu.vocab(), L = 29;
  const auto ids = test::random_ids(L, 100, 9);
  const std::vector<int64_t> lens{L};
  const auto from_start = decode_all(gpu, ids, lens);
  for (int64_t k : {1, 7, 8, 17}) {
    auto state = gpu.new_state(1);
    std::vector<float> logits, step;
    gpu.prefill(std::span(ids).first(size_t(k)), std::vector<int64_t>{k}, state.get(), false, logits);
    std::vector<float> rest;
    for (int64_t t = k; t < L; ++t) {
      gpu.decode(std::span(ids).subspan(size_t(t), 1), std::vector<int64_t>{0}, *state, step);
      rest.insert(rest.end(), step.begin(), step.end());
    }
    EXPECT_LE(rel_l2(rest.data(), from_start.data() + k * V, rest.size()), kCpuTol) << "prefill " << k;
  }
}

// States leave and re-enter slots on the device (the server's prefix cache and sessions) and
// through the host (snapshots): what continues from them has the bits of never having left.
TEST(CudaModel, StatesCopiedAndRestoredContinueBitForBit) {
  MAMBA2_REQUIRE_GPU();
  const Model gpu = tiny_models(DType::BF16).gpu;
  const auto ids = test::random_ids(24, 100, 12);
  const std::vector<int32_t> next{5, 6, 7};
  // Logits of `next` decoded from slot `slot` of `state`.
  auto continue_from = [&](InferenceState& state, int64_t slot) {
    std::vector<float> all, step;
    for (int32_t t : next) {
      gpu.decode(std::vector<int32_t>{t}, std::vector<int64_t>{slot}, state, step);
      all.insert(all.end(), step.begin(), step.end());
    }
    return all;
  };
  auto state = gpu.new_state(3);
  std::vector<float> logits;
  gpu.prefill(ids, std::vector<int64_t>{16, 8}, state.get(), false, logits);
  auto kept = gpu.new_state(1);
  copy_state(*state, 0, *kept, 0);
  const StateSnapshot snap = snapshot_state(gpu, *state, 0, {});
  const auto want = continue_from(*state, 0);
  copy_state(*kept, 0, *state, 2);
  const auto copied = continue_from(*state, 2);
  clear_state(*state, 0);
  restore_state(gpu, *state, 0, snap);
  const auto restored = continue_from(*state, 0);
  ASSERT_EQ(copied.size(), want.size());
  EXPECT_EQ(std::memcmp(copied.data(), want.data(), want.size() * sizeof(float)), 0) << "copied on the device";
  EXPECT_EQ(std::memcmp(restored.data(), want.data(), want.size() * sizeof(float)), 0) << "through the host";
  // A cleared slot is a fresh sequence: as slot 1's first token alone.
  clear_state(*state, 1);
  std::vector<float> fresh, alone;
  gpu.decode(std::vector<int32_t>{9}, std::vector<int64_t>{1}, *state, fresh);
  auto one = gpu.new_state(1);
  gpu.decode(std::vector<int32_t>{9}, std::vector<int64_t>{0}, *one, alone);
  EXPECT_EQ(std::memcmp(fresh.data(), alone.data(), alone.size() * sizeof(float)), 0) << "cleared";
}

// One pass over a million tokens (64-bit offsets through every kernel) stays finite and agrees
// with the CPU, which runs it in rounds carried by the state.
TEST(CudaModel, MillionTokenPrefillMatchesTheCpu) {
  MAMBA2_REQUIRE_GPU();
  auto [cpu, gpu] = tiny_models(DType::F32, 256);
  const int64_t T = int64_t(1) << 20;
  const auto ids = test::random_ids(T, 100, 21);
  const std::vector<int64_t> lens{T};
  gpu.set_max_prefill_tokens(T);
  std::vector<float> want, got;
  gpu.prefill(ids, lens, nullptr, false, got);
  cpu.prefill(ids, lens, nullptr, false, want);
  ASSERT_TRUE(test::all_finite(got));
  // fp32 over 10⁶ tokens: the state's rounding grows with the length; 1e-3 as the issue asks.
  EXPECT_LE(rel_l2(got.data(), want.data(), want.size()), 1e-3);
}

class CudaGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaGolden, PrefillAndDecodeMatchTheOracle) {
  MAMBA2_REQUIRE_GPU();
  const GoldenCase g = test::load_golden_case(GetParam());
  const Model cpu = Model::load(g.dir / "model");
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    const Model gpu = cpu.to(Device::CUDA, dt);
    const double theirs = mamba_ssm_bf16_error(GetParam());
    const double tol = dt == DType::F32 ? kGoldenTol : dt == DType::BF16 ? 0.75 * theirs : theirs / 8;
    std::vector<float> logits;
    gpu.prefill(g.ids, g.lengths, nullptr, true, logits);
    const double e_prefill = worst_sequence_error(g, logits.data(), gpu.vocab());
    const auto dec = decode_all(gpu, g.ids, g.lengths);
    const double e_decode = worst_sequence_error(g, dec.data(), gpu.vocab());
    std::printf("[ golden ] %s %s: prefill %.3g, decode %.3g (relative L2 to float64, worst sequence)\n",
                GetParam().c_str(), std::string(dtype_name(dt)).c_str(), e_prefill, e_decode);
    EXPECT_LE(e_prefill, tol) << dtype_name(dt);
    EXPECT_LE(e_decode, tol) << dtype_name(dt);
  }
}

INSTANTIATE_TEST_SUITE_P(CudaGolden, CudaGolden,
                         ::testing::Values("official_fp32", "hf_fp32_g2_dtlimit", "hf_bf16_sharded",
                                           "official_fp16_g4"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

// Mamba-1 on the GPU: fp32 within the CPU's bound of float64; with bf16 / f16 projections (in_proj,
// out_proj, the embedding and head; x_proj and dt_proj stay fp32, their prefill products on TF32
// tensor cores) within the bounds the CPU's bf16 weights meet (test_mamba1_model.cpp: 1.8–2.2e-3
// measured; Falcon-Mamba 1.8e-2, its weightless norm of dt_low magnifying), about 2× over. Prefill
// and decode (graphs), and a sequence's bits the same alone and batched.
class CudaMamba1Golden : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaMamba1Golden, PrefillAndDecodeMatchTheOracle) {
  MAMBA2_REQUIRE_GPU();
  const GoldenCase g = test::load_golden_case(GetParam());
  const Model cpu = Model::load(g.dir / "model");
  const bool falcon = GetParam() == "m1_falcon_fp32";
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    const Model gpu = cpu.to(Device::CUDA, dt);
    const double tol = dt == DType::F32 ? kGoldenTol : falcon ? 4e-2 : 5e-3;
    std::vector<float> logits;
    gpu.prefill(g.ids, g.lengths, nullptr, true, logits);
    const double e_prefill = worst_sequence_error(g, logits.data(), gpu.vocab());
    const auto dec = decode_all(gpu, g.ids, g.lengths);
    const double e_decode = worst_sequence_error(g, dec.data(), gpu.vocab());
    std::printf("[ golden ] %s %s on the GPU: prefill %.3g, decode %.3g (relative L2 to float64, worst sequence)\n",
                GetParam().c_str(), std::string(dtype_name(dt)).c_str(), e_prefill, e_decode);
    EXPECT_LE(e_prefill, tol) << dtype_name(dt);
    EXPECT_LE(e_decode, tol) << dtype_name(dt);
    // The first sequence alone: the bits of its rows in the batch.
    const std::vector<int32_t> first(g.ids.begin(), g.ids.begin() + g.lengths[0]);
    const std::vector<int64_t> one{g.lengths[0]};
    std::vector<float> alone;
    gpu.prefill(first, one, nullptr, true, alone);
    EXPECT_EQ(std::memcmp(alone.data(), logits.data(), alone.size() * sizeof(float)), 0) << dtype_name(dt);
  }
}

INSTANTIATE_TEST_SUITE_P(CudaMamba1Golden, CudaMamba1Golden,
                         ::testing::Values("m1_official_fp32", "m1_official_bias_fp16", "m1_hf_bf16_sharded",
                                           "m1_falcon_fp32", "m1_official_complex"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

// `mamba2 logits --device cuda --dtype f32` on a golden case, prefill and decode, against its oracle.
void expect_gpu_cli_logits_match_the_oracle(const std::string& name) {
  const GoldenCase g = test::load_golden_case(name);
  for (const std::string mode : {"prefill", "decode"}) {
    test::TempDir tmp;
    const fs::path out = tmp / "logits.npy";
    const test::CliResult r =
        test::run_cli("logits --model " + test::shell_quote((g.dir / "model").string()) + " --ids " +
                      test::comma_list(g.ids) + " --lengths " + test::comma_list(g.lengths) + " --mode " + mode +
                      " --device cuda --dtype f32 --out " + test::shell_quote(out.string()));
    ASSERT_TRUE(r.exited && r.code == 0) << r.err;
    const NpyArray got = read_npy(out);
    std::vector<float> f(got.data.begin(), got.data.end());
    EXPECT_LE(worst_sequence_error(g, f.data(), got.shape[1]), kGoldenTol) << mode;
  }
}

TEST(CudaCli, Mamba1LogitsOnTheGpuInF32MatchTheOracle) {
  MAMBA2_REQUIRE_GPU();
  expect_gpu_cli_logits_match_the_oracle("m1_official_complex");
}

TEST(CudaCli, LogitsOnTheGpuInF32MatchTheOracle) {
  MAMBA2_REQUIRE_GPU();
  expect_gpu_cli_logits_match_the_oracle("hf_fp32_g2_dtlimit");
}

// Greedy text of the shipped model, in f32 on the GPU (the argmax taken there) and on the CPU:
// the same text, prompts batched as in serving.
TEST(CudaCli, GreedyTextOnTheGpuEqualsTheCpus) {
  MAMBA2_REQUIRE_GPU();
  test::TempDir tmp;
  test::write_file(tmp / "prompts.txt", "And God said\nIn the beginning\nBlessed are\n");
  const std::string args = "generate --model " + test::shell_quote(MAMBA2_SOURCE_DIR "/models/kjv/model") +
                           " --prompts-file " + test::shell_quote((tmp / "prompts.txt").string()) +
                           " -n 48 --greedy --output json --dtype f32 --device ";
  const test::CliResult cpu = test::run_cli(args + "cpu"), gpu = test::run_cli(args + "cuda");
  ASSERT_TRUE(cpu.exited && cpu.code == 0) << cpu.err;
  ASSERT_TRUE(gpu.exited && gpu.code == 0) << gpu.err;
  EXPECT_EQ(gpu.out, cpu.out);
}

// A BF16 checkpoint placed in BF16 as tools' load_model places it on the GPU (kept as the file
// holds it, uploaded without an fp32 copy): the bits of the widened model's placement.
TEST(CudaModel, Bf16CheckpointUploadedAsStoredGivesTheSameBits) {
  MAMBA2_REQUIRE_GPU();
  for (const std::string name : {"hf_bf16_sharded", "m1_hf_bf16_sharded"}) {
    const GoldenCase g = test::load_golden_case(name);
    const Model a = Model::load(g.dir / "model").to(Device::CUDA, DType::BF16);
    const Model b = Model::load(g.dir / "model", true).to(Device::CUDA, DType::BF16);
    std::vector<float> la, lb;
    a.prefill(g.ids, g.lengths, nullptr, true, la);
    b.prefill(g.ids, g.lengths, nullptr, true, lb);
    ASSERT_EQ(la.size(), lb.size()) << name;
    EXPECT_EQ(std::memcmp(la.data(), lb.data(), la.size() * sizeof(float)), 0) << name;
  }
}

TEST(CudaModel, GreedyIdsAreTheArgmaxOfTheLogits) {
  MAMBA2_REQUIRE_GPU();
  const Model gpu = tiny_models(DType::BF16).gpu;
  const std::vector<int64_t> slots{2, 0, 1};
  auto s1 = gpu.new_state(3), s2 = gpu.new_state(3);
  std::vector<int32_t> tokens{5, 17, 99}, next;
  std::vector<float> logits;
  for (int step = 0; step < 4; ++step) {
    gpu.decode(tokens, slots, *s1, logits);
    gpu.decode_greedy(tokens, slots, *s2, 100, next);
    ASSERT_EQ(next.size(), 3u);
    for (size_t r = 0; r < 3; ++r) {
      const float* row = logits.data() + r * size_t(gpu.vocab());
      EXPECT_EQ(next[r], int32_t(std::max_element(row, row + 100) - row)) << "step " << step << " row " << r;
    }
    tokens = next;
  }
}

// Sampling candidates from the GPU: those of the step's logits (the CPU's ops::top_k on them),
// row by row, step after step.
TEST(CudaModel, CandidatesAreThoseOfTheLogits) {
  MAMBA2_REQUIRE_GPU();
  const Model gpu = tiny_models(DType::BF16).gpu;
  const std::vector<int64_t> slots{2, 0, 1};
  auto s1 = gpu.new_state(3), s2 = gpu.new_state(3);
  std::vector<int32_t> tokens{5, 17, 99};
  const std::vector<int32_t> k{1, 5, 40};
  const std::vector<float> temperature{1.0f, 0.7f, 1.5f};
  std::vector<float> logits;
  DecodeCandidates got;
  for (int step = 0; step < 4; ++step) {
    gpu.decode(tokens, slots, *s1, logits);
    gpu.decode_candidates(tokens, slots, *s2, 100, k, temperature, got);
    ASSERT_FALSE(got.dense);
    const int64_t V = gpu.vocab(), cap = got.cap;
    std::vector<int32_t> ids(size_t(3 * cap)), count(3);
    std::vector<float> values(size_t(3 * cap));
    ops::top_k({logits.data(), 3, V, V}, 100, k, temperature, cap, ids.data(), values.data(), count.data());
    ASSERT_EQ(got.count, count) << "step " << step;
    for (size_t r = 0; r < 3; ++r)
      for (int32_t i = 0; i < count[r]; ++i) {
        ASSERT_EQ(got.ids[r * size_t(cap) + size_t(i)], ids[r * size_t(cap) + size_t(i)]);
        ASSERT_EQ(got.logits[r * size_t(cap) + size_t(i)], values[r * size_t(cap) + size_t(i)]);
      }
    for (size_t r = 0; r < 3; ++r) tokens[r] = got.ids[r * size_t(cap)];
  }
}

// Bad placements fail with one clear line, GPU or not.
TEST(CudaCli, BadDeviceAndDtypeAreRefused) {
  const fs::path model = fs::path(MAMBA2_FIXTURES_DIR) / "golden" / "hf_fp32_g2_dtlimit" / "model";
  const std::string base = "logits --model " + test::shell_quote(model.string()) + " --ids 1,2 --top 1 ";
  struct Case {
    std::string flags, message;
  };
  const std::vector<Case> cases{
      {"--device cuda:99", cuda::built() ? "[cuda] device 99 does not exist" : "[cuda] this build has no CUDA backend"},
      {"--device tpu", "[cli] --device: 'tpu' is not cpu, cuda or cuda:N"},
      {"--device cuda:x", "[cli] --device: 'cuda:x' is not cpu, cuda or cuda:N"},
      {"--device cpu --dtype f16", "[cli] --dtype f16: the CPU takes f32, bf16, q8 or q4 weights"},
      {"--dtype f64", "[cli] --dtype: 'f64' is not f32, bf16, f16, q8 or q4"},
  };
  for (const Case& c : cases) {
    const test::CliResult r = test::run_cli(base + c.flags, "MAMBA2_DEVICE=cpu");
    EXPECT_TRUE(r.exited && r.code == 1) << c.flags;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.flags << ": " << r.err;
  }
}

}  // namespace
}  // namespace mamba2
