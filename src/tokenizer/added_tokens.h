// Added tokens (<|endoftext|>, GPT-NeoX's whitespace runs, ...) found whole in the text before
// the model sees it, as `tokenizers`' AddedVocabulary does: leftmost-longest matches over all
// patterns, then the single_word / lstrip / rstrip rules of each matched token.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mamba2::tok {

struct AddedTokenPattern {
  std::string text;  // what is matched (the normalized content for normalized tokens)
  int32_t id = 0;
  bool single_word = false, lstrip = false, rstrip = false;
};

// A piece of the text: an added token (id >= 0) or text for the next stage (id = -1). An added
// token's range includes the whitespace its lstrip/rstrip took.
struct TextPiece {
  size_t begin = 0, end = 0;
  int32_t id = -1;
};

class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  // `where` names the file in errors (two tokens with the same pattern).
  AddedTokenMatcher(std::vector<AddedTokenPattern> patterns, const std::string& where);

  bool empty() const { return patterns_.empty(); }
  // Replaces `pieces` with the split of `s` (text pieces may be empty).
  void split(std::string_view s, std::vector<TextPiece>& pieces) const;

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> children;  // sorted by byte
    int32_t pattern = -1;
  };
  // The longest pattern starting at s[i]: its index, or -1; `end` gets its end.
  int32_t longest_at(std::string_view s, size_t i, size_t& end) const;

  std::vector<AddedTokenPattern> patterns_;
  std::vector<Node> trie_;  // node 0 is the root
  std::array<bool, 256> first_byte_{};
};

}  // namespace mamba2::tok
