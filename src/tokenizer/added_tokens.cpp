#include "tokenizer/added_tokens.h"

#include <algorithm>

#include "mamba2/error.h"
#include "tokenizer/unicode.h"

namespace mamba2::tok {

AddedTokenMatcher::AddedTokenMatcher(std::vector<AddedTokenPattern> patterns, const std::string& where)
    : patterns_(std::move(patterns)), trie_(1) {
  for (size_t p = 0; p < patterns_.size(); ++p) {
    const std::string& text = patterns_[p].text;
    first_byte_[static_cast<unsigned char>(text[0])] = true;
    int32_t node = 0;
    for (const char ch : text) {
      const auto b = static_cast<unsigned char>(ch);
      auto& children = trie_[size_t(node)].children;
      auto it = std::lower_bound(children.begin(), children.end(), b,
                                 [](const auto& edge, unsigned char key) { return edge.first < key; });
      if (it != children.end() && it->first == b) {
        node = it->second;
        continue;
      }
      const auto child = int32_t(trie_.size());
      children.insert(it, {b, child});
      trie_.emplace_back();  // may move `children`: not used after this
      node = child;
    }
    int32_t& slot = trie_[size_t(node)].pattern;
    if (slot >= 0)
      fail("[tokenizer] {}: added tokens {} and {} match the same text '{}'", where, patterns_[size_t(slot)].id,
           patterns_[p].id, text);
    slot = int32_t(p);
  }
}

int32_t AddedTokenMatcher::longest_at(std::string_view s, size_t i, size_t& end) const {
  int32_t node = 0, found = -1;
  for (size_t k = i; k < s.size(); ++k) {
    const auto& children = trie_[size_t(node)].children;
    const auto b = static_cast<unsigned char>(s[k]);
    const auto it = std::lower_bound(children.begin(), children.end(), b,
                                     [](const auto& edge, unsigned char key) { return edge.first < key; });
    if (it == children.end() || it->first != b) break;
    node = it->second;
    if (trie_[size_t(node)].pattern >= 0) {
      found = trie_[size_t(node)].pattern;
      end = k + 1;
    }
  }
  return found;
}

namespace {

bool ends_with_word(std::string_view s) {
  size_t i = s.size();
  return i > 0 && is_word_char(prev_code_point(s, i));
}

bool starts_with_word(std::string_view s) {
  size_t i = 0;
  return !s.empty() && is_word_char(next_code_point(s, i));
}

// Start of the whitespace run that ends `s`.
size_t trailing_space_start(std::string_view s) {
  size_t i = s.size();
  while (i > 0) {
    size_t j = i;
    if (!is_white_space(prev_code_point(s, j))) break;
    i = j;
  }
  return i;
}

// Length of the whitespace run that starts `s`.
size_t leading_space_length(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t j = i;
    if (!is_white_space(next_code_point(s, j))) break;
    i = j;
  }
  return i;
}

}  // namespace

void AddedTokenMatcher::split(std::string_view s, std::vector<TextPiece>& pieces) const {
  pieces.clear();
  size_t start_offset = 0;  // end of what the pieces so far cover
  size_t pos = 0;           // where the pattern search resumes: the end of the last raw match
  while (pos < s.size()) {
    size_t begin = pos, end = 0;
    int32_t p = -1;
    for (; begin < s.size(); ++begin) {
      if (first_byte_[static_cast<unsigned char>(s[begin])] && (p = longest_at(s, begin, end)) >= 0) break;
    }
    if (p < 0) break;
    pos = end;
    const AddedTokenPattern& token = patterns_[size_t(p)];
    if (token.single_word) {
      const bool space_before = begin == 0 || !ends_with_word(s.substr(0, begin));
      const bool space_after = end == s.size() || !starts_with_word(s.substr(end));
      if (!space_before || !space_after) continue;
    }
    // As in `tokenizers`: lstrip never reaches back into a previous piece; rstrip may run past
    // later matches, which then still produce their tokens.
    if (token.lstrip) begin = std::max(trailing_space_start(s.substr(0, begin)), start_offset);
    if (token.rstrip) end += leading_space_length(s.substr(end));
    if (start_offset < begin) pieces.push_back({start_offset, begin, -1});
    pieces.push_back({begin, end, token.id});
    start_offset = end;
  }
  if (start_offset != s.size()) pieces.push_back({start_offset, s.size(), -1});
}

}  // namespace mamba2::tok
