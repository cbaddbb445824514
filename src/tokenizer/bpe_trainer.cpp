// The BPE trainer: word counts from the pre-tokenizer, then greedy merges with incremental pair
// counts. A max-heap with lazy deletion picks the next pair: an entry whose count no longer
// matches the current one is stale and skipped.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_map>

#include "core/file.h"
#include "core/utf8.h"
#include "mamba2/error.h"
#include "mamba2/tokenizer.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/unicode.h"

namespace mamba2 {

namespace {

using Pair = uint64_t;  // (left id << 32) | right id
Pair pair_of(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

struct Word {
  std::vector<int32_t> symbols;
  int64_t count = 0;
};

struct HeapEntry {
  int64_t count;
  Pair pair;
  bool operator<(const HeapEntry& o) const { return count < o.count || (count == o.count && pair > o.pair); }
};

std::unordered_map<std::string, int64_t> count_words(const std::vector<std::filesystem::path>& files) {
  tok::PreTokenizer pre;
  pre.byte_level_split.emplace(tok::onig_to_pcre2(tok::kGpt2Pattern, "GPT-2 pattern"), "GPT-2 pattern");
  std::unordered_map<std::string, int64_t> counts;
  std::string text, normalized, scratch;
  for (const auto& path : files) {
    text = read_file(path, "[train_bpe]");
    if (const size_t bad = utf8::first_invalid(text); bad != std::string::npos)
      fail("[train_bpe] {}: invalid UTF-8 at byte {}", path.string(), bad);
    const std::string_view view = tok::nfc(text, normalized) ? std::string_view(normalized) : std::string_view(text);
    if (!view.empty()) pre.for_each_word(view, scratch, [&](std::string_view w) { ++counts[std::string(w)]; });
  }
  return counts;
}

}  // namespace

std::string train_bpe(const std::vector<std::filesystem::path>& files, const BpeTrainOptions& options) {
  const int64_t n_special = int64_t(options.special_tokens.size());
  if (files.empty()) fail("[train_bpe] no input files");
  if (options.vocab_size < n_special + 256)
    fail("[train_bpe] vocab_size {} is below the {} special tokens + 256 bytes", options.vocab_size, n_special);
  if (options.min_frequency < 1) fail("[train_bpe] min_frequency must be ≥ 1, got {}", options.min_frequency);

  // Symbols 0..255 are the bytes; a merge makes a new symbol unless two others already made
  // the same bytes (then the merge maps to that one, as `tokenizers` looks merges up by string).
  std::vector<std::string> bytes_of(256);
  std::unordered_map<std::string, int32_t> symbol_of;
  for (int b = 0; b < 256; ++b) symbol_of[bytes_of[size_t(b)] = std::string(1, char(b))] = b;
  std::vector<Word> words;
  for (auto& [w, count] : count_words(files)) {
    Word word{{}, count};
    for (unsigned char ch : w) word.symbols.push_back(ch);
    words.push_back(std::move(word));
  }
  // Hash-map order is not deterministic across libraries: fix the word order.
  std::sort(words.begin(), words.end(), [](const Word& a, const Word& b) { return a.symbols < b.symbols; });

  std::unordered_map<Pair, int64_t> pair_count;
  std::unordered_map<Pair, std::vector<int32_t>> where;  // words holding the pair (may be stale)
  for (size_t i = 0; i < words.size(); ++i)
    for (size_t j = 0; j + 1 < words[i].symbols.size(); ++j) {
      const Pair p = pair_of(words[i].symbols[j], words[i].symbols[j + 1]);
      pair_count[p] += words[i].count;
      where[p].push_back(int32_t(i));
    }
  std::priority_queue<HeapEntry> heap;
  for (const auto& [p, c] : pair_count) heap.push({c, p});

  std::vector<std::pair<int32_t, int32_t>> merges;
  std::vector<int64_t> visited(words.size(), -1);
  std::unordered_map<Pair, int64_t> delta;
  while (n_special + int64_t(bytes_of.size()) < options.vocab_size && !heap.empty()) {
    const HeapEntry top = heap.top();
    heap.pop();
    const auto it = pair_count.find(top.pair);
    if (it == pair_count.end() || it->second != top.count) continue;  // stale
    if (top.count < options.min_frequency) break;
    const int32_t a = int32_t(top.pair >> 32), b = int32_t(top.pair & 0xffffffffu);
    const int64_t stamp = int64_t(merges.size());
    merges.emplace_back(a, b);
    std::string joined = bytes_of[size_t(a)] + bytes_of[size_t(b)];
    auto [sym, fresh] = symbol_of.try_emplace(joined, int32_t(bytes_of.size()));
    if (fresh) bytes_of.push_back(std::move(joined));
    const int32_t merged = sym->second;
    delta.clear();
    std::vector<int32_t> holders = std::move(where[top.pair]);
    where.erase(top.pair);
    for (int32_t wi : holders) {
      if (visited[size_t(wi)] == stamp) continue;
      visited[size_t(wi)] = stamp;
      Word& w = words[size_t(wi)];
      std::vector<int32_t> out;
      out.reserve(w.symbols.size());
      bool changed = false;
      for (size_t j = 0; j < w.symbols.size(); ++j) {
        if (j + 1 < w.symbols.size() && w.symbols[j] == a && w.symbols[j + 1] == b) {
          out.push_back(merged);
          ++j;
          changed = true;
        } else {
          out.push_back(w.symbols[j]);
        }
      }
      if (!changed) continue;
      for (size_t j = 0; j + 1 < w.symbols.size(); ++j) delta[pair_of(w.symbols[j], w.symbols[j + 1])] -= w.count;
      for (size_t j = 0; j + 1 < out.size(); ++j) {
        const Pair p = pair_of(out[j], out[j + 1]);
        delta[p] += w.count;
        if (out[j] == merged || out[j + 1] == merged) where[p].push_back(wi);
      }
      w.symbols = std::move(out);
    }
    for (const auto& [p, d] : delta) {
      if (d == 0) continue;
      const int64_t c = pair_count[p] += d;
      if (c <= 0)
        pair_count.erase(p);
      else
        heap.push({c, p});
    }
  }

  // tokenizer.json: special tokens, then the bytes in byte order, then the merges in order.
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object(), merge_list = nlohmann::ordered_json::array();
  nlohmann::ordered_json added = nlohmann::ordered_json::array();
  int64_t id = 0;
  for (const std::string& s : options.special_tokens) {
    if (s.empty() || utf8::first_invalid(s) != std::string::npos)
      fail("[train_bpe] special token '{}' is empty or not UTF-8", s);
    added.push_back({{"id", id}, {"content", s}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                     {"normalized", false}, {"special", true}});
    vocab[s] = id++;
  }
  for (const std::string& token : bytes_of) vocab[tok::byte_level_encode(token)] = id++;
  if (int64_t(vocab.size()) != id) fail("[train_bpe] a special token is also one of the learned tokens");
  for (const auto& [a, b] : merges)
    merge_list.push_back({tok::byte_level_encode(bytes_of[size_t(a)]), tok::byte_level_encode(bytes_of[size_t(b)])});
  const nlohmann::ordered_json byte_level = {
      {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  const nlohmann::ordered_json j = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", {{"type", "NFC"}}},
      {"pre_tokenizer", byte_level},
      {"post_processor", byte_level},
      {"decoder", byte_level},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
        {"vocab", vocab}, {"merges", merge_list}}}};
  return j.dump();
}

}  // namespace mamba2
