// Whole files read into memory, with the one message every loader gives when it cannot.
#pragma once
#include <filesystem>
#include <string>
#include <string_view>

namespace mamba2 {

// The bytes of the file at `path`: "<prefix> cannot open <path>" when it cannot be opened,
// "<prefix> <path>: read error" when reading fails, and a refusal past `max_bytes` (read no
// further: a file that should be small may be anything).
std::string read_file(const std::filesystem::path& path, std::string_view prefix, size_t max_bytes = SIZE_MAX);

}  // namespace mamba2
