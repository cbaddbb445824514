// Random perturbed models built in memory: chunked prefill and decode against a float64
// per-token recurrence written from DESIGN.md §1 (test_support.h), state hand-over from prefill
// to decode, batching and slots against running alone, and chunk-size invariance.
#include <gtest/gtest.h>

#include <cstring>
#include <numeric>

#include "mamba2/model.h"
#include "cpu/simd/isa.h"
#include "model/inference_state.h"
#include "test_support.h"

namespace mamba2 {
namespace {

using test::reference_logits;
using test::RefState;
using test::rel_l2;

// fp32 engine vs float64 recurrence: fp32 rounding through 2 layers, relative L2 ≤ 1e-4.
constexpr double kRefTol = 1e-4;
// Same fp32 code on the same tokens, only GEMM blocking / chunk boundaries change the summation order.
constexpr double kSameCodeTol = 1e-5;

struct Spec {
  const char* name;
  int64_t d_model, headdim, ngroups, chunk;
  double dt_lo = 0.0, dt_hi = std::numeric_limits<double>::infinity();
};

const Spec kDtLimitSpec{"d48_p8_g2_q8_dtlimit", 48, 8, 2, 8, 0.02, 0.1};

ModelConfig make_config(const Spec& s) {
  ModelConfig c;
  c.d_model = s.d_model;
  c.n_layer = 2;
  c.vocab_size = 100;  // padded to 112
  c.d_state = 16;
  c.headdim = s.headdim;
  c.ngroups = s.ngroups;
  c.chunk_size = s.chunk;
  c.dt_limit_min = s.dt_lo;
  c.dt_limit_max = s.dt_hi;
  c.validate("test");
  return c;
}

// Batch invariance is a promise of equal bits, not of closeness.
bool bitwise_equal(const float* a, const float* b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

class ModelEquivalence : public ::testing::TestWithParam<Spec> {
 protected:
  void SetUp() override {
    config = make_config(GetParam());
    auto w = std::make_shared<ModelWeights>(init_weights(config, 1234));
    test::perturb_weights(*w, 99);
    weights = w;
    model = std::make_unique<Model>(config, weights);
    Q = config.chunk_size;
    V = config.vocab_padded();
  }
  std::vector<double> reference(std::span<const int32_t> ids) const {
    RefState st(config);
    return reference_logits(config, *weights, ids, st);
  }
  std::vector<float> decode_alone(std::span<const int32_t> ids) const {
    auto state = make_state(config, 1);
    std::vector<float> out, step;
    const std::vector<int64_t> slot{0};
    for (int32_t id : ids) {
      model->decode(std::span<const int32_t>(&id, 1), slot, *state, step);
      out.insert(out.end(), step.begin(), step.end());
    }
    return out;
  }

  ModelConfig config;
  std::shared_ptr<const ModelWeights> weights;
  std::unique_ptr<Model> model;
  int64_t Q = 0, V = 0;
};

TEST_P(ModelEquivalence, ChunkedPrefillMatchesRecurrence) {
  for (int64_t L : {int64_t(1), Q - 1, Q, Q + 1, 3 * Q + 5}) {
    SCOPED_TRACE("length " + std::to_string(L));
    const auto ids = test::random_ids(L, config.vocab_size, 7 + uint64_t(L));
    std::vector<float> logits;
    model->prefill(ids, std::vector<int64_t>{L}, nullptr, true, logits);
    ASSERT_EQ(logits.size(), size_t(L * V));
    ASSERT_TRUE(test::all_finite(logits));
    EXPECT_LE(rel_l2(logits.data(), reference(ids).data(), logits.size()), kRefTol);
  }
}

TEST_P(ModelEquivalence, DecodeMatchesRecurrence) {
  const int64_t L = 3 * Q + 5;
  const auto ids = test::random_ids(L, config.vocab_size, 11);
  const std::vector<float> logits = decode_alone(ids);
  ASSERT_EQ(logits.size(), size_t(L * V));
  EXPECT_LE(rel_l2(logits.data(), reference(ids).data(), logits.size()), kRefTol);
}

TEST_P(ModelEquivalence, PrefillThenDecodeMatchesRecurrence) {
  const int64_t L = 3 * Q + 5;
  const auto ids = test::random_ids(L, config.vocab_size, 13);
  const std::vector<double> ref = reference(ids);
  for (int64_t k : {int64_t(1), Q - 1, Q + 2}) {
    SCOPED_TRACE("prefill " + std::to_string(k));
    auto state = make_state(config, 1);
    std::vector<float> all, step;
    model->prefill(std::span(ids).first(size_t(k)), std::vector<int64_t>{k}, state.get(), true, all);
    ASSERT_EQ(all.size(), size_t(k * V));
    // The states prefill leaves equal the recurrence's after k tokens (fp32 vs float64).
    RefState st(config);
    reference_logits(config, *weights, std::span(ids).first(size_t(k)), st);
    for (int64_t li = 0; li < config.n_layer; ++li) {
      EXPECT_LE(rel_l2(state->ssm[size_t(li)].data(), st.ssm[size_t(li)].data(), st.ssm[size_t(li)].size()), kRefTol)
          << "ssm state, layer " << li;
      EXPECT_LE(rel_l2(state->conv[size_t(li)].data(), st.conv[size_t(li)].data(), st.conv[size_t(li)].size()),
                kRefTol)
          << "conv state, layer " << li;
    }
    const std::vector<int64_t> slot{0};
    for (int64_t t = k; t < L; ++t) {
      model->decode(std::span(ids).subspan(size_t(t), 1), slot, *state, step);
      all.insert(all.end(), step.begin(), step.end());
    }
    ASSERT_EQ(all.size(), ref.size());
    EXPECT_LE(rel_l2(all.data(), ref.data(), all.size()), kRefTol);
  }
}

TEST_P(ModelEquivalence, PrefillContinuesFromState) {
  // Prefill in pieces through one state == the recurrence over the whole sequence. Pieces
  // shorter than d_conv-1 make the conv read inputs from both the old state and the piece.
  const int64_t L = 2 * Q + 9;
  const auto ids = test::random_ids(L, config.vocab_size, 17);
  const std::vector<double> ref = reference(ids);
  const std::vector<int64_t> pieces{1, 2, Q - 1, 1, Q + 4};  // sums to 2Q + 7
  auto state = make_state(config, 1);
  std::vector<float> all, part;
  int64_t t = 0;
  for (int64_t n : pieces) {
    model->prefill(std::span(ids).subspan(size_t(t), size_t(n)), std::vector<int64_t>{n}, state.get(), true, part);
    all.insert(all.end(), part.begin(), part.end());
    t += n;
  }
  const std::vector<int64_t> slot{0};
  for (; t < L; ++t) {
    model->decode(std::span(ids).subspan(size_t(t), 1), slot, *state, part);
    all.insert(all.end(), part.begin(), part.end());
  }
  ASSERT_EQ(all.size(), ref.size());
  EXPECT_LE(rel_l2(all.data(), ref.data(), all.size()), kRefTol);
}

TEST_P(ModelEquivalence, PrefillInBoundedRoundsEqualsOnePass) {
  // Last-position prefill split into rounds of at most 7 tokens (pieces of 1 to 7 tokens, the
  // sequences finishing in different rounds) == one pass, for logits and the states left behind.
  const std::vector<int64_t> lengths{5, 1, 2 * Q + 3, Q};
  const int64_t T = std::accumulate(lengths.begin(), lengths.end(), int64_t(0));
  const auto ids = test::random_ids(T, config.vocab_size, 23);
  auto one_state = make_state(config, 4), rounds_state = make_state(config, 4);
  std::vector<float> one, rounds, rounds_no_state;
  model->prefill(ids, lengths, one_state.get(), false, one);
  Model segmented(config, weights);
  segmented.set_max_prefill_tokens(7);
  segmented.prefill(ids, lengths, rounds_state.get(), false, rounds);
  segmented.prefill(ids, lengths, nullptr, false, rounds_no_state);
  ASSERT_EQ(rounds.size(), size_t(4 * V));
  EXPECT_LE(rel_l2(rounds.data(), one.data(), one.size()), kSameCodeTol);
  EXPECT_EQ(rounds, rounds_no_state);
  for (int64_t li = 0; li < config.n_layer; ++li) {
    EXPECT_LE(rel_l2(rounds_state->ssm[size_t(li)].data(), one_state->ssm[size_t(li)].data(),
                     size_t(one_state->ssm[size_t(li)].numel())),
              kSameCodeTol);
    EXPECT_LE(rel_l2(rounds_state->conv[size_t(li)].data(), one_state->conv[size_t(li)].data(),
                     size_t(one_state->conv[size_t(li)].numel())),
              kSameCodeTol);
  }
}

TEST_P(ModelEquivalence, BatchedPrefillHandsEachSequenceItsSlot) {
  // Two sequences prefilled together into slots 0 and 1 of a 3-slot state, then decoded in
  // reversed slot order; slot 2 is never touched and must stay zero.
  const std::vector<int64_t> pre{Q + 2, 5}, total{2 * Q + 1, Q + 3};
  std::vector<std::vector<int32_t>> seqs;
  for (size_t s = 0; s < 2; ++s) seqs.push_back(test::random_ids(total[s], config.vocab_size, 21 + s));
  std::vector<int32_t> packed;
  for (size_t s = 0; s < 2; ++s) packed.insert(packed.end(), seqs[s].begin(), seqs[s].begin() + pre[s]);
  auto state = make_state(config, 3);
  std::vector<float> logits, step;
  model->prefill(packed, pre, state.get(), true, logits);
  std::vector<std::vector<float>> got(2);
  for (size_t s = 0, row = 0; s < 2; ++s) {
    got[s].assign(logits.begin() + int64_t(row) * V, logits.begin() + int64_t(row + size_t(pre[s])) * V);
    row += size_t(pre[s]);
  }
  for (int64_t t = 0;; ++t) {
    std::vector<int32_t> tokens;
    std::vector<int64_t> slots;
    for (int s = 1; s >= 0; --s)
      if (pre[size_t(s)] + t < total[size_t(s)]) {
        tokens.push_back(seqs[size_t(s)][size_t(pre[size_t(s)] + t)]);
        slots.push_back(s);
      }
    if (tokens.empty()) break;
    model->decode(tokens, slots, *state, step);
    for (size_t i = 0; i < slots.size(); ++i)
      got[size_t(slots[i])].insert(got[size_t(slots[i])].end(), step.begin() + int64_t(i) * V,
                                   step.begin() + int64_t(i + 1) * V);
  }
  for (size_t s = 0; s < 2; ++s) {
    const auto ref = reference(seqs[s]);
    ASSERT_EQ(got[s].size(), ref.size());
    EXPECT_LE(rel_l2(got[s].data(), ref.data(), ref.size()), kRefTol) << "sequence " << s;
  }
  for (int64_t li = 0; li < config.n_layer; ++li) {
    const Tensor& ssm = state->ssm[size_t(li)];
    const int64_t per = ssm.numel() / 3;
    EXPECT_TRUE(std::all_of(ssm.data() + 2 * per, ssm.data() + 3 * per, [](float v) { return v == 0.0f; }));
  }
}

TEST_P(ModelEquivalence, BatchedPrefillEqualsEachAlone) {
  const std::vector<int64_t> lengths{5, 1, 2 * Q + 3, Q};
  std::vector<int32_t> packed;
  std::vector<std::vector<int32_t>> seqs;
  for (size_t s = 0; s < lengths.size(); ++s) {
    seqs.push_back(test::random_ids(lengths[s], config.vocab_size, 31 + s));
    packed.insert(packed.end(), seqs.back().begin(), seqs.back().end());
  }
  std::vector<float> batched, last;
  model->prefill(packed, lengths, nullptr, true, batched);
  model->prefill(packed, lengths, nullptr, false, last);
  ASSERT_EQ(batched.size(), packed.size() * size_t(V));
  ASSERT_EQ(last.size(), lengths.size() * size_t(V));
  int64_t row = 0;
  for (size_t s = 0; s < lengths.size(); ++s) {
    std::vector<float> alone;
    model->prefill(seqs[s], std::vector<int64_t>{lengths[s]}, nullptr, true, alone);
    EXPECT_TRUE(bitwise_equal(batched.data() + row * V, alone.data(), alone.size())) << "sequence " << s;
    EXPECT_TRUE(bitwise_equal(last.data() + int64_t(s) * V, alone.data() + (lengths[s] - 1) * V, size_t(V)))
        << "last position of sequence " << s;
    row += lengths[s];
  }
}

TEST_P(ModelEquivalence, DecodeWithSlotsEqualsEachAlone) {
  const std::vector<int64_t> lengths{5, 1, 2 * Q + 3, Q};
  const std::vector<int64_t> slot_of{3, 0, 4, 1};  // slot 2 stays unused
  std::vector<std::vector<int32_t>> seqs;
  for (size_t s = 0; s < lengths.size(); ++s) seqs.push_back(test::random_ids(lengths[s], config.vocab_size, 41 + s));
  auto state = make_state(config, 5);
  std::vector<std::vector<float>> got(lengths.size());
  std::vector<float> step;
  for (int64_t t = 0;; ++t) {
    std::vector<int32_t> tokens;
    std::vector<int64_t> slots;
    std::vector<size_t> which;
    for (size_t i = 0; i < lengths.size(); ++i) {
      const size_t s = (i + size_t(t)) % lengths.size();  // a different slot order every step
      if (t < lengths[s]) {
        tokens.push_back(seqs[s][size_t(t)]);
        slots.push_back(slot_of[s]);
        which.push_back(s);
      }
    }
    if (tokens.empty()) break;
    model->decode(tokens, slots, *state, step);
    ASSERT_EQ(step.size(), tokens.size() * size_t(V));
    for (size_t i = 0; i < which.size(); ++i)
      got[which[i]].insert(got[which[i]].end(), step.begin() + int64_t(i) * V, step.begin() + int64_t(i + 1) * V);
  }
  for (size_t s = 0; s < lengths.size(); ++s) {
    const std::vector<float> alone = decode_alone(seqs[s]);
    ASSERT_EQ(got[s].size(), alone.size());
    EXPECT_TRUE(bitwise_equal(got[s].data(), alone.data(), alone.size())) << "sequence " << s;
  }
}

INSTANTIATE_TEST_SUITE_P(
    ModelEquivalence, ModelEquivalence,
    ::testing::Values(Spec{"d32_p8_g1_q8", 32, 8, 1, 8}, Spec{"d64_p16_g2_q16", 64, 16, 2, 16},
                      kDtLimitSpec,
                      Spec{"d64_p8_g4_q16", 64, 8, 4, 16}),
    [](const ::testing::TestParamInfo<Spec>& info) { return std::string(info.param.name); });

TEST(ModelEquivalenceDtLimit, ClampBindsOnBothSides) {
  // The dt_limit config above is only a test of the clamp if the clamp binds on both sides.
  const ModelConfig c = make_config(kDtLimitSpec);
  auto w = std::make_shared<ModelWeights>(init_weights(c, 1234));
  test::perturb_weights(*w, 99);
  const auto ids = test::random_ids(3 * c.chunk_size + 5, c.vocab_size, 3);
  RefState st(c);
  test::RefStats stats;
  reference_logits(c, *w, ids, st, &stats);
  EXPECT_GT(stats.dt_clamped_low, stats.dt_total / 20);
  EXPECT_GT(stats.dt_clamped_high, stats.dt_total / 20);
  EXPECT_LT(stats.dt_clamped_low + stats.dt_clamped_high, stats.dt_total);
}

TEST(ModelEquivalenceChunk, ChunkSizeInvariance) {
  ModelConfig c4 = make_config(Spec{"", 48, 16, 2, 4}), c64 = c4;
  c64.chunk_size = 64;
  auto w = std::make_shared<ModelWeights>(init_weights(c4, 5));
  test::perturb_weights(*w, 6);
  const Model m4(c4, w), m64(c64, w);
  const std::vector<int64_t> lengths{150, 37, 64};
  const auto ids = test::random_ids(150 + 37 + 64, c4.vocab_size, 8);
  std::vector<float> a, b;
  m4.prefill(ids, lengths, nullptr, true, a);
  m64.prefill(ids, lengths, nullptr, true, b);
  ASSERT_EQ(a.size(), b.size());
  // Same fp32 code, only the chunk boundaries move: relative L2 ≤ 1e-5.
  EXPECT_LE(rel_l2(a.data(), b.data(), a.size()), kSameCodeTol);
  // And both are right (fp32 vs float64 recurrence, ≤ 1e-4).
  RefState st(c4);
  const auto ref = reference_logits(c4, *w, std::span(ids).first(150), st);
  EXPECT_LE(rel_l2(a.data(), ref.data(), ref.size()), kRefTol);
}

}  // namespace
}  // namespace mamba2

namespace mamba2 {
namespace {

// The 130m model's widths (d_model 768: in_proj 3352 × 768, out_proj 768 × 1536), two layers and
// a small vocabulary: six sequences as one batch give each the bits it gets alone, in prefill and
// in decode, under every instruction set this CPU runs, and those bits are the same under each.
TEST(BatchInvariance, At130mWidthUnderEveryIsa) {
  ModelConfig c = preset_config("130m");
  c.n_layer = 2;
  c.vocab_size = 1000;
  c.validate("test");
  auto w = std::make_shared<ModelWeights>(init_weights(c, 5));
  test::perturb_weights(*w, 6);
  const Model model(c, w);
  const int64_t V = c.vocab_padded();
  const std::vector<int64_t> lengths{1, 5, 2, 33, 1, 11};
  std::vector<std::vector<int32_t>> seqs;
  std::vector<int32_t> packed;
  for (size_t s = 0; s < lengths.size(); ++s) {
    seqs.push_back(test::random_ids(lengths[s], c.vocab_size, 70 + uint32_t(s)));
    packed.insert(packed.end(), seqs.back().begin(), seqs.back().end());
  }
  const auto saved = cpu::simd::active_isa();
  std::vector<float> first_isa;
  for (const auto isa : cpu::simd::available_isas()) {
    cpu::simd::set_isa(isa);
    const std::string where = cpu::simd::isa_name(isa);
    std::vector<float> batched, alone;
    model.prefill(packed, lengths, nullptr, true, batched);
    // And the same bits under every instruction set.
    if (first_isa.empty()) first_isa = batched;
    else EXPECT_TRUE(bitwise_equal(batched.data(), first_isa.data(), batched.size())) << where << " vs the first";
    int64_t row = 0;
    for (size_t s = 0; s < lengths.size(); ++s) {
      model.prefill(seqs[s], std::vector<int64_t>{lengths[s]}, nullptr, true, alone);
      EXPECT_TRUE(bitwise_equal(batched.data() + row * V, alone.data(), alone.size())) << where << " prefill " << s;
      row += lengths[s];
    }
    // Decode: all six step together (those still running), against each alone.
    auto state = make_state(c, int64_t(lengths.size()));
    std::vector<std::vector<float>> got(lengths.size());
    std::vector<float> step;
    for (int64_t t = 0; t < 33; ++t) {
      std::vector<int32_t> tokens;
      std::vector<int64_t> slots;
      for (size_t s = 0; s < lengths.size(); ++s)
        if (t < lengths[s]) {
          tokens.push_back(seqs[s][size_t(t)]);
          slots.push_back(int64_t(s));
        }
      model.decode(tokens, slots, *state, step);
      for (size_t i = 0; i < slots.size(); ++i)
        got[size_t(slots[i])].insert(got[size_t(slots[i])].end(), step.begin() + int64_t(i) * V,
                                     step.begin() + int64_t(i + 1) * V);
    }
    for (size_t s = 0; s < lengths.size(); ++s) {
      auto one = make_state(c, 1);
      std::vector<float> seq_out;
      for (int32_t id : seqs[s]) {
        model.decode(std::span<const int32_t>(&id, 1), std::vector<int64_t>{0}, *one, step);
        seq_out.insert(seq_out.end(), step.begin(), step.end());
      }
      ASSERT_EQ(got[s].size(), seq_out.size());
      EXPECT_TRUE(bitwise_equal(got[s].data(), seq_out.data(), seq_out.size())) << where << " decode " << s;
    }
  }
  cpu::simd::set_isa(saved);
}

}  // namespace
}  // namespace mamba2
