// Sequences packed back to back in one forward, each with the state row (slot) it starts from
// and leaves its state in. Built once per forward and shared by every layer's ops; for a
// forward on the GPU its index arrays are copied there once.
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "core/tensor.h"
#include "cuda/kernels.h"

namespace mamba2::ops {

class SeqBatch {
 public:
  // Every length positive; slots distinct. chunk_size: the scan's chunk length (decode: any).
  SeqBatch(std::span<const int64_t> lengths, std::span<const int64_t> slots, int64_t chunk_size, Device device);
  // One token for each slot (a decode step).
  static SeqBatch decode(std::span<const int64_t> slots, Device device);

  // A decode batch reused step after step (a captured decode graph reads the same device
  // arrays): the same number of sequences, now in these slots.
  void set_decode_slots(std::span<const int64_t> slots);

  int64_t count() const { return int64_t(lengths_.size()); }
  int64_t tokens() const { return starts_.back(); }
  int64_t chunk_size() const { return chunk_size_; }
  Device device() const { return device_; }
  std::span<const int64_t> lengths() const { return lengths_; }
  std::span<const int64_t> starts() const { return starts_; }  // count + 1 token offsets
  std::span<const int64_t> chunk_starts() const { return chunk_starts_; }  // count + 1 chunk offsets
  std::span<const int64_t> slots() const { return slots_; }
  // Fails, naming `op`, unless the batch suits operands of `tokens` rows on `device` and a state
  // buffer of `state_rows` slots.
  void check(const char* op, int64_t tokens, Device device, int64_t state_rows) const;
  // The batch as the CUDA kernels take it (a forward on the GPU only).
  cuda::PackedSeqs packed() const {
    return {count(),        tokens(),      chunk_starts_.back(), device_starts(), device_chunk_starts(),
            device_slots(), device_ptr(3), lengths_.empty() ? 0 : *std::max_element(lengths_.begin(), lengths_.end())};
  }
  // The same arrays on the GPU (a forward there only).
  const int64_t* device_starts() const { return device_ptr(0); }
  const int64_t* device_chunk_starts() const { return device_ptr(1); }
  const int64_t* device_slots() const { return device_ptr(2); }

 private:
  const int64_t* device_ptr(int which) const;

  std::vector<int64_t> lengths_, starts_, chunk_starts_, slots_;
  int64_t chunk_size_;
  Device device_;
  std::shared_ptr<void> device_arrays_;  // starts | chunk_starts | slots | chunk order (PackedSeqs)
};

}  // namespace mamba2::ops
