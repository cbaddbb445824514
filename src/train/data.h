// Training data: text files tokenized once into a memory-mapped token file, and the rows the
// trainer reads from it.
//
// A corpus "<dir>/<name>" is three files, written atomically (the .json last, so a crash leaves
// either the old corpus or none):
//   <name>.tokens  the ids, little-endian uint16 (tokenizer vocab ≤ 65536) or uint32
//   <name>.docs    uint64 little-endian: the position where each document starts
//   <name>.json    what it holds and what it was made from (tokenizer hash, source files with
//                  sizes and modification times), so that a changed corpus is re-tokenized
// Each file is one document. With an EOS token the stream is EOS d1 EOS d2 ... EOS dn EOS: each
// document starts at the EOS before it, and its last token predicts the EOS after it, which is
// also the (start) token of the next document. Empty documents are skipped.
//
// Rows: row k of a range is the seq_len tokens starting at begin + k·(seq_len - 1), so that rows
// overlap by one token and every next-token transition of the range is predicted once per epoch.
// A row is cut into pieces at document starts, each piece a sequence of its own for
// lm_loss_and_grad (the conv and the state restart there, as seq_idx does); with an EOS the
// boundary EOS ends one piece and starts the next (it is duplicated), so a row always makes
// seq_len - 1 predictions. Without an EOS the pieces are disjoint and the first token of each
// document is not predicted.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "mamba2/tokenizer.h"

namespace mamba2 {

class MappedFile;

namespace training {

// FNV-1a, 64 bits: change detection, not security.
uint64_t fnv1a(const void* data, size_t n, uint64_t h = 0xcbf29ce484222325ull);
uint64_t hash_file(const std::filesystem::path& path);

// The files behind config paths: a file as is, a folder's *.txt files (recursively, sorted by
// path). Errors name `key` and the path.
std::vector<std::filesystem::path> expand_sources(const std::vector<std::filesystem::path>& paths,
                                                  const std::string& key);

// Encodes one file as one document, reading at most about block_bytes at a time: a longer file
// is cut after a single '\n' that follows a non-space ASCII character and precedes an ASCII
// letter, where the GPT-2 / NeoX / Llama-3 pre-tokenizers split anyway, so the ids are those of
// the whole text (unless an added token spans the cut). Invalid UTF-8 is an error naming the file
// and byte offset.
void encode_file(const Tokenizer& tokenizer, const std::filesystem::path& path, size_t block_bytes,
                 const std::function<void(std::span<const int32_t>)>& emit);

// Tokenizes `files` into <dir>/<name>.* unless an up-to-date corpus is there (same tokenizer hash,
// same files with the same sizes and times). Returns true when it wrote the corpus.
bool prepare_corpus(const Tokenizer& tokenizer, uint64_t tokenizer_hash, const std::vector<std::filesystem::path>& files,
                    const std::filesystem::path& dir, const std::string& name,
                    const std::function<void(const std::string&)>& log, size_t block_bytes = size_t(16) << 20);

class TokenCorpus {
 public:
  static TokenCorpus open(const std::filesystem::path& dir, const std::string& name);
  int64_t size() const { return tokens_; }
  int64_t documents() const { return documents_; }
  std::optional<int32_t> eos() const { return eos_; }
  // Identifies the contents (tokenizer, sources, counts), for resuming.
  const std::string& fingerprint() const { return fingerprint_; }
  void read(int64_t begin, int64_t count, int32_t* out) const;
  // Document starts in (lo, hi), ascending.
  std::vector<int64_t> starts_between(int64_t lo, int64_t hi) const;

 private:
  std::shared_ptr<const MappedFile> tokens_file_, docs_file_;
  int64_t tokens_ = 0, documents_ = 0;
  int token_bytes_ = 2;
  std::optional<int32_t> eos_;
  std::string fingerprint_;
};

// The packed input of lm_loss / lm_loss_and_grad.
struct Batch {
  std::vector<int32_t> ids;
  std::vector<int64_t> lengths;
  int64_t rows = 0, predictions = 0;
  // The targets' bytes (token_bytes sizes; 0 for EOS), for bits per byte.
  int64_t target_bytes = 0;
};

// Tokens [begin, end) of a corpus, read as rows of seq_len tokens.
struct CorpusRange {
  const TokenCorpus* corpus = nullptr;
  int64_t begin = 0, end = 0;
  int64_t rows(int64_t seq_len) const;
  // Appends row k, cut into pieces at document starts (and at `begin`, the range's own start).
  void append_row(int64_t seq_len, int64_t k, Batch& batch, const Tokenizer* bytes_of = nullptr) const;
};

// A pseudo-random permutation of [0, n), keyed: a 4-round Feistel network on the smallest
// power-of-four domain ≥ n, walking the cycle until the value falls in range. O(1) memory,
// whatever the corpus size.
class Permutation {
 public:
  Permutation(uint64_t n, uint64_t key);
  uint64_t operator()(uint64_t i) const;

 private:
  uint64_t encrypt(uint64_t x) const;
  uint64_t n_, key_;
  int half_bits_ = 1;
  uint64_t half_mask_ = 1;
};

}  // namespace training
}  // namespace mamba2
