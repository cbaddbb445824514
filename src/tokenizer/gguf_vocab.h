// The tokenizer of a GGUF file (tokenizer.ggml.* metadata, as llama.cpp's converter writes it) as
// the equivalent Hugging Face tokenizer.json, which Tokenizer::load then reads as any other.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "io/gguf.h"

namespace mamba2 {

// Byte-level BPE vocabularies only (tokenizer.ggml.model "gpt2") whose pre-tokenizer is GPT-2's
// split (tokenizer.ggml.pre "gpt-2", or "olmo", the name llama.cpp gives GPT-NeoX's): tokens by
// id into the BPE vocabulary, the merges, control tokens (type 3) as special added tokens and
// user-defined ones (type 4) as added tokens. No normalizer, as llama.cpp applies none (the
// original tokenizer.json may have NFC: for NFC text the two give the same ids). Errors begin
// `where`.
nlohmann::json gguf_tokenizer_json(const GgufFile& file, const std::string& where);

}  // namespace mamba2
