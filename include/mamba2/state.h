// State snapshots: a sequence's whole context is its fixed-size recurrent state, so it can be
// saved at any token, restored into any slot, forked, and continued exactly — continuing from a
// restored state gives the bits continuing without the save and restore gives (same device and
// compute dtype).
#pragma once
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

namespace mamba2 {

class Model;
class InferenceState;

// The tokens a state has consumed: how many, and an FNV-1a 64 hash of their ids (each as 4
// little-endian bytes) in order, which extends token by token.
struct TokenHistory {
  int64_t count = 0;
  uint64_t hash = 0xcbf29ce484222325ull;  // FNV-1a's offset basis: no tokens
  void extend(std::span<const int32_t> tokens);
  std::string hash_hex() const;  // 16 hex digits
};

// One sequence's state on the host, detached from any batch. fp32 on every device.
struct StateSnapshot {
  std::string model;           // Model::fingerprint() of the model that made it
  std::string dtype, device;   // the compute dtype and device that made it ("bf16", "cuda")
  TokenHistory history;
  std::vector<std::vector<float>> conv;  // per layer: (d_conv - 1, conv_dim), oldest input first
  std::vector<std::vector<float>> ssm;   // per layer: (nheads, headdim, d_state)
};

// Slot `slot` of `state` (made by `model`) as a snapshot; `history`: what it has consumed.
StateSnapshot snapshot_state(const Model& model, const InferenceState& state, int64_t slot,
                             const TokenHistory& history);
// Writes the snapshot into slot `slot`; refuses one made by another model (fingerprint) or of
// other dimensions.
void restore_state(const Model& model, InferenceState& state, int64_t slot, const StateSnapshot& snapshot);
// Slot `to_slot` of `to` becomes a copy of slot `from_slot` of `from` (both continue independently
// from there): states of one model on one device, copied there (no round trip through the host
// on the GPU). `from` and `to` may be the same state.
void copy_state(const InferenceState& from, int64_t from_slot, InferenceState& to, int64_t to_slot);
// Slot `slot` becomes a fresh sequence (zeros).
void clear_state(InferenceState& state, int64_t slot);

// The file: safetensors with tensors conv.<layer> (d_conv - 1, conv_dim) and ssm.<layer>
// (nheads, headdim, d_state), F32, and __metadata__ {format: "mamba2.cpp state", version: "1",
// model, dtype, device, n_layer, tokens, tokens_fnv1a64}. Saving is atomic (never a half-written
// file); loading checks the format, every tensor and the metadata, naming the file and what is
// wrong.
void save_state(const std::filesystem::path& path, const StateSnapshot& snapshot);
StateSnapshot load_state(const std::filesystem::path& path);

}  // namespace mamba2
