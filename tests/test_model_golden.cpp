// Golden logits (float64 oracle, scripts/make_golden.py) against prefill, decode and the CLI.
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "cpu/simd/bf16xbf16.h"
#include "golden_case.h"
#include "io/npy.h"
#include "mamba2/model.h"
#include "model/inference_state.h"
#include "test_support.h"

namespace mamba2 {
namespace {

namespace fs = std::filesystem;
using test::rel_l2;

using test::decode_all;
using test::GoldenCase;
using test::kGoldenTol;
using test::kQ4LogitsBound;
using test::kQ8LogitsBound;

std::vector<float> decode_all(const Model& m, const GoldenCase& g) { return test::decode_all(m, g.ids, g.lengths); }


template <class T>
void expect_matches_golden(const GoldenCase& g, const T* ours, int64_t V, const std::string& what) {
  ASSERT_EQ(g.logits.shape.size(), 2u);
  ASSERT_EQ(g.logits.shape[1], V);
  int64_t row = 0;
  for (size_t s = 0; s < g.lengths.size(); ++s) {
    const size_t off = size_t(row * V), n = size_t(g.lengths[s] * V);
    const double err = rel_l2(ours + off, g.logits.data.data() + off, n);
    EXPECT_LE(err, kGoldenTol) << what << ": sequence " << s << " (length " << g.lengths[s] << ")";
    row += g.lengths[s];
  }
}

class ModelGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(ModelGolden, PrefillBatchedMatchesOracle) {
  const GoldenCase g = test::load_golden_case(GetParam());
  const Model m = Model::load(g.dir / "model");
  ASSERT_EQ(g.logits.shape[0], int64_t(g.ids.size()));
  std::vector<float> logits;
  m.prefill(g.ids, g.lengths, nullptr, true, logits);
  ASSERT_EQ(logits.size(), g.ids.size() * size_t(m.vocab()));
  expect_matches_golden(g, logits.data(), m.vocab(), "prefill");
}

TEST_P(ModelGolden, DecodeWithSlotsMatchesOracle) {
  const GoldenCase g = test::load_golden_case(GetParam());
  const Model m = Model::load(g.dir / "model");
  const std::vector<float> logits = decode_all(m, g);
  expect_matches_golden(g, logits.data(), m.vocab(), "decode");
}

TEST_P(ModelGolden, PrefillLastPositionsMatchOracle) {
  const GoldenCase g = test::load_golden_case(GetParam());
  const Model m = Model::load(g.dir / "model");
  const int64_t V = m.vocab();
  std::vector<float> last;
  m.prefill(g.ids, g.lengths, nullptr, false, last);
  ASSERT_EQ(last.size(), g.lengths.size() * size_t(V));
  int64_t end = 0;
  for (size_t s = 0; s < g.lengths.size(); ++s) {
    end += g.lengths[s];
    // Same fp32 vs float64 contract, on the last row of each sequence.
    EXPECT_LE(rel_l2(last.data() + s * size_t(V), g.logits.data.data() + (end - 1) * V, size_t(V)), kGoldenTol)
        << "sequence " << s;
  }
}

// Narrow weights on the CPU (bf16, Q8_0, Q4_0): with fp32 activations the model in `dtype` gives bit for
// bit what the model converted back to f32 gives (the fp32 kernels on the rounded or dequantized
// weights, which the tests above hold to the oracle), prefill and decode. Returns the worst
// sequence's relative L2 of the prefill logits against the float64 oracle, printed. For q8 and q4
// (all their matrices Q8_0 or Q4_0) the same error with int8 activations (whose kernels
// test_linear.cpp holds to their definition) is printed and held to int8_bound, and its distance
// from the fp32 activations' logits to kInt8ActivationsShiftBound; for bf16, where the CPU has the
// bf16 × bf16 kernels, the error with bf16 activations likewise (held to rounded_bound), and
// decode's logits near prefill's.
double narrow_weights_error(const GoldenCase& g, DType dtype, const char* name, double rounded_bound = 0.0) {
  const Model narrow = Model::load(g.dir / "model").to(Device::CPU, dtype);
  const Model widened = narrow.to(Device::CPU, DType::F32);
  EXPECT_EQ(narrow.weights().layers[0].in_proj.dtype(), dtype);
  const test::Q8ActivationsAs f32_activations(ops::Q8Activations::F32);
  const test::Bf16ActivationsAs f32_bf16_activations(ops::Bf16Activations::F32);
  std::vector<float> got, want;
  narrow.prefill(g.ids, g.lengths, nullptr, true, got);
  widened.prefill(g.ids, g.lengths, nullptr, true, want);
  EXPECT_EQ(got.size(), want.size());
  if (got.size() != want.size()) return 1.0;
  EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0) << "prefill";
  const std::vector<float> got_d = decode_all(narrow, g), want_d = decode_all(widened, g);
  EXPECT_EQ(std::memcmp(got_d.data(), want_d.data(), got_d.size() * sizeof(float)), 0) << "decode";
  const double worst = test::worst_sequence_error(g, got.data(), narrow.vocab());
  std::printf("[ golden ] %s, %s weights on the CPU: prefill %.3g (relative L2 to float64, worst sequence)\n",
              g.dir.filename().c_str(), name, worst);
  if (narrow.weights().embedding.dtype() == DType::Q8_0) {
    const test::Q8ActivationsAs int8_activations(ops::Q8Activations::Int8);
    std::vector<float> int8_logits;
    narrow.prefill(g.ids, g.lengths, nullptr, true, int8_logits);
    const double int8 = test::worst_sequence_error(g, int8_logits.data(), narrow.vocab());
    // What rounding the activations alone moves the logits by, against the same weights.
    const double shift = rel_l2(int8_logits.data(), got.data(), got.size());
    std::printf("[ golden ] %s, %s weights on the CPU, int8 activations: prefill %.3g (%.3g from fp32 activations)\n",
                g.dir.filename().c_str(), name, int8, shift);
    EXPECT_LE(int8, rounded_bound) << "int8 activations";
    EXPECT_LE(shift, test::kInt8ActivationsShiftBound) << "int8 activations against fp32 ones";
  }
  if (dtype == DType::BF16 && cpu::simd::bf16_kernels(cpu::simd::active_isa())) {
    const test::Bf16ActivationsAs bf16_activations(ops::Bf16Activations::Bf16);
    std::vector<float> rounded;
    narrow.prefill(g.ids, g.lengths, nullptr, true, rounded);
    const double err = test::worst_sequence_error(g, rounded.data(), narrow.vocab());
    const double shift = rel_l2(rounded.data(), got.data(), got.size());
    std::printf("[ golden ] %s, bf16 weights on the CPU, bf16 activations: prefill %.3g (%.3g from fp32 activations)\n",
                g.dir.filename().c_str(), err, shift);
    EXPECT_LE(err, rounded_bound) << "bf16 activations";
    const std::vector<float> decoded = decode_all(narrow, g);
    // The scan's and the norms' other fp32 order in decode flips the bf16 rounding of a few
    // activations (2⁻⁸ each): measured 4.3e-5, held to a quarter of what rounding them all moves.
    EXPECT_LE(rel_l2(decoded.data(), rounded.data(), rounded.size()), 1e-3) << "bf16 activations, decode vs prefill";
  }
  return worst;
}

// bf16: the rounding of the weights (2⁻⁹ relative) is the whole error against float64: at most
// 3/4 of mamba_ssm's in bf16 on the GPU, which also rounds its activations
// (test::mamba_ssm_bf16_error). With the projections' activations rounded to bf16 as well: at most
// mamba_ssm's, which rounds those and more.
TEST_P(ModelGolden, Bf16WeightsOnTheCpu) {
  const GoldenCase g = test::load_golden_case(GetParam());
  EXPECT_LE(narrow_weights_error(g, DType::BF16, "bf16", test::mamba_ssm_bf16_error(GetParam())),
            0.75 * test::mamba_ssm_bf16_error(GetParam()));
}

TEST_P(ModelGolden, Q8WeightsOnTheCpu) {
  const GoldenCase g = test::load_golden_case(GetParam());
  EXPECT_LE(narrow_weights_error(g, DType::Q8_0, "q8", test::kQ8Int8LogitsBound), kQ8LogitsBound);
}

TEST_P(ModelGolden, Q4WeightsOnTheCpu) {
  const GoldenCase g = test::load_golden_case(GetParam());
  EXPECT_LE(narrow_weights_error(g, DType::Q4_0, "q4", kQ4LogitsBound), kQ4LogitsBound);
}

INSTANTIATE_TEST_SUITE_P(ModelGolden, ModelGolden,
                         ::testing::Values("official_fp32", "hf_fp32_g2_dtlimit", "hf_bf16_sharded",
                                           "official_fp16_g4"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

// A BF16 checkpoint kept as the file holds it (keep_bf16: the GPU's load, tools/mamba2 load_model)
// is the model widened to fp32: its projections BF16, the same fingerprint, and placed in fp32 the
// same bits (each widened value is the file's, exactly).
TEST(ModelGoldenBf16File, KeptInPlaceIsTheWidenedModel) {
  for (const std::string name : {"hf_bf16_sharded", "m1_hf_bf16_sharded"}) {
    const GoldenCase g = test::load_golden_case(name);
    const Model widened = Model::load(g.dir / "model"), kept = Model::load(g.dir / "model", true);
    EXPECT_EQ(widened.dtype(), DType::F32) << name;
    EXPECT_EQ(kept.dtype(), DType::BF16) << name;
    EXPECT_EQ(kept.fingerprint(), widened.fingerprint()) << name;
    std::vector<float> a, b;
    widened.prefill(g.ids, g.lengths, nullptr, true, a);
    kept.to(Device::CPU, DType::F32).prefill(g.ids, g.lengths, nullptr, true, b);
    ASSERT_EQ(a.size(), b.size()) << name;
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << name;
  }
}

TEST(ModelGoldenCli, LogitsPrefillAndDecodeMatchOracle) {
  for (const std::string name : {"hf_fp32_g2_dtlimit", "official_fp16_g4"}) {
    const GoldenCase g = test::load_golden_case(name);
    for (const std::string mode : {"prefill", "decode"}) {
      SCOPED_TRACE(name + " " + mode);
      test::TempDir tmp;
      const fs::path out = tmp / "logits.npy";
      const test::CliResult r = test::run_cli(
          "logits --model " + test::shell_quote((g.dir / "model").string()) + " --ids " + test::comma_list(g.ids) +
          " --lengths " + test::comma_list(g.lengths) + " --mode " + mode + " --out " + test::shell_quote(out.string()));
      ASSERT_TRUE(r.exited && r.code == 0) << r.err;
      const NpyArray got = read_npy(out);
      int64_t total = 0;
      for (int64_t L : g.lengths) total += L;
      const int64_t V = load_config(g.dir / "model" / "config.json").vocab_padded();
      ASSERT_EQ(got.shape, (std::vector<int64_t>{total, V}));
      expect_matches_golden(g, got.data.data(), g.logits.shape[1], "cli " + mode);
    }
  }
}

}  // namespace
}  // namespace mamba2
