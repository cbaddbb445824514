// NumPy .npy arrays (version 1.0/2.0, little-endian '<f4' or '<f8', C order).
#pragma once
#include <cstdint>
#include <filesystem>
#include <vector>

namespace mamba2 {

// Writes float32 C-order data atomically.
void write_npy(const std::filesystem::path& path, const float* data, const std::vector<int64_t>& shape);

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<double> data;  // converted from '<f4' or '<f8'
};
NpyArray read_npy(const std::filesystem::path& path);

}  // namespace mamba2
