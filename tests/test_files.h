// File-level helpers shared by every test suite: whole-file reads and writes, scratch paths
// under GoogleTest's temp folder, self-removing temp folders, and the message of a thrown
// mamba2::Error.
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "mamba2/error.h"

namespace mamba2::test {

// The whole file as bytes ("" when it cannot be opened).
inline std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

// Replaces the file's contents with `bytes` exactly.
inline void write_file(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary | std::ios::trunc).write(bytes.data(), std::streamsize(bytes.size()));
}

// `name` inside the folder `suite` under ::testing::TempDir() (the folder is created; the file
// is not).
inline std::filesystem::path scratch_path(const std::string& suite, const std::string& name) {
  // ctest runs tests as parallel processes: each process gets its own folder.
  std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) / (suite + "_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return dir / name;
}

// The message of the mamba2::Error that `f()` throws, or "(no error)" when it returns.
template <class F>
std::string error_message(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// A fresh folder under the system temp folder, removed with the object.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("mamba2_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& s) const { return path_ / s; }

 private:
  std::filesystem::path path_;
};

}  // namespace mamba2::test
