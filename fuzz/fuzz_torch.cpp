// The official layout's pytorch_model.bin: a zip archive (local headers, central directory,
// zip64) holding a pickle (interpreted with an allow-list, never run) and raw storages.
#include "fuzz_common.h"
#include "io/torch_checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = mamba2::fuzz::write_input("pytorch_model.bin", data, size);
  mamba2::fuzz::expect_result_or_error([&] {
    mamba2::fuzz::convert_all(mamba2::read_torch_checkpoint(path));
  });
  return 0;
}
