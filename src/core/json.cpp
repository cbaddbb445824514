#include "core/json.h"

#include "core/file.h"


#include "mamba2/error.h"

namespace mamba2 {

nlohmann::json parse_json(std::string_view text, std::string_view where) {
  using json = nlohmann::json;
  const json::parser_callback_t limit_depth = [&](int depth, json::parse_event_t event, json&) {
    if (depth > kMaxJsonDepth && (event == json::parse_event_t::object_start || event == json::parse_event_t::array_start))
      fail("{}: JSON nested deeper than {} levels", where, kMaxJsonDepth);
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), limit_depth);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON ({})", where, e.what());
  }
}

nlohmann::json read_json_file(const std::filesystem::path& path, std::string_view prefix) {
  return parse_json(read_file(path, prefix), fmt::format("{} {}", prefix, path.string()));
}

std::string json_excerpt(const nlohmann::json& v, size_t max_chars) {
  std::string s = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (s.size() > max_chars) s = s.substr(0, max_chars) + "…";
  return s;
}

}  // namespace mamba2
