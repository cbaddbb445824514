// mamba2 tokenize / detokenize: ids as a JSON array, text back byte for byte, and clean refusals
// (exit 2 for bad flags, 1 for bad files or ids, one message naming the flag or file).
#include <gtest/gtest.h>

#include "test_support.h"

namespace mamba2 {
namespace {

namespace fs = std::filesystem;
using test::CliResult;
using test::run_cli;
using test::shell_quote;
using test::TempDir;

const std::string kNeoxArg = shell_quote(std::string(MAMBA2_FIXTURES_DIR) + "/tokenizer/gpt-neox-20b.json");

void expect_ok(const CliResult& r) {
  ASSERT_TRUE(r.exited) << r.err;
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err, "");
}

// A refusal that prints nothing to stdout.
void expect_silent_refusal(const CliResult& r, int code, std::initializer_list<std::string> needles) {
  test::expect_refusal(r, code, needles);
  EXPECT_EQ(r.out, "");
}

TEST(TokenizerCli, TokenizePrintsAJsonArray) {
  CliResult r = run_cli("tokenize --tokenizer " + kNeoxArg + " --text 'Hello world'");
  expect_ok(r);
  EXPECT_EQ(r.out, "[12092,1533]\n");
  r = run_cli("tokenize --tokenizer " + kNeoxArg + " --text ''");
  expect_ok(r);
  EXPECT_EQ(r.out, "[]\n");
}

TEST(TokenizerCli, TokenizeReadsAFileByteForByte) {
  TempDir tmp;
  test::write_file(tmp / "in.txt", "Hello world\n<|endoftext|>    x\r\n");
  const CliResult r = run_cli("tokenize --tokenizer " + kNeoxArg + " --file " + shell_quote((tmp / "in.txt").string()));
  expect_ok(r);
  EXPECT_EQ(r.out, "[12092,1533,187,0,50274,89,2379]\n");
}

TEST(TokenizerCli, DetokenizeIsExact) {
  // "Hello world\n": the trailing newline is the text's own; nothing is added.
  CliResult r = run_cli("detokenize --tokenizer " + kNeoxArg + " --ids 12092,1533,187");
  expect_ok(r);
  EXPECT_EQ(r.out, "Hello world\n");
  r = run_cli("detokenize --tokenizer " + kNeoxArg + " --ids 0,12092,50276,1");
  expect_ok(r);
  EXPECT_EQ(r.out, "<|endoftext|>Hello  <|padding|>");
  r = run_cli("detokenize --tokenizer " + kNeoxArg + " --ids 0,12092,50276,1 --skip-special");
  expect_ok(r);
  EXPECT_EQ(r.out, "Hello  ");
  r = run_cli("detokenize --tokenizer " + kNeoxArg + " --ids ''");
  expect_ok(r);
  EXPECT_EQ(r.out, "");
}

TEST(TokenizerCli, RoundTripThroughBothCommands) {
  const std::string text = "  def f(x):\n\treturn x ** 2  # 日本語 😀\n";
  TempDir tmp;
  test::write_file(tmp / "in.txt", text);
  const CliResult t = run_cli("tokenize --tokenizer " + kNeoxArg + " --file " + shell_quote((tmp / "in.txt").string()));
  expect_ok(t);
  ASSERT_GE(t.out.size(), 3u);
  const std::string ids = t.out.substr(1, t.out.size() - 3);  // strip "[" and "]\n"
  const CliResult d = run_cli("detokenize --tokenizer " + kNeoxArg + " --ids " + ids);
  expect_ok(d);
  EXPECT_EQ(d.out, text);
}

TEST(TokenizerCli, BadFlagsAndFiles) {
  TempDir tmp;
  const std::string missing = (tmp / "missing.json").string();
  expect_silent_refusal(run_cli("tokenize --tokenizer " + kNeoxArg), 2, {"--text", "--file"});
  expect_silent_refusal(run_cli("tokenize --tokenizer " + kNeoxArg + " --text a --file b"), 2, {"--text", "--file"});
  expect_silent_refusal(run_cli("tokenize --text a"), 2, {"--tokenizer"});
  expect_silent_refusal(run_cli("detokenize --tokenizer " + kNeoxArg), 2, {"--ids"});
  expect_silent_refusal(run_cli("tokenize --tokenizer " + shell_quote(missing) + " --text a"), 1, {missing, "cannot open"});
  expect_silent_refusal(run_cli("tokenize --tokenizer " + kNeoxArg + " --file " + shell_quote(missing)), 1,
                 {"--file", missing, "cannot open"});
  expect_silent_refusal(run_cli("detokenize --tokenizer " + kNeoxArg + " --ids 1,x"), 1, {"--ids", "'x' is not an integer"});
  expect_silent_refusal(run_cli("detokenize --tokenizer " + kNeoxArg + " --ids 5,-2"), 1, {"--ids", "-2 is not a token id"});
  expect_silent_refusal(run_cli("detokenize --tokenizer " + kNeoxArg + " --ids 50277"), 1,
                 {"token id 50277 is not in the vocabulary"});
  expect_silent_refusal(run_cli("tokenize --tokenizer " + kNeoxArg + " --text \"$(printf 'ab\\377')\""), 1,
                 {"not valid UTF-8", "byte offset 2"});
  test::write_file(tmp / "bad.json", "{\"model\": ");
  expect_silent_refusal(run_cli("tokenize --tokenizer " + shell_quote((tmp / "bad.json").string()) + " --text a"), 1,
                 {"bad.json", "not valid JSON"});
}

}  // namespace
}  // namespace mamba2
