#include "serve/request.h"

#include <algorithm>
#include <cctype>
#include <cfloat>
#include <nlohmann/json.hpp>
#include <random>

#include "core/json.h"
#include "mamba2/error.h"
#include "mamba2/tokenizer.h"

namespace mamba2 {

namespace {

using nlohmann::json;

json parse_body(std::string_view text) {
  json body;
  try {
    body = parse_json(text, "[serve] request body");
  } catch (const Error& e) {
    throw HttpError{400, e.what()};
  }
  if (!body.is_object()) throw HttpError{400, "[serve] the request body must be a JSON object"};
  return body;
}

// Optional fields, type- and range-checked before any cast: absent or null gives the default.
bool flag(const json& body, const char* key, bool fallback) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) throw HttpError{400, fmt::format("[serve] '{}' must be true or false", key)};
  return it->get<bool>();
}

uint64_t count(const json& body, const char* key, uint64_t fallback) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return fallback;
  if (it->is_number_unsigned()) return it->get<uint64_t>();
  if (it->is_number_integer()) throw HttpError{400, fmt::format("[serve] '{}' must not be negative, got {}", key, it->dump())};
  throw HttpError{400, fmt::format("[serve] '{}' must be an integer", key)};
}

float number(const json& body, const char* key, float fallback) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return fallback;
  if (!it->is_number()) throw HttpError{400, fmt::format("[serve] '{}' must be a number", key)};
  const double v = it->get<double>();
  if (!(std::abs(v) <= double(FLT_MAX))) throw HttpError{400, fmt::format("[serve] '{}' is out of range: {}", key, it->dump())};
  return float(v);
}

// The sampling and stopping fields both endpoints share.
void parse_generation(const json& body, uint64_t max_tokens, GenerationParams& g) {
  if (max_tokens > uint64_t(INT32_MAX)) throw HttpError{400, fmt::format("[serve] 'max_tokens' {} is too large", max_tokens)};
  g.max_new_tokens = int64_t(max_tokens);
  SamplingParams& s = g.sampling;
  s.temperature = number(body, "temperature", 1.0f);
  s.top_p = number(body, "top_p", 1.0f);
  const uint64_t top_k = count(body, "top_k", 0);
  if (top_k > uint64_t(INT32_MAX)) throw HttpError{400, fmt::format("[serve] 'top_k' {} is too large", top_k)};
  s.top_k = int64_t(top_k);
  s.min_p = number(body, "min_p", 0.0f);
  s.repetition_penalty = number(body, "repeat_penalty", number(body, "repetition_penalty", 1.0f));
  s.seed = count(body, "seed", (uint64_t(std::random_device{}()) << 32) | std::random_device{}());
  g.ignore_eos = flag(body, "ignore_eos", false);
  if (count(body, "n", 1) != 1) throw HttpError{400, "[serve] 'n' must be 1: one completion per request"};
  if (flag(body, "echo", false)) throw HttpError{400, "[serve] 'echo' is not supported"};
  if (auto lp = body.find("logprobs"); lp != body.end() && !lp->is_null() && !(lp->is_number() && *lp == 0) &&
      !(lp->is_boolean() && !lp->get<bool>()))
    throw HttpError{400, "[serve] 'logprobs' is not supported"};
  if (auto st = body.find("stop"); st != body.end() && !st->is_null()) {
    if (st->is_string()) {
      g.stop.push_back(st->get<std::string>());
    } else if (st->is_array() && std::all_of(st->begin(), st->end(), [](const json& v) { return v.is_string(); })) {
      for (const json& v : *st) g.stop.push_back(v.get<std::string>());
    } else {
      throw HttpError{400, "[serve] 'stop' must be a string or a list of strings"};
    }
    for (const auto& stop : g.stop)
      if (stop.empty()) throw HttpError{400, "[serve] a stop string is empty"};
  }
}

}  // namespace

CompletionRequest parse_completion_request(std::string_view text, const Tokenizer& tokenizer) {
  const json body = parse_body(text);
  CompletionRequest r;
  auto it = body.find("prompt");
  if (it == body.end()) throw HttpError{400, "[serve] 'prompt' is missing"};
  json p = *it;
  if (p.is_array() && p.size() == 1 && p[0].is_string()) p = p[0];
  if (p.is_string()) {
    try {
      r.prompt = tokenizer.encode(p.get<std::string>());
    } catch (const Error& e) {
      throw HttpError{400, e.what()};  // invalid UTF-8, named by the tokenizer
    }
  } else if (p.is_array() && !p.empty() &&
             std::all_of(p.begin(), p.end(), [](const json& v) { return v.is_number_integer(); })) {
    for (const json& v : p) {
      if (!v.is_number_unsigned() || v.get<uint64_t>() >= uint64_t(tokenizer.vocab_size()))
        throw HttpError{400, fmt::format("[serve] token id {} in 'prompt' is out of range [0, {})", v.dump(),
                                         tokenizer.vocab_size())};
      r.prompt.push_back(int32_t(v.get<uint64_t>()));
    }
  } else {
    throw HttpError{400, "[serve] 'prompt' must be a string, a list of one string, or a list of token ids"};
  }

  parse_generation(body, count(body, "max_tokens", 16), r.params);
  r.stream = flag(body, "stream", false);
  if (auto se = body.find("session"); se != body.end() && !se->is_null()) {
    const auto ok = [](char c) { return std::isalnum((unsigned char)c) || c == '_' || c == '-' || c == '.'; };
    const std::string id = se->is_string() ? se->get<std::string>() : "";
    if (id.empty() || id.size() > 128 || !std::all_of(id.begin(), id.end(), ok))
      throw HttpError{400, "[serve] 'session' must be 1 to 128 letters, digits, '_', '-' or '.'"};
    r.session = id;
  }
  return r;
}

ChatRequest parse_chat_request(std::string_view text) {
  const json body = parse_body(text);
  ChatRequest r;
  auto it = body.find("messages");
  if (it == body.end() || !it->is_array() || it->empty())
    throw HttpError{400, "[serve] 'messages' must be a non-empty list of {\"role\", \"content\"} objects"};
  for (size_t i = 0; i < it->size(); ++i) {
    const json& m = (*it)[i];
    auto role = m.is_object() ? m.find("role") : m.end();
    if (!m.is_object() || role == m.end() || !role->is_string() || role->get<std::string>().empty())
      throw HttpError{400, fmt::format("[serve] messages[{}] needs a 'role' string", i)};
    ChatMessage msg{role->get<std::string>(), ""};
    auto content = m.find("content");  // absent or null: no text (an assistant turn of tool calls)
    if (content == m.end() || content->is_null()) {
      r.messages.push_back(std::move(msg));
      continue;
    }
    if (content->is_string()) {
      msg.content = content->get<std::string>();
    } else if (content->is_array()) {
      for (const json& part : *content) {
        auto type = part.is_object() ? part.find("type") : part.end();
        auto t = part.is_object() ? part.find("text") : part.end();
        if (type == part.end() || *type != "text" || t == part.end() || !t->is_string())
          throw HttpError{400, fmt::format("[serve] messages[{}].content: only text parts ({{\"type\": \"text\", "
                                           "\"text\": ...}}) are supported",
                                           i)};
        msg.content += t->get<std::string>();
      }
    } else {
      throw HttpError{400, fmt::format("[serve] messages[{}].content must be a string or a list of text parts", i)};
    }
    r.messages.push_back(std::move(msg));
  }
  for (const char* key : {"prompt", "session"})
    if (body.contains(key)) throw HttpError{400, fmt::format("[serve] '{}' belongs to /v1/completions, not chat", key)};
  parse_generation(body, count(body, "max_completion_tokens", count(body, "max_tokens", 512)), r.params);
  r.stream = flag(body, "stream", false);
  return r;
}

std::string parse_tokenize_request(std::string_view text) {
  const json body = parse_body(text);
  auto it = body.find("content");
  if (it == body.end() || !it->is_string()) throw HttpError{400, "[serve] 'content' must be a string"};
  return it->get<std::string>();
}

std::vector<int32_t> parse_detokenize_request(std::string_view text, int32_t vocab) {
  const json body = parse_body(text);
  auto it = body.find("tokens");
  if (it == body.end() || !it->is_array()) throw HttpError{400, "[serve] 'tokens' must be a list of token ids"};
  std::vector<int32_t> ids;
  for (const json& v : *it) {
    if (!v.is_number_unsigned() || v.get<uint64_t>() >= uint64_t(vocab))
      throw HttpError{400, fmt::format("[serve] 'tokens' holds {}, not an id in [0, {})", v.dump(), vocab)};
    ids.push_back(int32_t(v.get<uint64_t>()));
  }
  return ids;
}

}  // namespace mamba2
