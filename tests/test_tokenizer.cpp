// The tokenizer against Hugging Face `tokenizers`: every case of tests/fixtures/tokenizer/parity.json
// (made by scripts/make_tokenizer_fixtures.py) for the GPT-NeoX file and three small files trained
// with the library; then the API's own promises and the refusals of what it does not support.
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/utf8.h"
#include "mamba2/tokenizer.h"
#include "test_files.h"

namespace mamba2 {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using test::error_message;
using test::TempDir;

const fs::path kTokenizerDir = fs::path(MAMBA2_FIXTURES_DIR) / "tokenizer";

// Loaded once per process: the GPT-NeoX file is 1.3 MB of JSON.
const Tokenizer& fixture(const std::string& name) {
  static std::map<std::string, Tokenizer> loaded;
  auto it = loaded.find(name);
  if (it == loaded.end()) it = loaded.emplace(name, Tokenizer::load(kTokenizerDir / name)).first;
  return it->second;
}

const json& parity() {
  static const json p = json::parse(test::read_file(kTokenizerDir / "parity.json"));
  return p;
}

std::vector<int32_t> ids_of(const json& j) { return j.get<std::vector<int32_t>>(); }

// A short printable form of a case's text for failure messages.
std::string shown(const std::string& text) { return json(text.substr(0, 120)).dump(); }

class TokenizerParity : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerParity, EncodeEqualsTokenizers) {
  const Tokenizer& tok = fixture(GetParam());
  const json& cases = parity()["files"][GetParam()]["encode"];
  ASSERT_GT(cases.size(), 800u);
  int failures = 0;
  for (const json& c : cases) {
    const std::string text = c["text"];
    const std::vector<int32_t> ids = tok.encode(text);
    EXPECT_EQ(ids, ids_of(c["ids"])) << c["name"] << " " << shown(text);
    // Round trip: what `tokenizers` decodes from those ids (NFC text; added tokens as they are).
    EXPECT_EQ(tok.decode(ids), c["decoded"].get<std::string>()) << c["name"] << " " << shown(text);
    if (ids != ids_of(c["ids"]) && ++failures > 20) FAIL() << "stopping after 20 mismatches";
  }
}

TEST_P(TokenizerParity, DecodeEqualsTokenizers) {
  const Tokenizer& tok = fixture(GetParam());
  const json& cases = parity()["files"][GetParam()]["decode"];
  ASSERT_GT(cases.size(), 400u);
  for (const json& c : cases) {
    const std::vector<int32_t> ids = ids_of(c["ids"]);
    EXPECT_EQ(tok.decode(ids, c["skip_special"]), c["text"].get<std::string>())
        << c["ids"].dump() << " skip_special=" << c["skip_special"];
  }
}

// Streaming: the raw bytes of the tokens, joined and repaired once, are decode().
TEST_P(TokenizerParity, TokenBytesJoinToDecode) {
  const Tokenizer& tok = fixture(GetParam());
  for (const char* kind : {"encode", "decode"}) {
    for (const json& c : parity()["files"][GetParam()][kind]) {
      const std::vector<int32_t> ids = ids_of(c["ids"]);
      std::string joined, repaired;
      for (const int32_t id : ids) joined += tok.token_bytes(id);
      utf8::append_lossy(joined, repaired);
      EXPECT_EQ(repaired, tok.decode(ids)) << c["ids"].dump().substr(0, 200);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizer, TokenizerParity,
                         ::testing::Values("gpt-neox-20b.json", "tiny-bpe.json", "tiny-split.json", "tiny-unk.json"),
                         [](const auto& info) {
                           std::string name = info.param.substr(0, info.param.find('.'));
                           for (char& ch : name)
                             if (ch == '-') ch = '_';
                           return name;
                         });

TEST(Tokenizer, GptNeoxVocabulary) {
  const Tokenizer& tok = fixture("gpt-neox-20b.json");
  EXPECT_EQ(tok.encode("Hello world"), (std::vector<int32_t>{12092, 1533}));
  EXPECT_EQ(tok.vocab_size(), 50277);
  EXPECT_EQ(tok.eos_id(), 0);
  EXPECT_EQ(tok.token_id("<|endoftext|>"), 0);
  EXPECT_EQ(tok.token_id("\xC4\xA0world"), 1533);  // "Ġworld": the byte-level form
  EXPECT_EQ(tok.token_id("  "), 50276);
  EXPECT_EQ(tok.token_id("no such token"), std::nullopt);
  EXPECT_EQ(tok.token_bytes(1533), " world");
  EXPECT_EQ(tok.token_bytes(50276), "  ");
  EXPECT_EQ(tok.token_bytes(0), "<|endoftext|>");
  EXPECT_TRUE(tok.is_special(0));
  EXPECT_TRUE(tok.is_special(1));
  EXPECT_FALSE(tok.is_special(50276));
  EXPECT_FALSE(tok.is_special(1533));
  EXPECT_FALSE(tok.is_special(-1));
  EXPECT_EQ(tok.encode(""), std::vector<int32_t>{});
  EXPECT_EQ(tok.decode(std::vector<int32_t>{}), "");
}

TEST(Tokenizer, InvalidUtf8IsAnErrorNamingTheOffset) {
  const Tokenizer& tok = fixture("gpt-neox-20b.json");
  EXPECT_NE(error_message([&] { tok.encode("ab\xFF" "cd"); }).find("byte offset 2"), std::string::npos);
  EXPECT_NE(error_message([&] { tok.encode("\xE6\x97"); }).find("byte offset 0"), std::string::npos);
  EXPECT_NE(error_message([&] { tok.encode("ok \xED\xA0\x80"); }).find("byte offset 3"), std::string::npos);
  EXPECT_NE(error_message([&] { tok.encode("x\xC0\xAF"); }).find("not valid UTF-8"), std::string::npos);
  EXPECT_EQ(tok.encode(std::string("a\0b", 3)), (std::vector<int32_t>{66, 177, 67}));
}

TEST(Tokenizer, UnknownIdsAreErrors) {
  const Tokenizer& tok = fixture("gpt-neox-20b.json");
  for (const int32_t id : {-1, 50277, 1 << 30}) {
    const std::vector<int32_t> ids{12092, id};
    const std::string m = error_message([&] { tok.decode(ids); });
    EXPECT_NE(m.find("token id " + std::to_string(id) + " is not in the vocabulary"), std::string::npos) << m;
    EXPECT_NE(error_message([&] { tok.token_bytes(id); }).find("not in the vocabulary"), std::string::npos);
  }
}

// One tokenizer, several threads: the same ids as one thread (the word cache and the regex
// scratch are shared or per thread; ASan/TSan-clean either way).
TEST(Tokenizer, ConcurrentEncodesAgree) {
  const Tokenizer& tok = fixture("gpt-neox-20b.json");
  std::vector<std::string> texts;
  for (const json& c : parity()["files"]["gpt-neox-20b.json"]["encode"]) texts.push_back(c["text"]);
  std::vector<std::vector<int32_t>> expected;
  for (const auto& t : texts) expected.push_back(tok.encode(t));
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (size_t i = 0; i < texts.size(); ++i) {
        const size_t k = (i * 7 + size_t(t) * 131) % texts.size();
        if (tok.encode(texts[k]) != expected[k]) ++mismatches[size_t(t)];
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
}

TEST(Tokenizer, MovedTokenizerStillWorks) {
  Tokenizer a = Tokenizer::load(kTokenizerDir / "tiny-bpe.json");
  const std::vector<int32_t> ids = a.encode("hello world");
  Tokenizer b = std::move(a);
  EXPECT_EQ(b.encode("hello world"), ids);
}

// ---- files it refuses ------------------------------------------------------------------------

json tiny() { return json::parse(test::read_file(kTokenizerDir / "tiny-bpe.json")); }

// Writes `j` to a temp file and returns the load error ("(no error)" when it loads).
std::string load_error(const TempDir& dir, const std::string& content) {
  const fs::path p = dir / "tokenizer.json";
  test::write_file(p, content);
  return error_message([&] { Tokenizer::load(p); });
}

struct BadFile {
  const char* what;
  std::function<void(json&)> edit;
  std::vector<std::string> needles;  // each must appear in the message
};

TEST(TokenizerLoad, RefusesUnsupportedFeaturesByName) {
  const std::vector<BadFile> cases = {
      {"normalizer", [](json& j) { j["normalizer"] = {{"type", "Lowercase"}}; },
       {"normalizer type 'Lowercase' is not supported", "NFC"}},
      {"normalizer in a sequence",
       [](json& j) { j["normalizer"]["normalizers"].push_back({{"type", "NFKC"}}); },
       {"normalizer.normalizers[1] type 'NFKC' is not supported"}},
      {"pre-tokenizer", [](json& j) { j["pre_tokenizer"] = {{"type", "Whitespace"}}; },
       {"pre_tokenizer type 'Whitespace' is not supported", "ByteLevel"}},
      {"no pre-tokenizer", [](json& j) { j["pre_tokenizer"] = nullptr; }, {"pre_tokenizer null is not supported"}},
      {"model", [](json& j) { j["model"]["type"] = "WordPiece"; }, {"model type 'WordPiece' is not supported", "BPE"}},
      {"decoder", [](json& j) { j["decoder"] = {{"type", "WordPiece"}}; }, {"decoder type 'WordPiece' is not supported"}},
      {"no decoder", [](json& j) { j["decoder"] = nullptr; }, {"decoder null is not supported"}},
      {"post-processor", [](json& j) { j["post_processor"] = {{"type", "Mystery"}}; },
       {"post_processor type 'Mystery' is not supported"}},
      {"byte fallback", [](json& j) { j["model"]["byte_fallback"] = true; }, {"model.byte_fallback true"}},
      {"dropout", [](json& j) { j["model"]["dropout"] = 0.1; }, {"model.dropout 0.1 is not supported"}},
      {"subword prefix", [](json& j) { j["model"]["continuing_subword_prefix"] = "##"; },
       {"model.continuing_subword_prefix \"##\" is not supported"}},
      {"word suffix", [](json& j) { j["model"]["end_of_word_suffix"] = "</w>"; }, {"model.end_of_word_suffix"}},
      {"truncation", [](json& j) { j["truncation"] = {{"max_length", 8}}; }, {"truncation is not supported"}},
      {"padding", [](json& j) { j["padding"] = {{"length", 8}}; }, {"padding is not supported"}},
      {"version", [](json& j) { j["version"] = "2.0"; }, {"version \"2.0\" is not supported"}},
      {"merge of unknown tokens", [](json& j) { j["model"]["merges"].push_back({"zzq", "qzz"}); },
       {"merge 442 uses 'zzq', which is not in the vocabulary"}},
      {"bad merge string", [](json& j) { j["model"]["merges"] = {"a b c"}; },
       {"model.merges[0] must be two tokens separated by one space"}},
      {"negative id", [](json& j) { j["model"]["vocab"]["<s>"] = -3; }, {"model.vocab[\"<s>\"] must be a non-negative"}},
      {"duplicate id", [](json& j) { j["model"]["vocab"]["zz"] = 5; }, {"model.vocab gives id 5 to both"}},
      {"sparse ids", [](json& j) { j["model"]["vocab"]["zz"] = 2000000000; }, {"token ids are too sparse"}},
      {"missing vocab", [](json& j) { j["model"].erase("vocab"); }, {"model.vocab is missing"}},
      {"vocab type", [](json& j) { j["model"]["vocab"] = json::array(); }, {"model.vocab must be an object"}},
      {"added token content", [](json& j) { j["added_tokens"][0].erase("content"); },
       {"added_tokens[0].content is missing"}},
      {"added token flag", [](json& j) { j["added_tokens"][0]["lstrip"] = "yes"; },
       {"added_tokens[0].lstrip must be true or false"}},
      {"same added text", [](json& j) { j["added_tokens"].push_back(j["added_tokens"][5]), j["added_tokens"].back()["content"] = "caf\u00e9"; },
       {"match the same text"}},
  };
  TempDir dir;
  for (const BadFile& c : cases) {
    json j = tiny();
    c.edit(j);
    const std::string m = load_error(dir, j.dump());
    EXPECT_TRUE(m.starts_with("[tokenizer] " + (dir / "tokenizer.json").string() + ": ")) << c.what << ": " << m;
    for (const std::string& n : c.needles) EXPECT_NE(m.find(n), std::string::npos) << c.what << ": " << m;
  }
}

TEST(TokenizerLoad, RefusesSplitStepsItCannotMatchExactly) {
  const std::vector<std::pair<std::function<void(json&)>, std::string>> cases = {
      {[](json& s) { s["behavior"] = "Removed"; }, "behavior 'Removed' is not supported"},
      {[](json& s) { s["invert"] = true; }, "invert true is not supported"},
      {[](json& s) { s["pattern"] = {{"Regex", R"(\w+|\s+)"}}; }, "regex construct '\\w'"},
      {[](json& s) { s["pattern"] = {{"Regex", R"(^\p{L}+)"}}; }, "regex construct '^ (an anchor)'"},
      {[](json& s) { s["pattern"] = {{"Regex", R"((?m:a.b))"}}; }, "regex construct '(?m (inline option)'"},
      {[](json& s) { s["pattern"] = {{"Regex", R"([\S\d])"}}; }, "\\S inside a character class"},
      {[](json& s) { s["pattern"] = {{"Regex", R"([a-z&&[^aeiou]])"}}; }, "'&& (class intersection)'"},
      {[](json& s) { s["pattern"] = {{"Regex", R"([[:alpha:]])"}}; }, "nested character class or POSIX bracket"},
      {[](json& s) { s["pattern"] = {{"Regex", R"((unclosed)"}}; }, "regex does not compile"},
      {[](json& s) { s["pattern"] = {{"Glob", "*"}}; }, "pattern must be {\"Regex\": ...} or {\"String\": ...}"},
  };
  TempDir dir;
  for (const auto& [edit, needle] : cases) {
    json j = json::parse(test::read_file(kTokenizerDir / "tiny-split.json"));
    edit(j["pre_tokenizer"]["pretokenizers"][0]);
    const std::string m = load_error(dir, j.dump());
    EXPECT_NE(m.find(needle), std::string::npos) << m;
    EXPECT_NE(m.find("pre_tokenizer.pretokenizers[0]"), std::string::npos) << m;
  }
  json j = json::parse(test::read_file(kTokenizerDir / "tiny-split.json"));
  std::swap(j["pre_tokenizer"]["pretokenizers"][0], j["pre_tokenizer"]["pretokenizers"][1]);
  EXPECT_NE(load_error(dir, j.dump()).find("pre_tokenizer.pretokenizers[0] type 'ByteLevel' is not supported here"),
            std::string::npos);
}

TEST(TokenizerLoad, CorruptAndMissingFiles) {
  TempDir dir;
  const std::string good = test::read_file(kTokenizerDir / "tiny-bpe.json");
  EXPECT_NE(load_error(dir, good.substr(0, good.size() / 2)).find("not valid JSON"), std::string::npos);
  EXPECT_NE(load_error(dir, "").find("not valid JSON"), std::string::npos);
  EXPECT_NE(load_error(dir, "\x89PNG\r\n\x1a\n").find("not valid JSON"), std::string::npos);
  EXPECT_NE(load_error(dir, "[1, 2]").find("the top level must be an object"), std::string::npos);
  EXPECT_NE(load_error(dir, "{}").find("model is missing"), std::string::npos);
  std::string flipped = good;
  flipped[flipped.find("\"merges\"") + 1] = 'X';  // the merges key is gone
  EXPECT_NE(load_error(dir, flipped).find("model.merges is missing"), std::string::npos);
  const std::string m = error_message([&] { Tokenizer::load(dir / "absent.json"); });
  EXPECT_NE(m.find("[tokenizer] cannot open " + (dir / "absent.json").string()), std::string::npos) << m;
}

// Variants `tokenizers` reads the same way: merges as "a b" strings, no "type" in the model.
TEST(TokenizerLoad, EquivalentSpellingsEncodeTheSame) {
  json j = tiny();
  for (json& m : j["model"]["merges"]) m = m[0].get<std::string>() + " " + m[1].get<std::string>();
  j["model"]["merges"].insert(j["model"]["merges"].begin(), "#version: 0.2");
  j["model"].erase("type");
  TempDir dir;
  test::write_file(dir / "t.json", j.dump());
  const Tokenizer variant = Tokenizer::load(dir / "t.json");
  for (const json& c : parity()["files"]["tiny-bpe.json"]["encode"])
    EXPECT_EQ(variant.encode(c["text"].get<std::string>()), ids_of(c["ids"])) << shown(c["text"]);
}

}  // namespace
}  // namespace mamba2
