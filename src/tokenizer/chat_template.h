// Chat templates: the Jinja2 template of a model folder (tokenizer_config.json's
// "chat_template") that turns a conversation into a prompt, rendered as Hugging Face
// transformers' apply_chat_template renders it (Jinja2's sandbox with trim_blocks and
// lstrip_blocks, raise_exception, a tojson that keeps non-ASCII text). A small interpreter of
// the subset such templates use; the template comes from a downloaded folder, so its size,
// nesting, loops, output and arithmetic are bounded and every failure is a mamba2::Error.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace mamba2 {

struct ChatMessage {
  std::string role, content;
};

class ChatTemplate {
 public:
  static constexpr size_t kMaxBytes = size_t(1) << 20;  // templates are kilobytes; parse refuses more

  // Parses the template once. Bad syntax is an Error "[chat] template: <what> at line L column
  // C", as is a filter or test Jinja2 does not know either (outside an if, as Jinja2 does).
  static ChatTemplate parse(std::string_view source);

  // The prompt for `messages`. The template sees `messages` (a list of {role, content}),
  // `add_generation_prompt`, `bos_token`, `eos_token`, and `tools` and `documents` as none (as
  // transformers passes them when there are none). Errors while rendering (undefined values
  // used wrongly, type errors, Jinja2 features not implemented here, limits) are an Error
  // "[chat] render: ... (template line L)"; the template's raise_exception('msg') is an Error
  // "[chat] template error: msg". Thread-safe: a parsed template is never modified.
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                     const std::string& bos_token, const std::string& eos_token) const;

 private:
  struct Program;
  explicit ChatTemplate(std::shared_ptr<const Program> program);
  std::shared_ptr<const Program> program_;
};

}  // namespace mamba2
