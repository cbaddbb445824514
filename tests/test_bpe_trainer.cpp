// The BPE trainer against a naive trainer written from the definition (recount every pair of
// every word at each step, merge the most frequent, ties to the lower pair of ids), plus round
// trips through the Tokenizer and bad input.
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "mamba2/tokenizer.h"
#include "test_files.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/unicode.h"

namespace mamba2 {
namespace {

namespace fs = std::filesystem;

// The merges a naive trainer makes on `text` (one file, ASCII, so NFC changes nothing), as
// pairs of byte strings.
std::vector<std::pair<std::string, std::string>> naive_merges(const std::string& text, int64_t n_merges,
                                                              int64_t min_frequency) {
  tok::PreTokenizer pre;
  pre.byte_level_split.emplace(tok::onig_to_pcre2(tok::kGpt2Pattern, "test"), "test");
  std::map<std::string, int64_t> counts;
  std::string scratch;
  pre.for_each_word(text, scratch, [&](std::string_view w) { ++counts[std::string(w)]; });
  std::vector<std::string> bytes_of;
  std::map<std::string, int32_t> id_of;
  for (int b = 0; b < 256; ++b) {
    bytes_of.emplace_back(1, char(b));
    id_of[bytes_of.back()] = b;
  }
  std::vector<std::pair<std::vector<int32_t>, int64_t>> words;
  for (const auto& [w, c] : counts) {
    std::vector<int32_t> s;
    for (unsigned char ch : w) s.push_back(ch);
    words.emplace_back(s, c);
  }
  std::vector<std::pair<std::string, std::string>> merges;
  while (int64_t(merges.size()) < n_merges) {
    std::map<std::pair<int32_t, int32_t>, int64_t> pairs;
    for (const auto& [s, c] : words)
      for (size_t j = 0; j + 1 < s.size(); ++j) pairs[{s[j], s[j + 1]}] += c;
    std::pair<int32_t, int32_t> best{-1, -1};
    int64_t best_count = 0;
    for (const auto& [p, c] : pairs)
      if (c > best_count) best = p, best_count = c;  // map order: ties keep the lower pair
    if (best_count < min_frequency) break;
    merges.emplace_back(bytes_of[size_t(best.first)], bytes_of[size_t(best.second)]);
    const std::string joined = bytes_of[size_t(best.first)] + bytes_of[size_t(best.second)];
    auto [it, fresh] = id_of.try_emplace(joined, int32_t(bytes_of.size()));
    if (fresh) bytes_of.push_back(joined);
    for (auto& [s, c] : words) {
      std::vector<int32_t> out;
      for (size_t j = 0; j < s.size(); ++j) {
        if (j + 1 < s.size() && s[j] == best.first && s[j + 1] == best.second) {
          out.push_back(it->second);
          ++j;
        } else {
          out.push_back(s[j]);
        }
      }
      s = out;
    }
  }
  return merges;
}

std::string sample_text() {
  std::mt19937 g(7);
  const std::vector<std::string> vocab = {"the", "then", "there", "and", "sand", "land", "band", "in", "inn",
                                          "begin", "beginning", "God", "good", "gold", "1", "12", "123", ":", ","};
  std::string text;
  for (int i = 0; i < 3000; ++i) {
    text += vocab[g() % vocab.size()];
    text += (g() % 9 == 0) ? "\n" : " ";
  }
  return text;
}

TEST(BpeTrainer, MergesEqualANaiveTrainer) {
  test::TempDir dir;
  const std::string text = sample_text();
  test::write_file(dir.path() / "a.txt", text);
  BpeTrainOptions opt;
  opt.vocab_size = 1 + 256 + 40;  // fewer than the text has pairs for
  const nlohmann::json j = nlohmann::json::parse(train_bpe({dir.path() / "a.txt"}, opt));
  const auto expected = naive_merges(text, 1000, opt.min_frequency);
  const auto& merges = j["model"]["merges"];
  ASSERT_GE(expected.size(), merges.size());
  ASSERT_EQ(merges.size(), 40u);
  for (size_t i = 0; i < merges.size(); ++i) {
    EXPECT_EQ(merges[i][0], tok::byte_level_encode(expected[i].first)) << "merge " << i;
    EXPECT_EQ(merges[i][1], tok::byte_level_encode(expected[i].second)) << "merge " << i;
  }
  EXPECT_EQ(j["model"]["vocab"].size(), size_t(opt.vocab_size));
  EXPECT_EQ(j["model"]["vocab"]["<|endoftext|>"], 0);
}

TEST(BpeTrainer, StopsAtMinFrequencyAndRoundTrips) {
  test::TempDir dir;
  const std::string text = sample_text() + " naïve café 日本語 🙂\n";
  test::write_file(dir.path() / "a.txt", text);
  test::write_file(dir.path() / "b.txt", "zebra quagga\n");
  BpeTrainOptions opt;
  opt.vocab_size = 100000;  // more than the text has pairs for: min_frequency ends it
  opt.min_frequency = 3;
  const std::string json = train_bpe({dir.path() / "a.txt", dir.path() / "b.txt"}, opt);
  EXPECT_EQ(json, train_bpe({dir.path() / "a.txt", dir.path() / "b.txt"}, opt));  // deterministic
  const size_t n_merges = nlohmann::json::parse(json)["model"]["merges"].size();
  EXPECT_EQ(n_merges, naive_merges(text + "zebra quagga\n", 100000, 3).size());
  test::write_file(dir.path() / "tok.json", json);
  const Tokenizer t = Tokenizer::load(dir.path() / "tok.json");
  EXPECT_EQ(t.eos_id(), 0);
  const std::vector<int32_t> ids = t.encode(text);
  EXPECT_LT(ids.size() * 3, text.size());  // the merges compress the text it was trained on
  EXPECT_EQ(t.decode(ids), text);
  EXPECT_EQ(t.decode(t.encode("unseen words: xylophone<|endoftext|>")), "unseen words: xylophone<|endoftext|>");
}

TEST(BpeTrainer, BadInput) {
  test::TempDir dir;
  test::write_file(dir.path() / "bad.txt", "ok\xFF");
  BpeTrainOptions opt;
  EXPECT_NE(test::error_message([&] { train_bpe({dir.path() / "bad.txt"}, opt); }).find("bad.txt: invalid UTF-8 at byte 2"),
            std::string::npos);
  EXPECT_NE(test::error_message([&] { train_bpe({dir.path() / "missing.txt"}, opt); }).find("missing.txt"),
            std::string::npos);
  EXPECT_NE(test::error_message([&] { train_bpe({}, opt); }).find("no input files"), std::string::npos);
  opt.vocab_size = 100;
  test::write_file(dir.path() / "a.txt", "abc");
  EXPECT_NE(test::error_message([&] { train_bpe({dir.path() / "a.txt"}, opt); }).find("vocab_size 100"),
            std::string::npos);
}

}  // namespace
}  // namespace mamba2
