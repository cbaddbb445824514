#include "core/file.h"

#include <fstream>
#include <iterator>

#include "mamba2/error.h"

namespace mamba2 {

std::string read_file(const std::filesystem::path& path, std::string_view prefix, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{} cannot open {}", prefix, path.string());
  std::string text;
  if (max_bytes == SIZE_MAX) {
    text.assign(std::istreambuf_iterator<char>(in), {});
  } else {
    text.resize(max_bytes + 1);
    in.read(text.data(), std::streamsize(text.size()));
    text.resize(size_t(in.gcount()));
    if (text.size() > max_bytes)
      fail("{} {}: more than the {} bytes accepted", prefix, path.string(), max_bytes);
  }
  if (in.bad()) fail("{} {}: read error", prefix, path.string());
  return text;
}

}  // namespace mamba2
