// A .safetensors file: header length, JSON header, tensor entries and data ranges. Every tensor
// it accepts is read whole, converted to fp32, so that accepted ranges are also in bounds.
#include "core/dtype.h"
#include "fuzz_common.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = mamba2::fuzz::write_input("model.safetensors", data, size);
  mamba2::fuzz::expect_result_or_error([&] {
    const mamba2::TensorArchive a = mamba2::read_safetensors(path);
    for (const auto& [name, t] : a.tensors()) {
      if (t.numel() > (1 << 20)) continue;
      std::vector<float> out(size_t(t.numel()));
      mamba2::convert_to_f32(t.dtype, t.data, out.data(), size_t(t.numel()));
    }
  });
  return 0;
}
