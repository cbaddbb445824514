#include "tokenizer/bpe.h"

#include <algorithm>

#include "mamba2/error.h"
#include "tokenizer/unicode.h"

namespace mamba2::tok {

namespace {

// Words longer than this are merged afresh each time (`tokenizers` caches below 256 too).
constexpr size_t kMaxCachedBytes = 256;

struct Symbol {
  int32_t id;
  int32_t prev, next;  // neighbours still in the word; -1 at the ends
  int32_t len;         // bytes covered; 0 once merged into its left neighbour
};

// A pair that may merge: the one of lowest rank, then leftmost, goes first.
struct Candidate {
  uint64_t order;  // rank << 32 | position of the left symbol
  int32_t merged;
};
struct LaterCandidate {
  bool operator()(const Candidate& a, const Candidate& b) const { return a.order > b.order; }
};

}  // namespace

void BpeModel::PairMap::reserve(size_t pairs) {
  size_t size = 2;
  int bits = 1;
  while (size < 2 * pairs) size *= 2, ++bits;
  entries_.assign(size, Entry{});
  mask_ = size - 1;
  shift_ = 64 - bits;
}

void BpeModel::PairMap::insert_or_assign(int32_t left, int32_t right, uint32_t rank, int32_t merged) {
  const uint64_t key = pack(left, right);
  for (uint64_t i = slot_of(key);; i = (i + 1) & mask_) {
    Entry& e = entries_[i];
    if (e.key == key || e.key == kEmpty) {
      e = {key, rank, merged};
      return;
    }
  }
}

bool BpeModel::WordCache::find(std::string_view word, std::vector<int32_t>& out) const {
  Shard& shard = shards_[StringHash{}(word) % kShards];
  const std::lock_guard lock(shard.mutex);
  const auto it = shard.words.find(word);
  if (it == shard.words.end()) return false;
  out.insert(out.end(), it->second.begin(), it->second.end());
  return true;
}

void BpeModel::WordCache::insert(std::string_view word, const int32_t* ids, size_t n) const {
  Shard& shard = shards_[StringHash{}(word) % kShards];
  const std::lock_guard lock(shard.mutex);
  // A full shard keeps what it has: the first words of a text are its most frequent ones.
  if (shard.words.size() < kWordsPerShard) shard.words.try_emplace(std::string(word), ids, ids + n);
}

BpeModel::BpeModel(const StringMap<int32_t>& vocab, const std::vector<std::pair<std::string, std::string>>& merges,
                   BpeOptions options, const std::string& where)
    : options_(std::move(options)), where_(where) {
  const ByteLevelAlphabet& alphabet = byte_level_alphabet();
  for (size_t b = 0; b < 256; ++b) {
    std::string symbol;
    append_utf8(symbol, alphabet.char_of[b]);
    const auto it = vocab.find(symbol);
    byte_id_[b] = it == vocab.end() ? -1 : it->second;
  }
  pairs_.reserve(merges.size());
  auto id_of = [&](const std::string& token, size_t rank) {
    const auto it = vocab.find(token);
    if (it == vocab.end()) fail("[tokenizer] {}: merge {} uses '{}', which is not in the vocabulary", where, rank, token);
    return it->second;
  };
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [left, right] = merges[rank];
    const int32_t a = id_of(left, rank), b = id_of(right, rank), merged = id_of(left + right, rank);
    pairs_.insert_or_assign(a, b, uint32_t(rank), merged);
  }
  if (options_.unk_token) {
    const auto it = vocab.find(*options_.unk_token);
    if (it != vocab.end()) unk_id_ = it->second;
  }
  if (options_.ignore_merges) {
    // Words reach the model as raw bytes: only tokens made of byte-level code points can be one.
    for (const auto& [token, id] : vocab)
      if (std::optional<std::string> bytes = byte_level_decode(token)) whole_words_.emplace(std::move(*bytes), id);
  }
}

int32_t BpeModel::unk_id() const {
  // `tokenizers` reports this only when a byte needs the unknown token, not at load.
  if (!unk_id_) fail("[tokenizer] {}: unk_token '{}' is not in the vocabulary", where_, *options_.unk_token);
  return *unk_id_;
}

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (word.size() == 1) {
    const int32_t id = byte_id_[static_cast<unsigned char>(word[0])];
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  if (options_.ignore_merges) {
    const auto it = whole_words_.find(word);
    if (it != whole_words_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedBytes;
  if (cacheable && cache_.find(word, out)) return;
  const size_t first = out.size();
  merge(word, out);
  if (cacheable) cache_.insert(word, out.data() + first, out.size() - first);
}

void BpeModel::merge(std::string_view word, std::vector<int32_t>& out) const {
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<Candidate> queue;
  symbols.clear();
  queue.clear();
  auto add = [&](int32_t id, int32_t len) {
    const auto n = int32_t(symbols.size());
    if (n > 0) symbols.back().next = n;
    symbols.push_back({id, n - 1, -1, len});
  };
  // Bytes outside the vocabulary: the unknown token (fused into one when asked), else dropped.
  std::optional<Symbol> unk;
  for (const char c : word) {
    const int32_t id = byte_id_[static_cast<unsigned char>(c)];
    if (id >= 0) {
      if (unk) add(unk->id, unk->len), unk.reset();
      add(id, 1);
    } else if (options_.unk_token) {
      if (unk && options_.fuse_unk) {
        unk->len += 1;
      } else {
        if (unk) add(unk->id, unk->len);
        unk = Symbol{unk_id(), 0, 0, 1};
      }
    }
  }
  if (unk) add(unk->id, unk->len);

  auto push = [&](const PairMap::Entry& e, int32_t pos) {
    queue.push_back({uint64_t(e.rank) << 32 | uint32_t(pos), e.merged});
    std::push_heap(queue.begin(), queue.end(), LaterCandidate{});
  };
  for (size_t i = 0; i + 1 < symbols.size(); ++i)
    if (const PairMap::Entry* e = pairs_.find(symbols[i].id, symbols[i + 1].id))
      queue.push_back({uint64_t(e->rank) << 32 | uint32_t(i), e->merged});
  std::make_heap(queue.begin(), queue.end(), LaterCandidate{});

  while (!queue.empty()) {
    std::pop_heap(queue.begin(), queue.end(), LaterCandidate{});
    const Candidate top = queue.back();
    queue.pop_back();
    const auto pos = int32_t(top.order & 0xFFFFFFFFu);
    Symbol& s = symbols[size_t(pos)];
    if (s.len == 0 || s.next < 0) continue;
    Symbol& right = symbols[size_t(s.next)];
    // An entry is stale when its pair changed since it was queued; like `tokenizers`, judge that
    // by the merged id alone.
    const PairMap::Entry* now = pairs_.find(s.id, right.id);
    if (!now || now->merged != top.merged) continue;
    s.id = top.merged;
    s.len += right.len;
    s.next = right.next;
    right.len = 0;
    if (s.next >= 0) symbols[size_t(s.next)].prev = pos;
    if (s.prev >= 0)
      if (const PairMap::Entry* e = pairs_.find(symbols[size_t(s.prev)].id, s.id)) push(*e, s.prev);
    if (s.next >= 0)
      if (const PairMap::Entry* e = pairs_.find(s.id, symbols[size_t(s.next)].id)) push(*e, pos);
  }
  for (const Symbol& s : symbols)
    if (s.len != 0) out.push_back(s.id);
}

}  // namespace mamba2::tok
