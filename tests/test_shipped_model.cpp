// The model that ships in models/kjv: it loads, generates, and still predicts held-out text
// (Ruth, a book it never saw) better than the ceiling of 1.6 bits per byte — a check
// that the engine keeps computing what the model was trained with.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "test_files.h"
#include "test_support.h"

namespace mamba2 {
namespace {

const std::string kModel = MAMBA2_SOURCE_DIR "/models/kjv/model";

TEST(ShippedModel, GeneratesFromTheReadmeCommand) {
  const auto r = test::run_cli("generate --model " + test::shell_quote(kModel) +
                               " --prompt 'And God said' -n 24 --seed 1 --threads 1");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("And God said", 0), 0u) << r.out;
  EXPECT_GT(r.out.size(), 40u) << r.out;
}

TEST(ShippedModel, HeldOutBookUnderOnePointSixBitsPerByte) {
  // The first 13,429 bytes of models/kjv/val.txt are the book of Ruth; 1.332 bits per byte when
  // the model was trained. The bound is the ceiling, far above rounding differences.
  const std::string val = test::read_file(MAMBA2_SOURCE_DIR "/models/kjv/val.txt");
  ASSERT_GT(val.size(), 13429u);
  test::TempDir dir;
  test::write_file(dir.path() / "ruth.txt", val.substr(0, 13429));
  const auto r = test::run_cli("eval --model " + test::shell_quote(kModel) + " --text " +
                               test::shell_quote((dir.path() / "ruth.txt").string()) + " --json --threads 1");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["bytes"], 13429);
  EXPECT_LT(j["bits_per_byte"].get<double>(), 1.6);
  EXPECT_GT(j["bits_per_byte"].get<double>(), 1.0);  // not a degenerate evaluation
}

}  // namespace
}  // namespace mamba2
