// Text helpers of the tokenizer: code points, NFC through utf8proc, the GPT-2 byte-level
// alphabet, and the Unicode classes that added tokens' lstrip/rstrip/single_word test (Rust
// regex's \s and \w). UTF-8 validation and repair are in core/utf8.h.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace mamba2::tok {

// Length of the UTF-8 sequence that starts with `lead` (1 for bytes that cannot start one).
inline size_t utf8_length(unsigned char lead) {
  return lead < 0xC0 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

// The code point at s[i] (s is valid UTF-8); advances i past it.
char32_t next_code_point(std::string_view s, size_t& i);
// The code point that ends at s[i] (exclusive; s is valid UTF-8); moves i back to its start.
char32_t prev_code_point(std::string_view s, size_t& i);
void append_utf8(std::string& out, char32_t cp);

// NFC of valid UTF-8 `s`. Returns false (and leaves `out` alone) when `s` is already NFC.
bool nfc(std::string_view s, std::string& out);

// GPT-2's byte-level alphabet: every byte is shown as one printable code point (bytes_to_unicode).
struct ByteLevelAlphabet {
  std::array<char32_t, 256> char_of{};
  // The byte a code point stands for; -1 for code points outside the alphabet.
  int byte_of(char32_t cp) const { return cp < byte_of_cp.size() ? byte_of_cp[cp] : -1; }
  std::array<int16_t, 0x144> byte_of_cp{};
};
const ByteLevelAlphabet& byte_level_alphabet();

// The bytes a token string stands for when every one of its code points is in the byte-level
// alphabet; nullopt otherwise (the ByteLevel decoder then keeps the token's own UTF-8).
std::optional<std::string> byte_level_decode(std::string_view token);
// The byte-level form of raw bytes ("Ġworld" for " world").
std::string byte_level_encode(std::string_view bytes);

// Rust regex's \s: the White_Space property.
bool is_white_space(char32_t cp);
// Rust regex's \w: Alphabetic, marks, decimal digits, connector punctuation, joiners.
bool is_word_char(char32_t cp);

}  // namespace mamba2::tok
