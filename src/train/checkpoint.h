// Training checkpoints: <out>/checkpoints/step-N/ holds config.json + model.safetensors (Hugging
// Face layout, fp32), tokenizer.json, optimizer.safetensors (AdamW moments) and trainer_state.json
// (step, data position, RNG state, config). A checkpoint is written into
// <out>/checkpoints/.tmp-step-N/, renamed to step-N, and only then named by <out>/latest (a
// one-line file, replaced atomically): a crash at any point leaves the previous latest whole.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "mamba2/config.h"
#include "model/weights.h"
#include "train/optimizer.h"

namespace mamba2::training {

struct CheckpointFiles {
  const ModelConfig* config;
  const ModelWeights* weights;
  const AdamWOptimizer* optimizer;
  std::filesystem::path tokenizer_json;
  std::string trainer_state_json;
};

// Writes the checkpoint of `step` and points <out>/latest at it, then removes all but the newest
// `keep` step folders (0: none removed). `after` (tests) is called after each stage: "model",
// "tokenizer", "optimizer", "state", "renamed"; what it throws aborts the save there. Returns
// the folder.
std::filesystem::path save_checkpoint(const std::filesystem::path& out, int64_t step, const CheckpointFiles& files,
                                      int64_t keep, const std::function<void(const std::string&)>& after = {});

// The folder <out>/latest names (checked to hold the files of a checkpoint), or empty when there
// is no latest.
std::filesystem::path latest_checkpoint(const std::filesystem::path& out);

// Removes leftovers of interrupted saves (<out>/checkpoints/.tmp-*).
void remove_partial_checkpoints(const std::filesystem::path& out);

constexpr const char* kTrainerStateFormat = "mamba2-trainer-state";

// trainer_state.json as read back for --resume. The file may be damaged or edited: every field
// is checked (type and range) and any problem is an error naming `where` and the key.
struct SavedTrainerState {
  int64_t step = 0, epoch = 0, tokens_seen = 0;
  uint64_t index = 0, epoch_key = 0;  // rows of the epoch taken; the epoch permutation's key
  std::string rng;                    // the std::mt19937_64 state as text
  std::optional<double> best_val_loss;
  double loss_scale = 1.0;  // f16 training's dynamic loss scale (absent in older states: 1)
  int64_t good_steps = 0;   // steps since it last changed
  std::string train_fingerprint, val_fingerprint;
  std::string config_json;  // the run's train config
};
SavedTrainerState parse_trainer_state(std::string_view text, const std::string& where);
// The checkpoint folder's trainer_state.json, read and parsed.
SavedTrainerState read_trainer_state(const std::filesystem::path& checkpoint_dir);

}  // namespace mamba2::training
