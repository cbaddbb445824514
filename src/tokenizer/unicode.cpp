#include "tokenizer/unicode.h"

#include <utf8proc.h>

#include <algorithm>
#include <cstdlib>
#include <iterator>
#include <memory>

#include "mamba2/error.h"
#include "tokenizer/regex.h"

namespace mamba2::tok {

char32_t next_code_point(std::string_view s, size_t& i) {
  const auto b = static_cast<unsigned char>(s[i]);
  const size_t n = utf8_length(b);
  char32_t cp = n == 1 ? b : n == 2 ? (b & 0x1F) : n == 3 ? (b & 0x0F) : (b & 0x07);
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += n;
  return cp;
}

char32_t prev_code_point(std::string_view s, size_t& i) {
  do --i;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80);
  size_t j = i;
  return next_code_point(s, j);
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

namespace {

// Code points `tokenizers`' NFC treats as plain starters (no combining class, no decomposition,
// no composition) because its tables (unicode-normalization-alignments, about Unicode 9) predate
// them: marks added since, and the parts of one later composition. They split the text into
// segments that are normalized apart. Made by scripts/make_nfc_exceptions.py:
// utf8proc 2.8.0 (Unicode 15.0.0): 111 code points
struct CodePointRange {
  char32_t first, last;
};
constexpr CodePointRange kTokenizersNfcStarters[] = {
    {0x7FD, 0x7FD}, {0x898, 0x89F}, {0x8CA, 0x8D3}, {0x9FE, 0x9FE}, {0xC3C, 0xC3C}, {0xD3B, 0xD3C},
    {0xEBA, 0xEBA}, {0x1715, 0x1715}, {0x1ABF, 0x1ACE}, {0x1DF6, 0x1DFA}, {0xA82C, 0xA82C}, {0x10D24, 0x10D27},
    {0x10EAB, 0x10EAC}, {0x10EFD, 0x10EFF}, {0x10F46, 0x10F50}, {0x10F82, 0x10F85}, {0x11070, 0x11070}, {0x1133B, 0x1133B},
    {0x1145E, 0x1145E}, {0x11839, 0x1183A}, {0x11930, 0x11930}, {0x11935, 0x11935}, {0x11938, 0x11938}, {0x1193D, 0x1193E},
    {0x11943, 0x11943}, {0x119E0, 0x119E0}, {0x11A34, 0x11A34}, {0x11A47, 0x11A47}, {0x11A99, 0x11A99}, {0x11D42, 0x11D42},
    {0x11D44, 0x11D45}, {0x11D97, 0x11D97}, {0x11F41, 0x11F42}, {0x16FF0, 0x16FF1}, {0x1E08F, 0x1E08F}, {0x1E130, 0x1E136},
    {0x1E2AE, 0x1E2AE}, {0x1E2EC, 0x1E2EF}, {0x1E4EC, 0x1E4EF},
};

bool tokenizers_nfc_starter(char32_t cp) {
  const auto it = std::upper_bound(std::begin(kTokenizersNfcStarters), std::end(kTokenizersNfcStarters), cp,
                                   [](char32_t c, const CodePointRange& r) { return c < r.first; });
  return it != std::begin(kTokenizersNfcStarters) && cp <= std::prev(it)->last;
}

// utf8proc's NFC of one segment, appended to `out`.
void append_nfc(std::string_view segment, std::string& out) {
  utf8proc_uint8_t* mapped = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(segment.data()), utf8proc_ssize_t(segment.size()),
                   &mapped, utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  const std::unique_ptr<utf8proc_uint8_t, decltype(&std::free)> owner(mapped, &std::free);
  if (n < 0) fail("[tokenizer] NFC normalization failed: {}", utf8proc_errmsg(n));
  out.append(reinterpret_cast<const char*>(mapped), size_t(n));
}

}  // namespace

bool nfc(std::string_view s, std::string& out) {
  // Code points below U+0300 never change under NFC and never combine with what precedes them;
  // every byte >= 0xCC leads one that may. An ASCII character is a normalization boundary (it
  // composes with nothing before it), so NFC works segment by segment: each run of non-ASCII
  // text together with the ASCII character before it (which marks may compose with).
  auto may_change = [](char c) { return static_cast<unsigned char>(c) >= 0xCC; };
  size_t first = 0;
  while (first < s.size() && !may_change(s[first])) ++first;
  if (first == s.size()) return false;
  std::string result;
  result.reserve(s.size());
  size_t done = 0;  // s[0, done) is in `result`
  for (size_t i = first; i < s.size();) {
    if (!may_change(s[i])) {
      ++i;
      continue;
    }
    size_t begin = i;
    while (begin > done && static_cast<unsigned char>(s[begin - 1]) >= 0x80) --begin;
    if (begin > done) --begin;  // the ASCII starter before the run
    size_t end = i;
    while (end < s.size() && static_cast<unsigned char>(s[end]) >= 0x80) ++end;
    result.append(s.substr(done, begin - done));
    size_t segment = begin;
    for (size_t k = i; k < end;) {
      const size_t at = k;
      if (!tokenizers_nfc_starter(next_code_point(s, k))) continue;
      if (segment < at) append_nfc(s.substr(segment, at - segment), result);
      result.append(s.substr(at, k - at));
      segment = k;
    }
    if (segment < end) append_nfc(s.substr(segment, end - segment), result);
    done = i = end;
  }
  result.append(s.substr(done));
  if (result == s) return false;
  out = std::move(result);
  return true;
}

const ByteLevelAlphabet& byte_level_alphabet() {
  static const ByteLevelAlphabet alphabet = [] {
    ByteLevelAlphabet a;
    a.byte_of_cp.fill(-1);
    // Printable Latin-1 bytes stand for themselves; the others take U+0100, U+0101, ... in order.
    auto printable = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
    char32_t next = 0x100;
    for (int b = 0; b < 256; ++b) {
      a.char_of[size_t(b)] = printable(b) ? char32_t(b) : next++;
      a.byte_of_cp[a.char_of[size_t(b)]] = int16_t(b);
    }
    return a;
  }();
  return alphabet;
}

std::optional<std::string> byte_level_decode(std::string_view token) {
  const ByteLevelAlphabet& a = byte_level_alphabet();
  std::string out;
  size_t i = 0;
  while (i < token.size()) {
    const int b = a.byte_of(next_code_point(token, i));
    if (b < 0) return std::nullopt;
    out += char(b);
  }
  return out;
}

std::string byte_level_encode(std::string_view bytes) {
  const ByteLevelAlphabet& a = byte_level_alphabet();
  std::string out;
  for (const char c : bytes) append_utf8(out, a.char_of[static_cast<unsigned char>(c)]);
  return out;
}

bool is_white_space(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000;
}

bool is_word_char(char32_t cp) {
  static const Regex word(R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}])", "word characters");
  std::string encoded;
  append_utf8(encoded, cp);
  return word.matches_at(encoded, 0).has_value();
}

}  // namespace mamba2::tok
