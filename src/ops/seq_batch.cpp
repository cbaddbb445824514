#include "ops/seq_batch.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "cuda/runtime.h"
#include "mamba2/error.h"

namespace mamba2::ops {

SeqBatch::SeqBatch(std::span<const int64_t> lengths, std::span<const int64_t> slots, int64_t chunk_size,
                   Device device)
    : lengths_(lengths.begin(), lengths.end()), slots_(slots.begin(), slots.end()), chunk_size_(chunk_size),
      device_(device) {
  if (lengths.size() != slots.size()) fail("[model] {} sequences but {} state slots", lengths.size(), slots.size());
  if (chunk_size <= 0) fail("[model] chunk_size must be positive, got {}", chunk_size);
  starts_.push_back(0);
  chunk_starts_.push_back(0);
  for (int64_t len : lengths) {
    if (len <= 0) fail("[model] sequence lengths must be positive, got {}", len);
    starts_.push_back(starts_.back() + len);
    chunk_starts_.push_back(chunk_starts_.back() + (len + chunk_size - 1) / chunk_size);
  }
  if (device == Device::CUDA) {
    std::vector<int64_t> all;
    all.insert(all.end(), starts_.begin(), starts_.end());
    all.insert(all.end(), chunk_starts_.begin(), chunk_starts_.end());
    all.insert(all.end(), slots_.begin(), slots_.end());
    // The chunk order: by index within the sequence, then by sequence (chunk ids grow with it).
    std::vector<std::pair<int64_t, int64_t>> order;  // (index within the sequence, chunk)
    for (size_t i = 0; i < lengths_.size(); ++i)
      for (int64_t c = chunk_starts_[i]; c < chunk_starts_[i + 1]; ++c) order.emplace_back(c - chunk_starts_[i], c);
    std::sort(order.begin(), order.end());
    for (const auto& kc : order) all.push_back(kc.second);
    device_arrays_ = cuda::allocate(all.size() * sizeof(int64_t), "sequence offsets");
    cuda::copy_to_device(device_arrays_.get(), all.data(), all.size() * sizeof(int64_t));
  }
}

SeqBatch SeqBatch::decode(std::span<const int64_t> slots, Device device) {
  const std::vector<int64_t> ones(slots.size(), 1);
  return SeqBatch(ones, slots, 1, device);
}

void SeqBatch::set_decode_slots(std::span<const int64_t> slots) {
  if (slots.size() != slots_.size()) fail("[model] {} slots for a decode batch of {}", slots.size(), slots_.size());
  slots_.assign(slots.begin(), slots.end());
  if (device_arrays_) {
    cuda::copy_to_device(const_cast<int64_t*>(device_slots()), slots_.data(), slots_.size() * sizeof(int64_t));
  }
}

void SeqBatch::check(const char* op, int64_t tokens, Device device, int64_t state_rows) const {
  if (this->tokens() != tokens) fail("[{}] the sequences hold {} tokens, the input {}", op, this->tokens(), tokens);
  if (device_ != device) fail("[{}] the sequence batch was made for the {}", op, device_name(device_));
  for (int64_t s : slots_)
    if (s < 0 || s >= state_rows) fail("[{}] slot {} outside the {} states", op, s, state_rows);
}

const int64_t* SeqBatch::device_ptr(int which) const {
  if (!device_arrays_) fail("[model] this sequence batch has no GPU copy");
  const int64_t* base = static_cast<const int64_t*>(device_arrays_.get());
  const size_t n = lengths_.size();
  const size_t offsets[] = {0, n + 1, 2 * (n + 1), 3 * n + 2};  // starts | chunk_starts | slots | order
  return base + offsets[which];
}

}  // namespace mamba2::ops
