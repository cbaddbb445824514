// JSON from bytes that may come from anywhere (configs, tokenizers, safetensors headers, run
// state). Nesting deeper than kMaxJsonDepth is refused while parsing: a deep value would
// overflow the stack when it is destroyed or printed. Every error of the JSON library becomes
// a mamba2::Error that names where the text came from.
#pragma once
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace mamba2 {

constexpr int kMaxJsonDepth = 128;

// `where` begins the message, e.g. "[config] /models/x/config.json".
nlohmann::json parse_json(std::string_view text, std::string_view where);

// The whole file at `path`, parsed as parse_json does; "<prefix> cannot open <path>" when it
// cannot be read. Messages begin "<prefix> <path>".
nlohmann::json read_json_file(const std::filesystem::path& path, std::string_view prefix);

// A value for an error message: its JSON text, cut to `max_chars` (values in bad files can be
// megabytes long).
std::string json_excerpt(const nlohmann::json& v, size_t max_chars = 80);

}  // namespace mamba2
