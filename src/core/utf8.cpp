#include "core/utf8.h"

#include <cstdint>

namespace mamba2::utf8 {

namespace {

// Length of the valid prefix of the character starting at s[i] (0 when s[i] cannot start one),
// and whether the whole character is present: checks each continuation byte against the
// ranges of the Unicode standard's table 3-7 (well-formed UTF-8 byte sequences).
struct Prefix {
  size_t valid;  // bytes that are a valid start of a character
  size_t need;   // bytes the character needs in all
};

Prefix valid_prefix(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return uint8_t(s[i + k]); };
  const uint8_t c = b(0);
  if (c < 0x80) return {1, 1};
  size_t need = 0;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    need = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 3;
    if (c == 0xE0) lo = 0xA0;  // no overlong forms
    if (c == 0xED) hi = 0x9F;  // no surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 4;
    if (c == 0xF0) lo = 0x90;  // no overlong forms
    if (c == 0xF4) hi = 0x8F;  // nothing past U+10FFFF
  } else {
    return {0, 1};
  }
  size_t k = 1;
  for (; k < need && i + k < s.size(); ++k) {
    const uint8_t x = b(k);
    if (k == 1 ? (x < lo || x > hi) : (x < 0x80 || x > 0xBF)) break;
  }
  return {k, need};
}

}  // namespace

size_t first_invalid(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const Prefix p = valid_prefix(s, i);
    if (p.valid < p.need || p.valid == 0) return i;
    i += p.valid;
  }
  return std::string_view::npos;
}

void append_lossy(std::string_view bytes, std::string& out) {
  static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
  for (size_t i = 0; i < bytes.size();) {
    const Prefix p = valid_prefix(bytes, i);
    if (p.valid == p.need) {
      out.append(bytes.substr(i, p.valid));
      i += p.valid;
    } else {
      // A maximal subpart: the valid prefix of a character (at least one byte) is one U+FFFD.
      out.append(kReplacement);
      i += p.valid == 0 ? 1 : p.valid;
    }
  }
}

size_t incomplete_tail(std::string_view s) {
  // A character is at most 4 bytes: only the last 3 bytes can be an unfinished start.
  for (size_t back = 1; back <= 3 && back <= s.size(); ++back) {
    const size_t i = s.size() - back;
    const uint8_t c = uint8_t(s[i]);
    if (c >= 0x80 && c <= 0xBF) continue;  // a continuation byte: look further back
    const Prefix p = valid_prefix(s, i);
    return (p.valid == back && p.need > back) ? back : 0;
  }
  return 0;
}

}  // namespace mamba2::utf8
