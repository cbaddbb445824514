// A sharded checkpoint's model.safetensors.index.json, beside two valid shards (the first two
// bytes of the input choose how many of them exist): weight_map entries, file names (paths
// that leave the folder), and tensors missing from or duplicated across shards.
#include "fuzz_common.h"
#include "io/safetensors.h"

namespace {

void write_shard(const std::filesystem::path& path, const std::string& tensor) {
  std::vector<mamba2::TensorToWrite> t;
  static const float values[4] = {1, 2, 3, 4};
  t.push_back({tensor, mamba2::DType::F32, {2, 2}, values});
  mamba2::write_safetensors(path, t);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace fs = std::filesystem;
  static const bool shards_written = [] {
    const auto dir = mamba2::fuzz::scratch_dir();
    write_shard(dir / "model-00001-of-00002.safetensors", "a.weight");
    write_shard(dir / "model-00002-of-00002.safetensors", "b.weight");
    return true;
  }();
  (void)shards_written;
  const auto path = mamba2::fuzz::write_input("model.safetensors.index.json", data, size);
  mamba2::fuzz::expect_result_or_error([&] { (void)mamba2::read_safetensors_index(path); });
  return 0;
}
