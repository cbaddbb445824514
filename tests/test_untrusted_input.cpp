// Regressions for what fuzzing and reading the parsers found (issue 14): each input must give
// the project's own error naming the file (and key), never a crash, undefined behaviour or the
// JSON library's bare exception text. These run under ASan + UBSan in CI.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/json.h"
#include "io/safetensors.h"
#include "mamba2/config.h"
#include "mamba2/tokenizer.h"
#include "mamba2/train.h"
#include "test_files.h"
#include "tokenizer/chat_template.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "test_support.h"

namespace mamba2 {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

std::string deep(int levels, const std::string& leaf = "1") {
  return std::string(size_t(levels), '[') + leaf + std::string(size_t(levels), ']');
}

std::string config_error(const std::string& text) {
  const auto path = test::scratch_path("untrusted", "config.json");
  test::write_file(path, text);
  return test::error_message([&] { load_config(path); });
}

void expect_has(const std::string& msg, std::initializer_list<std::string> needles) {
  for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "lacks '" << n << "': " << msg;
}

TEST(UntrustedJson, NestingIsBoundedWhileParsing) {
  EXPECT_NO_THROW(parse_json(deep(kMaxJsonDepth - 1), "[t] x"));
  const std::string m = test::error_message([&] { parse_json(deep(500000), "[t] x.json"); });
  expect_has(m, {"[t] x.json", "nested deeper than 128 levels"});
  const std::string o = test::error_message([&] { parse_json(R"({"a":)" + deep(1000) + "}", "[t] y.json"); });
  expect_has(o, {"[t] y.json", "nested deeper"});
}

TEST(UntrustedJson, LibraryErrorsBecomeOurs) {
  const std::string m = test::error_message([&] { parse_json(R"({"d_model": 1e400})", "[config] c.json"); });
  expect_has(m, {"[config] c.json: not valid JSON", "1e400"});
  EXPECT_EQ(m.rfind("[json.exception", 0), std::string::npos) << m;  // ours first, the library's text after
}

TEST(UntrustedJson, DeepValuesInEveryParserAreRefused) {
  // A 1 MB value nested 500,000 levels deep used to kill `info` and `tokenize` with SIGSEGV.
  expect_has(config_error(R"({"d_model": )" + deep(500000) + "}"), {"[config]", "nested deeper"});
  TempDir dir;
  test::write_file(dir.path() / "tokenizer.json", R"({"model": )" + deep(500000) + "}");
  expect_has(test::error_message([&] { Tokenizer::load(dir.path() / "tokenizer.json"); }),
             {"[tokenizer]", "tokenizer.json", "nested deeper"});
  const std::string header = R"({"t": )" + deep(500000) + "}";
  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i) file[size_t(i)] = char((header.size() >> (8 * i)) & 0xff);
  test::write_file(dir.path() / "m.safetensors", file + header);
  expect_has(test::error_message([&] { read_safetensors(dir.path() / "m.safetensors"); }),
             {"[safetensors]", "m.safetensors", "nested deeper"});
  expect_has(test::error_message([&] { parse_train_config(R"({"lr": )" + deep(500000) + "}", "t.json"); }),
             {"[train-config] t.json", "nested deeper"});
}

TEST(UntrustedJson, CliRefusesDeepFilesCleanly) {
  TempDir dir;
  test::write_file(dir.path() / "config.json", R"({"d_model": )" + deep(500000) + "}");
  const test::CliResult r = test::run_cli("info --model " + test::shell_quote(dir.path().string()));
  ASSERT_TRUE(r.exited) << "killed by a signal: " << r.err;
  EXPECT_EQ(r.code, 1) << r.err;
  expect_has(r.err, {"nested deeper"});
  test::write_file(dir.path() / "tok.json", deep(500000));
  const test::CliResult t =
      test::run_cli("tokenize --tokenizer " + test::shell_quote((dir.path() / "tok.json").string()) + " --text hi");
  ASSERT_TRUE(t.exited) << "killed by a signal: " << t.err;
  EXPECT_EQ(t.code, 1) << t.err;
}

// An official config whose d_model is the given JSON text.
std::string official_with(const std::string& d_model) {
  return R"({"d_model": )" + d_model + R"(, "n_layer": 2, "vocab_size": 100, "ssm_cfg": {"layer": "Mamba2"}})";
}

TEST(UntrustedConfig, SizesCannotOverflow) {
  // d_model × expand, num_heads × head_dim and the padded vocabulary overflowed int64 before the
  // range check (UBSan); now every dimension is bounded first.
  expect_has(config_error(official_with("4611686018427387904")), {"d_model = 4611686018427387904", "maximum"});
  expect_has(config_error(R"({"d_model": 64, "n_layer": 2, "vocab_size": 100, "pad_vocab_size_multiple": 9223372036854775807,
    "ssm_cfg": {"layer": "Mamba2"}})"),
             {"pad_vocab_size_multiple", "maximum"});
  expect_has(config_error(R"({"d_model": 64, "n_layer": 2, "vocab_size": 100,
    "ssm_cfg": {"layer": "Mamba2", "expand": 4611686018427387904, "d_ssm": 128}})"),
             {"expand", "maximum"});
  expect_has(config_error(R"({"architectures": ["Mamba2ForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
    "vocab_size": 100, "head_dim": 16, "num_heads": 4611686018427387904})"),
             {"num_heads", "head_dim"});
  expect_has(config_error(R"({"architectures": ["Mamba2ForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
    "vocab_size": 100, "head_dim": 9223372036854775807, "num_heads": 2})"),
             {"headdim", "maximum"});
  expect_has(config_error(official_with("18446744073709551615")), {"'d_model'", "out of range"});
}

TEST(UntrustedConfig, IntegersAreNotCastFromFloats) {
  expect_has(config_error(official_with("1e300")), {"'d_model' must be an integer", "1e+300"});
  expect_has(config_error(official_with("32.5")), {"'d_model' must be an integer", "32.5"});
  expect_has(config_error(official_with("\"64\"")), {"'d_model' must be an integer"});
  EXPECT_EQ(config_error(official_with("64.0")), "(no error)");  // an integral float is the integer
  expect_has(config_error(official_with("1e400")), {"not valid JSON", "1e400"});
}

TEST(UntrustedConfig, PythonConstantsOnlyOutsideStrings) {
  // Infinity stays a limit value; inside a string it is left alone (the key is then unknown).
  EXPECT_EQ(config_error(R"({"d_model": 64, "n_layer": 2, "vocab_size": 100,
    "ssm_cfg": {"layer": "Mamba2", "dt_limit": [0.0, Infinity]}})"), "(no error)");
  expect_has(config_error(R"({"d_model": 64, "n_layer": 2, "vocab_size": 100, "NaN-key": 1,
    "ssm_cfg": {"layer": "Mamba2"}})"), {"unknown key 'NaN-key'"});
  // Many constants are replaced in one pass (this was quadratic).
  std::string many = R"({"d_model": 64, "n_layer": 2, "vocab_size": 100, "ssm_cfg": {"layer": "Mamba2"}, "rms_norm": [)";
  for (int i = 0; i < 200000; ++i) many += "NaN,";
  many += "NaN]}";
  expect_has(config_error(many), {"rms_norm"});
}

TEST(UntrustedTrainConfig, HugeIntegersAreRefusedByName) {
  const std::string m = test::error_message([&] { parse_train_config(R"({"seq_len": 18446744073709551615})", "t.json"); });
  expect_has(m, {"'seq_len' must be an integer"});
}

TEST(UntrustedSafetensors, EmptyTensorsConvertWithoutTouchingMemory) {
  // fuzz_safetensors: an empty tensor's null data pointer reached memcpy (UBSan: nonnull).
  std::vector<float> none;
  convert_to_f32(DType::F32, nullptr, none.data(), 0);
  convert_to_f32(DType::BF16, nullptr, none.data(), 0);
  convert_from_f32(DType::F32, none.data(), nullptr, 0);
  const std::string header = R"({"e":{"dtype":"F32","shape":[0,4],"data_offsets":[0,0]}})";
  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i) file[size_t(i)] = char((header.size() >> (8 * i)) & 0xff);
  TempDir dir;
  test::write_file(dir.path() / "e.safetensors", file + header);
  const TensorArchive a = read_safetensors(dir.path() / "e.safetensors");
  const StoredTensor* t = a.find("e");
  ASSERT_NE(t, nullptr);
  convert_to_f32(t->dtype, t->data, none.data(), size_t(t->numel()));
}

// A damaged tokenized corpus (DIR/data/train.*): counts validated before they size anything,
// document starts ascending inside the tokens.
TEST(UntrustedCorpus, DamagedFilesAreRefusedByName) {
  TempDir dir;
  auto write = [&](const std::string& meta, const std::string& tokens, const std::string& docs) {
    test::write_file(dir.path() / "c.json", meta);
    test::write_file(dir.path() / "c.tokens", tokens);
    test::write_file(dir.path() / "c.docs", docs);
    return test::error_message([&] { training::TokenCorpus::open(dir.path(), "c"); });
  };
  auto u64 = [](std::initializer_list<uint64_t> v) {
    std::string s;
    for (uint64_t x : v) s.append(reinterpret_cast<const char*>(&x), 8);
    return s;
  };
  const std::string four_ids(8, '\1');  // four uint16 ids
  auto meta = [](const std::string& tokens, const std::string& docs, const std::string& width = "2") {
    return R"({"tokens": )" + tokens + R"(, "documents": )" + docs + R"(, "token_bytes": )" + width +
           R"(, "eos_id": 0, "fingerprint": "f"})";
  };
  EXPECT_EQ(write(meta("4", "2"), four_ids, u64({0, 2})), "(no error)");
  expect_has(write(meta("1e300", "2"), four_ids, u64({0, 2})), {"c.json", "'tokens' must be an integer"});
  expect_has(write(meta("-4", "2"), four_ids, u64({0, 2})), {"'tokens' must be an integer in [0"});
  expect_has(write(meta("4", "2", "3"), four_ids, u64({0, 2})), {"token_bytes must be 2 or 4"});
  expect_has(write(meta("4", "9"), four_ids, u64({0, 2})), {"'documents' must be an integer in [0, 4]"});
  expect_has(write(meta("4", "2"), four_ids, u64({2, 1})), {"document start 1 (1) is not ascending"});
  expect_has(write(meta("4", "2"), four_ids, u64({0, 4})), {"document start 1 (4) is not ascending inside the 4 tokens"});
  expect_has(write(meta("4", "2"), four_ids.substr(2), u64({0, 2})), {"do not have the sizes"});
  expect_has(write("[1]", four_ids, u64({0, 2})), {"c.json: not a JSON object"});
}

// trainer_state.json: its counts were read with get<int64_t>() (1e300 was a UB cast).
TEST(UntrustedTrainerState, FieldsAreCheckedBeforeUse) {
  nlohmann::json good = {{"format", training::kTrainerStateFormat}, {"step", 3}, {"epoch", 0}, {"index", 3},
                         {"epoch_key", 7}, {"rng", "1 2 3"}, {"tokens_seen", 100}, {"best_val_loss", nullptr},
                         {"train_fingerprint", "a"}, {"val_fingerprint", ""}, {"config", {{"out", "x"}}}};
  auto error_with = [&](const char* key, const nlohmann::json& v) {
    nlohmann::json j = good;
    if (v.is_discarded()) j.erase(key);
    else j[key] = v;
    return test::error_message([&] { training::parse_trainer_state(j.dump(), "s.json"); });
  };
  EXPECT_EQ(test::error_message([&] { training::parse_trainer_state(good.dump(), "s.json"); }), "(no error)");
  expect_has(error_with("step", 1e300), {"s.json", "'step' must be an integer"});
  expect_has(error_with("index", -1), {"'index' must be an integer"});
  expect_has(error_with("epoch", 2.5), {"'epoch' must be an integer"});
  expect_has(error_with("rng", 5), {"'rng' must be a string"});
  expect_has(error_with("config", "x"), {"'config' must be an object"});
  expect_has(error_with("tokens_seen", nlohmann::json::value_t::discarded), {"'tokens_seen' is missing"});
  expect_has(error_with("format", "other"), {"s.json is not a trainer state"});
}

TEST(UntrustedTokenizer, BackslashCIsRefusedInPatterns) {
  // \C matches single bytes, splitting UTF-8 characters that later matches then read unchecked.
  nlohmann::json j = nlohmann::json::parse(test::read_file(fs::path(MAMBA2_FIXTURES_DIR) / "tokenizer/tiny-split.json"));
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"Regex", R"(\C)"}};
  TempDir dir;
  test::write_file(dir.path() / "t.json", j.dump());
  expect_has(test::error_message([&] { Tokenizer::load(dir.path() / "t.json"); }),
             {"[tokenizer]", "regex does not compile"});
}

TEST(UntrustedChatTemplate, FiltersOverNewListsKeepThemAlive) {
  // fuzz_chat_template: selectattr iterated a list made for an undefined value after freeing it.
  const ChatTemplate t = ChatTemplate::parse("{{ nothing | selectattr('role', 'equalto', 'system') | list }}"
                                             "{{ 'ab' | reject('equalto', 'a') | list }}");
  EXPECT_EQ(t.render({{"user", "hi"}}, false, "", ""), "[]['b']");
}

}  // namespace
}  // namespace mamba2
