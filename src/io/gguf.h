// GGUF, llama.cpp's one-file format (versions 2 and 3): typed metadata key/values, tensor infos,
// then the tensor data, each tensor at an aligned offset. Memory-mapped like safetensors.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "io/tensor_archive.h"

namespace mamba2 {

struct GgufFile {
  uint32_t version = 0;
  // key → value: numbers, bools and strings, arrays of them as JSON arrays (strings as their
  // bytes, which need not be UTF-8).
  nlohmann::json metadata = nlohmann::json::object();
  // The tensors under their GGUF names, shapes row-major (ggml's ne[] reversed: a matrix
  // ne = [768, 50288] is (50288, 768)). F32, F16, BF16, Q8_0 and Q4_0 point into the mapping;
  // the k-quants (Q4_K, Q5_K, Q6_K), which no kernel here reads, are dequantized to F32 exactly.
  TensorArchive tensors;
  // How many tensors the file stores in each ggml type ("Q4_0" → 48), as it has them.
  std::map<std::string, int64_t> stored_types;
};

// Reads and validates the file (every count, length, type and offset against the file's size);
// errors begin "[gguf] <path>:". Without `with_tensors`, the metadata and the tensor infos only
// (no data read or mapped).
GgufFile read_gguf(const std::filesystem::path& path, bool with_tensors = true);
// Whether the file begins with GGUF's magic.
bool is_gguf(const std::filesystem::path& path);

}  // namespace mamba2
