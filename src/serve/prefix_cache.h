// Prefix state cache: states at chunk boundaries of earlier prompts, keyed by the tokens before
// them. A prefill resumed from the state at a chunk boundary does the arithmetic of one pass
// (tests/test_state.cpp), so a hit changes no bit of what follows. Each state is kept as a state
// of one sequence on the model's device (GPU memory on the GPU: taking and resuming one is a copy
// there, never through the host). Entries are kept within a byte budget, the least recently used
// going first.
#pragma once
#include <cstdint>
#include <list>
#include <mutex>
#include <span>
#include <unordered_map>
#include <vector>

#include <memory>

#include "model/inference_state.h"

namespace mamba2 {

class PrefixCache {
 public:
  // budget_bytes 0: nothing is kept. `interval`: the boundaries (a multiple of the chunk size).
  PrefixCache(int64_t budget_bytes, int64_t interval);
  int64_t interval() const { return interval_; }
  bool enabled() const { return budget_ > 0; }

  // The longest cached prefix of `tokens` of at most max_len tokens: its length (0: none), its
  // state (one sequence, slot 0) into `out`. Counts a hit or a miss.
  int64_t lookup(std::span<const int32_t> tokens, int64_t max_len, std::shared_ptr<const InferenceState>& out);
  // Keeps `state` (one sequence) as the state after `prefix` (a whole number of intervals long).
  void insert(std::span<const int32_t> prefix, std::shared_ptr<const InferenceState> state);
  // Whether the state after `prefix` is kept (no hit counted).
  bool contains(std::span<const int32_t> prefix) const;

  struct Stats {
    int64_t hits = 0, misses = 0, cached_tokens = 0, entries = 0, bytes = 0;
  };
  Stats stats() const;

 private:
  struct Entry {
    std::vector<int32_t> tokens;
    std::shared_ptr<const InferenceState> state;
    int64_t bytes = 0;
  };
  using Key = std::pair<int64_t, uint64_t>;  // length, FNV-1a hash of the tokens
  struct KeyHash {
    size_t operator()(const Key& k) const { return size_t(k.second ^ uint64_t(k.first) * 0x9e3779b97f4a7c15ull); }
  };
  const Entry* find(std::span<const int32_t> prefix, uint64_t hash) const;

  int64_t budget_, interval_;
  mutable std::mutex mutex_;
  std::list<Key> lru_;  // most recent first
  std::unordered_map<Key, std::pair<Entry, std::list<Key>::iterator>, KeyHash> entries_;
  Stats stats_;
};

}  // namespace mamba2
