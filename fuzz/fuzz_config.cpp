// config.json in either layout (official mamba_ssm, Hugging Face Mamba2ForCausalLM). An
// accepted config must give sizes that fit: its parameter count is computed.
#include "fuzz_common.h"
#include "mamba2/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = mamba2::fuzz::write_input("config.json", data, size);
  mamba2::fuzz::expect_result_or_error([&] {
    const mamba2::ModelConfig c = mamba2::load_config(path);
    (void)c.parameter_count();
    (void)mamba2::config_summary(c);
  });
  return 0;
}
