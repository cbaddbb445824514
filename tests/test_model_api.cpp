// Misuse of the Model API must be refused with a mamba2::Error, never read or write out of
// bounds. Calls that could corrupt memory run in a child process (death-test machinery) so a
// crash fails only that test.
#include <gtest/gtest.h>

#include <cstdio>
#include <limits>
#include <string>

#include "mamba2/error.h"
#include "mamba2/model.h"
#include "model/inference_state.h"
#include "model/weights.h"
#include "ops/ops.h"
#include "test_support.h"

namespace mamba2 {
namespace {

// Runs `stmt` in a child: passes only if it throws mamba2::Error (not another exception, no
// exception, or a crash / sanitizer report).
#define EXPECT_ERROR_ISOLATED(stmt)                                        \
  EXPECT_EXIT(                                                             \
      {                                                                    \
        try {                                                              \
          stmt;                                                            \
        } catch (const mamba2::Error& e) {                                 \
          std::fprintf(stderr, "threw: %s\n", e.what());                   \
          std::_Exit(0);                                                   \
        } catch (...) {                                                    \
          std::fprintf(stderr, "threw something other than mamba2::Error"); \
          std::_Exit(4);                                                   \
        }                                                                  \
        std::fprintf(stderr, "did not throw\n");                           \
        std::_Exit(3);                                                     \
      },                                                                   \
      ::testing::ExitedWithCode(0), "threw: ")

ModelConfig small(int64_t n_layer = 2, int64_t d_model = 32) {
  ModelConfig c;
  c.d_model = d_model;
  c.n_layer = n_layer;
  c.vocab_size = 100;
  c.d_state = 16;
  c.headdim = 16;
  c.chunk_size = 8;
  return c;
}

class ModelApi : public ::testing::Test {
 protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
  ModelConfig c = small();
  Model m{c, std::make_shared<const ModelWeights>(init_weights(c, 1))};
  std::vector<float> logits;
};

TEST_F(ModelApi, PrefillRejectsBadIdsAndLengths) {
  const std::vector<int32_t> ids{1, 2, 3};
  EXPECT_THROW(m.prefill(std::vector<int32_t>{1, 112}, std::vector<int64_t>{2}, nullptr, true, logits), Error);
  EXPECT_THROW(m.prefill(std::vector<int32_t>{1, -1}, std::vector<int64_t>{2}, nullptr, true, logits), Error);
  EXPECT_THROW(m.prefill(ids, std::vector<int64_t>{2}, nullptr, true, logits), Error);
  EXPECT_THROW(m.prefill(ids, std::vector<int64_t>{3, 0}, nullptr, true, logits), Error);
  EXPECT_THROW(m.prefill(ids, std::vector<int64_t>{4, -1}, nullptr, true, logits), Error);
  auto state = make_state(c, 1);
  EXPECT_THROW(m.prefill(ids, std::vector<int64_t>{1, 2}, state.get(), true, logits), Error);
  EXPECT_THROW(make_state(c, 0), Error);
}

TEST_F(ModelApi, DecodeRejectsBadSlotsAndTokens) {
  auto state = make_state(c, 2);
  EXPECT_THROW(m.decode(std::vector<int32_t>{1}, std::vector<int64_t>{2}, *state, logits), Error);
  EXPECT_THROW(m.decode(std::vector<int32_t>{1}, std::vector<int64_t>{-1}, *state, logits), Error);
  EXPECT_THROW(m.decode(std::vector<int32_t>{1, 2}, std::vector<int64_t>{0}, *state, logits), Error);
  EXPECT_THROW(m.decode(std::vector<int32_t>{112}, std::vector<int64_t>{0}, *state, logits), Error);
}

TEST_F(ModelApi, DecodeRejectsDuplicateSlots) {
  // Two tokens advancing the same slot in one step race on its state.
  auto state = make_state(c, 2);
  EXPECT_THROW(m.decode(std::vector<int32_t>{1, 2}, std::vector<int64_t>{0, 0}, *state, logits), Error);
}

TEST_F(ModelApi, DecodeRejectsStateWithFewerLayers) {
  auto other = make_state(small(1), 1);
  EXPECT_ERROR_ISOLATED(m.decode(std::vector<int32_t>{1}, std::vector<int64_t>{0}, *other, logits));
}

TEST_F(ModelApi, PrefillRejectsStateWithFewerLayers) {
  auto other = make_state(small(1), 1);
  EXPECT_ERROR_ISOLATED(
      m.prefill(std::vector<int32_t>{1, 2}, std::vector<int64_t>{2}, other.get(), true, logits));
}

TEST_F(ModelApi, PrefillRejectsStateOfSmallerModel) {
  auto other = make_state(small(2, 16), 1);  // same layers, half the width
  EXPECT_ERROR_ISOLATED(
      m.prefill(std::vector<int32_t>{1, 2}, std::vector<int64_t>{2}, other.get(), true, logits));
}

TEST_F(ModelApi, DecodeRejectsStateOfSmallerModel) {
  auto other = make_state(small(2, 16), 1);
  EXPECT_ERROR_ISOLATED(m.decode(std::vector<int32_t>{1}, std::vector<int64_t>{0}, *other, logits));
}

// Reduced-precision operands on the CPU, whose conv and scan take fp32 only: a clear error naming
// the op and the operand (the GPU takes the conv's output and the scan's inputs in bf16 / f16).
TEST(OpsDtypes, ReducedOperandsAreRefusedWhereOnlyFp32IsTaken) {
  using test::error_message;
  const int64_t T = 4, H = 2, P = 8, N = 8, K = 4, Cc = H * P + 2 * N;
  const std::vector<int64_t> lengths{T}, slots{0};
  const ops::SeqBatch seqs(lengths, slots, 4, Device::CPU);
  Tensor in = Tensor::zeros({T, Cc}), w = Tensor::zeros({Cc, K}), b = Tensor::zeros({Cc});
  Tensor conv_states = Tensor::zeros({1, (K - 1) * Cc}), out16 = Tensor::zeros({T, Cc}, Device::CPU, DType::BF16);
  EXPECT_NE(error_message([&] {
              ops::causal_conv1d(MatView::of(in), w, b, MatView::of(out16), MatView::of(conv_states), seqs);
            }).find("[causal_conv1d] out is BF16, expected F32"),
            std::string::npos);
  Tensor dt_bias = Tensor::zeros({H}), A_log = Tensor::zeros({H}), D = Tensor::zeros({H});
  const ops::SsdWeights sw{dt_bias, A_log, D, P, 1, N, 0.0, std::numeric_limits<double>::infinity()};
  Tensor x16 = Tensor::zeros({T, H * P}, Device::CPU, DType::BF16), bc16 = Tensor::zeros({T, N}, Device::CPU, DType::BF16);
  Tensor dt = Tensor::zeros({T, H}), y = Tensor::zeros({T, H * P}), ssm_states = Tensor::zeros({1, H * P * N});
  const std::string scan = error_message([&] {
    ops::ssd_scan(sw, MatView::of(x16), MatView::of(bc16), MatView::of(bc16), MatView::of(dt), MatView::of(y),
                  MatView::of(ssm_states), seqs, DType::BF16);
  });
  EXPECT_NE(scan.find("[ssd_scan] x is BF16, expected F32"), std::string::npos) << scan;
  Tensor x32 = Tensor::zeros({T, H * P});
  const std::string mixed = error_message([&] {
    ops::ssd_scan(sw, MatView::of(x32), MatView::of(bc16), MatView::of(bc16), MatView::of(dt), MatView::of(y),
                  MatView::of(ssm_states), seqs);
  });
  EXPECT_NE(mixed.find("[ssd_scan] B is BF16, expected F32"), std::string::npos) << mixed;
  const ops::SeqBatch step_seqs = ops::SeqBatch::decode(slots, Device::CPU);
  const std::string step = error_message([&] {
    ops::ssd_step(sw, MatView::of(x16).rows_slice(0, 1), MatView::of(bc16).rows_slice(0, 1),
                  MatView::of(bc16).rows_slice(0, 1), MatView::of(dt).rows_slice(0, 1), MatView::of(y).rows_slice(0, 1),
                  MatView::of(ssm_states), step_seqs);
  });
  EXPECT_NE(step.find("[ssd_scan] x is BF16, expected F32"), std::string::npos) << step;
}

// decode_candidates hands back the rows' top-k candidates (those of decode's logits), or, when a
// row has more ties at the cut than there is room for, every row's whole logits.
TEST(ModelCandidates, AreTheLogitsTopKOrWholeRowsOnTies) {
  const ModelConfig c = test::small_config(1000, false);
  ModelWeights w = init_weights(c, 5);
  test::perturb_weights(w, 6);
  const std::vector<int32_t> tokens{3, 500, 999}, k{1, 5, 40};
  const std::vector<int64_t> slots{1, 2, 0};
  const std::vector<float> temperature{1.0f, 0.7f, 1.3f};
  for (bool flat : {false, true}) {
    SCOPED_TRACE(flat ? "all logits equal" : "random weights");
    if (flat) std::fill(w.norm_f.data(), w.norm_f.data() + w.norm_f.numel(), 0.0f);  // every logit 0
    const Model m(c, std::make_shared<const ModelWeights>(w));
    auto s1 = m.new_state(3), s2 = m.new_state(3);
    std::vector<float> logits;
    DecodeCandidates got;
    m.decode(tokens, slots, *s1, logits);
    m.decode_candidates(tokens, slots, *s2, c.vocab_size, k, temperature, got);
    const int64_t V = m.vocab();
    EXPECT_EQ(got.dense, flat);
    if (flat) {
      EXPECT_EQ(got.whole_rows, logits);
      continue;
    }
    std::vector<int32_t> ids(size_t(3 * got.cap)), count(3);
    std::vector<float> values(size_t(3 * got.cap));
    ops::top_k({logits.data(), 3, V, V}, c.vocab_size, k, temperature, got.cap, ids.data(), values.data(),
               count.data());
    EXPECT_EQ(got.count, count);
    EXPECT_EQ(got.ids, ids);
    EXPECT_EQ(got.logits, values);
  }
}

}  // namespace
}  // namespace mamba2
