// A checkpoint's trainer_state.json (mamba2 train --resume): counts, RNG state, fingerprints and
// the run's config, which is parsed as a train config in turn.
#include "fuzz_common.h"
#include "mamba2/train.h"
#include "train/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  mamba2::fuzz::expect_result_or_error([&] {
    const auto s = mamba2::training::parse_trainer_state(text, "trainer_state.json");
    (void)mamba2::parse_train_config(s.config_json, "trainer_state.json: config");
  });
  return 0;
}
