// tokenizer.json: normalizer, pre-tokenizer (with regexes from the file), BPE vocab and merges,
// added tokens, decoder. An accepted tokenizer also encodes and decodes a fixed text.
#include "fuzz_common.h"
#include "mamba2/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = mamba2::fuzz::write_input("tokenizer.json", data, size);
  mamba2::fuzz::expect_result_or_error([&] {
    const mamba2::Tokenizer t = mamba2::Tokenizer::load(path);
    const auto ids = t.encode("Hello, wörld! 12 345 \n\n  <|endoftext|> 🙂");
    (void)t.decode(ids);
  });
  return 0;
}
