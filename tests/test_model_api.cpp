// Misuse of the Model API must be refused with a mamba2::Error, never read or write out of
// bounds. Calls that could corrupt memory run in a child process (death-test machinery) so a
// crash fails only that test.
#include <gtest/gtest.h>

#include <cstdio>

#include "mamba2/error.h"
#include "mamba2/model.h"
#include "model/inference_state.h"
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

}  // namespace
}  // namespace mamba2
