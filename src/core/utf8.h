// UTF-8 helpers shared by the tokenizer and text generation.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>

namespace mamba2::utf8 {

// Byte offset of the first invalid sequence (overlong forms, surrogates and code points past
// U+10FFFF are invalid, as are truncated sequences), or npos when `s` is valid.
size_t first_invalid(std::string_view s);

// Appends `bytes` to `out`, replacing each maximal invalid subpart with U+FFFD, as Rust's
// String::from_utf8_lossy (and so Hugging Face tokenizers' decode) does.
void append_lossy(std::string_view bytes, std::string& out);

// Length of the trailing bytes of `s` that begin a valid multi-byte character without finishing
// it: text streamed so far must hold them back until the next bytes arrive.
size_t incomplete_tail(std::string_view s);

}  // namespace mamba2::utf8
