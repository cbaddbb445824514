// The pre-tokenizer: text between added tokens (normalized) to the words the model encodes.
// Optional Split steps (regex, behavior Isolated), then ByteLevel: a prefix space when asked,
// then GPT-2's split when use_regex. Words stay raw bytes; the byte-level alphabet is the
// model's business (bpe.h).
#pragma once
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/regex.h"

namespace mamba2::tok {

// GPT-2's pattern, as `tokenizers`' ByteLevel pre-tokenizer has it (Oniguruma syntax).
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct PreTokenizer {
  std::vector<Regex> splits;     // Split steps, in order
  bool add_prefix_space = false;  // ByteLevel: a space before each piece that lacks one
  std::optional<Regex> byte_level_split;  // ByteLevel with use_regex: GPT-2's pattern

  // f(word) for every word of a non-empty `text`, in order. `scratch` holds a prefixed piece.
  template <class F>
  void for_each_word(std::string_view text, std::string& scratch, F&& f) const {
    words(text, 0, scratch, f);
  }

 private:
  template <class F>
  void words(std::string_view piece, size_t step, std::string& scratch, F& f) const {
    if (step < splits.size()) {
      splits[step].split_isolated(piece, [&](std::string_view sub) { words(sub, step + 1, scratch, f); });
      return;
    }
    if (add_prefix_space && piece[0] != ' ') {
      scratch.assign(1, ' ');
      scratch.append(piece);
      piece = scratch;
    }
    if (byte_level_split)
      byte_level_split->split_isolated(piece, f);
    else
      f(piece);
  }
};

}  // namespace mamba2::tok
