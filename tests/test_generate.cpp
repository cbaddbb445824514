// Generation end to end on a small random model with the real GPT-NeoX tokenizer: greedy output
// against the argmax chain of `mamba2 logits`, batch against single runs, seeds, EOS, stop
// strings, streamed text against the tokenizer's decode, memory, and bad input.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "io/npy.h"
#include "mamba2/generate.h"
#include "mamba2/model.h"
#include "mamba2/tokenizer.h"
#include "model/weights.h"
#include "test_files.h"
#include "mamba2/state.h"
#include "test_support.h"

namespace mamba2 {
namespace {

namespace fs = std::filesystem;
const std::string kTokenizer = MAMBA2_FIXTURES_DIR "/tokenizer/gpt-neox-20b.json";

// An untied head: with the tied one, the scaled embedding makes each token its own argmax, and
// greedy output would repeat one token.
ModelConfig generate_config() { return test::small_config(50277, false); }

// Model folders with the tokenizer beside them: `model` (perturbed official init, so that
// logits are far from uniform), `flat` (final norm weight 0, so all logits are 0 and greedy
// picks id 0, <|endoftext|>).
class Generate : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    const ModelConfig c = generate_config();
    ModelWeights w = init_weights(c, 3);
    test::perturb_weights(w, 4);
    for (const char* name : {"model", "flat"}) {
      if (std::string(name) == "flat") std::fill_n(w.norm_f.data(), w.norm_f.numel(), 0.0f);
      save(name, c, w);
    }
    model_ = new Model(Model::load(dir_->path() / "model"));
    tokenizer_ = new Tokenizer(Tokenizer::load(kTokenizer));
  }
  static void TearDownTestSuite() {
    delete model_;
    delete tokenizer_;
    delete dir_;
  }
  static void save(const std::string& name, const ModelConfig& c, const ModelWeights& w) {
    const fs::path d = dir_->path() / name;
    fs::create_directories(d);
    save_model(d, c, w, DType::F32);
    fs::copy_file(kTokenizer, d / "tokenizer.json");
  }
  static fs::path model_dir() { return dir_->path() / "model"; }

  struct Run {
    std::string text;
    std::vector<int32_t> tokens;
    FinishReason reason = FinishReason::Length;
  };
  static std::vector<Run> run(const std::vector<std::string>& prompts, const GenerationParams& p) {
    std::vector<Run> runs(prompts.size());
    Generator g(*model_, *tokenizer_);
    g.generate(prompts, p, [&](const TokenEvent& e) {
      Run& r = runs[size_t(e.sequence)];
      r.text += e.text;
      if (e.token >= 0) r.tokens.push_back(e.token);
      if (e.finished) r.reason = e.reason;
    });
    return runs;
  }

  static inline test::TempDir* dir_ = nullptr;
  static inline Model* model_ = nullptr;
  static inline Tokenizer* tokenizer_ = nullptr;
};

GenerationParams sampled(uint64_t seed, int64_t n) {
  GenerationParams p;
  p.max_new_tokens = n;
  p.ignore_eos = true;
  // The whole distribution, so that any change of the logits would show in the draws.
  p.sampling = {1.0f, 0, 1.0f, 0.0f, 1.0f, seed};
  return p;
}

TEST_F(Generate, GreedyEqualsTheArgmaxChainOfLogits) {
  const std::string prompt = "The quick brown fox jumps over the lazy dog.";
  const auto r = test::run_cli("generate --model " + test::shell_quote(model_dir().string()) + " --prompt " +
                               test::shell_quote(prompt) + " --greedy -n 40 --ignore-eos --output json");
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  const std::vector<int32_t> gen = j["tokens"].get<std::vector<int32_t>>();
  ASSERT_EQ(gen.size(), 40u);
  EXPECT_EQ(j["finish_reason"], "length");

  std::vector<int32_t> all = tokenizer_->encode(prompt);
  const size_t p = all.size();
  all.insert(all.end(), gen.begin(), gen.end());
  std::string ids;
  for (int32_t t : all) {
    if (!ids.empty()) ids += ',';
    ids += std::to_string(t);
  }
  const fs::path npy = test::scratch_path("generate", "chain.npy");
  const auto l = test::run_cli("logits --model " + test::shell_quote(model_dir().string()) + " --ids " + ids +
                               " --out " + test::shell_quote(npy.string()));
  ASSERT_EQ(l.code, 0) << l.err;
  const NpyArray logits = read_npy(npy);
  const int64_t V = logits.shape[1], vocab = tokenizer_->vocab_size();
  int distinct = 0;
  for (size_t i = 0; i < gen.size(); ++i) {
    const double* row = logits.data.data() + (p - 1 + i) * size_t(V);
    const int32_t argmax = int32_t(std::max_element(row, row + vocab) - row);
    EXPECT_EQ(gen[i], argmax) << "generated token " << i;
    distinct += i > 0 && gen[i] != gen[i - 1];
  }
  EXPECT_GT(distinct, 5);  // not a degenerate repeat
  EXPECT_EQ(j["text"], tokenizer_->decode(gen));
}

TEST_F(Generate, BatchOfDifferentLengthsEqualsEachPromptAlone) {
  std::string long_prompt;
  for (int i = 0; i < 40; ++i) long_prompt += "In the beginning was the word, number " + std::to_string(i) + ". ";
  const std::vector<std::string> prompts = {"Hi", long_prompt, "def main():\n    return 0\n", "日本語のテキスト",
                                            "A", "Once upon a time"};
  for (uint64_t seed : {11u, 12u}) {
    GenerationParams p = sampled(seed, 24);
    p.max_new_tokens = 24;
    const auto batch = run(prompts, p);
    for (size_t i = 0; i < prompts.size(); ++i) {
      const auto alone = run({prompts[i]}, p);
      EXPECT_EQ(batch[i].tokens, alone[0].tokens) << "prompt " << i << " seed " << seed;
      EXPECT_EQ(batch[i].text, alone[0].text) << "prompt " << i << " seed " << seed;
    }
  }
  // A prefill in bounded rounds (whole chunks of each sequence per round) changes nothing either.
  const GenerationParams p = sampled(13, 16);
  const auto whole = run(prompts, p);
  model_->set_max_prefill_tokens(40);
  const auto rounds = run(prompts, p);
  model_->set_max_prefill_tokens(8192);
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(rounds[i].tokens, whole[i].tokens) << "prompt " << i;
  // Greedy and the default filters too.
  GenerationParams g;
  g.max_new_tokens = 16;
  g.sampling.seed = 3;
  const auto batch = run(prompts, g);
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(batch[i].tokens, run({prompts[i]}, g)[0].tokens) << i;
}

TEST_F(Generate, SameSeedSameTextOtherSeedOtherText) {
  const auto a = run({"Hello world"}, sampled(5, 32)), b = run({"Hello world"}, sampled(5, 32)),
             c = run({"Hello world"}, sampled(6, 32));
  EXPECT_EQ(a[0].tokens, b[0].tokens);
  EXPECT_NE(a[0].tokens, c[0].tokens);
}

// Streamed text, joined, is what the tokenizer decodes from the tokens: no character split or
// lost, even when sampling over the whole vocabulary gives byte tokens that split characters.
TEST_F(Generate, StreamedTextEqualsTheDecodedTokens) {
  for (uint64_t seed = 20; seed < 26; ++seed) {
    const auto r = run({"こんにちは 🙂"}, sampled(seed, 64));
    EXPECT_EQ(r[0].text, tokenizer_->decode(r[0].tokens)) << "seed " << seed;
  }
}

TEST_F(Generate, StopsAtEndOfTextUnlessIgnored) {
  const Model flat = Model::load(dir_->path() / "flat");
  Generator g(flat, *tokenizer_);
  GenerationParams p;
  p.sampling.temperature = 0;
  p.max_new_tokens = 5;
  std::vector<int32_t> tokens;
  std::string text;
  const std::string prompt = "Hello";
  auto results = g.generate(std::span<const std::string>(&prompt, 1), p, [&](const TokenEvent& e) {
    text += e.text;
    tokens.push_back(e.token);
  });
  EXPECT_EQ(results[0].reason, FinishReason::Eos);
  EXPECT_EQ(results[0].generated_tokens, 1);
  EXPECT_EQ(tokens, std::vector<int32_t>{0});
  EXPECT_EQ(text, "");
  p.ignore_eos = true;
  EXPECT_EQ(g.complete(prompt, p), "<|endoftext|><|endoftext|><|endoftext|><|endoftext|><|endoftext|>");
}

TEST_F(Generate, StopStringEndsTheTextBeforeIt) {
  const auto full = run({"Once upon a time"}, sampled(9, 48))[0];
  ASSERT_EQ(full.reason, FinishReason::Length);
  // A stop string spanning the boundary between generated tokens 10 and 11.
  const std::string before = tokenizer_->decode(std::vector<int32_t>(full.tokens.begin(), full.tokens.begin() + 10));
  ASSERT_GE(full.text.size(), before.size() + 2);
  const std::string stop = full.text.substr(before.size() - 1, 2);
  const size_t at = full.text.find(stop);
  GenerationParams p = sampled(9, 48);
  p.stop = {stop};
  const auto r = run({"Once upon a time"}, p)[0];
  EXPECT_EQ(r.reason, FinishReason::Stop);
  EXPECT_EQ(r.text, full.text.substr(0, at));
  EXPECT_LT(r.tokens.size(), full.tokens.size());
}

TEST_F(Generate, PromptsFileRunsOneBatchLikeSingleRuns) {
  const fs::path file = test::scratch_path("generate", "prompts.jsonl");
  test::write_file(file, "\"first prompt\"\n{\"prompt\": \"second\\nwith a newline\"}\n\n\"3\"\n");
  const std::string common = "generate --model " + test::shell_quote(model_dir().string()) + " -n 12 --seed 77 ";
  const auto batch = test::run_cli(common + "--prompts-file " + test::shell_quote(file.string()));
  ASSERT_EQ(batch.code, 0) << batch.err;
  std::vector<nlohmann::json> lines(3);
  size_t pos = 0;
  for (int i = 0; i < 3; ++i) {
    const size_t end = batch.out.find('\n', pos);
    const nlohmann::json j = nlohmann::json::parse(batch.out.substr(pos, end - pos));
    lines[size_t(j["index"].get<int>())] = j;
    pos = end + 1;
  }
  const std::vector<std::string> prompts = {"first prompt", "second\nwith a newline", "3"};
  for (size_t i = 0; i < 3; ++i) {
    const auto single = test::run_cli(common + "--output json --prompt " + test::shell_quote(prompts[i]));
    ASSERT_EQ(single.code, 0) << single.err;
    EXPECT_EQ(nlohmann::json::parse(single.out)["tokens"], lines[i]["tokens"]) << "prompt " << i;
    EXPECT_EQ(nlohmann::json::parse(single.out)["text"], lines[i]["text"]) << "prompt " << i;
  }
  EXPECT_NE(batch.err.find("tokens/s"), std::string::npos);
  EXPECT_NE(batch.err.find("peak memory"), std::string::npos);
}

TEST_F(Generate, TextOutputStreamsPromptThenGeneration) {
  const auto r = test::run_cli("generate --model " + test::shell_quote(model_dir().string()) +
                               " --prompt Hello -n 8 --seed 1 --ignore-eos");
  ASSERT_EQ(r.code, 0) << r.err;
  GenerationParams p;
  p.max_new_tokens = 8;
  p.ignore_eos = true;
  p.sampling.seed = 1;
  EXPECT_EQ(r.out, "Hello" + Generator(*model_, *tokenizer_).complete("Hello", p) + "\n");
}

double peak_mib(const std::string& err) {
  const size_t at = err.find("peak memory ");
  return at == std::string::npos ? -1 : std::stod(err.substr(at + 12));
}

// The state is O(1) and nothing is kept per generated token: 2000 tokens peak within 3 MiB of 40.
// The tied model reads its whole (memory-mapped) embedding in the first step; with an untied
// head, each new token would map one more embedding row and resident memory would grow.
#if defined(__SANITIZE_ADDRESS__)  // gcc
#define MAMBA2_TEST_ASAN 1
#elif defined(__has_feature)  // clang
#if __has_feature(address_sanitizer)
#define MAMBA2_TEST_ASAN 1
#endif
#endif
TEST_F(Generate, MemoryDoesNotGrowWithGeneratedTokens) {
#if defined(MAMBA2_TEST_ASAN)
  GTEST_SKIP() << "AddressSanitizer keeps freed memory in quarantine: resident memory is not the program's";
#endif
  ModelConfig tied = generate_config();
  tied.tie_embeddings = true;
  ModelWeights w = init_weights(tied, 5);
  test::perturb_weights(w, 6);
  save("tied", tied, w);
  const std::string common = "generate --model " + test::shell_quote((dir_->path() / "tied").string()) +
                             " --prompt Hello --seed 1 --ignore-eos --no-echo --threads 1 -n ";
  const auto few = test::run_cli(common + "40"), many = test::run_cli(common + "2000");
  ASSERT_EQ(few.code, 0) << few.err;
  ASSERT_EQ(many.code, 0) << many.err;
  EXPECT_GT(peak_mib(few.err), 0);
  EXPECT_LT(peak_mib(many.err) - peak_mib(few.err), 3.0) << few.err << many.err;
}

// --save-state keeps the state after the prompt and every generated token; --load-state
// continues it: the CLI's text is the library's continuing from the snapshot it returned.
TEST_F(Generate, SavedStatesContinueThroughTheCli) {
  const std::string first = "The rain in Spain", then = " stays mainly";
  GenerationParams p = sampled(7, 6);
  p.keep_states = true;
  Generator g(*model_, *tokenizer_);
  const auto r1 = g.generate(std::vector<std::string>{first}, p, nullptr);
  const StateSnapshot& s1 = r1[0].final_state;
  EXPECT_EQ(s1.history.count, r1[0].prompt_tokens + 6);
  GenerationParams p2 = sampled(7, 6);
  p2.start_states = {s1};
  const auto want = run({then}, p2)[0].text;

  test::TempDir tmp;
  const std::string f = test::shell_quote((tmp.path() / "s.safetensors").string());
  const std::string common = "generate --model " + test::shell_quote(model_dir().string()) +
                             " --temperature 1 --top-k 0 --top-p 1 --min-p 0 --seed 7 --ignore-eos -n 6 ";
  const auto a = test::run_cli(common + "--prompt " + test::shell_quote(first) + " --save-state " + f);
  ASSERT_EQ(a.code, 0) << a.err;
  const StateSnapshot saved = load_state(tmp.path() / "s.safetensors");
  EXPECT_EQ(saved.history.hash, s1.history.hash);
  EXPECT_EQ(saved.ssm, s1.ssm);
  const auto b = test::run_cli(common + "--no-echo --prompt " + test::shell_quote(then) + " --load-state " + f);
  ASSERT_EQ(b.code, 0) << b.err;
  EXPECT_EQ(b.out, want + "\n");

  // Another model's state, a missing file, a batch.
  const std::string flat = "generate --model " + test::shell_quote((dir_->path() / "flat").string()) + " -n 2 ";
  const std::string g2 = test::shell_quote((tmp.path() / "flat.safetensors").string());
  ASSERT_EQ(test::run_cli(flat + "--prompt hi --save-state " + g2).code, 0);
  const auto wrong = test::run_cli(common + "--prompt hi --load-state " + g2);
  EXPECT_EQ(wrong.code, 1);
  EXPECT_NE(wrong.err.find("[state] the state was made by model"), std::string::npos) << wrong.err;
  const auto missing = test::run_cli(common + "--prompt hi --load-state /nonexistent/s.safetensors");
  EXPECT_EQ(missing.code, 1);
  EXPECT_NE(missing.err.find("/nonexistent/s.safetensors"), std::string::npos) << missing.err;
  const fs::path prompts = tmp.path() / "p.txt";
  test::write_file(prompts, "a\nb\n");
  const auto batch = test::run_cli(common + "--prompts-file " + test::shell_quote(prompts.string()) + " --save-state " + f);
  EXPECT_EQ(batch.code, 1);
  EXPECT_NE(batch.err.find("take one prompt"), std::string::npos) << batch.err;
}

TEST_F(Generate, BadInputGivesClearErrors) {
  const std::string m = " --model " + test::shell_quote(model_dir().string());
  struct Bad {
    std::string args, needle;
    int code;
  };
  const fs::path empty = test::scratch_path("generate", "empty.txt"), bad_json = test::scratch_path("generate", "bad.jsonl");
  test::write_file(empty, "\n\n");
  test::write_file(bad_json, "[1, 2]\n");
  const std::vector<Bad> cases = {
      {"generate --prompt hi", "--model", 2},
      {"generate" + m, "--prompt", 1},
      {"generate" + m + " --prompt hi --prompts-file x", "excludes", 2},
      {"generate" + m + " --prompt hi --top-p 1.5", "top_p", 1},
      {"generate" + m + " --prompt hi --temperature -1", "temperature", 1},
      {"generate" + m + " --prompt hi -n -3", "max_new_tokens", 1},
      {"generate" + m + " --prompt hi --top-k abc", "--top-k", 2},
      {"generate" + m + " --prompt hi --tokenizer /nonexistent/tok.json", "/nonexistent/tok.json", 1},
      {"generate --model " + test::shell_quote(dir_->path().string()) + " --prompt hi", "tokenizer.json", 1},
      {"generate" + m + " --prompts-file /nonexistent/p.txt", "/nonexistent/p.txt", 1},
      {"generate" + m + " --prompts-file " + test::shell_quote(empty.string()), "no prompts", 1},
      {"generate" + m + " --prompts-file " + test::shell_quote(bad_json.string()), "line 1", 1},
      {"generate" + m + " --prompt \"$(printf 'a\\377b')\"", "UTF-8", 1},
      {"generate" + m + " --prompt hi --stop ''", "stop string", 1},
  };
  for (const Bad& b : cases) {
    const auto r = test::run_cli(b.args);
    EXPECT_TRUE(r.exited) << b.args;
    EXPECT_EQ(r.code, b.code) << b.args << "\n" << r.err;
    EXPECT_NE(r.err.find(b.needle), std::string::npos) << b.args << "\n" << r.err;
    EXPECT_EQ(r.out, "") << b.args;
  }
}

}  // namespace
}  // namespace mamba2
