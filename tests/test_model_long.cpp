// A 65536-token sequence with strongly decaying heads: the chunked scan must stay finite and
// exact (the seed project's exp(+cumsum) overflowed here), and hand its final states to decode.
#include <gtest/gtest.h>

#include "mamba2/model.h"
#include "model/inference_state.h"
#include "test_support.h"

namespace mamba2 {
namespace {

using test::rel_l2;

// fp32 engine vs float64 recurrence over 65536 tokens: relative L2 ≤ 1e-4 (decaying heads keep
// the fp32 state error from accumulating, so the short-sequence contract holds).
constexpr double kLongTol = 1e-4;

TEST(ModelLong, Prefill65536TokensMatchesRecurrence) {
  ModelConfig c;
  c.d_model = 16;
  c.n_layer = 1;
  c.vocab_size = 32;
  c.d_state = 8;
  c.headdim = 8;  // 4 heads
  c.ngroups = 1;
  c.chunk_size = 256;
  c.validate("test");
  const int64_t H = c.nheads(), V = c.vocab_padded(), L = 65536;
  auto w = std::make_shared<ModelWeights>(init_weights(c, 2024));
  test::perturb_weights(*w, 17);
  LayerWeights& l = w->layers[0];
  const double A[] = {-16.0, -1.0, -16.0, -1.0};
  const double dt_target[] = {0.1, 0.5, 0.3, 0.2};
  for (int64_t h = 0; h < H; ++h) {
    l.A_log.data()[h] = float(std::log(-A[h]));
    l.dt_bias.data()[h] = float(std::log(std::expm1(dt_target[h])));  // softplus⁻¹
  }
  // Shrink the dt rows of in_proj so dt stays near its target (≈ 0.1 to 0.5).
  const int64_t D = c.d_model, dt_row0 = c.d_in_proj() - H;
  for (int64_t i = dt_row0 * D; i < c.d_in_proj() * D; ++i) l.in_proj.data()[i] *= 0.1f;
  const Model m(c, w);

  const auto ids = test::random_ids(L, c.vocab_size, 77);
  auto state = make_state(c, 1);
  std::vector<float> logits;
  m.prefill(ids, std::vector<int64_t>{L}, state.get(), true, logits);
  ASSERT_EQ(logits.size(), size_t(L * V));
  ASSERT_TRUE(test::all_finite(logits));

  test::RefState st(c);
  const std::vector<double> ref = test::reference_logits(c, *w, ids, st);
  EXPECT_LE(rel_l2(logits.data(), ref.data(), ref.size()), kLongTol) << "all 65536 positions";
  // The tail alone (past 256 chunks of hand-over) must be right too, not just the average.
  const size_t tail = size_t(1024 * V);
  EXPECT_LE(rel_l2(logits.data() + logits.size() - tail, ref.data() + ref.size() - tail, tail), kLongTol)
      << "last 1024 positions";
  // Final states after prefill vs the recurrence's (fp32 vs float64).
  EXPECT_LE(rel_l2(state->ssm[0].data(), st.ssm[0].data(), st.ssm[0].size()), kLongTol) << "final SSM state";
  EXPECT_LE(rel_l2(state->conv[0].data(), st.conv[0].data(), st.conv[0].size()), kLongTol) << "final conv state";

  // Continue with decode from the prefilled state: same contract against the recurrence.
  const auto more = test::random_ids(64, c.vocab_size, 78);
  std::vector<float> dec, step;
  for (int32_t id : more) {
    m.decode(std::span<const int32_t>(&id, 1), std::vector<int64_t>{0}, *state, step);
    dec.insert(dec.end(), step.begin(), step.end());
  }
  const std::vector<double> ref_more = test::reference_logits(c, *w, more, st);
  EXPECT_TRUE(test::all_finite(dec));
  EXPECT_LE(rel_l2(dec.data(), ref_more.data(), ref_more.size()), kLongTol) << "decode after a 65536-token prefill";
}

}  // namespace
}  // namespace mamba2
