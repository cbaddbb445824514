// Chat templates against Jinja2: every case of tests/fixtures/chat_template/cases.json (made by
// scripts/make_chat_template_fixtures.py, Jinja2 set up as transformers sets it up) renders byte
// for byte as Jinja2 renders it, or fails where Jinja2 fails; then syntax errors, the limits
// that keep an untrusted template bounded, and raise_exception.
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "test_files.h"
#include "tokenizer/chat_template.h"

namespace mamba2 {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using test::error_message;

const json& cases() {
  static const json c = json::parse(test::read_file(fs::path(MAMBA2_FIXTURES_DIR) / "chat_template" / "cases.json"));
  return c;
}

std::vector<ChatMessage> conversation(const std::string& name) {
  std::vector<ChatMessage> messages;
  for (const json& m : cases()["conversations"][name]) messages.push_back({m["role"], m["content"]});
  return messages;
}

std::string render(std::string_view source, const std::vector<ChatMessage>& messages = {{"user", "hi"}},
                   bool add_generation_prompt = false) {
  return ChatTemplate::parse(source).render(messages, add_generation_prompt, "<s>", "</s>");
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

TEST(ChatTemplateParity, EveryCaseRendersAsJinja2) {
  ASSERT_GT(cases()["cases"].size(), 1500u);
  struct Parsed {
    std::optional<ChatTemplate> tmpl;
    std::string error;  // where it did not parse
  };
  std::map<std::string, Parsed> parsed;  // each template once
  int outputs = 0, errors = 0;
  for (const json& c : cases()["cases"]) {
    const std::string name = c["name"];
    const std::string source =
        c.contains("template") ? cases()["templates"][c["template"].get<std::string>()] : c["source"];
    SCOPED_TRACE(name + "\n" + source);
    auto it = parsed.find(source);
    if (it == parsed.end()) {
      Parsed p;
      try {
        p.tmpl = ChatTemplate::parse(source);
      } catch (const Error& e) {
        p.error = e.what();
      }
      it = parsed.emplace(source, std::move(p)).first;
    }
    const Parsed& p = it->second;
    const std::string stage = c.contains("error") ? c["error"]["stage"] : "";
    if (stage == "parse") {
      EXPECT_TRUE(p.error.starts_with("[chat] template: "))
          << "Jinja2: " << c["error"]["message"] << "\nours: " << p.error;
      ++errors;
      continue;
    }
    ASSERT_TRUE(p.tmpl) << p.error;
    std::string out, error;
    try {
      out = p.tmpl->render(conversation(c["conversation"]), c["add_generation_prompt"], cases()["bos_token"],
                           cases()["eos_token"]);
    } catch (const Error& e) {
      error = e.what();
    }
    if (stage.empty()) {
      EXPECT_EQ(error, "");
      EXPECT_EQ(out, c["output"].get<std::string>());
      ++outputs;
    } else if (stage == "raise") {
      EXPECT_EQ(error, "[chat] template error: " + c["error"]["message"].get<std::string>());
      ++errors;
    } else {
      EXPECT_TRUE(error.starts_with("[chat] render: ")) << "Jinja2: " << c["error"]["message"] << "\nours: " << error;
      ++errors;
    }
  }
  EXPECT_GT(outputs, 1000);
  EXPECT_GT(errors, 300);
}

TEST(ChatTemplate, UnicodePassesThroughUnchanged) {
  const std::string text = "h\xC3\xA9llo \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x99\x82 e\xCC\x81 \xE2\x80\xA8";
  EXPECT_EQ(render("{{ messages[0].content }}|{{ messages[0].content | length }}", {{"user", text}}), text + "|15");
  EXPECT_EQ(render("{% for m in messages %}{{ m.content }}{% endfor %}", {{"user", text}, {"assistant", text}}),
            text + text);
}

TEST(ChatTemplate, EmptyTemplatesAndConversations) {
  EXPECT_EQ(render(""), "");
  EXPECT_EQ(render("{% for m in messages %}x{% else %}none{% endfor %}", {}), "none");
  EXPECT_EQ(render("{{ messages | length }}{{ messages[0] is defined }}", {}), "0False");
  EXPECT_EQ(render("{% if add_generation_prompt %}gen{% endif %}", {}, true), "gen");
  EXPECT_EQ(render("{{ bos_token }}{{ eos_token }}{{ tools }}{{ documents }}"), "<s></s>NoneNone");
}

TEST(ChatTemplate, SyntaxErrorsNameLineAndColumn) {
  EXPECT_EQ(error_message([] { ChatTemplate::parse("line one\n  {{ 1 + }}"); }),
            "[chat] template: unexpected end of print statement at line 2 column 10");
  EXPECT_EQ(error_message([] { ChatTemplate::parse("{% for m in messages %}\n{{ m }}"); }),
            "[chat] template: unexpected end of template, expected 'endfor' or 'else' at line 2 column 8");
  EXPECT_EQ(error_message([] { ChatTemplate::parse("\xC3\xA9\xC3\xA9 {{ x | shout }}"); }),
            "[chat] template: unknown filter 'shout' at line 1 column 11");
  EXPECT_EQ(error_message([] { ChatTemplate::parse("a\r\nb\r\n{% raw %}{% endraw %}"); }),
            "[chat] template: unknown or unsupported tag 'raw' at line 3 column 4");
  EXPECT_EQ(error_message([] { ChatTemplate::parse("{{ 'a' }"); }),
            "[chat] template: unexpected '}' at line 1 column 8");
  EXPECT_EQ(error_message([] { ChatTemplate::parse("{# never closed"); }),
            "[chat] template: missing end of comment tag at line 1 column 1");
  EXPECT_EQ(error_message([] { ChatTemplate::parse("ok\n{{ x"); }),
            "[chat] template: missing end of variable tag '}}' at line 2 column 1");
  EXPECT_EQ(error_message([] { ChatTemplate::parse("{% break %}"); }),
            "[chat] template: 'break' outside a loop at line 1 column 4");
  EXPECT_EQ(error_message([] { ChatTemplate::parse("{{ 99999999999999999999 }}"); }),
            "[chat] template: integer literal too large at line 1 column 4");
  EXPECT_EQ(error_message([] { ChatTemplate::parse("bad \xFF byte"); }),
            "[chat] template: not valid UTF-8 at byte offset 4");
  EXPECT_EQ(error_message([] { ChatTemplate::parse("{{ " + std::string(300, 'a') + " }}"); }),
            "[chat] template: a name longer than the limit of 256 characters at line 1 column 4");
}

TEST(ChatTemplate, RenderErrorsNameTheLine) {
  EXPECT_EQ(error_message([] { render("{{ 1 }}\n\n{{ 1 // 0 }}"); }),
            "[chat] render: integer division or modulo by zero (template line 3)");
  EXPECT_EQ(error_message([] { render("{{ nothing.attr }}"); }),
            "[chat] render: 'nothing' is undefined (template line 1)");
  EXPECT_EQ(error_message([] { render("{{ 'a' + 1 }}"); }),
            "[chat] render: unsupported operand type(s) for +: 'str' and 'int' (template line 1)");
  EXPECT_EQ(error_message([] { render("{{ 9223372036854775807 + 1 }}"); }),
            "[chat] render: integer overflow (integers are 64-bit here) (template line 1)");
  EXPECT_EQ(error_message([] { render("{{ 2 ** 64 }}"); }),
            "[chat] render: integer overflow (integers are 64-bit here) (template line 1)");
  EXPECT_EQ(error_message([] { render("{{ 'x' % 1 }}"); }),
            "[chat] render: printf-style formatting (string % value) is not supported (template line 1)");
  EXPECT_EQ(error_message([] {
              render("{{ messages[0].content }}", {{"user", "bad \xC3"}});
            }),
            "[chat] message 0 content is not valid UTF-8 (byte offset 4)");
}

TEST(ChatTemplate, RaiseExceptionCarriesTheTemplatesMessage) {
  const ChatTemplate t = ChatTemplate::parse(
      "{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}"
      "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
      "{% endif %}{{ m.content }}{% endfor %}");
  EXPECT_EQ(t.render({{"user", "a"}, {"assistant", "b"}}, false, "", ""), "ab");
  EXPECT_EQ(error_message([&] {
              t.render({{"user", "a"}, {"user", "b"}}, false, "", "");
            }),
            "[chat] template error: Conversation roles must alternate user/assistant/user/assistant/...");
  EXPECT_EQ(error_message([] { render("{{ raise_exception(42) }}"); }), "[chat] template error: 42");
}

TEST(ChatTemplate, DeepNestingIsRefusedWhileParsing) {
  const std::string parens = std::string(200, '(') + "1" + std::string(200, ')');
  EXPECT_TRUE(contains(error_message([&] { ChatTemplate::parse("{{ " + parens + " }}"); }), "limit of 64 levels"));
  std::string blocks;
  for (int k = 0; k < 100; ++k) blocks += "{% if true %}";
  for (int k = 0; k < 100; ++k) blocks += "{% endif %}";
  EXPECT_TRUE(contains(error_message([&] { ChatTemplate::parse(blocks); }), "limit of 64 levels"));
  for (const auto& [open, close] : std::vector<std::pair<std::string, std::string>>{
           {"not ", ""}, {"-", ""}, {"(", ")"}, {"[", "]"}, {"{'k': ", "}"}, {"x[", "]"}, {"f(", ")"}}) {
    std::string deep = "{{ ";
    for (int k = 0; k < 10000; ++k) deep += open;
    deep += "1";
    for (int k = 0; k < 10000; ++k) deep += close;
    EXPECT_TRUE(contains(error_message([&] { ChatTemplate::parse(deep + " }}"); }), "limit of 64 levels")) << open;
  }
  std::string chain = "{{ 1";
  for (int k = 0; k < 10000; ++k) chain += " + 1";
  EXPECT_TRUE(contains(error_message([&] { ChatTemplate::parse(chain + " }}"); }), "limit of 256 levels"));
  std::string filters = "{{ 'x'";
  for (int k = 0; k < 10000; ++k) filters += "|trim";
  EXPECT_TRUE(contains(error_message([&] { ChatTemplate::parse(filters + " }}"); }), "limit of 256 levels"));
  // Within the limits, nesting works.
  EXPECT_EQ(render("{{ " + std::string(30, '[') + "1" + std::string(30, ']') + " | length }}"), "1");
  EXPECT_TRUE(
      contains(error_message([] { ChatTemplate::parse(std::string((1 << 20) + 1, 'x')); }), "limit of 1048576 bytes"));
}

TEST(ChatTemplate, RunawayTemplatesStopAtALimit) {
  auto fails_with = [](const std::string& source, const std::string& part) {
    const std::string message = error_message([&] { render(source); });
    EXPECT_TRUE(contains(message, part)) << source << "\n" << message;
  };
  fails_with("{% for i in range(10**9) %}{% endfor %}", "limit of 1048576 items");
  fails_with("{% set r = range(1000) %}{% for i in r %}{% for j in r %}{% for k in r %}"
             "{% endfor %}{% endfor %}{% endfor %}",
             "limit of 251000 steps");  // 250000, and 1000 per message
  fails_with("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", "the output is longer than the limit");
  fails_with("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
             "a string longer than the limit");
  fails_with("{{ 'x' * 10**9 }}", "a string longer than the limit");
  fails_with("{{ [1] * 10**9 }}", "a list longer than the limit");
  // Scanning a long string over and over counts, though nothing grows.
  fails_with("{% set s = 'x' * 10000000 %}{% for i in range(100) %}{% if s.strip() %}{% endif %}{% endfor %}",
             "bytes of values");
  fails_with("{% set k = 'x' * 10000000 %}{% set d = {k: 1} %}"
             "{% for i in range(100) %}{{ d[k] }}{{ k in d }}{% endfor %}",
             "bytes of values");
  fails_with("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", "evaluation nested deeper than the limit");
  std::string maps = "{{ 'a' | map('map'";
  for (int k = 0; k < 1000; ++k) maps += ", 'map'";
  fails_with(maps + ") | list }}", "evaluation nested deeper than the limit");
  fails_with("{% set ns = namespace(l=[]) %}{% for i in range(100) %}{% set ns.l = [ns.l] %}{% endfor %}",
             "values nested deeper than the limit");
  fails_with("{% set ns = namespace() %}{% set ns.me = [ns] %}", "a namespace cannot hold a namespace");
}

// The step limit grows with the conversation: long conversations render.
TEST(ChatTemplate, LongConversationsFitTheLimits) {
  const ChatTemplate t = ChatTemplate::parse(
      "{% set ns = namespace(n=0) %}{% for m in messages %}"
      "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('bad order') }}{% endif %}"
      "{% set ns.n = ns.n + 1 %}"
      "{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + m['content'].strip() + ' [/INST]' }}"
      "{% else %}{{ ' ' + m['content'] | trim + ' ' + eos_token }}{% endif %}{% endfor %}{{ ns.n }}");
  std::vector<ChatMessage> conversation;
  for (int k = 0; k < 20000; ++k)
    conversation.push_back({k % 2 ? "assistant" : "user", " turn " + std::to_string(k) + " "});
  const std::string out = t.render(conversation, true, "<s>", "</s>");
  EXPECT_TRUE(out.starts_with("<s>[INST] turn 0 [/INST] turn 1 </s><s>[INST] turn 2 [/INST]"));
  EXPECT_TRUE(out.ends_with(" turn 19999 </s>20000"));
}

TEST(ChatTemplate, RendersFromSeveralThreads) {
  const ChatTemplate t = ChatTemplate::parse(
      "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n{% endfor %}");
  const std::vector<ChatMessage> conversation = {{"system", " s "}, {"user", "u"}};
  std::vector<std::thread> threads;
  std::vector<std::string> outs(4);
  for (size_t k = 0; k < outs.size(); ++k)
    threads.emplace_back([&, k] {
      for (int n = 0; n < 200; ++n) outs[k] = t.render(conversation, false, "", "");
    });
  for (std::thread& th : threads) th.join();
  for (const std::string& out : outs)
    EXPECT_EQ(out, "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nu<|im_end|>\n");
}

}  // namespace
}  // namespace mamba2
