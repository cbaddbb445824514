// The mamba2 binary on bad input: a clean exit (1 for bad data, 2 for bad flags), never a crash,
// and one message naming the offending thing; no output file is left behind or overwritten.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "mamba2/model.h"
#include "test_support.h"

namespace mamba2 {
namespace {

namespace fs = std::filesystem;
using test::CliResult;
using test::run_cli;
using test::expect_refusal;
using test::shell_path;
using test::shell_quote;
using test::TempDir;

const fs::path kGolden = fs::path(MAMBA2_FIXTURES_DIR) / "golden";


void copy_golden_model(const std::string& name, const fs::path& dst) {
  fs::copy(kGolden / name / "model", dst, fs::copy_options::recursive);
}

nlohmann::json read_json(const fs::path& p) { return nlohmann::json::parse(test::read_file(p)); }
void write_json(const fs::path& p, const nlohmann::json& j) { test::write_file(p, j.dump(2)); }

ModelConfig cli_config() {
  ModelConfig c;
  c.d_model = 32;
  c.n_layer = 2;
  c.vocab_size = 112;
  c.d_state = 16;
  c.headdim = 16;  // 4 heads
  c.chunk_size = 16;
  return c;
}

// Writes a Hugging Face model folder from init_weights, letting `edit` change the tensor list.
void write_model(const fs::path& dir, const std::function<void(std::vector<TensorToWrite>&)>& edit = {}) {
  const ModelConfig c = cli_config();
  static const ModelWeights w = init_weights(cli_config(), 3);
  static const std::vector<float> extra(64, 0.5f);
  std::vector<TensorToWrite> t;
  for (const auto& nt : hf_named_tensors(w, c)) t.push_back({nt.name, DType::F32, nt.stored_shape, nt.tensor->data()});
  if (edit) {
    edit(t);
    for (auto& x : t)
      if (x.data == nullptr) x.data = extra.data();
  }
  fs::create_directories(dir);
  write_safetensors(dir / "model.safetensors", t);
  test::write_file(dir / "config.json", config_to_hf_json(c));
}

std::string logits_args(const fs::path& model, const fs::path& out, const std::string& ids = "1,2,3") {
  return "logits --model " + shell_path(model) + " --ids " + ids + " --out " + shell_path(out);
}

TEST(CliModelErrors, ControlModelLoads) {
  TempDir tmp;
  write_model(tmp / "m");
  const CliResult r = run_cli(logits_args(tmp / "m", tmp / "out.npy"));
  ASSERT_TRUE(r.exited && r.code == 0) << r.err;
  EXPECT_TRUE(fs::exists(tmp / "out.npy"));
}

TEST(CliModelErrors, MissingModelFolder) {
  TempDir tmp;
  const CliResult r = run_cli(logits_args(tmp / "no_such_model", tmp / "out.npy"));
  expect_refusal(r, 1, {"no_such_model"});
  EXPECT_FALSE(fs::exists(tmp / "out.npy"));
}

TEST(CliModelErrors, InvalidJsonConfig) {
  TempDir tmp;
  copy_golden_model("official_fp32", tmp / "m");
  test::write_file(tmp / "m" / "config.json", "{\"d_model\": 64, \"n_layer\": ");
  expect_refusal(run_cli(logits_args(tmp / "m", tmp / "out.npy")), 1, {"config.json", "JSON"});
}

TEST(CliModelErrors, UnknownSsmCfgKey) {
  TempDir tmp;
  copy_golden_model("official_fp32", tmp / "m");
  auto j = read_json(tmp / "m" / "config.json");
  j["ssm_cfg"]["d_stat"] = 16;
  write_json(tmp / "m" / "config.json", j);
  expect_refusal(run_cli(logits_args(tmp / "m", tmp / "out.npy")), 1, {"d_stat"});
}

// A Mamba-1 config over Mamba2 weights: the first Mamba-1 tensor missing, by name; a Mamba2 key in a
// Mamba-1 ssm_cfg, by name.
TEST(CliModelErrors, SsmCfgLayerMamba1OnMamba2Weights) {
  TempDir tmp;
  copy_golden_model("official_fp32", tmp / "m");
  auto j = read_json(tmp / "m" / "config.json");
  j["ssm_cfg"] = {{"layer", "Mamba1"}, {"d_state", 16}};
  write_json(tmp / "m" / "config.json", j);
  expect_refusal(run_cli(logits_args(tmp / "m", tmp / "out.npy")), 1, {"mixer.in_proj.weight", "shape"});
  j["ssm_cfg"]["headdim"] = 16;
  write_json(tmp / "m" / "config.json", j);
  expect_refusal(run_cli(logits_args(tmp / "m", tmp / "out.npy")), 1, {"headdim", "Mamba1"});
}

TEST(CliModelErrors, NgroupsNotDividingNheads) {
  TempDir tmp;
  copy_golden_model("official_fp32", tmp / "m");  // 8 heads
  auto j = read_json(tmp / "m" / "config.json");
  j["ssm_cfg"]["ngroups"] = 3;
  write_json(tmp / "m" / "config.json", j);
  expect_refusal(run_cli(logits_args(tmp / "m", tmp / "out.npy")), 1, {"ngroups", "3"});
}

TEST(CliModelErrors, MissingTensor) {
  TempDir tmp;
  write_model(tmp / "m", [](auto& t) {
    std::erase_if(t, [](const TensorToWrite& x) { return x.name == "backbone.layers.1.mixer.D"; });
  });
  expect_refusal(run_cli(logits_args(tmp / "m", tmp / "out.npy")), 1, {"backbone.layers.1.mixer.D", "missing"});
  expect_refusal(run_cli("info --model " + shell_path(tmp / "m")), 1, {"backbone.layers.1.mixer.D"});
}

TEST(CliModelErrors, WrongShape) {
  TempDir tmp;
  write_model(tmp / "m", [](auto& t) {
    for (auto& x : t)
      if (x.name == "backbone.layers.0.mixer.A_log") {
        x.shape = {5};
        x.data = nullptr;  // 5 values from the spare buffer
      }
  });
  expect_refusal(run_cli(logits_args(tmp / "m", tmp / "out.npy")), 1,
                 {"backbone.layers.0.mixer.A_log", "(5", "(4"});
}

TEST(CliModelErrors, UnexpectedTensor) {
  TempDir tmp;
  write_model(tmp / "m", [](auto& t) { t.push_back({"backbone.layers.0.mixer.extra_bias", DType::F32, {8}, nullptr}); });
  expect_refusal(run_cli(logits_args(tmp / "m", tmp / "out.npy")), 1, {"backbone.layers.0.mixer.extra_bias"});
}

TEST(CliModelErrors, TruncatedSafetensors) {
  TempDir tmp;
  copy_golden_model("hf_fp32_g2_dtlimit", tmp / "m");
  const fs::path st = tmp / "m" / "model.safetensors";
  fs::resize_file(st, fs::file_size(st) / 2);
  expect_refusal(run_cli(logits_args(tmp / "m", tmp / "out.npy")), 1, {"model.safetensors"});
  // Cut inside the header too.
  fs::resize_file(st, 20);
  expect_refusal(run_cli(logits_args(tmp / "m", tmp / "out.npy")), 1, {"model.safetensors"});
  fs::resize_file(st, 3);
  expect_refusal(run_cli(logits_args(tmp / "m", tmp / "out.npy")), 1, {"model.safetensors"});
  EXPECT_FALSE(fs::exists(tmp / "out.npy"));
}

class CliLogitsErrors : public ::testing::Test {
 protected:
  fs::path model = kGolden / "official_fp32" / "model";
  TempDir tmp;
  fs::path out = tmp / "out.npy";
};

TEST_F(CliLogitsErrors, IdOutOfRange) {
  expect_refusal(run_cli(logits_args(model, out, "5,999999")), 1, {"999999"});
  expect_refusal(run_cli(logits_args(model, out, "5,-1")), 1, {"-1"});
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(CliLogitsErrors, IdNotAnInteger) {
  expect_refusal(run_cli(logits_args(model, out, shell_quote("1,x"))), 1, {"--ids", "x"});
  expect_refusal(run_cli(logits_args(model, out, shell_quote("1,,2"))), 1, {"--ids"});
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(CliLogitsErrors, LengthsNotSummingToIds) {
  expect_refusal(run_cli(logits_args(model, out, "1,2,3") + " --lengths 2,2"), 1, {"--lengths"});
  expect_refusal(run_cli(logits_args(model, out, "1,2,3") + " --lengths 3,0"), 1, {"--lengths"});
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(CliLogitsErrors, BogusMode) {
  expect_refusal(run_cli(logits_args(model, out) + " --mode bogus"), 2, {"bogus"});
}

TEST_F(CliLogitsErrors, UnknownFlag) {
  expect_refusal(run_cli(logits_args(model, out) + " --frobnicate 3"), 2, {"--frobnicate"});
}

TEST(CliCommands, UnknownCommandIsNamed) {
  expect_refusal(run_cli("frobnicate --model x"), 2, {"unknown command 'frobnicate'"});
}

// bench's shapes and lists are checked whole, before anything runs or loads: a valid --linear shape
// first does not run before a bad one is refused, nor does a model load before a bad --prefill.
TEST(CliBench, BadShapesAndListsAreRefusedBeforeAnythingRuns) {
  for (const char* bad : {"1,5x10x20", "axbxc", "1x2", "1x2x3x4", "1x0x3", "1x-2x3", "1xx3", "x1x2", "1x2x"})
    expect_refusal(run_cli(std::string("bench --device cpu --linear 1x8x8 --linear ") + bad), 1,
                   {"--linear", bad});
  expect_refusal(run_cli("bench --device cpu --ssd 1x64x2x64"), 1, {"--ssd", "BxLxHxPxN"});
  expect_refusal(run_cli("bench --device cpu --ssd 1x64x0x64x16"), 1, {"--ssd", "not positive"});
  const CliResult r = run_cli("bench --device cpu --linear 1x8x8 --linear 1x8");
  EXPECT_EQ(r.out.find("linear 1x8x8"), std::string::npos) << r.out;
  expect_refusal(run_cli("bench --model no_such_model --prefill 4,x"), 1, {"--prefill", "'x'"});
  expect_refusal(run_cli("bench --model no_such_model --decode-batch 0"), 1, {"--decode-batch", "positive"});
}

TEST_F(CliLogitsErrors, OutIntoMissingFolder) {
  const fs::path bad = tmp / "no_such_dir" / "out.npy";
  expect_refusal(run_cli(logits_args(model, bad)), 1, {"no_such_dir"});
  EXPECT_FALSE(fs::exists(tmp / "no_such_dir"));
}

TEST_F(CliLogitsErrors, FailedRunLeavesExistingOutUntouched) {
  test::write_file(out, "sentinel");
  const auto before = fs::last_write_time(out);
  expect_refusal(run_cli(logits_args(model, out, "5,999999")), 1, {"999999"});
  EXPECT_EQ(test::read_file(out), "sentinel");
  EXPECT_EQ(fs::last_write_time(out), before);
  // A model that fails to load must not touch it either.
  expect_refusal(run_cli(logits_args(tmp / "missing", out)), 1, {"missing"});
  EXPECT_EQ(test::read_file(out), "sentinel");
  // No temporary file is left beside it.
  int entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(tmp.path())) ++entries;
  EXPECT_EQ(entries, 1);
}

TEST(CliInit, InitThenInfo) {
  TempDir tmp;
  const fs::path dir = tmp / "m";
  const CliResult init = run_cli("init --preset 130m --d-model 64 --n-layer 2 --out " + shell_path(dir));
  ASSERT_TRUE(init.exited && init.code == 0) << init.err;
  ModelConfig c = preset_config("130m");
  c.d_model = 64;
  c.n_layer = 2;
  const std::string count = std::to_string(c.parameter_count());
  const CliResult info = run_cli("info --model " + shell_path(dir));
  ASSERT_TRUE(info.exited && info.code == 0) << info.err;
  EXPECT_NE(info.out.find("parameters"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find(count), std::string::npos) << "expected " << count << " in: " << info.out;
  // The written model is usable.
  const CliResult lg = run_cli(logits_args(dir, tmp / "l.npy", "50276,0,7"));
  EXPECT_TRUE(lg.exited && lg.code == 0) << lg.err;
}

TEST(CliInit, ExistingModelNeedsForce) {
  TempDir tmp;
  const fs::path dir = tmp / "m";
  write_model(dir);
  const std::string cfg = test::read_file(dir / "config.json"), st = test::read_file(dir / "model.safetensors");
  const auto t_cfg = fs::last_write_time(dir / "config.json"), t_st = fs::last_write_time(dir / "model.safetensors");
  expect_refusal(run_cli("init --preset 130m --d-model 64 --n-layer 2 --out " + shell_path(dir)), 1, {"--force"});
  EXPECT_EQ(test::read_file(dir / "config.json"), cfg);
  EXPECT_EQ(test::read_file(dir / "model.safetensors"), st);
  EXPECT_EQ(fs::last_write_time(dir / "config.json"), t_cfg);
  EXPECT_EQ(fs::last_write_time(dir / "model.safetensors"), t_st);
  // With --force it is replaced by a loadable model.
  const CliResult r = run_cli("init --preset 130m --d-model 64 --n-layer 2 --force --out " + shell_path(dir));
  ASSERT_TRUE(r.exited && r.code == 0) << r.err;
  EXPECT_EQ(run_cli("info --model " + shell_path(dir)).code, 0);
}

// --version names the build's and the chosen kernels' instruction sets; MAMBA2_ISA picks the
// kernels, and one this CPU cannot run (or an unknown name) is refused before anything runs.
TEST(CliVersion, NamesTheInstructionSetsAndHonoursMamba2Isa) {
  const CliResult r = run_cli("--version");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("build: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("kernels: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("blas: OpenBLAS"), std::string::npos) << r.out;
  const CliResult s = run_cli("--version", "MAMBA2_ISA=scalar");
  ASSERT_EQ(s.code, 0) << s.err;
  EXPECT_NE(s.out.find("kernels: scalar ("), std::string::npos) << s.out;
  expect_refusal(run_cli("--version", "MAMBA2_ISA=avx9"), 1, {"MAMBA2_ISA=avx9"});
#if defined(__x86_64__)
  expect_refusal(run_cli("info --model x", "MAMBA2_ISA=neon"), 1, {"MAMBA2_ISA=neon", "does not support"});
#endif
}

TEST(CliInit, UnknownPreset) {
  TempDir tmp;
  expect_refusal(run_cli("init --preset 9b --out " + shell_path(tmp / "m")), 1, {"9b"});
  EXPECT_FALSE(fs::exists(tmp / "m" / "config.json"));
}

}  // namespace
}  // namespace mamba2
