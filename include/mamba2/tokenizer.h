// Tokenizer: a Hugging Face tokenizer.json with a byte-level BPE model (GPT-2 / GPT-NeoX style,
// as the published Mamba2 models use), encoding and decoding exactly as the `tokenizers`
// library does. Features of tokenizer.json it does not implement are refused by name at load.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace mamba2 {

class Tokenizer {
 public:
  // A tokenizer.json, or the tokenizer in a GGUF file's metadata (tokenizer/gguf_vocab.h).
  static Tokenizer load(const std::filesystem::path& path);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Text (UTF-8; invalid UTF-8 is an error naming the byte offset) to token ids. Added tokens
  // (special ones like <|endoftext|>) are matched whole in the text, as `tokenizers` does with
  // add_special_tokens=False: nothing is prepended or appended.
  std::vector<int32_t> encode(std::string_view text) const;

  // Token ids to text, as `tokenizers`' decode: invalid UTF-8 sequences in the joined bytes
  // become U+FFFD. skip_special drops special added tokens. Unknown ids are an error.
  std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;

  // The raw bytes one token stands for (byte-level decoded, no UTF-8 repair), for streaming:
  // joining these over a sequence and repairing once equals decode().
  const std::string& token_bytes(int32_t id) const;
  bool is_special(int32_t id) const;

  // Ids are 0..vocab_size()-1 (model vocabulary and added tokens together).
  int32_t vocab_size() const;
  std::optional<int32_t> token_id(std::string_view token) const;  // exact token string
  // The end-of-text token: "<|endoftext|>", else "</s>" or "<eos>" among the special tokens.
  std::optional<int32_t> eos_id() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Training a byte-level BPE tokenizer (GPT-2 split pattern, NFC, the 256 byte symbols, then
// merges of the most frequent adjacent pair, ties to the lower pair of ids) on text files, each
// read once and only its word counts kept.
struct BpeTrainOptions {
  int64_t vocab_size = 4096;  // special tokens + 256 bytes + merges
  int64_t min_frequency = 2;  // a pair seen fewer times is not merged
  std::vector<std::string> special_tokens = {"<|endoftext|>"};
};
// The tokenizer.json text (loadable here and by Hugging Face `tokenizers`).
std::string train_bpe(const std::vector<std::filesystem::path>& files, const BpeTrainOptions& options);

}  // namespace mamba2
