// The server's request bodies (POST /v1/completions, /tokenize, /detokenize) with the published
// models' tokenizer: any bytes give a checked request or an HttpError (a 4xx with a message);
// a mamba2::Error escaping would be a 500, so it is a finding here too.
#include "fuzz_common.h"
#include "mamba2/tokenizer.h"
#include "serve/request.h"

#ifndef MAMBA2_FUZZ_TOKENIZER
#error "MAMBA2_FUZZ_TOKENIZER names the tokenizer.json to load"
#endif

namespace {
template <class F>
void expect_result_or_http_error(F&& f) {
  try {
    f();
  } catch (const mamba2::HttpError& e) {
    if (e.status < 400 || e.status >= 500 || e.message.empty()) __builtin_trap();
  }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const mamba2::Tokenizer t = mamba2::Tokenizer::load(MAMBA2_FUZZ_TOKENIZER);
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  expect_result_or_http_error([&] {
    const mamba2::CompletionRequest r = mamba2::parse_completion_request(body, t);
    if (r.prompt.empty() && r.params.max_new_tokens < 0) __builtin_trap();
  });
  expect_result_or_http_error([&] { (void)mamba2::parse_tokenize_request(body); });
  expect_result_or_http_error([&] { (void)mamba2::parse_detokenize_request(body, t.vocab_size()); });
  return 0;
}
