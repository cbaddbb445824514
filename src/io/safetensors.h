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

// Block-quantized tensors (Q8_0, Q4_0: core/dtype.h), as `mamba2 quantize` writes them: a tensor
// of logical shape (..., k) is stored as dtype U8 with shape (..., k / 32, B), its rows of blocks
// byte for byte as the CPU kernels read them, at an even offset; B names the format: 34 for Q8_0,
// 18 for Q4_0 (the fp16 scale first, little-endian). U8 tensors are blocks only in a file whose
// __metadata__ has "mamba2.quantization": "q8_0" or "q4_0" (the file's narrowest format; a q4_0
// model keeps its embedding and head in q8_0). Readers present such a tensor in its logical shape
// and block dtype, memory-mapped like the others. "bf16" marks a `mamba2 quantize --type bf16`
// file: its matrices are plain BF16 tensors, which the model then uses in place, in bf16.
inline constexpr const char* kQuantizationKey = "mamba2.quantization";

struct TensorToWrite {
  std::string name;
  DType dtype = DType::F32;       // stored dtype; converted from the fp32 data (quantized: rows of 32k)
  std::vector<int64_t> shape;
  const float* data = nullptr;    // product(shape) fp32 values
};

// Writes atomically (temporary file in the same folder, then rename): an existing file is
// never left half-written.
void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace mamba2
