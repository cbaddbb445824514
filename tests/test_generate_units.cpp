// The pieces of generation that need no model: UTF-8 repair and streaming, stop strings, and
// the sampling filters against Hugging Face's logits processors (scripts/make_sampling_fixtures.py).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>

#include "core/utf8.h"
#include "generate/sampler.h"
#include "generate/text_stream.h"
#include "ops/ops.h"
#include "test_files.h"

namespace mamba2 {
namespace {

const std::string kFFFD = "\xEF\xBF\xBD";

TEST(Utf8, FirstInvalidNamesTheOffset) {
  EXPECT_EQ(utf8::first_invalid(""), std::string::npos);
  EXPECT_EQ(utf8::first_invalid("héllo 世界 🙂"), std::string::npos);
  EXPECT_EQ(utf8::first_invalid("ab\xFF"), 2u);
  EXPECT_EQ(utf8::first_invalid("a\xC0\xAF"), 1u);          // overlong '/'
  EXPECT_EQ(utf8::first_invalid("a\xED\xA0\x80"), 1u);      // surrogate U+D800
  EXPECT_EQ(utf8::first_invalid("a\xF4\x90\x80\x80"), 1u);  // past U+10FFFF
  EXPECT_EQ(utf8::first_invalid("ok\xE4\xBD"), 2u);         // truncated at the end
}

// Expected strings follow Rust's String::from_utf8_lossy (maximal subparts, Unicode §3.9).
TEST(Utf8, LossyReplacesMaximalSubparts) {
  auto lossy = [](std::string_view s) {
    std::string out;
    utf8::append_lossy(s, out);
    return out;
  };
  EXPECT_EQ(lossy("héllo"), "héllo");
  EXPECT_EQ(lossy("a\xE4\xBD" "b"), "a" + kFFFD + "b");              // one truncated character: one U+FFFD
  EXPECT_EQ(lossy("\xF0\x9F\x98"), kFFFD);                           // truncated emoji at the end
  EXPECT_EQ(lossy("\xC0\xAF"), kFFFD + kFFFD);                       // C0 never starts a character
  EXPECT_EQ(lossy("\xED\xA0\x80"), kFFFD + kFFFD + kFFFD);           // surrogate: ED then two strays
  EXPECT_EQ(lossy("\xF4\x90\x80\x80"), kFFFD + kFFFD + kFFFD + kFFFD);
  EXPECT_EQ(lossy("\x80\x80" "a"), kFFFD + kFFFD + "a");
}

TEST(Utf8, IncompleteTailIsOnlyAValidUnfinishedStart) {
  EXPECT_EQ(utf8::incomplete_tail("abc"), 0u);
  EXPECT_EQ(utf8::incomplete_tail("a\xE4"), 1u);
  EXPECT_EQ(utf8::incomplete_tail("a\xE4\xBD"), 2u);
  EXPECT_EQ(utf8::incomplete_tail("a\xE4\xBD\xA0"), 0u);  // 你, complete
  EXPECT_EQ(utf8::incomplete_tail("\xF0\x9F\x98"), 3u);
  EXPECT_EQ(utf8::incomplete_tail("a\xBD"), 0u);          // a stray continuation: invalid, not pending
  EXPECT_EQ(utf8::incomplete_tail("a\xED\xA0"), 0u);      // a surrogate can never finish
  EXPECT_EQ(utf8::incomplete_tail("a\xFF"), 0u);
}

// Feeds `pieces` one token at a time; returns what was shown, with "|" between pushes.
std::string stream(const std::vector<std::string>& pieces, std::vector<std::string> stop, bool* stopped = nullptr) {
  TextStream s(std::move(stop));
  std::string shown;
  for (const std::string& p : pieces) {
    shown += s.push(p) + "|";
    if (s.stopped()) break;
  }
  shown += s.finish();
  if (stopped) *stopped = s.stopped();
  return shown;
}

TEST(TextStream, NeverSplitsACharacter) {
  // 你 = E4 BD A0 and 🙂 = F0 9F 99 82, split across tokens byte by byte.
  EXPECT_EQ(stream({"a", "\xE4", "\xBD", "\xA0", "b"}, {}), "a|||你|b|");
  EXPECT_EQ(stream({"\xF0\x9F", "\x99", "\x82!"}, {}), "||🙂!|");
  // An unfinished character at the end is flushed as U+FFFD, as tokenizers' decode would.
  EXPECT_EQ(stream({"x", "\xE4\xBD"}, {}), "x||" + kFFFD);
  // A byte that can never start a character is shown at once as U+FFFD.
  EXPECT_EQ(stream({"\xFF", "y"}, {}), kFFFD + "|y|");
}

TEST(TextStream, StopStringsAcrossTokenBoundaries) {
  bool stopped = false;
  EXPECT_EQ(stream({"Hello", " wor", "ld", "END", "more"}, {"END"}, &stopped), "Hello| wor|ld||");
  EXPECT_TRUE(stopped);
  // "\n\n" split over two tokens: the first newline is held back, then the stop cuts it.
  EXPECT_EQ(stream({"line", "\n", "\nnext"}, {"\n\n"}, &stopped), "line|||");
  EXPECT_TRUE(stopped);
  // A held-back prefix that does not become the stop string is shown later, in order.
  EXPECT_EQ(stream({"a<", "/b", ">c"}, {"</s>"}, &stopped), "a|</b|>c|");
  EXPECT_FALSE(stopped);
  // The earliest of several stop strings wins, even within one token.
  EXPECT_EQ(stream({"xxBByyAA"}, {"AA", "BB"}, &stopped), "xx|");
  // A stop string made of a multi-byte character split across tokens.
  EXPECT_EQ(stream({"ok", "\xE4", "\xBD\xA0", "z"}, {"你"}, &stopped), "ok|||");
  EXPECT_TRUE(stopped);
  // Held text is flushed at the end when the stop never completes.
  EXPECT_EQ(stream({"abc", "EN"}, {"END"}, &stopped), "abc||EN");
}

TEST(TextStream, RejectsBadStopStrings) {
  EXPECT_NE(test::error_message([] { TextStream({""}); }).find("empty"), std::string::npos);
  EXPECT_NE(test::error_message([] { TextStream({"a\xFF"}); }).find("not valid UTF-8"), std::string::npos);
}

struct Case {
  SamplingParams params;
  std::vector<float> logits;
  std::vector<int32_t> seen;
  std::vector<double> probs;
};

std::vector<Case> load_cases() {
  std::ifstream in(MAMBA2_FIXTURES_DIR "/sampling/cases.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  std::vector<Case> cases;
  for (const auto& c : j["cases"]) {
    Case k;
    const auto& p = c["params"];
    k.params.temperature = p["temperature"];
    k.params.top_k = p["top_k"];
    k.params.top_p = p["top_p"];
    k.params.min_p = p["min_p"];
    k.params.repetition_penalty = p["repetition_penalty"];
    for (double v : c["logits"]) k.logits.push_back(float(v));
    k.seen = c["seen"].get<std::vector<int32_t>>();
    k.probs = c["probs"].get<std::vector<double>>();
    cases.push_back(std::move(k));
  }
  return cases;
}

// Tolerance 1e-6: HF filters in float32 and we in double from the same float32 logits; the
// fixture keeps only cases whose kept set is the same at both precisions, so what remains is
// rounding of probabilities of order 1e-7.
TEST(Sampler, FiltersMatchHuggingFaceProcessors) {
  const std::vector<Case> cases = load_cases();
  ASSERT_GE(cases.size(), 60u);
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    Sampler s(c.params, int64_t(c.logits.size()));
    for (int32_t t : c.seen) s.observe(t);
    const std::vector<double> got = s.distribution(c.logits);
    ASSERT_EQ(got.size(), c.probs.size());
    for (size_t v = 0; v < got.size(); ++v) {
      ASSERT_EQ(got[v] > 0, c.probs[v] > 0) << "case " << i << " token " << v;
      ASSERT_NEAR(got[v], c.probs[v], 1e-6) << "case " << i << " token " << v;
    }
  }
}

// The draws follow the filtered distribution: 200k draws, every probability within 5 standard
// errors (fixed seed, so the test is deterministic; the bound would fail for a biased draw).
TEST(Sampler, DrawsFollowTheDistribution) {
  const std::vector<Case> cases = load_cases();
  for (size_t i : {size_t(0), size_t(7), size_t(25)}) {
    const Case& c = cases[i];
    SamplingParams p = c.params;
    p.seed = 42 + i;
    Sampler s(p, int64_t(c.logits.size()));
    for (int32_t t : c.seen) s.observe(t);
    const std::vector<double> probs = s.distribution(c.logits);
    const int n = 200000;
    std::vector<int> counts(c.logits.size());
    for (int k = 0; k < n; ++k) ++counts[size_t(s.sample(c.logits))];
    for (size_t v = 0; v < probs.size(); ++v) {
      if (probs[v] == 0) {
        EXPECT_EQ(counts[v], 0) << "case " << i << ": filtered token " << v << " was drawn";
        continue;
      }
      const double se = std::sqrt(probs[v] * (1 - probs[v]) / n);
      EXPECT_NEAR(double(counts[v]) / n, probs[v], 5 * se + 1e-9) << "case " << i << " token " << v;
    }
  }
}

TEST(Sampler, SameSeedSameDraws) {
  const std::vector<Case> cases = load_cases();
  SamplingParams p = cases[0].params;
  p.seed = 7;
  Sampler a(p, int64_t(cases[0].logits.size())), b(p, int64_t(cases[0].logits.size()));
  p.seed = 8;
  Sampler other(p, int64_t(cases[0].logits.size()));
  int differ = 0;
  for (int k = 0; k < 200; ++k) {
    const int32_t ta = a.sample(cases[0].logits);
    ASSERT_EQ(ta, b.sample(cases[0].logits));
    differ += ta != other.sample(cases[0].logits);
  }
  EXPECT_GT(differ, 20);
}

TEST(Sampler, GreedyTakesTheArgmaxAfterThePenalty) {
  SamplingParams p;
  p.temperature = 0;
  std::vector<float> logits = {0.5f, 2.0f, 1.9f, -1.0f, 2.0f};
  Sampler s(p, 5);
  EXPECT_EQ(s.sample(logits), 1);  // the first of equal maxima, as torch.argmax
  p.repetition_penalty = 1.1f;
  Sampler penalised(p, 5);
  penalised.observe(1);
  penalised.observe(4);
  EXPECT_EQ(penalised.sample(logits), 2);  // 2.0 / 1.1 < 1.9
  // Ids past the tokenizer's vocabulary (padding of the model's) are never chosen.
  logits.push_back(100.0f);
  EXPECT_EQ(s.sample(logits), 1);
}

TEST(Sampler, RejectsBadParameters) {
  auto make = [](auto edit) {
    return test::error_message([&] {
      SamplingParams p;
      edit(p);
      Sampler(p, 10);
    });
  };
  EXPECT_NE(make([](SamplingParams& p) { p.temperature = -1; }).find("temperature"), std::string::npos);
  EXPECT_NE(make([](SamplingParams& p) { p.top_k = -2; }).find("top_k"), std::string::npos);
  EXPECT_NE(make([](SamplingParams& p) { p.top_p = 0; }).find("top_p"), std::string::npos);
  EXPECT_NE(make([](SamplingParams& p) { p.top_p = 1.5f; }).find("top_p"), std::string::npos);
  EXPECT_NE(make([](SamplingParams& p) { p.min_p = 1; }).find("min_p"), std::string::npos);
  EXPECT_NE(make([](SamplingParams& p) { p.repetition_penalty = 0; }).find("repetition_penalty"), std::string::npos);
  EXPECT_NE(make([](SamplingParams& p) { p.temperature = NAN; }).find("temperature"), std::string::npos);
}

// Rows of logits with many ties: values on a 0.25 grid, or a few ulps apart (which division by
// the temperature may merge).
std::vector<float> tied_logits(std::mt19937& rng, int64_t n, bool ulps) {
  std::uniform_int_distribution<int> grid(-32, 32), small(0, 6);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = ulps ? std::nextafter(1.0f + float(small(rng)) * 0x1p-22f, 2.0f) : 0.25f * float(grid(rng));
  return x;
}

// Model::decode_candidates hands the sampler only the ids at or above the top-k cut: the draws
// must be the whole row's, draw for draw, and the candidate sets those of the definition (the k-th
// largest quotient from a full sort, every id reaching it).
TEST(Sampler, CandidatesGiveTheWholeRowsDraws) {
  const int64_t vocab = 1000, width = 1008;  // the model's rows are padded past the vocabulary
  struct Setting {
    float temperature;
    int64_t top_k;
    float top_p, min_p;
  };
  const std::vector<Setting> settings{{0.7f, 40, 0.95f, 0.05f}, {1.3f, 5, 1.0f, 0.0f}, {0.9f, 1, 1.0f, 0.0f},
                                      {3.0f, 999, 0.9f, 0.0f},  {0.0f, 40, 1.0f, 0.0f}, {2.0f, 50, 0.5f, 0.2f}};
  std::mt19937 rng(3);
  for (const Setting& st : settings) {
    SamplingParams p;
    p.temperature = st.temperature;
    p.top_k = st.top_k;
    p.top_p = st.top_p;
    p.min_p = st.min_p;
    p.seed = 11;
    Sampler whole(p, vocab), from_candidates(p, vocab);
    const int32_t k = int32_t(whole.candidates_k());
    const float t = whole.candidates_temperature();
    ASSERT_EQ(k, st.temperature == 0.0f ? 1 : st.top_k);
    for (int row = 0; row < 60; ++row) {
      std::vector<float> x = tied_logits(rng, width, row % 2 == 1);
      std::vector<int32_t> ids(static_cast<size_t>(vocab)), count(1);
      std::vector<float> values(static_cast<size_t>(vocab));
      ops::top_k({x.data(), 1, width, width}, vocab, std::vector<int32_t>{k}, std::vector<float>{t}, vocab, ids.data(),
                 values.data(), count.data());
      ASSERT_GT(count[0], 0);
      std::vector<float> q(static_cast<size_t>(vocab));
      for (int64_t c = 0; c < vocab; ++c) q[size_t(c)] = x[size_t(c)] / t;
      std::vector<float> sorted = q;
      std::sort(sorted.begin(), sorted.end(), std::greater<float>());
      std::vector<int32_t> want;
      for (int64_t c = 0; c < vocab; ++c)
        if (q[size_t(c)] >= sorted[size_t(k - 1)]) want.push_back(int32_t(c));
      ids.resize(size_t(count[0]));
      values.resize(size_t(count[0]));
      ASSERT_EQ(ids, want) << "temperature " << st.temperature << " row " << row;
      for (size_t i = 0; i < ids.size(); ++i) ASSERT_EQ(values[i], x[size_t(ids[i])]);
      ASSERT_EQ(from_candidates.sample(values, ids), whole.sample(x)) << "temperature " << st.temperature << " row " << row;
    }
  }
}

TEST(Sampler, CandidatesAreRefusedWhereTheWholeRowCounts) {
  SamplingParams p;
  p.top_k = 0;
  EXPECT_EQ(Sampler(p, 10).candidates_k(), 0);
  p.top_k = 10;  // the whole vocabulary: no cut
  EXPECT_EQ(Sampler(p, 10).candidates_k(), 0);
  p.top_k = 3;
  p.repetition_penalty = 1.2f;  // moves tokens across the cut
  Sampler penalised(p, 10);
  EXPECT_EQ(penalised.candidates_k(), 0);
  const std::vector<float> v{1.0f, 2.0f, 3.0f};
  const std::vector<int32_t> ids{1, 4, 7};
  EXPECT_NE(test::error_message([&] { penalised.sample(v, ids); }).find("whole row"), std::string::npos);
  p.repetition_penalty = 1.0f;
  Sampler plain(p, 10);
  EXPECT_NE(test::error_message([&] { plain.sample(v, std::vector<int32_t>{4, 1, 7}); }).find("ascend"),
            std::string::npos);
  EXPECT_NE(test::error_message([&] { plain.sample(std::vector<float>{1.0f}, std::vector<int32_t>{4}); })
                .find("1 candidates for top_k = 3"),
            std::string::npos);
  // More than cap at the cut: the count says so.
  const std::vector<float> flat(16, 0.5f);
  std::vector<int32_t> out_ids(4), count(1);
  std::vector<float> out_values(4);
  ops::top_k({const_cast<float*>(flat.data()), 1, 16, 16}, 16, std::vector<int32_t>{1}, std::vector<float>{1.0f}, 4,
             out_ids.data(), out_values.data(), count.data());
  EXPECT_EQ(count[0], -1);
}

}  // namespace
}  // namespace mamba2
