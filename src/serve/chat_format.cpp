#include "serve/chat_format.h"

#include <nlohmann/json.hpp>

#include "core/file.h"
#include "core/json.h"
#include "io/gguf.h"
#include "mamba2/error.h"

namespace mamba2 {

namespace {

using nlohmann::json;


// A special token as tokenizer_config.json writes it: a string, or {"content": string, ...}.
std::string special_token(const json& config, const char* key, const std::filesystem::path& path) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    auto c = it->find("content");
    if (c != it->end() && c->is_string()) return c->get<std::string>();
  }
  fail("[chat] {}: '{}' must be a string or an object with a 'content' string", path.string(), key);
}

// A GGUF file's special token: the text of the token whose id the key holds ("" without one).
std::string gguf_special_token(const GgufFile& g, const char* key) {
  const auto id = g.metadata.find(key);
  const auto tokens = g.metadata.find("tokenizer.ggml.tokens");
  if (id == g.metadata.end() || !id->is_number_unsigned() || tokens == g.metadata.end() || !tokens->is_array() ||
      id->get<uint64_t>() >= tokens->size() || !(*tokens)[id->get<size_t>()].is_string())
    return "";
  return (*tokens)[id->get<size_t>()].get<std::string>();
}

}  // namespace

std::string ChatFormat::prompt(const std::vector<ChatMessage>& messages) const {
  return tmpl.render(messages, true, bos_token, eos_token);
}

std::optional<ChatFormat> load_chat_format(const std::filesystem::path& model_dir,
                                           const std::filesystem::path& template_file) {
  // A GGUF file's metadata, or the folder's tokenizer_config.json: where the template and the
  // special tokens come from.
  std::optional<GgufFile> gguf;
  if (std::filesystem::is_regular_file(model_dir) && is_gguf(model_dir)) gguf = read_gguf(model_dir, false);
  const std::filesystem::path config_path = gguf ? model_dir : model_dir / "tokenizer_config.json";
  json config = json::object();
  if (!gguf && std::filesystem::exists(config_path)) config = read_json_file(config_path, "[chat]");
  if (!config.is_object()) fail("[chat] {}: not a JSON object", config_path.string());
  std::string source, text;
  if (!template_file.empty()) {
    source = template_file.string();
    text = read_file(template_file, "[chat] chat template", ChatTemplate::kMaxBytes);
  } else if (gguf) {
    const auto it = gguf->metadata.find("tokenizer.chat_template");
    if (it == gguf->metadata.end()) return std::nullopt;
    if (!it->is_string()) fail("[chat] {}: tokenizer.chat_template is not a string", config_path.string());
    source = config_path.string() + " (tokenizer.chat_template)";
    text = it->get<std::string>();
  } else if (auto it = config.find("chat_template"); it != config.end() && !it->is_null()) {
    source = config_path.string() + " (chat_template)";
    if (it->is_string()) {
      text = it->get<std::string>();
    } else if (it->is_array()) {
      for (const json& named : *it) {
        if (named.is_object() && named.value("name", json()) == "default" && named.contains("template") &&
            named["template"].is_string())
          text = named["template"].get<std::string>();
      }
      if (text.empty()) fail("[chat] {}: 'chat_template' is a list without a \"default\" template", config_path.string());
    } else {
      fail("[chat] {}: 'chat_template' must be a string or a list of {{name, template}}", config_path.string());
    }
  } else {
    return std::nullopt;
  }
  try {
    if (gguf)
      return ChatFormat{ChatTemplate::parse(text), gguf_special_token(*gguf, "tokenizer.ggml.bos_token_id"),
                        gguf_special_token(*gguf, "tokenizer.ggml.eos_token_id"), source};
    return ChatFormat{ChatTemplate::parse(text), special_token(config, "bos_token", config_path),
                      special_token(config, "eos_token", config_path), source};
  } catch (const Error& e) {
    fail("[chat] the chat template of {}: {}", source, e.what());
  }
}

}  // namespace mamba2
