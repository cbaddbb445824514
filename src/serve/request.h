// The bodies of the server's requests, checked: what the engine needs, or an HttpError with the
// status and a message naming the field. Any byte string gives one or the other (fuzz_serve_request).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "mamba2/generate.h"
#include "tokenizer/chat_template.h"

namespace mamba2 {

class Tokenizer;

struct HttpError {
  int status;
  std::string message;
};

// POST /v1/completions: OpenAI's fields (prompt as a string, a list of one string or token ids;
// max_tokens, temperature, top_p, stop, seed, stream, n = 1, no echo or logprobs) and
// llama-server's (top_k, min_p, repeat_penalty, ignore_eos). Absent fields take OpenAI's
// defaults (16 tokens, temperature 1, top_p 1, a random seed); unknown fields are ignored.
// `session` (ours): 1 to 128 of [A-Za-z0-9_.-]; the prompt continues where that session's last
// request stopped.
struct CompletionRequest {
  std::vector<int32_t> prompt;
  GenerationParams params;
  bool stream = false;
  std::string session;
};
CompletionRequest parse_completion_request(std::string_view body, const Tokenizer& tokenizer);

// POST /v1/chat/completions: `messages` as OpenAI sends them (role and content; content a string
// or a list of text parts, concatenated), then the fields of a completion but `prompt`,
// `session` and `echo`; `max_completion_tokens` or `max_tokens` (default 512: a chat turn
// usually ends at the template's end-of-turn token well before).
struct ChatRequest {
  std::vector<ChatMessage> messages;
  GenerationParams params;
  bool stream = false;
};
ChatRequest parse_chat_request(std::string_view body);

// POST /tokenize {"content": text} and POST /detokenize {"tokens": [ids]}.
std::string parse_tokenize_request(std::string_view body);
std::vector<int32_t> parse_detokenize_request(std::string_view body, int32_t vocab);

}  // namespace mamba2
