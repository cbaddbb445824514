// The official layout's pytorch_model.bin: a zip archive (local headers, central directory,
// zip64) holding a pickle (interpreted with an allow-list, never run) and raw storages.
#include "core/dtype.h"
#include "fuzz_common.h"
#include "io/torch_checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = mamba2::fuzz::write_input("pytorch_model.bin", data, size);
  mamba2::fuzz::expect_result_or_error([&] {
    const mamba2::TensorArchive a = mamba2::read_torch_checkpoint(path);
    for (const auto& [name, t] : a.tensors()) {
      if (t.numel() > (1 << 20)) continue;
      std::vector<float> out(size_t(t.numel()));
      mamba2::convert_to_f32(t.dtype, t.data, out.data(), size_t(t.numel()));
    }
  });
  return 0;
}
