// A .npy file (mamba2 logits --out writes them; tests read them back): magic, version, the
// header dict, shape and data size.
#include "fuzz_common.h"
#include "io/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = mamba2::fuzz::write_input("x.npy", data, size);
  mamba2::fuzz::expect_result_or_error([&] { (void)mamba2::read_npy(path); });
  return 0;
}
