// Training data: block-wise encoding equals whole-text encoding, the token file layout and its
// change detection, rows cut at document boundaries (checked against a float64 reference run on
// each piece from a fresh state), the row permutation, and bad input.
#include <gtest/gtest.h>

#include <fstream>
#include <set>

#include "mamba2/tokenizer.h"
#include "model/mamba2_grad.h"
#include "test_support.h"
#include "train/data.h"

namespace mamba2 {
namespace {

namespace fs = std::filesystem;
using test::kTinyEos;
using test::kTinyNoEos;
using namespace training;

const std::string kNeox = MAMBA2_FIXTURES_DIR "/tokenizer/gpt-neox-20b.json";

std::string messy_text() {
  std::string t;
  for (int i = 0; i < 60; ++i) {
    t += "Line " + std::to_string(i * 37) + ": the quick brown fox, café naïve — ünïcödé! ";
    t += i % 3 == 0 ? "\n\n" : i % 5 == 0 ? "  \n" : "\n";
    if (i % 7 == 0) t += "    indented (code) {x = 1;}\n";
    if (i % 11 == 0) t += "Zebra\r\nCRLF line\n\tTab start\n";
  }
  return t;
}

std::vector<int32_t> encode_blocks(const Tokenizer& tok, const fs::path& f, size_t block) {
  std::vector<int32_t> out;
  encode_file(tok, f, block, [&](std::span<const int32_t> ids) { out.insert(out.end(), ids.begin(), ids.end()); });
  return out;
}

TEST(TrainData, BlockwiseEncodingEqualsWholeText) {
  test::TempDir tmp;
  const std::string text = messy_text();
  test::write_file(tmp / "doc.txt", text);
  for (const std::string& path : {kNeox, kTinyNoEos}) {
    const Tokenizer tok = Tokenizer::load(path);
    const std::vector<int32_t> whole = tok.encode(text);
    for (size_t block : {size_t(16), size_t(64), size_t(1000), size_t(1) << 20})
      EXPECT_EQ(encode_blocks(tok, tmp / "doc.txt", block), whole) << path << " block " << block;
  }
}

TEST(TrainData, InvalidUtf8NamesFileAndOffset) {
  test::TempDir tmp;
  std::string text(100, 'a');
  text += "\nBad \xff here\n";
  test::write_file(tmp / "bad.txt", text);
  const Tokenizer tok = Tokenizer::load(kTinyEos);
  for (size_t block : {size_t(16), size_t(1) << 20}) {
    const std::string msg = test::error_message([&] { encode_blocks(tok, tmp / "bad.txt", block); });
    EXPECT_NE(msg.find((tmp / "bad.txt").string()), std::string::npos) << msg;
    EXPECT_NE(msg.find("not valid UTF-8 (byte offset 105"), std::string::npos) << msg;
  }
}

TEST(TrainData, ExpandSources) {
  test::TempDir tmp;
  fs::create_directories(tmp / "dir" / "sub");
  test::write_file(tmp / "dir" / "b.txt", "b");
  test::write_file(tmp / "dir" / "sub" / "a.txt", "a");
  test::write_file(tmp / "dir" / "notes.md", "skipped");
  test::write_file(tmp / "single.md", "taken: named explicitly");
  const auto files = expand_sources({tmp / "single.md", tmp / "dir"}, "train");
  ASSERT_EQ(files.size(), 3u);
  EXPECT_EQ(files[0], tmp / "single.md");
  EXPECT_EQ(files[1], tmp / "dir" / "b.txt");
  EXPECT_EQ(files[2], tmp / "dir" / "sub" / "a.txt");
  std::string msg = test::error_message([&] { expand_sources({tmp / "missing"}, "val"); });
  EXPECT_NE(msg.find("val: " + (tmp / "missing").string() + " does not exist"), std::string::npos) << msg;
  fs::create_directories(tmp / "empty");
  msg = test::error_message([&] { expand_sources({tmp / "empty"}, "train"); });
  EXPECT_NE(msg.find("holds no .txt files"), std::string::npos) << msg;
}

TEST(TrainData, CorpusLayoutAndChangeDetection) {
  test::TempDir tmp;
  const Tokenizer tok = Tokenizer::load(kTinyEos);
  const int32_t eos = *tok.eos_id();
  test::write_file(tmp / "a.txt", "the cat sat on the mat.");
  test::write_file(tmp / "empty.txt", "");
  test::write_file(tmp / "b.txt", "A dog ran to the park.");
  const std::vector<fs::path> files = {tmp / "a.txt", tmp / "empty.txt", tmp / "b.txt"};
  std::vector<std::string> log;
  auto logger = [&](const std::string& s) { log.push_back(s); };
  EXPECT_TRUE(prepare_corpus(tok, 1, files, tmp / "data", "train", logger));
  const TokenCorpus c = TokenCorpus::open(tmp / "data", "train");
  const auto a = tok.encode("the cat sat on the mat."), b = tok.encode("A dog ran to the park.");
  std::vector<int32_t> want = {eos};
  want.insert(want.end(), a.begin(), a.end());
  want.push_back(eos);
  want.insert(want.end(), b.begin(), b.end());
  want.push_back(eos);
  ASSERT_EQ(c.size(), int64_t(want.size()));
  std::vector<int32_t> got(want.size());
  c.read(0, c.size(), got.data());
  EXPECT_EQ(got, want);
  EXPECT_EQ(c.documents(), 2);  // the empty file is skipped
  EXPECT_EQ(c.starts_between(-1, c.size()), (std::vector<int64_t>{0, int64_t(a.size()) + 1}));
  EXPECT_EQ(c.eos(), eos);

  // Unchanged: kept. A changed file or tokenizer: re-tokenized, with the reason logged.
  EXPECT_FALSE(prepare_corpus(tok, 1, files, tmp / "data", "train", logger));
  const std::string fp = c.fingerprint();
  EXPECT_TRUE(prepare_corpus(tok, 2, files, tmp / "data", "train", logger));
  EXPECT_TRUE(std::any_of(log.begin(), log.end(), [](const std::string& l) {
    return l.find("re-tokenizing") != std::string::npos && l.find("(the tokenizer changed)") != std::string::npos;
  }));
  test::write_file(tmp / "b.txt", "A dog ran to the park and back.");
  EXPECT_TRUE(prepare_corpus(tok, 2, files, tmp / "data", "train", logger));
  EXPECT_NE(TokenCorpus::open(tmp / "data", "train").fingerprint(), fp);
  // A truncated token file is noticed.
  fs::resize_file(tmp / "data" / "train.tokens", 4);
  EXPECT_NE(test::error_message([&] { TokenCorpus::open(tmp / "data", "train"); }).find("sizes"), std::string::npos);
  EXPECT_TRUE(prepare_corpus(tok, 2, files, tmp / "data", "train", logger));
}

ModelConfig tiny_model(int64_t vocab) {
  ModelConfig c = preset_config("130m");
  c.d_model = 16;
  c.n_layer = 2;
  c.d_state = 8;
  c.headdim = 8;
  c.chunk_size = 4;
  c.vocab_size = vocab;
  return c;
}

// Rows against an independent description: every piece starts at the row's start or at a
// document start, pieces tile the row (sharing the boundary EOS when there is one), and the loss
// of the packed row equals a float64 per-token recurrence run on each piece from a fresh state.
void check_rows(const std::string& tokenizer_path) {
  SCOPED_TRACE(tokenizer_path);
  test::TempDir tmp;
  const Tokenizer tok = Tokenizer::load(tokenizer_path);
  std::vector<fs::path> files;
  const char* docs[] = {"the cat sat.", "A dog ran to the park and back again, twice.", "Hi.", "ok",
                        "the mat is red and the cat is not on it today."};
  for (int i = 0; i < 5; ++i) {
    files.push_back(tmp / fmt::format("d{}.txt", i));
    test::write_file(files.back(), docs[i]);
  }
  prepare_corpus(tok, 0, files, tmp / "data", "c", {});
  const TokenCorpus c = TokenCorpus::open(tmp / "data", "c");
  const std::optional<int32_t> eos = c.eos();
  std::set<int64_t> starts;
  for (int64_t s : c.starts_between(-1, c.size())) starts.insert(s);
  std::vector<int32_t> stream(size_t(c.size()));
  c.read(0, c.size(), stream.data());

  const ModelConfig mc = tiny_model(tok.vocab_size());
  ModelWeights w = init_weights(mc, 11);
  test::perturb_weights(w, 12);
  const int64_t S = 9;
  const CorpusRange range{&c, 1, c.size()};  // a range not starting at 0: its start is a cut too
  ASSERT_GE(range.rows(S), 4);
  int boundary_rows = 0;
  for (int64_t k = 0; k < range.rows(S); ++k) {
    Batch b;
    range.append_row(S, k, b, &tok);
    const int64_t a = 1 + k * (S - 1);
    // Walk the pieces through the stream.
    int64_t pos = a, off = 0, predictions = 0;
    double nats = 0.0;
    for (size_t p = 0; p < b.lengths.size(); ++p) {
      const int64_t len = b.lengths[p];
      ASSERT_GE(len, 2);
      // Without an EOS a one-token document predicts nothing and is left out.
      while (!eos && pos + 1 < a + S && starts.count(pos + 1)) ++pos;
      if (pos != a) {
        EXPECT_TRUE(starts.count(pos)) << "row " << k << ": piece " << p << " starts inside a document";
        ++boundary_rows;
      }
      const std::span<const int32_t> ids(b.ids.data() + off, size_t(len));
      for (int64_t i = 0; i < len; ++i) ASSERT_EQ(ids[size_t(i)], stream[size_t(pos + i)]);
      // With an EOS the last token may be the next document's start (its EOS), shared.
      for (int64_t i = 1; i < (eos ? len - 1 : len); ++i)
        EXPECT_FALSE(starts.count(pos + i)) << "row " << k << ": a document starts inside piece " << p;
      test::RefState st(mc);
      const std::vector<double> logits = test::reference_logits(mc, w, ids, st);
      const int64_t V = mc.vocab_padded();
      for (int64_t i = 0; i + 1 < len; ++i) {
        const double* l = logits.data() + i * V;
        double mx = l[0], sum = 0.0;
        for (int64_t v = 1; v < V; ++v) mx = std::max(mx, l[v]);
        for (int64_t v = 0; v < V; ++v) sum += std::exp(l[v] - mx);
        nats += mx + std::log(sum) - l[ids[size_t(i + 1)]];
      }
      predictions += len - 1;
      off += len;
      // The next piece starts at this one's last token with an EOS, right after it without.
      pos += eos ? len - 1 : len;
    }
    EXPECT_EQ(b.predictions, predictions);
    if (eos) {
      EXPECT_EQ(predictions, S - 1) << "row " << k;
    }
    // fp32 against the float64 recurrence: relative 1e-5 on a mean of O(1) terms.
    EXPECT_NEAR(lm_loss(mc, w, b.ids, b.lengths), nats / double(predictions), 1e-5 * nats / double(predictions));
  }
  EXPECT_GE(boundary_rows, 3);
}

TEST(TrainData, RowsHonourDocumentBoundariesWithEos) { check_rows(kTinyEos); }
TEST(TrainData, RowsHonourDocumentBoundariesWithoutEos) { check_rows(kTinyNoEos); }

TEST(TrainData, RowsTileTheRange) {
  // 100 tokens, rows of 10 overlapping by one: rows start at 0, 9, ..., 81; 90 would need 100..99.
  EXPECT_EQ((CorpusRange{nullptr, 0, 100}.rows(10)), 11);
  EXPECT_EQ((CorpusRange{nullptr, 0, 99}.rows(10)), 10);
  EXPECT_EQ((CorpusRange{nullptr, 5, 14}.rows(10)), 0);
  EXPECT_EQ((CorpusRange{nullptr, 5, 15}.rows(10)), 1);
}

TEST(TrainData, PermutationIsABijection) {
  for (uint64_t n : {1ull, 2ull, 3ull, 7ull, 64ull, 100ull, 1000ull, 4097ull}) {
    for (uint64_t key : {0ull, 1ull, 0xdeadbeefull}) {
      const Permutation p(n, key);
      std::set<uint64_t> seen;
      for (uint64_t i = 0; i < n; ++i) seen.insert(p(i));
      EXPECT_EQ(seen.size(), n);
      EXPECT_LT(*seen.rbegin(), n);
    }
  }
  const Permutation a(1000, 1), b(1000, 2);
  int same = 0, fixed = 0;
  for (uint64_t i = 0; i < 1000; ++i) {
    same += a(i) == b(i);
    fixed += a(i) == i;
  }
  EXPECT_LT(same, 20);  // different keys, different orders
  EXPECT_LT(fixed, 20);
}

}  // namespace
}  // namespace mamba2
