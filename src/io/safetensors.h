// Safetensors: one file, or shards listed by model.safetensors.index.json. Memory-mapped.
#pragma once
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "io/tensor_archive.h"

namespace mamba2 {

// Reads one .safetensors file; every header entry is validated against the file size.
TensorArchive read_safetensors(const std::filesystem::path& path);
// Reads every shard named by an index file (weight_map); tensors must be where it says.
TensorArchive read_safetensors_index(const std::filesystem::path& index_path);

struct TensorToWrite {
  std::string name;
  DType dtype = DType::F32;       // stored dtype; converted from the fp32 data
  std::vector<int64_t> shape;
  const float* data = nullptr;    // product(shape) fp32 values
};

// Writes atomically (temporary file in the same folder, then rename): an existing file is
// never left half-written.
void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace mamba2
