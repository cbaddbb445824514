// Weights written in the Hugging Face layout and read back give the model that wrote them, tied
// or untied, in every stored dtype; the loader refuses what does not fit the config.
#include <gtest/gtest.h>

#include "io/safetensors.h"
#include "mamba2/error.h"
#include "mamba2/model.h"
#include "model/weights.h"
#include "test_support.h"

namespace mamba2 {
namespace {

ModelConfig small_config(bool tied) {
  ModelConfig c;
  c.d_model = 32;
  c.n_layer = 2;
  c.vocab_size = 50;  // padded to 64
  c.d_state = 8;
  c.headdim = 16;
  c.chunk_size = 8;
  c.tie_embeddings = tied;
  c.validate("test");
  return c;
}

void save(const ModelWeights& w, const ModelConfig& c, const std::filesystem::path& file, DType dtype) {
  std::vector<TensorToWrite> tensors;
  for (const auto& nt : hf_named_tensors(w, c)) tensors.push_back({nt.name, dtype, nt.stored_shape, nt.tensor->data()});
  write_safetensors(file, tensors);
}

std::vector<float> logits_of(const Model& m, std::span<const int32_t> ids) {
  std::vector<float> out;
  m.prefill(ids, std::vector<int64_t>{int64_t(ids.size())}, nullptr, true, out);
  return out;
}

TEST(ModelWeightsRoundTrip, TiedAndUntiedInEveryDtype) {
  for (bool tied : {true, false}) {
    const ModelConfig c = small_config(tied);
    auto w = std::make_shared<ModelWeights>(init_weights(c, 5));
    test::perturb_weights(*w, 6);
    EXPECT_EQ(w->lm_head.data() == w->embedding.data(), tied);
    const Model original(c, w);
    const auto ids = test::random_ids(21, c.vocab_size, 3);
    const std::vector<float> expected = logits_of(original, ids);
    // fp32 is exact; bf16/fp16 round every weight (rel. 2^-9 / 2^-12), so the logits move by
    // about that much (measured 9e-4 and 8e-3): the bounds, twice that, check that the right
    // tensors were read; a wrong one moves the logits by O(1).
    for (auto [dtype, tol] : {std::pair{DType::F32, 0.0}, {DType::F16, 2e-3}, {DType::BF16, 1.6e-2}}) {
      SCOPED_TRACE(std::string(tied ? "tied " : "untied ") + std::string(dtype_name(dtype)));
      test::TempDir dir;
      save(*w, c, dir.path() / "model.safetensors", dtype);
      auto archive = std::make_shared<const TensorArchive>(read_safetensors(dir.path() / "model.safetensors"));
      EXPECT_EQ(archive->find("lm_head.weight") != nullptr, !tied);
      const Model loaded(c, std::make_shared<const ModelWeights>(load_weights(archive, c)));
      const std::vector<float> got = logits_of(loaded, ids);
      ASSERT_EQ(got.size(), expected.size());
      EXPECT_LE(test::rel_l2(got.data(), expected.data(), got.size()), tol);
    }
  }
}

TEST(ModelWeightsRoundTrip, UntiedConfigNeedsTheHead) {
  const ModelConfig tied = small_config(true), untied = small_config(false);
  const ModelWeights w = init_weights(tied, 1);
  test::TempDir dir;
  save(w, tied, dir.path() / "model.safetensors", DType::F32);
  auto archive = std::make_shared<const TensorArchive>(read_safetensors(dir.path() / "model.safetensors"));
  const std::string err = test::error_message([&] { load_weights(archive, untied); });
  EXPECT_NE(err.find("'lm_head.weight' is missing"), std::string::npos) << err;
}

}  // namespace
}  // namespace mamba2
