#include "serve/prefix_cache.h"

#include <algorithm>

#include "mamba2/error.h"
#include "mamba2/state.h"

namespace mamba2 {

PrefixCache::PrefixCache(int64_t budget_bytes, int64_t interval) : budget_(budget_bytes), interval_(interval) {
  if (budget_bytes < 0 || interval <= 0)
    fail("[serve] the prefix cache needs a budget ≥ 0 and a positive interval, got {} and {}", budget_bytes, interval);
}

const PrefixCache::Entry* PrefixCache::find(std::span<const int32_t> prefix, uint64_t hash) const {
  auto it = entries_.find({int64_t(prefix.size()), hash});
  if (it == entries_.end()) return nullptr;
  const Entry& e = it->second.first;
  return std::equal(e.tokens.begin(), e.tokens.end(), prefix.begin(), prefix.end()) ? &e : nullptr;
}

int64_t PrefixCache::lookup(std::span<const int32_t> tokens, int64_t max_len,
                            std::shared_ptr<const InferenceState>& out) {
  std::lock_guard lock(mutex_);
  if (!enabled()) return 0;
  // The hash at every boundary, then the longest boundary that is kept.
  std::vector<uint64_t> hashes;
  TokenHistory h;
  const int64_t last = std::min<int64_t>(max_len, int64_t(tokens.size())) / interval_ * interval_;
  for (int64_t L = interval_; L <= last; L += interval_) {
    h.extend(tokens.subspan(size_t(L - interval_), size_t(interval_)));
    hashes.push_back(h.hash);
  }
  for (int64_t i = int64_t(hashes.size()) - 1; i >= 0; --i) {
    const int64_t L = (i + 1) * interval_;
    const Key key{L, hashes[size_t(i)]};
    auto it = entries_.find(key);
    if (it == entries_.end()) continue;
    const Entry& e = it->second.first;
    if (!std::equal(e.tokens.begin(), e.tokens.end(), tokens.begin(), tokens.begin() + L)) continue;
    lru_.splice(lru_.begin(), lru_, it->second.second);
    out = e.state;
    ++stats_.hits;
    stats_.cached_tokens += L;
    return L;
  }
  ++stats_.misses;
  return 0;
}

bool PrefixCache::contains(std::span<const int32_t> prefix) const {
  std::lock_guard lock(mutex_);
  TokenHistory h;
  h.extend(prefix);
  return find(prefix, h.hash) != nullptr;
}

void PrefixCache::insert(std::span<const int32_t> prefix, std::shared_ptr<const InferenceState> state) {
  std::lock_guard lock(mutex_);
  if (!enabled() || prefix.empty() || int64_t(prefix.size()) % interval_) return;
  TokenHistory h;
  h.extend(prefix);
  if (find(prefix, h.hash)) return;
  Entry e{{prefix.begin(), prefix.end()}, std::move(state), 0};
  e.bytes = int64_t(prefix.size() * sizeof(int32_t));
  for (const auto* layers : {&e.state->conv, &e.state->ssm})
    for (const Tensor& t : *layers) e.bytes += int64_t(t.nbytes());
  if (e.bytes > budget_) return;
  const Key key{int64_t(prefix.size()), h.hash};
  if (auto old = entries_.find(key); old != entries_.end()) {  // another prefix with this hash: replaced
    stats_.bytes -= old->second.first.bytes;
    lru_.erase(old->second.second);
    entries_.erase(old);
  }
  while (stats_.bytes + e.bytes > budget_ && !lru_.empty()) {
    auto victim = entries_.find(lru_.back());
    stats_.bytes -= victim->second.first.bytes;
    entries_.erase(victim);
    lru_.pop_back();
  }
  lru_.push_front(key);
  stats_.bytes += e.bytes;
  entries_.emplace(key, std::make_pair(std::move(e), lru_.begin()));
  stats_.entries = int64_t(entries_.size());
}

PrefixCache::Stats PrefixCache::stats() const {
  std::lock_guard lock(mutex_);
  Stats s = stats_;
  s.entries = int64_t(entries_.size());
  return s;
}

}  // namespace mamba2
