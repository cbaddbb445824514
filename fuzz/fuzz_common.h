// Shared by the fuzz targets: the parsers read files, so each input is written to a file of
// this process's own folder first. A target passes when every input gives a result or a
// mamba2::Error; anything else (a crash, a sanitizer report, another exception, a hang, memory
// past -rss_limit_mb) is a finding.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "io/tensor_archive.h"
#include "mamba2/error.h"

namespace mamba2::fuzz {

inline std::filesystem::path scratch_dir() {
  static const std::filesystem::path dir = [] {
    auto d = std::filesystem::temp_directory_path() / ("mamba2_fuzz_" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

inline std::filesystem::path write_input(const std::string& name, const uint8_t* data, size_t size) {
  const auto path = scratch_dir() / name;
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(data), std::streamsize(size));
  return path;
}

// Runs f(); a mamba2::Error is the expected way to refuse bad input.
template <class F>
void expect_result_or_error(F&& f) {
  try {
    f();
  } catch (const Error&) {
  }
}

// Converts every tensor an archive accepted (up to 2^20 values each) to fp32, so that its byte
// range is read whole.
inline void convert_all(const TensorArchive& a) {
  for (const auto& [name, t] : a.tensors()) {
    if (t.numel() > (1 << 20)) continue;
    std::vector<float> out(size_t(t.numel()));
    convert_to_f32(t.dtype, t.data, out.data(), size_t(t.numel()));
  }
}

}  // namespace mamba2::fuzz
