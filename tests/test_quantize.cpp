// `mamba2 quantize` and the block-quantized safetensors layout (io/safetensors.h): the file holds
// the blocks byte for byte as Tensor::to makes them, under the documented header; a quantized
// model loads them in place and gives bit for bit what quantizing at load time (--dtype) gives;
// bad files and flags are refused naming what is wrong, and nothing is overwritten.
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "cpu/simd/q8x8.h"
#include "io/npy.h"
#include "io/safetensors.h"
#include "mamba2/error.h"
#include "mamba2/model.h"
#include "model/weights.h"
#include "test_support.h"

namespace mamba2 {
namespace {

namespace fs = std::filesystem;
using test::CliResult;
using test::run_cli;
using test::shell_path;
using test::shell_quote;
using test::TempDir;

const fs::path kGoldenFixtures = fs::path(MAMBA2_FIXTURES_DIR) / "golden";


// The header of a safetensors file as JSON, read here by hand (8-byte little-endian length).
nlohmann::json header_of(const fs::path& file) {
  const std::string bytes = test::read_file(file);
  uint64_t len = 0;
  for (int i = 7; i >= 0; --i) len = (len << 8) | uint8_t(bytes[size_t(i)]);
  return nlohmann::json::parse(bytes.substr(8, len));
}

std::vector<float> normal_floats(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

TEST(QuantizedSafetensors, BlocksAreStoredAsU8RowsOfBlocksAndReadBackInPlace) {
  TempDir tmp;
  const int64_t rows = 6, k = 96;
  const auto w = normal_floats(size_t(rows * k), 1);
  const auto norm = normal_floats(size_t(k), 2);
  for (DType dt : {DType::Q8_0, DType::Q4_0}) {
    const int64_t block_bytes = dt == DType::Q8_0 ? 34 : 18;
    const fs::path file = tmp / (std::string(dtype_name(dt)) + ".safetensors");
    write_safetensors(file, {{"m.weight", dt, {rows, k}, w.data()}, {"n.weight", DType::F32, {k}, norm.data()}});
    const nlohmann::json h = header_of(file);
    EXPECT_EQ(h["__metadata__"]["mamba2.quantization"], dt == DType::Q8_0 ? "q8_0" : "q4_0");
    EXPECT_EQ(h["m.weight"]["dtype"], "U8");
    EXPECT_EQ(h["m.weight"]["shape"], nlohmann::json({rows, k / 32, block_bytes}));
    EXPECT_EQ(h["n.weight"]["dtype"], "F32");

    const TensorArchive a = read_safetensors(file);
    const StoredTensor* m = a.find("m.weight");
    ASSERT_NE(m, nullptr);
    EXPECT_EQ(m->dtype, dt);
    EXPECT_EQ(m->shape, (std::vector<int64_t>{rows, k}));
    Tensor src = Tensor::empty({rows, k});
    std::copy(w.begin(), w.end(), src.data());
    const Tensor want = src.to(Device::CPU, dt);
    ASSERT_EQ(m->nbytes, want.nbytes());
    EXPECT_EQ(std::memcmp(m->data, want.raw(), want.nbytes()), 0) << dtype_name(dt);
  }
  // Both formats in one file (a q4 model's embedding is q8): each tensor's block size names its own.
  write_safetensors(tmp / "mixed.safetensors",
                    {{"a", DType::Q8_0, {rows, k}, w.data()}, {"b", DType::Q4_0, {rows, k}, w.data()}});
  EXPECT_EQ(header_of(tmp / "mixed.safetensors")["__metadata__"]["mamba2.quantization"], "q4_0");
  const TensorArchive mixed = read_safetensors(tmp / "mixed.safetensors");
  EXPECT_EQ(mixed.find("a")->dtype, DType::Q8_0);
  EXPECT_EQ(mixed.find("b")->dtype, DType::Q4_0);
  // Rows that are not whole blocks.
  EXPECT_THROW(write_safetensors(tmp / "odd.safetensors", {{"a", DType::Q8_0, {2, 40}, w.data()}}), Error);
}

// A file written by hand: header JSON and data bytes.
void write_raw(const fs::path& file, const nlohmann::json& header, size_t data_bytes) {
  std::string text = header.dump();
  text.resize((text.size() + 7) / 8 * 8, ' ');
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[size_t(i)] = char(uint64_t(text.size()) >> (8 * i));
  bytes += text + std::string(data_bytes, '\0');
  test::write_file(file, bytes);
}

void expect_refused(const fs::path& file, const std::string& needle) {
  try {
    read_safetensors(file);
    ADD_FAILURE() << "read: " << file;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(QuantizedSafetensors, BadBlockHeadersAreRefused) {
  TempDir tmp;
  const nlohmann::json q8 = {{"mamba2.quantization", "q8_0"}};
  // U8 without the metadata that names the blocks.
  write_raw(tmp / "a", {{"w", {{"dtype", "U8"}, {"shape", {2, 1, 34}}, {"data_offsets", {0, 68}}}}}, 68);
  expect_refused(tmp / "a", "unsupported dtype U8");
  // An unknown block format.
  write_raw(tmp / "b", {{"__metadata__", {{"mamba2.quantization", "q3_k"}}},
                        {"w", {{"dtype", "U8"}, {"shape", {2, 1, 34}}, {"data_offsets", {0, 68}}}}}, 68);
  expect_refused(tmp / "b", "mamba2.quantization");
  // A last dimension that is not the block's bytes.
  write_raw(tmp / "c", {{"__metadata__", q8}, {"w", {{"dtype", "U8"}, {"shape", {2, 2, 17}}, {"data_offsets", {0, 68}}}}},
            68);
  expect_refused(tmp / "c", "the last dimension must be a block's bytes");
  // An odd offset (the blocks' fp16 scales would be misaligned).
  write_raw(tmp / "e", {{"__metadata__", q8},
                        {"p", {{"dtype", "F16"}, {"shape", {1}}, {"data_offsets", {0, 2}}}},
                        {"q", {{"dtype", "U8"}, {"shape", {1, 1, 34}}, {"data_offsets", {3, 37}}}}},
            37);
  expect_refused(tmp / "e", "even offset");
  // A shape larger than the file.
  write_raw(tmp / "f", {{"__metadata__", q8},
                        {"w", {{"dtype", "U8"}, {"shape", {int64_t(1) << 40, 1, 34}}, {"data_offsets", {0, 68}}}}},
            68);
  expect_refused(tmp / "f", "more bytes than the data section");
}

std::vector<double> logits_of(const fs::path& model, const fs::path& out, const std::string& extra,
                              const std::string& env = "") {
  const CliResult r =
      run_cli("logits --model " + shell_path(model) + " --ids 3,1,4,1,5,9,2,6 --out " + shell_path(out) + " " + extra, env);
  EXPECT_TRUE(r.exited && r.code == 0) << r.err;
  return r.code == 0 ? read_npy(out).data : std::vector<double>{};
}

// The quantized model gives exactly the logits of quantizing at load time (the same blocks, the
// same kernels), each in its own format by default (bf16 too: a `mamba2 quantize` folder, unlike
// an unquantized checkpoint, runs as written); its projections are the stored tensors in place.
TEST(CliQuantize, TheQuantizedModelIsTheModelQuantizedAtLoad) {
  TempDir tmp;
  const fs::path src = kGoldenFixtures / "hf_fp32_g2_dtlimit" / "model";
  for (const std::string type : {"q8", "q4", "bf16"}) {
    SCOPED_TRACE(type);
    const fs::path out = tmp / type;
    const CliResult r = run_cli("quantize --model " + shell_path(src) + " --type " + type + " --out " + shell_path(out));
    ASSERT_TRUE(r.exited && r.code == 0) << r.err;
    const nlohmann::json h = header_of(out / "model.safetensors");
    const std::string matrix = type == "bf16" ? "BF16" : "U8";
    EXPECT_EQ(h["backbone.layers.0.mixer.in_proj.weight"]["dtype"], matrix);
    EXPECT_EQ(h["backbone.layers.0.mixer.out_proj.weight"]["dtype"], matrix);
    EXPECT_EQ(h["backbone.embeddings.weight"]["dtype"], matrix);
    const std::string format_name = type == "q8" ? "q8_0" : type == "q4" ? "q4_0" : "bf16";
    EXPECT_EQ(h["__metadata__"]["mamba2.quantization"], format_name);
    if (type != "bf16") {  // q4 keeps the (tied) embedding and head in q8_0 blocks
      EXPECT_EQ(h["backbone.layers.0.mixer.in_proj.weight"]["shape"].back(), type == "q8" ? 34 : 18);
      EXPECT_EQ(h["backbone.embeddings.weight"]["shape"].back(), 34);
    }
    for (const char* f32 : {"backbone.layers.0.mixer.A_log", "backbone.layers.0.mixer.D", "backbone.layers.0.mixer.dt_bias",
                            "backbone.layers.0.mixer.conv1d.weight", "backbone.layers.0.norm.weight", "backbone.norm_f.weight"})
      EXPECT_EQ(h[f32]["dtype"], "F32") << f32;
    const CliResult info = run_cli("info --model " + shell_path(out));
    EXPECT_NE(info.out.find("quantized: " + format_name + " (mamba2 quantize)"), std::string::npos) << info.out;
    const std::vector<double> got = logits_of(out, tmp / (type + "_got.npy"), "");
    const std::vector<double> want = logits_of(src, tmp / (type + "_want.npy"), "--dtype " + type);
    ASSERT_EQ(got.size(), want.size());
    ASSERT_FALSE(got.empty());
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(double)), 0);
    const Model m = Model::load(out);
    const DType format = type == "q8" ? DType::Q8_0 : type == "q4" ? DType::Q4_0 : DType::BF16;
    EXPECT_EQ(m.dtype(), format);
    EXPECT_EQ(m.weights().layers[1].in_proj.dtype(), format);
    EXPECT_EQ(m.weights().embedding.dtype(), type == "bf16" ? DType::BF16 : DType::Q8_0);
    EXPECT_EQ(m.to(Device::CPU, m.dtype()).weights().layers[1].in_proj.raw(), m.weights().layers[1].in_proj.raw())
        << "placing a quantized model in its own format copied it";
    EXPECT_EQ(m.fingerprint().size(), 16u);
    // Gradients (and training) start from the weights widened to fp32.
    const CliResult g = run_cli("grad --model " + shell_path(out) + " --ids 3,1,4,1,5 --out " +
                                shell_path(tmp / (type + "_grad.safetensors")));
    EXPECT_TRUE(g.exited && g.code == 0) << g.err;
    if (type != "bf16") {
      // Asked for f32, it computes on the dequantized weights: the same bits as the blocks' kernels
      // with fp32 activations (MAMBA2_Q8_ACTIVATIONS=f32; int8 ones are LinearQ8x8's and LinearQ4x8's).
      const std::vector<double> widened = logits_of(out, tmp / (type + "_f32.npy"), "--dtype f32");
      const std::vector<double> f32_act = logits_of(out, tmp / (type + "_f32act.npy"), "", "MAMBA2_Q8_ACTIVATIONS=f32");
      ASSERT_EQ(widened.size(), got.size());
      ASSERT_EQ(f32_act.size(), got.size());
      EXPECT_EQ(std::memcmp(widened.data(), f32_act.data(), got.size() * sizeof(double)), 0);
    }
  }
  // An unquantized bf16 checkpoint (no such metadata) still runs in f32 on the CPU by default.
  const Model hf = Model::load(kGoldenFixtures / "hf_bf16_sharded" / "model");
  EXPECT_EQ(hf.dtype(), DType::F32);
  EXPECT_EQ(hf.weights().layers[0].in_proj.dtype(), DType::F32);
}

// MAMBA2_Q8_ACTIVATIONS names the activations' path for Q8_0 and Q4_0 matrices (a q4 model's
// embedding and head are Q8_0), the default per format the one the kernels of this CPU's
// instruction set name (both int8 with AVX-512 VNNI; with AVX2 Q4_0 only, so a q4 model's logits
// are then neither of the two); anything else is refused, naming it.
TEST(CliQuantize, Q8ActivationsVariableIsCheckedAndChangesTheLogits) {
  TempDir tmp;
  const fs::path src = kGoldenFixtures / "hf_fp32_g2_dtlimit" / "model";
  const cpu::simd::Int8Kernels& kernels = cpu::simd::int8_kernels(cpu::simd::active_isa());
  for (const std::string type : {"q8", "q4"}) {
    SCOPED_TRACE(type);
    const bool q8 = kernels.q8.default_on, projections = type == "q8" ? q8 : kernels.q4.default_on;
    const std::string dtype = "--dtype " + type;
    const std::vector<double> int8 = logits_of(src, tmp / "int8.npy", dtype, "MAMBA2_Q8_ACTIVATIONS=int8");
    const std::vector<double> dflt = logits_of(src, tmp / "default.npy", dtype);
    const std::vector<double> f32 = logits_of(src, tmp / "f32.npy", dtype, "MAMBA2_Q8_ACTIVATIONS=f32");
    ASSERT_FALSE(int8.empty());
    ASSERT_EQ(int8.size(), dflt.size());
    ASSERT_EQ(int8.size(), f32.size());
    const size_t bytes = int8.size() * sizeof(double);
    EXPECT_NE(std::memcmp(int8.data(), f32.data(), bytes), 0);
    if (q8 == projections) {
      EXPECT_EQ(std::memcmp((q8 ? int8 : f32).data(), dflt.data(), bytes), 0)
          << (q8 ? "int8" : "f32") << " is the default";
    } else {
      EXPECT_NE(std::memcmp(int8.data(), dflt.data(), bytes), 0) << "the head's activations are fp32 by default";
      EXPECT_NE(std::memcmp(f32.data(), dflt.data(), bytes), 0) << "the projections' activations are int8 by default";
    }
  }
  const CliResult r = run_cli("logits --model " + shell_path(src) + " --dtype q8 --ids 3,1 --out " +
                                  shell_path(tmp / "x.npy"),
                              "MAMBA2_Q8_ACTIVATIONS=int4");
  ASSERT_TRUE(r.exited);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("[linear] MAMBA2_Q8_ACTIVATIONS=int4 is not one of int8, f32"), std::string::npos) << r.err;
}

TEST(CliQuantize, BadRequestsAreRefusedAndNothingIsOverwritten) {
  TempDir tmp;
  const fs::path src = kGoldenFixtures / "hf_fp32_g2_dtlimit" / "model";
  const fs::path copy = tmp / "copy";
  fs::copy(src, copy, fs::copy_options::recursive);
  const std::string before = test::read_file(copy / "model.safetensors");
  auto refused = [](const CliResult& r, const std::string& needle) {
    ASSERT_TRUE(r.exited) << r.err;
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
  };
  refused(run_cli("quantize --model " + shell_path(copy) + " --type q2 --out " + shell_path(tmp / "x")), "--type must be bf16, q8 or q4");
  refused(run_cli("quantize --model " + shell_path(copy) + " --type q8 --out " + shell_path(copy) + " --force"), "is the --model folder");
  EXPECT_EQ(test::read_file(copy / "model.safetensors"), before);
  ASSERT_EQ(run_cli("quantize --model " + shell_path(copy) + " --type q8 --out " + shell_path(tmp / "o")).code, 0);
  const std::string written = test::read_file(tmp / "o" / "model.safetensors");
  refused(run_cli("quantize --model " + shell_path(copy) + " --type q4 --out " + shell_path(tmp / "o")), "--force");
  EXPECT_EQ(test::read_file(tmp / "o" / "model.safetensors"), written);
  // Rows that are not whole blocks: d_model 40 (d_inner 80).
  const fs::path odd = tmp / "odd";
  const CliResult init =
      run_cli("init --preset 130m --d-model 40 --headdim 16 --n-layer 1 --vocab-size 64 --out " + shell_path(odd));
  ASSERT_EQ(init.code, 0) << init.err;
  refused(run_cli("quantize --model " + shell_path(odd) + " --type q4 --out " + shell_path(tmp / "odd_q4")), "multiples of 32");
}

}  // namespace
}  // namespace mamba2
