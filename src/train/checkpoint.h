// Training checkpoints: <out>/checkpoints/step-N/ holds config.json + model.safetensors (Hugging
// Face layout, fp32), tokenizer.json, optimizer.safetensors (AdamW moments) and trainer_state.json
// (step, data position, RNG state, config). A checkpoint is written into
// <out>/checkpoints/.tmp-step-N/, renamed to step-N, and only then named by <out>/latest (a
// one-line file, replaced atomically): a crash at any point leaves the previous latest whole.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

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

}  // namespace mamba2::training
