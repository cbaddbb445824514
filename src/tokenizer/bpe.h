// The byte-level BPE model: one pre-tokenized word (raw bytes; the model's vocabulary is in
// the byte-level alphabet, one code point per byte) to token ids, merging pairs exactly as
// `tokenizers`' BPE does: a min-queue of (rank, position), stale entries checked against the
// merged id. Results of short words are cached (thread-safe).
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace mamba2::tok {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <class V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

struct BpeOptions {
  std::optional<std::string> unk_token;  // what bytes outside the vocabulary become (else dropped)
  bool fuse_unk = false;                 // consecutive unknown bytes become one unk token
  bool ignore_merges = false;            // a word that is itself in the vocabulary is one token
};

class BpeModel {
 public:
  // `vocab`: token string (byte-level alphabet) → id. `merges`: pairs of token strings, rank
  // order (a later duplicate of a pair wins, as in `tokenizers`). `where` names the file.
  BpeModel(const StringMap<int32_t>& vocab, const std::vector<std::pair<std::string, std::string>>& merges,
           BpeOptions options, const std::string& where);

  // Appends the ids of one word, given as raw bytes.
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;

 private:
  // (left id, right id) → (rank, merged id), open addressing.
  class PairMap {
   public:
    struct Entry {
      uint64_t key = kEmpty;
      uint32_t rank = 0;
      int32_t merged = 0;
    };
    void reserve(size_t pairs);
    void insert_or_assign(int32_t left, int32_t right, uint32_t rank, int32_t merged);
    const Entry* find(int32_t left, int32_t right) const {
      const uint64_t key = pack(left, right);
      for (uint64_t i = slot_of(key);; i = (i + 1) & mask_) {
        const Entry& e = entries_[i];
        if (e.key == key) return &e;
        if (e.key == kEmpty) return nullptr;
      }
    }

   private:
    static constexpr uint64_t kEmpty = ~uint64_t(0);  // ids are non-negative: no pair packs to this
    static uint64_t pack(int32_t left, int32_t right) { return uint64_t(uint32_t(left)) << 32 | uint32_t(right); }
    // Fibonacci hashing: the top bits of the product index a power-of-two table.
    uint64_t slot_of(uint64_t key) const { return (key * 0x9E3779B97F4A7C15ull) >> shift_; }
    std::vector<Entry> entries_{2};
    uint64_t mask_ = 1;
    int shift_ = 63;
  };

  // Word (raw bytes) → ids, sharded so concurrent encodes rarely wait on one another.
  class WordCache {
   public:
    bool find(std::string_view word, std::vector<int32_t>& out) const;
    void insert(std::string_view word, const int32_t* ids, size_t n) const;

   private:
    static constexpr size_t kShards = 16, kWordsPerShard = 8192;
    struct Shard {
      std::mutex mutex;
      StringMap<std::vector<int32_t>> words;
    };
    mutable std::array<Shard, kShards> shards_;
  };

  void merge(std::string_view word, std::vector<int32_t>& out) const;
  int32_t unk_id() const;

  std::array<int32_t, 256> byte_id_{};  // the single-byte tokens; -1 where the vocabulary lacks one
  PairMap pairs_;
  BpeOptions options_;
  std::optional<int32_t> unk_id_;
  StringMap<int32_t> whole_words_;  // raw bytes → id, for ignore_merges
  std::string where_;
  WordCache cache_;
};

}  // namespace mamba2::tok
