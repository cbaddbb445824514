// Encode arbitrary bytes (invalid UTF-8 must be an error; ASCII text, which NFC leaves alone,
// must come back from decode) and decode arbitrary ids, with the published models' tokenizer
// (GPT-NeoX).
#include <algorithm>
#include <cstring>

#include "fuzz_common.h"
#include "mamba2/tokenizer.h"

#ifndef MAMBA2_FUZZ_TOKENIZER
#error "MAMBA2_FUZZ_TOKENIZER names the tokenizer.json to load"
#endif

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const mamba2::Tokenizer t = mamba2::Tokenizer::load(MAMBA2_FUZZ_TOKENIZER);
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  mamba2::fuzz::expect_result_or_error([&] {
    const auto ids = t.encode(text);
    const bool ascii = std::all_of(text.begin(), text.end(), [](char c) { return (unsigned char)c < 0x80; });
    if (ascii && t.decode(ids) != text) __builtin_trap();  // byte-level BPE loses nothing
  });
  std::vector<int32_t> ids(size / 4);
  if (!ids.empty()) std::memcpy(ids.data(), data, ids.size() * 4);
  mamba2::fuzz::expect_result_or_error([&] {
    (void)t.decode(ids);
    (void)t.decode(ids, true);
  });
  return 0;
}
