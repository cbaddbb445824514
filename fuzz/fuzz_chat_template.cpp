// A chat template (tokenizer_config.json's chat_template, from any model folder) is parsed and
// rendered with a fixed conversation: every template gives a prompt or a mamba2::Error, within the
// interpreter's limits on nesting, steps, output and memory.
#include "fuzz_common.h"
#include "tokenizer/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::vector<mamba2::ChatMessage> conversation = {
      {"system", "Be brief."}, {"user", "Hello \xF0\x9F\x99\x82"}, {"assistant", " Hi! "}, {"user", "2+2?\n"}};
  mamba2::fuzz::expect_result_or_error([&] {
    const auto t = mamba2::ChatTemplate::parse(std::string_view(reinterpret_cast<const char*>(data), size));
    (void)t.render(conversation, true, "<s>", "</s>");
  });
  return 0;
}
