// A .safetensors file: header length, JSON header, tensor entries and data ranges. Every tensor
// it accepts is read whole, converted to fp32, so that accepted ranges are also in bounds.
#include "fuzz_common.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = mamba2::fuzz::write_input("model.safetensors", data, size);
  mamba2::fuzz::expect_result_or_error([&] {
    mamba2::fuzz::convert_all(mamba2::read_safetensors(path));
  });
  return 0;
}
