// Atomic file replacement: data goes to "<path>.tmp.<pid>" in the same folder, is fsynced and
// renamed over `path` on commit(); if commit() is never reached the temporary file is removed,
// so an existing file is never left half-written.
#pragma once
#include <cstddef>
#include <filesystem>
#include <string>

namespace mamba2 {

class AtomicFile {
 public:
  // `op` prefixes error messages ("[safetensors]").
  AtomicFile(const std::filesystem::path& path, std::string op);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);
  void commit();

 private:
  std::filesystem::path path_;
  std::filesystem::path tmp_;
  std::string op_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace mamba2
