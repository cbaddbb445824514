// GGUF files (llama.cpp's format). The fixtures were written by llama.cpp's own Python package
// `gguf` (scripts/make_gguf_fixtures.py): its writer, quantizers and dequantizers are the oracle
// for the reader; the models are the golden case official_fp32, held to its float64 logits; the
// GPT-NeoX vocabulary is held to Hugging Face `tokenizers` (tests/fixtures/tokenizer/parity.json).
// Bad files are refused by name.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <tuple>
#include <nlohmann/json.hpp>

#include "golden_case.h"
#include "io/gguf.h"
#include "io/npy.h"
#include "mamba2/model.h"
#include "mamba2/tokenizer.h"
#include "model/weights.h"
#include "serve/chat_format.h"
#include "test_support.h"
#include "tokenizer/unicode.h"

namespace mamba2 {
namespace {

namespace fs = std::filesystem;
using test::CliResult;
using test::GoldenCase;
using test::kGoldenTol;
using test::run_cli;
using test::shell_path;
using test::TempDir;

const fs::path kGguf = fs::path(MAMBA2_FIXTURES_DIR) / "gguf";

// Model::load's error for a file of these bytes.
std::string gguf_error(const std::string& bytes) {
  const fs::path p = test::scratch_path("gguf", "bad.gguf");
  test::write_file(p, bytes);
  return test::error_message([&] { Model::load(p); });
}

// Replaces the first occurrence of `from` (same length as `to`) in `bytes`.
std::string patched(std::string bytes, const std::string& from, const std::string& to) {
  const size_t at = bytes.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  EXPECT_EQ(from.size(), to.size());
  if (at != std::string::npos) bytes.replace(at, from.size(), to);
  return bytes;
}

TEST(GgufRead, EveryTypeReadsAsLlamaCppsGgufPackageDequantizesIt) {
  const GgufFile g = read_gguf(kGguf / "types.gguf");
  EXPECT_EQ(g.version, 3u);
  const std::pair<const char*, DType> cases[] = {
      {"f32", DType::F32},   {"f16", DType::F16},   {"bf16", DType::BF16}, {"q8_0", DType::Q8_0},
      {"q4_0", DType::Q4_0}, {"q4_k", DType::F32}, {"q5_k", DType::F32}, {"q6_k", DType::F32}};
  for (const auto& [name, dtype] : cases) {
    EXPECT_EQ(g.stored_types.at(name == std::string("q4_k")   ? "Q4_K"
                                : name == std::string("q5_k") ? "Q5_K"
                                : name == std::string("q6_k") ? "Q6_K"
                                                              : std::string(dtype_name(dtype))),
              1)
        << name;
    const StoredTensor* t = g.tensors.find(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(t->dtype, dtype) << name;  // the k-quants arrive dequantized
    const NpyArray want = read_npy(kGguf / "types" / (std::string(name) + ".npy"));
    EXPECT_EQ(t->shape, want.shape) << name;
    std::vector<float> got(size_t(t->numel()));
    convert_to_f32(t->dtype, t->data, got.data(), got.size());
    ASSERT_EQ(got.size(), want.data.size()) << name;
    int differ = 0;
    for (size_t i = 0; i < got.size(); ++i) differ += got[i] != float(want.data[i]);
    EXPECT_EQ(differ, 0) << name << ": elements that are not gguf's dequantization bit for bit";
  }
}

// The f32 file gives the golden logits (float64 oracle of the original checkpoint) to the fp32
// tolerance: A is stored as -exp(A_log) and read back as log(-A), which moves it by an ulp or so.
TEST(GgufModel, F32FileGivesTheGoldenLogits) {
  const GoldenCase g = test::load_golden_case("official_fp32");
  const Model m = Model::load(kGguf / "official_fp32.f32.gguf");
  EXPECT_EQ(m.dtype(), DType::F32);
  EXPECT_EQ(m.config().vocab_padded(), Model::load(g.dir / "model").config().vocab_padded());
  std::vector<float> logits;
  m.prefill(g.ids, g.lengths, nullptr, true, logits);
  const double prefill = test::worst_sequence_error(g, logits.data(), m.vocab());
  const std::vector<float> dec = test::decode_all(m, g.ids, g.lengths);
  const double decode = test::worst_sequence_error(g, dec.data(), m.vocab());
  std::printf("[ gguf ] f32: prefill %.3g, decode %.3g (relative L2 to float64, worst sequence)\n", prefill, decode);
  EXPECT_LE(prefill, kGoldenTol);
  EXPECT_LE(decode, kGoldenTol);
}

// ngroups 2 through the GGUF mapping (the gated norm stored as (ngroups, d_inner / ngroups), the
// conv squeezed, A as -exp(A_log)): every weight is the checkpoint's bit for bit, A_log within a
// few ulps (log(-A) of the rounded -exp), and the config the same but for the dt limit, which GGUF
// does not record.
TEST(GgufModel, GroupedModelHasTheCheckpointsWeights) {
  const Model ours = Model::load(fs::path(MAMBA2_FIXTURES_DIR) / "golden" / "hf_fp32_g2_dtlimit" / "model");
  const Model gguf = Model::load(kGguf / "hf_fp32_g2.f32.gguf");
  const ModelConfig &a = ours.config(), &b = gguf.config();
  EXPECT_EQ(b.ngroups, 2);
  EXPECT_EQ(std::tuple(a.d_model, a.n_layer, a.d_state, a.d_conv, a.expand, a.headdim, a.ngroups, a.vocab_padded()),
            std::tuple(b.d_model, b.n_layer, b.d_state, b.d_conv, b.expand, b.headdim, b.ngroups, b.vocab_padded()));
  EXPECT_TRUE(a.has_dt_limit());
  EXPECT_FALSE(b.has_dt_limit());
  auto same = [](const Tensor& x, const Tensor& y, const char* what, int64_t layer) {
    ASSERT_EQ(x.numel(), y.numel()) << what << " layer " << layer;
    EXPECT_EQ(std::memcmp(x.data(), y.data(), x.nbytes()), 0) << what << " layer " << layer;
  };
  same(ours.weights().embedding, gguf.weights().embedding, "embedding", -1);
  same(ours.weights().norm_f, gguf.weights().norm_f, "norm_f", -1);
  for (int64_t i = 0; i < a.n_layer; ++i) {
    const LayerWeights &x = ours.weights().layers[size_t(i)], &y = gguf.weights().layers[size_t(i)];
    same(x.norm, y.norm, "norm", i);
    same(x.in_proj, y.in_proj, "in_proj", i);
    same(x.conv_w, y.conv_w, "conv_w", i);
    same(x.conv_b, y.conv_b, "conv_b", i);
    same(x.dt_bias, y.dt_bias, "dt_bias", i);
    same(x.D, y.D, "D", i);
    same(x.gate_norm, y.gate_norm, "gate_norm", i);
    same(x.out_proj, y.out_proj, "out_proj", i);
    for (int64_t h = 0; h < x.A_log.numel(); ++h)
      EXPECT_NEAR(y.A_log.data()[h], x.A_log.data()[h], 4e-7 * std::max(1.0f, std::abs(x.A_log.data()[h])))
          << "A_log layer " << i << " head " << h;
  }
}

// q8_0 and q4_0 files run in their format from the mapping: with fp32 activations bit for bit the
// fp32 model on the dequantized weights (which are gguf's: the test above); with int8
// activations (Q8_0 · int8, Q4_0 · int8) and the fp32 ones within the bounds of the golden tests
// (golden_case.h: q8 with int8 activations has its own; the int8 logits also within
// kInt8ActivationsShiftBound of the fp32 activations').
TEST(GgufModel, QuantizedFilesRunTheirBlocks) {
  const GoldenCase g = test::load_golden_case("official_fp32");
  for (const auto& [file, dtype, bound, bound8] :
       {std::tuple{"official_fp32.q8_0.gguf", DType::Q8_0, test::kQ8LogitsBound, test::kQ8Int8LogitsBound},
        std::tuple{"official_fp32.q4_0.gguf", DType::Q4_0, test::kQ4LogitsBound, test::kQ4LogitsBound}}) {
    const Model q = Model::load(kGguf / file);
    EXPECT_EQ(q.dtype(), dtype) << file;
    EXPECT_EQ(q.weights().layers[0].in_proj.dtype(), dtype) << file;
    const Model widened = q.to(Device::CPU, DType::F32);
    std::vector<float> got, want, int8;
    {
      const test::Q8ActivationsAs f32_activations(ops::Q8Activations::F32);
      q.prefill(g.ids, g.lengths, nullptr, true, got);
      widened.prefill(g.ids, g.lengths, nullptr, true, want);
    }
    {
      const test::Q8ActivationsAs int8_activations(ops::Q8Activations::Int8);
      q.prefill(g.ids, g.lengths, nullptr, true, int8);
    }
    ASSERT_EQ(got.size(), want.size());
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0) << file;
    const double worst = test::worst_sequence_error(g, got.data(), q.vocab());
    const double worst8 = test::worst_sequence_error(g, int8.data(), q.vocab());
    const double shift = test::rel_l2(int8.data(), got.data(), got.size());
    std::printf("[ gguf ] %s: prefill %.3g, with int8 activations %.3g (relative L2 to float64, worst sequence; "
                "%.3g from fp32 activations)\n", file, worst, worst8, shift);
    EXPECT_LE(worst, bound) << file;
    EXPECT_LE(worst8, bound8) << file << ", int8 activations";
    EXPECT_LE(shift, test::kInt8ActivationsShiftBound) << file << ", int8 activations";
  }
}

// ---- Mamba-1 (llama.cpp's architecture "mamba"): the golden case m1_hf_bf16_sharded ----

const fs::path kMamba1Folder = fs::path(MAMBA2_FIXTURES_DIR) / "golden" / "m1_hf_bf16_sharded" / "model";

// Its bf16 weights are stored losslessly as BF16, so the file gives the golden logits (float64
// oracle) to the fp32 tolerance; every weight is the folder's bit for bit but A_log (log(-A) of the
// rounded -exp(A_log), within a few ulps), and the config the folder's.
TEST(GgufMamba1, Bf16FileHasTheFoldersWeightsAndGivesTheGoldenLogits) {
  const Model ours = Model::load(kMamba1Folder);
  const Model gguf = Model::load(kGguf / "m1_hf_bf16.bf16.gguf");
  const ModelConfig &a = ours.config(), &b = gguf.config();
  ASSERT_TRUE(b.mamba1());
  EXPECT_EQ(std::tuple(a.d_model, a.n_layer, a.d_state, a.d_conv, a.expand, a.dt_rank, a.vocab_padded(),
                       a.tie_embeddings, a.conv_bias, a.proj_bias, a.mixer_norms),
            std::tuple(b.d_model, b.n_layer, b.d_state, b.d_conv, b.expand, b.dt_rank, b.vocab_padded(),
                       b.tie_embeddings, b.conv_bias, b.proj_bias, b.mixer_norms));
  EXPECT_FALSE(b.tie_embeddings);
  auto same = [](const Tensor& x, const Tensor& y, const char* what, int64_t layer) {
    ASSERT_EQ(x.dtype(), y.dtype()) << what << " layer " << layer;
    ASSERT_EQ(x.numel(), y.numel()) << what << " layer " << layer;
    EXPECT_EQ(std::memcmp(x.raw(), y.raw(), x.nbytes()), 0) << what << " layer " << layer;
  };
  same(ours.weights().embedding, gguf.weights().embedding, "embedding", -1);
  same(ours.weights().lm_head, gguf.weights().lm_head, "lm_head", -1);
  same(ours.weights().norm_f, gguf.weights().norm_f, "norm_f", -1);
  for (int64_t i = 0; i < a.n_layer; ++i) {
    const LayerWeights &x = ours.weights().layers[size_t(i)], &y = gguf.weights().layers[size_t(i)];
    for (const auto& [member, what] : {std::pair{&LayerWeights::norm, "norm"}, {&LayerWeights::in_proj, "in_proj"},
                                       {&LayerWeights::conv_w, "conv_w"}, {&LayerWeights::conv_b, "conv_b"},
                                       {&LayerWeights::x_proj, "x_proj"}, {&LayerWeights::dt_proj, "dt_proj"},
                                       {&LayerWeights::dt_bias, "dt_bias"}, {&LayerWeights::D, "D"},
                                       {&LayerWeights::out_proj, "out_proj"}})
      same(x.*member, y.*member, what, i);
    ASSERT_EQ(x.A_log.numel(), y.A_log.numel());
    for (int64_t k = 0; k < x.A_log.numel(); ++k)
      EXPECT_NEAR(y.A_log.data()[k], x.A_log.data()[k], 4e-7 * std::max(1.0f, std::abs(x.A_log.data()[k])))
          << "A_log layer " << i << " element " << k;
  }
  const GoldenCase g = test::load_golden_case("m1_hf_bf16_sharded");
  std::vector<float> logits;
  gguf.prefill(g.ids, g.lengths, nullptr, true, logits);
  const double prefill = test::worst_sequence_error(g, logits.data(), gguf.vocab());
  const std::vector<float> dec = test::decode_all(gguf, g.ids, g.lengths);
  const double decode = test::worst_sequence_error(g, dec.data(), gguf.vocab());
  std::printf("[ gguf ] mamba-1 bf16: prefill %.3g, decode %.3g (relative L2 to float64, worst sequence)\n", prefill,
              decode);
  EXPECT_LE(prefill, kGoldenTol);
  EXPECT_LE(decode, kGoldenTol);
}

// As convert_hf_to_gguf.py --outtype q8_0 writes it: in_proj, out_proj, the embedding and the head
// run in Q8_0 from the mapping; x_proj (Q8_0 in the file) and dt_proj (F16: rows of 4 are no
// blocks) are widened to fp32 exactly as gguf dequantizes them; the logits within the q8 bounds.
TEST(GgufMamba1, Q8FileRunsItsBlocksAndWidensTheSmallProjections) {
  const Model q = Model::load(kGguf / "m1_hf_bf16.q8_0.gguf");
  const GgufFile file = read_gguf(kGguf / "m1_hf_bf16.q8_0.gguf");
  EXPECT_EQ(q.dtype(), DType::Q8_0);
  for (int64_t i = 0; i < q.config().n_layer; ++i) {
    const LayerWeights& l = q.weights().layers[size_t(i)];
    EXPECT_EQ(l.in_proj.dtype(), DType::Q8_0);
    EXPECT_EQ(l.out_proj.dtype(), DType::Q8_0);
    for (const auto& [t, name, stored] : {std::tuple{&l.x_proj, "ssm_x.weight", DType::Q8_0},
                                          std::tuple{&l.dt_proj, "ssm_dt.weight", DType::F16}}) {
      const StoredTensor* s = file.tensors.find(fmt::format("blk.{}.{}", i, name));
      ASSERT_NE(s, nullptr) << name;
      EXPECT_EQ(s->dtype, stored) << name;
      std::vector<float> want(size_t(s->numel()));
      convert_to_f32(s->dtype, s->data, want.data(), want.size());
      ASSERT_EQ(t->dtype(), DType::F32) << name;
      ASSERT_EQ(size_t(t->numel()), want.size()) << name;
      EXPECT_EQ(std::memcmp(t->data(), want.data(), want.size() * sizeof(float)), 0) << name << " layer " << i;
    }
  }
  const GoldenCase g = test::load_golden_case("m1_hf_bf16_sharded");
  std::vector<float> f32_act, int8_act;
  {
    const test::Q8ActivationsAs f32_activations(ops::Q8Activations::F32);
    q.prefill(g.ids, g.lengths, nullptr, true, f32_act);
  }
  {
    const test::Q8ActivationsAs int8_activations(ops::Q8Activations::Int8);
    q.prefill(g.ids, g.lengths, nullptr, true, int8_act);
  }
  const double worst = test::worst_sequence_error(g, f32_act.data(), q.vocab());
  const double worst8 = test::worst_sequence_error(g, int8_act.data(), q.vocab());
  std::printf("[ gguf ] mamba-1 q8_0: prefill %.3g, with int8 activations %.3g (relative L2 to float64, worst "
              "sequence)\n", worst, worst8);
  EXPECT_LE(worst, test::kQ8LogitsBound);
  EXPECT_LE(worst8, test::kQ8Int8LogitsBound);
}

// mamba.ssm.dt_b_c_rms true (the converter's Falcon-Mamba) turns on the weightless norms on dt, B
// and C with the model's epsilon, as llama.cpp runs them: the same logits as the folder's weights
// under a FalconMambaForCausalLM config whose mixer_rms_eps is that epsilon.
TEST(GgufMamba1, DtBCRmsFlagIsFalconMambasMixerNorms) {
  const std::string bytes = test::read_file(kGguf / "m1_hf_bf16.bf16.gguf");
  const std::string key = "mamba.ssm.dt_b_c_rms";
  const fs::path falcon_gguf = test::scratch_path("gguf", "falcon.gguf");
  test::write_file(falcon_gguf, patched(bytes, key + std::string("\x07\0\0\0\0", 5), key + std::string("\x07\0\0\0\x01", 5)));
  const Model gguf = Model::load(falcon_gguf);
  ASSERT_TRUE(gguf.config().mixer_norms);
  EXPECT_EQ(gguf.config().mixer_rms_eps, gguf.config().norm_eps);

  TempDir dir;
  for (const auto& f : fs::directory_iterator(kMamba1Folder)) fs::copy(f.path(), dir / f.path().filename());
  auto config = nlohmann::json::parse(test::read_file(kMamba1Folder / "config.json"));
  config["architectures"] = {"FalconMambaForCausalLM"};
  config["model_type"] = "falcon_mamba";
  config["mixer_rms_eps"] = gguf.config().norm_eps;
  config["layer_norm_epsilon"] = gguf.config().norm_eps;  // the file's, rounded to f32
  test::write_file(dir / "config.json", config.dump());
  const Model folder = Model::load(dir.path());
  ASSERT_TRUE(folder.config().mixer_norms);

  const GoldenCase g = test::load_golden_case("m1_hf_bf16_sharded");
  std::vector<float> want, got, plain;
  folder.prefill(g.ids, g.lengths, nullptr, true, want);
  gguf.prefill(g.ids, g.lengths, nullptr, true, got);
  Model::load(kGguf / "m1_hf_bf16.bf16.gguf").prefill(g.ids, g.lengths, nullptr, true, plain);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_LE(test::rel_l2(got.data(), want.data(), got.size()), 1e-5);  // A_log's ulps only
  EXPECT_GT(test::rel_l2(plain.data(), want.data(), got.size()), 1e-2);  // the norms do change the function
}

TEST(GgufMamba1, CliInfoAndLogitsTakeTheFile) {
  const fs::path f = kGguf / "m1_hf_bf16.bf16.gguf";
  CliResult r = run_cli("info --model " + shell_path(f));
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("family: Mamba-1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("weights: all tensors present"), std::string::npos) << r.out;
  const GoldenCase g = test::load_golden_case("m1_hf_bf16_sharded");
  TempDir tmp;
  r = run_cli("logits --model " + shell_path(f) + " --ids " + test::comma_list(g.ids) + " --lengths " +
                              test::comma_list(g.lengths) + " --out " + shell_path(tmp / "logits.npy"));
  ASSERT_EQ(r.code, 0) << r.err;
  const NpyArray got = read_npy(tmp / "logits.npy");
  std::vector<float> logits(got.data.begin(), got.data.end());
  EXPECT_LE(test::worst_sequence_error(g, logits.data(), g.logits.shape[1]), kGoldenTol);
}

TEST(GgufTokenizer, GptNeoxVocabularyEncodesAsTokenizersDoesOnNfcText) {
  const Tokenizer gguf = Tokenizer::load(kGguf / "gpt-neox-20b.vocab.gguf");
  const Tokenizer json = Tokenizer::load(fs::path(MAMBA2_FIXTURES_DIR) / "tokenizer" / "gpt-neox-20b.json");
  EXPECT_EQ(gguf.vocab_size(), json.vocab_size());
  EXPECT_EQ(gguf.eos_id(), json.eos_id());
  const auto parity = nlohmann::json::parse(test::read_file(fs::path(MAMBA2_FIXTURES_DIR) / "tokenizer" / "parity.json"));
  int compared = 0, failures = 0;
  for (const auto& c : parity["files"]["gpt-neox-20b.json"]["encode"]) {
    const std::string text = c["text"];
    std::string normalized;
    if (tok::nfc(text, normalized)) continue;  // GGUF records no normalizer: llama.cpp applies none
    ++compared;
    const std::vector<int32_t> ids = gguf.encode(text);
    EXPECT_EQ(ids, c["ids"].get<std::vector<int32_t>>()) << c["name"];
    EXPECT_EQ(gguf.decode(ids), c["decoded"].get<std::string>()) << c["name"];
    if (ids != c["ids"].get<std::vector<int32_t>>() && ++failures > 10) FAIL() << "stopping after 10 mismatches";
  }
  EXPECT_GT(compared, 700);
}

// The server's chat prompt from a GGUF file: tokenizer.chat_template with the special tokens that
// tokenizer.ggml.bos_token_id / eos_token_id name.
TEST(GgufTokenizer, ChatTemplateAndSpecialTokensComeFromTheMetadata) {
  const std::optional<ChatFormat> chat = load_chat_format(kGguf / "gpt-neox-20b.vocab.gguf", "");
  ASSERT_TRUE(chat.has_value());
  EXPECT_EQ(chat->eos_token, "<|endoftext|>");
  EXPECT_EQ(chat->bos_token, "<|endoftext|>");
  EXPECT_EQ(chat->prompt({{"user", "Hi"}}), "<|user|>Hi<|endoftext|><|assistant|>");
  EXPECT_FALSE(load_chat_format(kGguf / "official_fp32.f32.gguf", "").has_value());  // none in that file
}

TEST(GgufCli, InfoLogitsAndQuantizeTakeAGgufFile) {
  const fs::path f32 = kGguf / "official_fp32.f32.gguf";
  CliResult r = run_cli("info --model " + shell_path(f32));
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("weights: all tensors present"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(f32.string()), std::string::npos) << r.out;
  r = run_cli("info --model " + shell_path(kGguf / "official_fp32.q4_0.gguf"));
  EXPECT_NE(r.out.find("gguf: version 3, 12 metadata keys; tensors stored as F32 15 Q4_0 4 Q8_0 1"),
            std::string::npos)
      << r.out;

  TempDir tmp;
  r = run_cli("quantize --model " + shell_path(kGguf / "official_fp32.q8_0.gguf") + " --type q8 --out " +
              shell_path(tmp / "q8"));
  ASSERT_EQ(r.code, 0) << r.err;
  // The folder holds the file's own blocks: the same logits as the GGUF, bit for bit.
  const GoldenCase g = test::load_golden_case("official_fp32");
  std::vector<float> a, b;
  Model::load(kGguf / "official_fp32.q8_0.gguf").prefill(g.ids, g.lengths, nullptr, true, a);
  Model::load(tmp / "q8").prefill(g.ids, g.lengths, nullptr, true, b);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);

  r = run_cli("logits --model " + shell_path(f32) + " --ids 1,2,3 --top 2");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(r.out.empty());
}

// ---- bad files: each refused with the file and what is wrong, never a crash ----

TEST(GgufBadFiles, HeadersAndCountsAreCheckedAgainstTheFile) {
  const std::string good = test::read_file(kGguf / "official_fp32.f32.gguf");
  auto with_u32 = [&](size_t at, uint32_t v) {
    std::string b = good;
    std::memcpy(b.data() + at, &v, 4);
    return b;
  };
  auto with_u64 = [&](size_t at, uint64_t v) {
    std::string b = good;
    std::memcpy(b.data() + at, &v, 8);
    return b;
  };
  EXPECT_NE(gguf_error("GGUX" + good.substr(4)).find("neither a model folder nor a GGUF file"), std::string::npos);
  EXPECT_NE(gguf_error(with_u32(4, 1)).find("GGUF version 1"), std::string::npos);
  EXPECT_NE(gguf_error(with_u32(4, 9)).find("GGUF version 9 is not supported"), std::string::npos);
  EXPECT_NE(gguf_error(with_u32(4, 0x03000000)).find("big-endian"), std::string::npos);
  EXPECT_NE(gguf_error(with_u64(8, uint64_t(1) << 60)).find("tensors cannot fit"), std::string::npos);
  EXPECT_NE(gguf_error(with_u64(16, uint64_t(1) << 60)).find("key/values cannot fit"), std::string::npos);
  // Cut anywhere: the header, the metadata, the tensor infos, the data.
  for (size_t len : {size_t(10), size_t(30), size_t(200), good.size() / 20, good.size() / 2, good.size() - 1}) {
    const std::string e = gguf_error(good.substr(0, len));
    EXPECT_TRUE(e.find("the file ends inside") != std::string::npos || e.find("runs past the end") != std::string::npos ||
                e.find("cannot fit") != std::string::npos || e.find("ends before its data") != std::string::npos)
        << len << ": " << e;
    EXPECT_NE(e.find("[gguf]"), std::string::npos) << e;
  }
}

TEST(GgufBadFiles, ModelsThatAreNotMamba2AreRefusedByName) {
  const std::string good = test::read_file(kGguf / "official_fp32.f32.gguf");
  const std::string arch = std::string("\x06\0\0\0\0\0\0\0mamba2", 14);
  EXPECT_NE(gguf_error(patched(good, arch, std::string("\x06\0\0\0\0\0\0\0llama2", 14)))
                .find("general.architecture is \"llama2\""),
            std::string::npos);
  EXPECT_NE(gguf_error(patched(good, "mamba2.ssm.state_size", "mamba2.ssm.state_sizf"))
                .find("metadata key mamba2.ssm.state_size is missing"),
            std::string::npos);
  EXPECT_NE(gguf_error(patched(good, "blk.1.ssm_a", "blk.1.ssm_b")).find("tensor blk.1.ssm_b is not part of"),
            std::string::npos);
  EXPECT_NE(gguf_error(patched(good, "blk.1.ssm_a", "blk.9.ssm_a")).find("tensor blk.9.ssm_a is not part of a 2-layer"),
            std::string::npos);
  // A positive A (its sign bit cleared where the file stores head 0 of layer 0).
  const GgufFile g = read_gguf(kGguf / "official_fp32.f32.gguf");
  const StoredTensor* a = g.tensors.find("blk.0.ssm_a");
  ASSERT_NE(a, nullptr);
  const std::string a_bytes(reinterpret_cast<const char*>(a->data), a->nbytes);
  std::string positive = a_bytes;
  positive[3] = char(positive[3] & 0x7f);
  EXPECT_NE(gguf_error(patched(good, a_bytes, positive)).find("a Mamba2 A is negative"), std::string::npos);
}

// Mamba-1: a missing key, a layer that is not there, a tensor whose shape the keys contradict, a
// positive A, each named.
TEST(GgufBadFiles, Mamba1FilesAreCheckedByName) {
  const std::string good = test::read_file(kGguf / "m1_hf_bf16.bf16.gguf");
  EXPECT_NE(gguf_error(patched(good, "mamba.ssm.time_step_rank", "mamba.ssm.time_step_ranj"))
                .find("metadata key mamba.ssm.time_step_rank is missing"),
            std::string::npos);
  const std::string u32 = std::string("\x04\0\0\0", 4);
  auto with_count = [&](const std::string& key, char from, char to) {
    return patched(good, key + u32 + std::string(1, from) + std::string(3, '\0'),
                   key + u32 + std::string(1, to) + std::string(3, '\0'));
  };
  EXPECT_NE(gguf_error(with_count("mamba.block_count", 2, 3)).find("tensor blk.2.attn_norm.weight is missing"),
            std::string::npos);
  EXPECT_NE(gguf_error(with_count("mamba.ssm.time_step_rank", 4, 5))
                .find("tensor blk.0.ssm_dt.weight is (128, 4), expected (128, 5) for this model"),
            std::string::npos);
  EXPECT_NE(gguf_error(patched(good, "blk.1.ssm_x.weight", "blk.1.ssm_y.weight"))
                .find("tensor blk.1.ssm_y.weight is not part of a 2-layer Mamba-1 model"),
            std::string::npos);
  const GgufFile g = read_gguf(kGguf / "m1_hf_bf16.bf16.gguf");
  const StoredTensor* a = g.tensors.find("blk.1.ssm_a");
  ASSERT_NE(a, nullptr);
  const std::string a_bytes(reinterpret_cast<const char*>(a->data), a->nbytes);
  std::string positive = a_bytes;
  positive[4 * 17 + 3] = char(positive[4 * 17 + 3] & 0x7f);  // element (1, 1)
  EXPECT_NE(gguf_error(patched(good, a_bytes, positive)).find("tensor blk.1.ssm_a holds A = "), std::string::npos);
  EXPECT_NE(gguf_error(patched(good, a_bytes, positive)).find(" at (1, 1): a Mamba-1 A is negative"),
            std::string::npos);
}

// A GGUF with one metadata key and one tensor, written here to reach the checks a converter's
// file never trips.
struct GgufBuilder {
  std::string b = std::string("GGUF\x03\0\0\0", 8);
  template <class T>
  void put(T v) {
    b.append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  void str(const std::string& s) {
    put<uint64_t>(s.size());
    b += s;
  }
  // Header with `n_kv` keys and one tensor info.
  GgufBuilder(uint64_t n_kv) {
    put<uint64_t>(1);
    put<uint64_t>(n_kv);
  }
  void tensor(std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
    str("t");
    put<uint32_t>(uint32_t(ne.size()));
    for (uint64_t d : ne) put<uint64_t>(d);
    put<uint32_t>(type);
    put<uint64_t>(offset);
    b.resize((b.size() + 31) / 32 * 32, '\0');
    b.append(4096, '\0');
  }
};

std::string read_error(const std::string& bytes) {
  const fs::path p = test::scratch_path("gguf", "crafted.gguf");
  test::write_file(p, bytes);
  return test::error_message([&] { read_gguf(p); });
}

TEST(GgufBadFiles, TensorInfosAndValuesAreValidated) {
  auto plain = [](std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
    GgufBuilder g(0);
    g.tensor(std::move(ne), type, offset);
    return g.b;
  };
  EXPECT_EQ(read_error(plain({64, 2}, 0, 0)), "(no error)");
  EXPECT_NE(read_error(plain({64, 2}, 3, 0)).find("tensor t is of ggml type Q4_1 (3), which mamba2 does not read"),
            std::string::npos);
  {  // the metadata of such a file (its tokenizer, `info`) is still read; the type only counted
    const fs::path p = test::scratch_path("gguf", "q4_1.gguf");
    test::write_file(p, plain({64, 2}, 3, 0));
    EXPECT_EQ(read_gguf(p, false).stored_types.at("Q4_1"), 1);
  }
  EXPECT_NE(read_error(plain({64, 2}, 0, 4)).find("not a multiple of the alignment 32"), std::string::npos);
  EXPECT_NE(read_error(plain({0, 2}, 0, 0)).find("has a dimension of 0"), std::string::npos);
  EXPECT_NE(read_error(plain({1, 1, 1, 1, 1}, 0, 0)).find("has 5 dimensions"), std::string::npos);
  EXPECT_NE(read_error(plain({48, 2}, 8, 0)).find("not whole blocks of 32"), std::string::npos);
  EXPECT_NE(read_error(plain({1 << 20, 1 << 20}, 0, 0)).find("runs past the end of the file"), std::string::npos);

  GgufBuilder alignment(1);
  alignment.str("general.alignment");
  alignment.put<uint32_t>(4);  // u32
  alignment.put<uint32_t>(3);
  alignment.tensor({64}, 0, 0);
  EXPECT_NE(read_error(alignment.b).find("general.alignment is 3, not a power of two"), std::string::npos);

  GgufBuilder nested(1);
  nested.str("k");
  nested.put<uint32_t>(9);  // array
  nested.put<uint32_t>(9);  // of arrays
  nested.put<uint64_t>(1);
  EXPECT_NE(read_error(nested.b).find("k is an array of arrays"), std::string::npos);

  GgufBuilder huge(1);
  huge.str("k");
  huge.put<uint32_t>(9);
  huge.put<uint32_t>(8);  // of strings
  huge.put<uint64_t>(uint64_t(1) << 40);
  EXPECT_NE(read_error(huge.b).find("claims 1099511627776 elements"), std::string::npos);

  GgufBuilder twice(2);
  for (int i = 0; i < 2; ++i) {
    twice.str("k");
    twice.put<uint32_t>(7);  // bool
    twice.put<uint8_t>(1);
  }
  EXPECT_NE(read_error(twice.b).find("metadata key k appears twice"), std::string::npos);

  GgufBuilder bad_bool(1);
  bad_bool.str("k");
  bad_bool.put<uint32_t>(7);
  bad_bool.put<uint8_t>(2);
  EXPECT_NE(read_error(bad_bool.b).find("is a bool of value 2"), std::string::npos);
}

TEST(GgufBadFiles, ATokenizerThatIsNotByteLevelBpeIsRefusedByName) {
  const std::string vocab = test::read_file(kGguf / "gpt-neox-20b.vocab.gguf");
  const fs::path p = test::scratch_path("gguf", "vocab.gguf");
  test::write_file(p, patched(vocab, std::string("\x04\0\0\0\0\0\0\0gpt2", 12), std::string("\x04\0\0\0\0\0\0\0bert", 12)));
  EXPECT_NE(test::error_message([&] { Tokenizer::load(p); }).find("tokenizer.ggml.model is \"bert\""),
            std::string::npos);
  test::write_file(p, patched(vocab, std::string("\x04\0\0\0\0\0\0\0olmo", 12), std::string("\x04\0\0\0\0\0\0\0qwen", 12)));
  EXPECT_NE(test::error_message([&] { Tokenizer::load(p); }).find("tokenizer.ggml.pre is \"qwen\""),
            std::string::npos);
  EXPECT_NE(test::error_message([&] { Tokenizer::load(kGguf / "official_fp32.f32.gguf"); })
                .find("metadata key tokenizer.ggml.model is missing"),
            std::string::npos);
}

}  // namespace
}  // namespace mamba2
