// State snapshots: continuing from a saved and restored state gives the bits continuing in memory
// gives; forks continue independently; another model's state, and corrupt or foreign files, are
// refused with a message naming the file.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "io/safetensors.h"
#include "mamba2/config.h"
#include "mamba2/error.h"
#include "mamba2/model.h"
#include "mamba2/state.h"
#include "model/inference_state.h"
#include "model/weights.h"
#include "test_files.h"
#include "test_support.h"

namespace mamba2 {
namespace {

namespace fs = std::filesystem;

ModelConfig state_config() { return test::small_config(100); }

Model small_model(uint64_t seed) {
  const ModelConfig c = state_config();
  ModelWeights w = init_weights(c, seed);
  test::perturb_weights(w, seed + 1);
  return Model(c, std::make_shared<const ModelWeights>(std::move(w)));
}


// Prefill `more` into `slot`, then `steps` greedy decode steps: every logit on the way.
std::vector<float> continue_slot(const Model& m, InferenceState& state, int64_t slot, const std::vector<int32_t>& more,
                                 int steps) {
  // A state of one sequence in the slot's place: prefill continues sequence i from slot i.
  auto one = m.new_state(1);
  for (size_t l = 0; l < state.conv.size(); ++l) {
    std::memcpy(one->conv[l].data(), state.conv[l].data() + slot * state.conv[l].dim(1),
                sizeof(float) * size_t(state.conv[l].dim(1)));
    std::memcpy(one->ssm[l].data(), state.ssm[l].data() + slot * state.ssm[l].dim(1),
                sizeof(float) * size_t(state.ssm[l].dim(1)));
  }
  std::vector<float> all, logits;
  const std::vector<int64_t> len{int64_t(more.size())};
  m.prefill(more, len, one.get(), false, logits);
  all = logits;
  for (int s = 0; s < steps; ++s) {
    const int32_t next = int32_t(std::max_element(logits.begin(), logits.begin() + m.config().vocab_size) - logits.begin());
    m.decode(std::vector<int32_t>{next}, std::vector<int64_t>{0}, *one, logits);
    all.insert(all.end(), logits.begin(), logits.end());
  }
  return all;
}

TEST(State, TokenHistoryIsFnv1a64OfTheLittleEndianIds) {
  // Values from a Python FNV-1a 64 that reproduces the published vectors ("" cbf29ce484222325,
  // "a" af63dc4c8601ec8c, "foobar" 85944171f73967e8) over struct.pack('<i...', ids).
  TokenHistory h;
  EXPECT_EQ(h.hash_hex(), "cbf29ce484222325");
  h.extend(std::vector<int32_t>{1, -2});
  EXPECT_EQ(h.hash_hex(), "222ad8e9836cc591");
  EXPECT_EQ(h.count, 2);
  TokenHistory a, b;
  a.extend(std::vector<int32_t>{50276, 0, 7});
  b.extend(std::vector<int32_t>{50276});
  b.extend(std::vector<int32_t>{0, 7});
  EXPECT_EQ(a.hash_hex(), "39181833d836ed2a");
  EXPECT_EQ(b.hash_hex(), a.hash_hex()) << "extending in pieces is extending at once";
}

TEST(State, ContinuingFromASavedStateGivesTheSameBits) {
  const Model m = small_model(11);
  test::TempDir dir;
  const std::vector<int32_t> prompt{5, 17, 3, 99, 42, 8, 8, 1, 60, 2, 33, 71, 4, 9, 15, 16, 23, 42, 0, 7};
  const std::vector<int32_t> more{12, 13, 14, 88, 21};
  auto state = m.new_state(3);
  std::vector<float> logits;
  // Sequence 0 is the one saved; 1 and 2 share the batch and must not matter.
  std::vector<int32_t> ids = prompt;
  ids.insert(ids.end(), {1, 2, 3, 4, 5, 6, 7});
  m.prefill(ids, std::vector<int64_t>{int64_t(prompt.size()), 3, 4}, state.get(), false, logits);
  TokenHistory h;
  h.extend(prompt);
  save_state(dir.path() / "s.safetensors", snapshot_state(m, *state, 0, h));
  const StateSnapshot loaded = load_state(dir.path() / "s.safetensors");
  EXPECT_EQ(loaded.model, m.fingerprint());
  EXPECT_EQ(loaded.history.count, int64_t(prompt.size()));
  EXPECT_EQ(loaded.history.hash, h.hash);
  EXPECT_EQ(loaded.dtype, "F32");
  EXPECT_EQ(loaded.device, "cpu");

  // Restored into another slot of a fresh state, with other sequences beside it.
  auto restored = m.new_state(4);
  restore_state(m, *restored, 2, loaded);
  const auto want = continue_slot(m, *state, 0, more, 6);
  const auto got = continue_slot(m, *restored, 2, more, 6);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)), 0);
  // And the file holds the state's exact fp32 values.
  for (size_t l = 0; l < state->conv.size(); ++l)
    EXPECT_EQ(std::memcmp(restored->ssm[l].data() + 2 * restored->ssm[l].dim(1), state->ssm[l].data(),
                          sizeof(float) * size_t(state->ssm[l].dim(1))),
              0);
}

TEST(State, CopiedSlotsContinueIndependently) {
  const Model m = small_model(12);
  const std::vector<int32_t> prompt{3, 1, 4, 1, 5, 9, 2, 6};
  auto state = m.new_state(2);
  std::vector<float> logits;
  m.prefill(prompt, std::vector<int64_t>{int64_t(prompt.size())}, state.get(), false, logits);
  copy_state(*state, 0, *state, 1);
  // Out to a state of its own and back into the first slot (the prefix cache's round trip).
  auto kept = m.new_state(1);
  copy_state(*state, 0, *kept, 0);
  const auto a = continue_slot(m, *state, 0, {7, 7}, 3);
  const auto b = continue_slot(m, *state, 1, {7, 7}, 3);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
  copy_state(*kept, 0, *state, 0);
  const auto c = continue_slot(m, *state, 0, {7, 7}, 3);
  EXPECT_EQ(std::memcmp(a.data(), c.data(), a.size() * sizeof(float)), 0);
  // Advancing one slot leaves the other as it was.
  std::vector<float> before(size_t(state->ssm[0].dim(1)));
  std::memcpy(before.data(), state->ssm[0].data(), before.size() * sizeof(float));
  m.decode(std::vector<int32_t>{11}, std::vector<int64_t>{1}, *state, logits);
  EXPECT_EQ(std::memcmp(before.data(), state->ssm[0].data(), before.size() * sizeof(float)), 0);
  EXPECT_NE(test::error_message([&] { copy_state(*state, 0, *state, 2); }).find("[state] copy into slot 2 outside"),
            std::string::npos);
  ModelConfig narrower = state_config();
  narrower.d_state = 8;
  auto foreign = make_state(narrower, 1);
  EXPECT_NE(test::error_message([&] { copy_state(*state, 0, *foreign, 0); }).find("[state] copy between states of other"),
            std::string::npos);
}

// A prefill resumed from the state at a chunk boundary does the arithmetic of one pass: the same
// logits and final state, bit for bit. Snapshots taken at boundaries are therefore exact prefix
// caches (the server relies on it).
TEST(State, PrefillResumedAtAChunkBoundaryGivesTheBitsOfOnePass) {
  const Model m = small_model(16);
  const int64_t Q = m.config().chunk_size;
  std::vector<int32_t> prompt;
  for (int64_t i = 0; i < 3 * Q + 5; ++i) prompt.push_back(int32_t((i * 37 + 11) % 100));
  auto one = m.new_state(1);
  std::vector<float> want, got, ignored;
  m.prefill(prompt, std::vector<int64_t>{int64_t(prompt.size())}, one.get(), false, want);
  for (int64_t cut : {Q, 2 * Q, 3 * Q}) {
    auto resumed = m.new_state(1);
    const std::span<const int32_t> all(prompt);
    m.prefill(all.first(size_t(cut)), std::vector<int64_t>{cut}, resumed.get(), false, ignored);
    m.prefill(all.subspan(size_t(cut)), std::vector<int64_t>{int64_t(prompt.size()) - cut}, resumed.get(), false, got);
    EXPECT_EQ(got, want) << "cut at " << cut;
    for (size_t l = 0; l < one->ssm.size(); ++l) {
      EXPECT_EQ(std::memcmp(resumed->ssm[l].data(), one->ssm[l].data(), size_t(one->ssm[l].nbytes())), 0) << cut;
      EXPECT_EQ(std::memcmp(resumed->conv[l].data(), one->conv[l].data(), size_t(one->conv[l].nbytes())), 0) << cut;
    }
  }
}

TEST(State, AnotherModelsStateIsRefused) {
  const Model m = small_model(13), other = small_model(14);
  EXPECT_NE(m.fingerprint(), other.fingerprint());
  EXPECT_EQ(m.fingerprint(), small_model(13).fingerprint()) << "the same weights, the same fingerprint";
  EXPECT_EQ(m.fingerprint().size(), 16u);
  auto state = m.new_state(1);
  const StateSnapshot s = snapshot_state(m, *state, 0, {});
  auto other_state = other.new_state(1);
  EXPECT_NE(test::error_message([&] { restore_state(other, *other_state, 0, s); }).find("[state] the state was made by model "),
            std::string::npos);
  EXPECT_NE(test::error_message([&] { snapshot_state(m, *state, 1, {}); }).find("outside the state's 1 sequences"),
            std::string::npos);
}

TEST(State, CorruptAndForeignFilesAreRefusedNamingTheFile) {
  const Model m = small_model(15);
  test::TempDir dir;
  auto state = m.new_state(1);
  const StateSnapshot good = snapshot_state(m, *state, 0, {});
  const fs::path p = dir.path() / "bad.safetensors";
  auto expect_error = [&](const std::string& want) {
    const std::string e = test::error_message([&] { load_state(p); });
    EXPECT_NE(e.find(want), std::string::npos) << e;
    EXPECT_NE(e.find(p.string()), std::string::npos) << e;
  };
  // A weights file is not a state.
  const float v[2] = {1, 2};
  write_safetensors(p, {{"w", DType::F32, {2}, v}});
  expect_error("metadata 'format' is missing: not a state file");
  const std::map<std::string, std::string> meta{{"format", "mamba2.cpp state"}, {"version", "1"},
                                                {"model", good.model},           {"dtype", "F32"},
                                                {"device", "cpu"},               {"n_layer", "2"},
                                                {"tokens", "0"},                 {"tokens_fnv1a64", "cbf29ce484222325"}};
  auto with = [&](const std::string& key, const std::string& value) {
    auto m2 = meta;
    m2[key] = value;
    return m2;
  };
  std::vector<TensorToWrite> tensors;
  for (int l = 0; l < 2; ++l) {
    tensors.push_back({"conv." + std::to_string(l), DType::F32, {int64_t(good.conv[size_t(l)].size())}, good.conv[size_t(l)].data()});
    tensors.push_back({"ssm." + std::to_string(l), DType::F32, {int64_t(good.ssm[size_t(l)].size())}, good.ssm[size_t(l)].data()});
  }
  write_safetensors(p, tensors, with("version", "2"));
  expect_error("version 2 of the state format");
  write_safetensors(p, tensors, with("format", "other"));
  expect_error("format is 'other'");
  write_safetensors(p, tensors, with("tokens", "-3"));
  expect_error("metadata 'tokens' is '-3', not a count");
  write_safetensors(p, tensors, with("tokens_fnv1a64", "xyz"));
  expect_error("'tokens_fnv1a64' is 'xyz'");
  write_safetensors(p, tensors, with("n_layer", "3"));
  expect_error("4 tensors for 3 layers");
  auto bf16 = tensors;
  bf16[1].dtype = DType::BF16;
  write_safetensors(p, bf16, meta);
  expect_error("expected a 1-D F32 row");
  auto renamed = tensors;
  renamed[3].name = "ssm.7";
  write_safetensors(p, renamed, meta);
  expect_error("tensor 'ssm.1' is missing");
  // Well-formed but of other widths: loading works, restoring into this model does not.
  auto narrow = tensors;
  narrow[0].shape = {3};
  write_safetensors(p, narrow, meta);
  const StateSnapshot s = load_state(p);
  EXPECT_NE(test::error_message([&] { restore_state(m, *state, 0, s); }).find("widths do not match"), std::string::npos);
  // Truncated: the safetensors reader names the file.
  write_safetensors(p, tensors, meta);
  fs::resize_file(p, fs::file_size(p) - 5);
  expect_error("outside the data section");
  // The good file loads.
  write_safetensors(p, tensors, meta);
  EXPECT_NO_THROW(restore_state(m, *state, 0, load_state(p)));
}

}  // namespace
}  // namespace mamba2
