// The tensors of one checkpoint, whatever the file format: name → dtype, shape and the
// contiguous little-endian row-major bytes, which point into memory-mapped files (or
// buffers) that the archive owns. Readers for each format live beside this file.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace mamba2 {

struct StoredTensor {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const unsigned char* data = nullptr;  // nbytes == dtype_bytes(dtype, numel())
  size_t nbytes = 0;
  std::string file;                     // the file it came from, for messages

  int64_t numel() const;
  std::string shape_str() const;        // "(3352, 768)"
};

class TensorArchive {
 public:
  // Keeps `owner` (a mapping or buffer) alive as long as the archive.
  void keep_alive(std::shared_ptr<const void> owner);
  // Throws if the name is already present.
  void add(StoredTensor tensor);
  const StoredTensor* find(const std::string& name) const;
  const std::map<std::string, StoredTensor>& tensors() const { return tensors_; }
  std::vector<std::string> files() const;  // the distinct files, for `info`
  // Free-form string metadata of the file (a safetensors header's __metadata__), if any.
  std::map<std::string, std::string> metadata;

 private:
  std::map<std::string, StoredTensor> tensors_;
  std::vector<std::shared_ptr<const void>> owners_;
};

// A read-only memory mapping of a whole file. Throws naming the file if it cannot be opened.
class MappedFile {
 public:
  explicit MappedFile(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const unsigned char* data() const { return data_; }
  size_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  const unsigned char* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace mamba2
