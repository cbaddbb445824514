// A training config (mamba2 train --config): keys, types, ranges and the model section.
#include "fuzz_common.h"
#include "mamba2/train.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  mamba2::fuzz::expect_result_or_error([&] { (void)mamba2::parse_train_config(text, "fuzz.json"); });
  return 0;
}
