// A GGUF file: header, typed metadata (arrays included), tensor infos, offsets and the data,
// then the Mamba2 mapping (keys, tensor names, A) and the tokenizer metadata. Every tensor it
// accepts is read whole, converted to fp32, so that accepted ranges are also in bounds.
#include "fuzz_common.h"
#include "io/gguf.h"
#include "model/gguf_import.h"
#include "tokenizer/gguf_vocab.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = mamba2::fuzz::write_input("model.gguf", data, size);
  mamba2::fuzz::expect_result_or_error([&] {
    const mamba2::GgufFile g = mamba2::read_gguf(path);
    mamba2::fuzz::convert_all(g.tensors);
    if (g.metadata.contains("tokenizer.ggml.model")) mamba2::gguf_tokenizer_json(g, "[fuzz]");
  });
  mamba2::fuzz::expect_result_or_error([&] { mamba2::fuzz::convert_all(mamba2::import_gguf_model(path).archive); });
  return 0;
}
