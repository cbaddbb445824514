// A state snapshot file (mamba2 generate --save-state, mamba2/state.h): the safetensors header,
// its metadata (format, version, counts, the token hash) and every conv/ssm row.
#include "fuzz_common.h"
#include "mamba2/state.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = mamba2::fuzz::write_input("x.safetensors", data, size);
  mamba2::fuzz::expect_result_or_error([&] {
    const mamba2::StateSnapshot s = mamba2::load_state(path);
    double sum = 0;  // every accepted row is read whole
    for (const auto* layers : {&s.conv, &s.ssm})
      for (const auto& row : *layers)
        for (float v : row) sum += double(v);
    (void)sum;
  });
  return 0;
}
