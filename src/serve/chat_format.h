// How a chat turns into a prompt: the model's chat template (Hugging Face's tokenizer_config.json
// `chat_template`, or a file given to the server) and the special tokens it refers to.
#pragma once
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "tokenizer/chat_template.h"

namespace mamba2 {

struct ChatFormat {
  ChatTemplate tmpl;
  std::string bos_token, eos_token;  // tokenizer_config.json's, "" when absent
  std::string source;                // where the template came from, for messages

  // The prompt for `messages`, ending with the assistant's turn opened.
  std::string prompt(const std::vector<ChatMessage>& messages) const;
};

// `template_file` when given (the whole file is the template), else the `chat_template` of
// model_dir/tokenizer_config.json (a string, or a list of {name, template} of which "default" is
// taken); the special tokens from that tokenizer_config.json when it exists. nullopt when
// neither has a template. A GGUF file for `model_dir`: its tokenizer.chat_template and the
// tokens of tokenizer.ggml.bos_token_id / eos_token_id. Throws naming the file for one that
// cannot be read or parsed.
std::optional<ChatFormat> load_chat_format(const std::filesystem::path& model_dir,
                                           const std::filesystem::path& template_file);

}  // namespace mamba2
