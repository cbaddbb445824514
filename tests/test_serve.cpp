// The HTTP server through a real client (curl): completions equal Generator's text for the same
// parameters, streamed or not, alone or with other streams running; bad requests get a 4xx with a
// message and the server keeps serving; a client that goes away frees its slot.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <thread>

#include <sys/wait.h>

#include "mamba2/generate.h"
#include "mamba2/model.h"
#include "mamba2/tokenizer.h"
#include "model/weights.h"
#include "serve/server.h"
#include "test_files.h"
#include "test_support.h"

namespace mamba2 {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// A ChatML-style template that refuses unknown roles.
constexpr const char* kChatTemplate =
    "{% for m in messages %}"
    "{% if m['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('unknown role ' + m['role']) }}"
    "{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

// A server on a free port of 127.0.0.1, on its own thread, over a small perturbed model.
class Serve : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const ModelConfig c = test::small_config(50277, false);
    ModelWeights w = init_weights(c, 3);
    test::perturb_weights(w, 4);
    model_ = new Model(c, std::make_shared<const ModelWeights>(std::move(w)));
    tokenizer_ = new Tokenizer(Tokenizer::load(MAMBA2_FIXTURES_DIR "/tokenizer/gpt-neox-20b.json"));
    ServeOptions o;
    o.port = 0;
    o.model_name = "tiny";
    o.limits.slots = 16;
    o.limits.queue = 64;
    o.limits.prefill_tokens = 32;  // two chunks a step: long prompts go in pieces between decode steps
    o.limits.cache_bytes = int64_t(64) << 20;
    o.chat = std::make_shared<const ChatFormat>(
        ChatFormat{ChatTemplate::parse(kChatTemplate), "", "<|im_end|>", "the test's template"});
    server_ = new Server(*model_, *tokenizer_, o);
    thread_ = new std::thread([] { server_->listen(); });
    for (int i = 0; i < 500 && server_->port() < 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_GT(server_->port(), 0);
  }
  static void TearDownTestSuite() {
    server_->stop();
    thread_->join();
    delete thread_;
    delete server_;
    delete tokenizer_;
    delete model_;
  }

  struct Reply {
    int status = 0;
    std::string body;
  };
  // curl, with the body in a file (no shell quoting of JSON); -w appends the status.
  static Reply curl(const std::string& path, const std::string& body = "", const std::string& extra = "",
                    int port = 0) {
    test::TempDir tmp;
    const fs::path in = tmp.path() / "in.json", out = tmp.path() / "out";
    std::string cmd = "curl -s -N -o " + test::shell_quote(out.string()) + " -w '%{http_code}' " + extra + " ";
    if (!body.empty()) {
      test::write_file(in, body);
      cmd += "-H 'Content-Type: application/json' --data-binary @" + test::shell_quote(in.string()) + " ";
    }
    cmd += test::shell_quote("http://127.0.0.1:" + std::to_string(port ? port : server_->port()) + path);
    FILE* p = popen(cmd.c_str(), "r");
    char code[16] = {};
    const size_t n = fread(code, 1, sizeof(code) - 1, p);
    pclose(p);
    return {std::atoi(std::string(code, n).c_str()), test::read_file(out)};
  }
  // Generator's text for one prompt and parameters (the reference).
  static std::string generated(const std::string& prompt, const GenerationParams& p) {
    Generator g(*model_, *tokenizer_);
    return g.complete(prompt, p);
  }
  // The text of an SSE stream, checking its shape.
  static std::string stream_text(const std::string& sse, std::string* reason = nullptr) {
    std::string text;
    size_t pos = 0;
    bool done = false;
    while ((pos = sse.find("data: ", pos)) != std::string::npos) {
      const size_t end = sse.find("\n\n", pos);
      const std::string payload = sse.substr(pos + 6, end - pos - 6);
      pos = end;
      if (payload == "[DONE]") {
        done = true;
        continue;
      }
      const json j = json::parse(payload);
      const json& c = j["choices"][0];
      text += c.contains("text") ? c["text"].get<std::string>() : c["delta"].value("content", std::string());
      if (reason && !j["choices"][0]["finish_reason"].is_null()) *reason = j["choices"][0]["finish_reason"];
    }
    EXPECT_TRUE(done) << "no [DONE] in the stream";
    return text;
  }

  static inline Model* model_ = nullptr;
  static inline Tokenizer* tokenizer_ = nullptr;
  static inline Server* server_ = nullptr;
  static inline std::thread* thread_ = nullptr;
};

GenerationParams params(uint64_t seed, int64_t n, float temperature) {
  GenerationParams p;
  p.max_new_tokens = n;
  p.ignore_eos = true;
  p.sampling = {temperature, 0, 1.0f, 0.0f, 1.0f, seed};
  return p;
}

std::string request(const std::string& prompt, uint64_t seed, int64_t n, float temperature, bool stream) {
  return json{{"prompt", prompt},   {"max_tokens", n}, {"temperature", temperature}, {"seed", seed},
              {"ignore_eos", true}, {"stream", stream}}
      .dump();
}

TEST_F(Serve, CompletionsEqualTheGeneratorStreamedOrNot) {
  for (float t : {0.0f, 1.0f}) {
    const std::string prompt = "The quick brown fox";
    const std::string want = generated(prompt, params(5, 12, t));
    const Reply r = curl("/v1/completions", request(prompt, 5, 12, t, false));
    ASSERT_EQ(r.status, 200) << r.body;
    const json j = json::parse(r.body);
    EXPECT_EQ(j["choices"][0]["text"], want) << "temperature " << t;
    EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
    EXPECT_EQ(j["object"], "text_completion");
    EXPECT_EQ(j["model"], "tiny");
    EXPECT_EQ(j["usage"]["completion_tokens"], 12);
    EXPECT_EQ(j["usage"]["prompt_tokens"], int64_t(tokenizer_->encode(prompt).size()));
    const Reply s = curl("/v1/completions", request(prompt, 5, 12, t, true));
    ASSERT_EQ(s.status, 200);
    std::string reason;
    EXPECT_EQ(stream_text(s.body, &reason), want);
    EXPECT_EQ(reason, "length");
  }
}

// 64 streams at once (16 decoding, the rest queued and joining as slots free up), greedy and
// sampled with their own seeds, prompts of many lengths: each gets the text it gets alone.
TEST_F(Serve, SixtyFourConcurrentStreamsGetTheirTextsAlone) {
  constexpr int kStreams = 64;
  const std::string words = "In the beginning was the word and the word was with the light of the morning sun ";
  std::vector<std::string> prompts, got(kStreams), want(kStreams);
  for (int i = 0; i < kStreams; ++i) prompts.push_back(words.substr(0, size_t(5 + (i * 37) % 75)) + std::to_string(i));
  auto temperature = [](int i) { return i % 3 == 0 ? 0.0f : 1.0f; };
  for (int i = 0; i < kStreams; ++i)
    want[size_t(i)] = generated(prompts[size_t(i)], params(100 + uint64_t(i), 8, temperature(i)));
  std::vector<std::thread> clients;
  for (int i = 0; i < kStreams; ++i)
    clients.emplace_back([&, i] {
      got[size_t(i)] = stream_text(
          curl("/v1/completions", request(prompts[size_t(i)], 100 + uint64_t(i), 8, temperature(i), true)).body);
    });
  for (auto& c : clients) c.join();
  for (int i = 0; i < kStreams; ++i) EXPECT_EQ(got[size_t(i)], want[size_t(i)]) << "stream " << i;
}

TEST_F(Serve, BadRequestsGetAClearErrorAndTheServerKeepsServing) {
  struct Bad {
    std::string path, body;
    int status;
    std::string needle;
  };
  const std::vector<Bad> cases = {
      {"/v1/completions", "{bad", 400, "not valid JSON"},
      {"/v1/completions", "[1]", 400, "must be a JSON object"},
      {"/v1/completions", R"({"max_tokens": 3})", 400, "'prompt' is missing"},
      {"/v1/completions", R"({"prompt": 5})", 400, "'prompt' must be a string"},
      {"/v1/completions", R"({"prompt": "hi", "max_tokens": "a"})", 400, "'max_tokens' must be an integer"},
      {"/v1/completions", R"({"prompt": "hi", "max_tokens": -1})", 400, "'max_tokens' must not be negative"},
      {"/v1/completions", R"({"prompt": "hi", "temperature": -1})", 400, "temperature"},
      {"/v1/completions", R"({"prompt": "hi", "stop": [1]})", 400, "'stop' must be a string"},
      {"/v1/completions", R"({"prompt": "hi", "n": 2})", 400, "'n' must be 1"},
      {"/v1/completions", R"({"prompt": ""})", 400, "prompt is empty"},
      {"/v1/completions", R"({"prompt": [99999999]})", 400, "out of range"},
      {"/v1/completions", "{\"prompt\": \"a\xff\"}", 400, "JSON"},
      {"/v1/chat/completions", R"({"messages": []})", 400, "'messages' must be a non-empty list"},
      {"/v1/chat/completions", R"({"messages": [{"content": "hi"}]})", 400, "messages[0] needs a 'role'"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})", 400,
       "only text parts"},
      {"/v1/chat/completions", R"({"messages": [{"role": "tool", "content": "x"}]})", 400, "unknown role tool"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "prompt": "y"})", 400,
       "'prompt' belongs to /v1/completions"},
      {"/tokenize", R"({"content": 3})", 400, "'content' must be a string"},
      {"/detokenize", R"({"tokens": [-1]})", 400, "not an id"},
  };
  for (const Bad& b : cases) {
    const Reply r = curl(b.path, b.body);
    EXPECT_EQ(r.status, b.status) << b.body << "\n" << r.body;
    EXPECT_NE(r.body.find(b.needle), std::string::npos) << b.body << "\n" << r.body;
    EXPECT_NO_THROW((void)json::parse(r.body)["error"]["message"].get<std::string>()) << r.body;
  }
  EXPECT_EQ(curl("/nope").status, 404);
  const Reply h = curl("/health");
  EXPECT_EQ(h.status, 200);
  EXPECT_EQ(json::parse(h.body)["status"], "ok");
  const Reply m = curl("/v1/models");
  EXPECT_EQ(json::parse(m.body)["data"][0]["id"], "tiny");
  const Reply t = curl("/tokenize", R"({"content": "Hello world"})");
  const json ids = json::parse(t.body)["tokens"];
  EXPECT_EQ(ids.get<std::vector<int32_t>>(), tokenizer_->encode("Hello world"));
  EXPECT_EQ(json::parse(curl("/detokenize", json{{"tokens", ids}}.dump()).body)["content"], "Hello world");
}

// A chat is the completion of the prompt the template writes (spelled out here), streamed or not;
// the answer opens with the assistant's role.
TEST_F(Serve, ChatCompletionsCompleteTheTemplatesPrompt) {
  const std::string prompt =
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a fox.<|im_end|>\n<|im_start|>assistant\n";
  const json messages = json::array({{{"role", "system"}, {"content", "Be brief."}},
                                     {{"role", "user"}, {"content", json::array({{{"type", "text"}, {"text", "Name "}},
                                                                                 {{"type", "text"}, {"text", "a fox."}}})}}});
  for (float t : {0.0f, 1.0f}) {
    const std::string want = generated(prompt, params(9, 10, t));
    json body = {{"messages", messages}, {"max_completion_tokens", 10}, {"temperature", t}, {"seed", 9},
                 {"ignore_eos", true}};
    const Reply r = curl("/v1/chat/completions", body.dump());
    ASSERT_EQ(r.status, 200) << r.body;
    const json j = json::parse(r.body);
    EXPECT_EQ(j["object"], "chat.completion");
    EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
    EXPECT_EQ(j["choices"][0]["message"]["content"], want) << "temperature " << t;
    EXPECT_EQ(j["usage"]["prompt_tokens"], int64_t(tokenizer_->encode(prompt).size()));
    body["stream"] = true;
    const Reply s = curl("/v1/chat/completions", body.dump());
    ASSERT_EQ(s.status, 200);
    std::string reason;
    EXPECT_EQ(stream_text(s.body, &reason), want);
    EXPECT_EQ(reason, "length");
    const size_t first = s.body.find("data: ");
    const json head = json::parse(s.body.substr(first + 6, s.body.find("\n\n", first) - first - 6));
    EXPECT_EQ(head["object"], "chat.completion.chunk");
    EXPECT_EQ(head["choices"][0]["delta"]["role"], "assistant");
  }
}

// The official openai Python package as the client (scripts/run-tests.sh installs it in a venv
// and names its python in MAMBA2_TEST_PYTHON): completions and chat, streamed or not, give the
// Generator's texts and the usage the server counts. Skipped, saying so, without the package.
TEST_F(Serve, TheOpenAIPackageGetsTheGeneratorsTexts) {
  const char* env = std::getenv("MAMBA2_TEST_PYTHON");
  const std::string python = env && *env ? env : "python3";
  const std::string prompt = "The quick brown fox";
  const std::string chat_prompt = "<|im_start|>user\nName a fox.<|im_end|>\n<|im_start|>assistant\n";
  const std::string want = generated(prompt, params(5, 12, 0.0f)), want_chat = generated(chat_prompt, params(9, 10, 0.0f));
  json cases = json::array();
  for (bool stream : {false, true}) {
    cases.push_back({{"api", "completions"},
                     {"stream", stream},
                     {"args", {{"model", "tiny"}, {"prompt", prompt}, {"max_tokens", 12}, {"temperature", 0},
                               {"seed", 5}, {"extra_body", {{"ignore_eos", true}}}}}});
    cases.push_back({{"api", "chat"},
                     {"stream", stream},
                     {"args", {{"model", "tiny"}, {"messages", json::array({{{"role", "user"}, {"content", "Name a fox."}}})},
                               {"max_completion_tokens", 10}, {"temperature", 0}, {"seed", 9},
                               {"extra_body", {{"ignore_eos", true}}}}}});
  }
  test::TempDir tmp;
  test::write_file(tmp.path() / "cases.json", cases.dump());
  const std::string cmd = test::shell_quote(python) + " " +
                          test::shell_quote(MAMBA2_FIXTURES_DIR "/../clients/openai_client.py") + " " +
                          test::shell_quote("http://127.0.0.1:" + std::to_string(server_->port()) + "/v1") + " < " +
                          test::shell_quote((tmp.path() / "cases.json").string()) + " > " +
                          test::shell_quote((tmp.path() / "out.json").string());
  const int rc = std::system(cmd.c_str());
  if (WIFEXITED(rc) && WEXITSTATUS(rc) == 3)
    GTEST_SKIP() << python << " has no openai package (scripts/run-tests.sh installs it; MAMBA2_TEST_PYTHON names it)";
  ASSERT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 0) << cmd;
  const json got = json::parse(test::read_file(tmp.path() / "out.json"));
  ASSERT_EQ(got.size(), cases.size());
  for (size_t i = 0; i < got.size(); ++i) {
    const bool chat = cases[i]["api"] == "chat";
    SCOPED_TRACE(cases[i].dump());
    EXPECT_EQ(got[i]["text"], chat ? want_chat : want);
    EXPECT_EQ(got[i]["finish_reason"], "length");
    EXPECT_EQ(got[i]["usage"]["completion_tokens"], chat ? 10 : 12);
    EXPECT_EQ(got[i]["usage"]["prompt_tokens"], int64_t(tokenizer_->encode(chat ? chat_prompt : prompt).size()));
    if (chat) {
      EXPECT_EQ(got[i]["role"], "assistant");
    }
  }
}

// Without a chat template, chat answers 400 saying what is missing; completions still work.
TEST_F(Serve, ChatWithoutATemplateIsAClearError) {
  ServeOptions o;
  o.port = 0;
  o.model_name = "bare";
  Server bare(*model_, *tokenizer_, o);
  std::thread t([&] { bare.listen(); });
  for (int i = 0; i < 500 && bare.port() < 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const Reply r = curl("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "hi"}]})", "", bare.port());
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("need a chat template"), std::string::npos) << r.body;
  EXPECT_EQ(curl("/v1/completions", request("hi", 1, 2, 0.0f, false), "", bare.port()).status, 200);
  bare.stop();
  t.join();
}

// A server listens before its model is loaded (mamba2 serve binds first): every endpoint answers
// 503 with Retry-After until the model is there, then serves.
TEST_F(Serve, AnswersLoadingUntilTheModelIsThere) {
  ServeOptions o;
  o.port = 0;
  o.api_key = "k";
  Server early(o);
  early.bind();
  std::thread t([&] { early.listen(); });
  for (const char* path : {"/health", "/v1/models"}) {
    const Reply r = curl(path, "", "-i", early.port());
    EXPECT_EQ(r.status, 503) << path;
    EXPECT_NE(r.body.find("Retry-After: 1"), std::string::npos) << r.body;
    EXPECT_NE(r.body.find("loading the model"), std::string::npos) << r.body;
  }
  EXPECT_EQ(curl("/v1/completions", request("hi", 1, 2, 0.0f, false), "-H 'Authorization: Bearer k'", early.port()).status,
            503);
  EXPECT_EQ(early.running(), 0);
  early.serve_model(*model_, *tokenizer_);
  EXPECT_EQ(curl("/health", "", "", early.port()).status, 200);
  EXPECT_EQ(curl("/v1/completions", request("hi", 1, 2, 0.0f, false), "", early.port()).status, 401);
  EXPECT_EQ(curl("/v1/completions", request("hi", 1, 2, 0.0f, false), "-H 'Authorization: Bearer k'", early.port()).status,
            200);
  early.stop();
  t.join();
}

// The limits, each answered while the server keeps serving: a prompt over the limit is a 400 naming
// it; with the one slot busy and the queue full, a request gets 503 with Retry-After; stopping the
// server ends the running and the queued stream cleanly (finished, [DONE]).
TEST_F(Serve, LimitsAreClearAnswersAndStopEndsStreamsCleanly) {
  ServeOptions o;
  o.port = 0;
  o.limits.slots = 1;
  o.limits.queue = 1;
  o.limits.prompt_tokens = 16;
  Server small(*model_, *tokenizer_, o);
  std::thread t([&] { small.listen(); });
  for (int i = 0; i < 500 && small.port() < 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_GT(small.port(), 0);
  const int port = small.port();
  std::string long_prompt;
  for (int i = 0; i < 40; ++i) long_prompt += " word";
  const Reply over = curl("/v1/completions", request(long_prompt, 1, 2, 0.0f, false), "", port);
  EXPECT_EQ(over.status, 400) << over.body;
  EXPECT_NE(over.body.find("more than the limit of 16"), std::string::npos) << over.body;

  // Endless streams (stopped below): one holds the slot, the next waits in the queue.
  const auto gauge = [&](const std::string& name) {
    const std::string m = curl("/metrics", "", "", port).body;
    const size_t at = m.find("\n" + name + " ");
    return at == std::string::npos ? -1 : std::atoi(m.c_str() + at + name.size() + 2);
  };
  const auto wait_for = [&](const std::string& name, int value) {
    for (int i = 0; i < 1000 && gauge(name) != value; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return gauge(name) == value;
  };
  Reply running, queued;
  std::thread a([&] { running = curl("/v1/completions", request("In the beginning", 1, 100000000, 0.0f, true), "", port); });
  ASSERT_TRUE(wait_for("mamba2_requests_running", 1));
  std::thread b([&] { queued = curl("/v1/completions", request("And God said", 2, 100000000, 0.0f, true), "", port); });
  ASSERT_TRUE(wait_for("mamba2_requests_waiting", 1));
  const Reply full = curl("/v1/completions", request("hi", 3, 2, 0.0f, false), "-i", port);
  EXPECT_EQ(full.status, 503) << full.body;
  EXPECT_NE(full.body.find("Retry-After: 1"), std::string::npos) << full.body;
  EXPECT_NE(full.body.find("requests are waiting already"), std::string::npos) << full.body;
  EXPECT_EQ(curl("/health", "", "", port).status, 200);

  small.stop();
  t.join();
  a.join();
  b.join();
  for (const Reply* r : {&running, &queued}) {
    EXPECT_EQ(r->status, 200);
    std::string reason;
    (void)stream_text(r->body, &reason);  // checks the [DONE]
    EXPECT_FALSE(reason.empty()) << "the stream ended without a finish_reason";
  }
}

// A prompt sharing a prefix with an earlier one resumes from the cached state at the longest
// chunk boundary of the shared part: the text is the one without any cache, `usage` and
// /metrics report the cached tokens.
TEST_F(Serve, APrefixCacheHitChangesNoBit) {
  const std::string history =
      "In the beginning God created the heaven and the earth. And the earth was without form, and void; and "
      "darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters. And God "
      "said, Let there be light: and there was light.";
  const std::string first = history + " And the Spirit", second = history + " And God said";
  const int64_t shared = int64_t(tokenizer_->encode(history).size());
  ASSERT_GT(shared, 2 * model_->config().chunk_size);
  for (const std::string& prompt : {first, second}) {
    const std::string want = generated(prompt, params(9, 10, 1.0f));
    const Reply r = curl("/v1/completions", request(prompt, 9, 10, 1.0f, false));
    ASSERT_EQ(r.status, 200) << r.body;
    const json j = json::parse(r.body);
    EXPECT_EQ(j["choices"][0]["text"], want);
    const int64_t cached = j["usage"]["prompt_tokens_details"]["cached_tokens"];
    if (prompt == second) {
      EXPECT_GT(cached, shared - model_->config().chunk_size) << "the longest boundary of the shared tokens";
      EXPECT_LE(cached, shared);
      EXPECT_EQ(cached % model_->config().chunk_size, 0);
    }
  }
  const Reply m = curl("/metrics");
  EXPECT_EQ(m.status, 200);
  EXPECT_NE(m.body.find("# TYPE mamba2_prefix_cache_hits_total counter"), std::string::npos) << m.body;
  EXPECT_EQ(m.body.find("mamba2_prefix_cache_hits_total 0\n"), std::string::npos) << m.body;
  EXPECT_EQ(m.body.find("mamba2_prefix_cache_cached_tokens_total 0\n"), std::string::npos) << m.body;
  // State memory: each slot holds one sequence's conv and SSM states of every layer.
  const ModelConfig& c = model_->config();
  const int64_t per = 4 * c.n_layer * ((c.d_conv - 1) * c.conv_dim() + c.nheads() * c.headdim * c.d_state);
  EXPECT_NE(m.body.find("mamba2_slot_state_bytes " + std::to_string(16 * per) + "\n"), std::string::npos) << m.body;
  EXPECT_NE(m.body.find("# TYPE mamba2_session_state_bytes gauge"), std::string::npos) << m.body;
}

// A session continues where its last request stopped (every generated token consumed): the
// texts are those of Generator continuing the state it kept, and an unknown session starts fresh.
TEST_F(Serve, SessionsContinueExactly) {
  const std::string first = "Once upon a time", then = " and then";
  GenerationParams p = params(21, 7, 1.0f);
  p.keep_states = true;
  Generator g(*model_, *tokenizer_);
  std::string want1;
  const auto r1 = g.generate(std::vector<std::string>{first}, p, [&](const TokenEvent& e) { want1 += e.text; });
  GenerationParams p2 = params(22, 7, 1.0f);
  p2.start_states = {r1[0].final_state};
  const std::string want2 = generated(then, p2);
  auto ask = [&](const std::string& prompt, uint64_t seed, bool stream) {
    json body = json::parse(request(prompt, seed, 7, 1.0f, stream));
    body["session"] = "chat-1";
    const Reply r = curl("/v1/completions", body.dump());
    EXPECT_EQ(r.status, 200) << r.body;
    return stream ? stream_text(r.body) : json::parse(r.body)["choices"][0]["text"].get<std::string>();
  };
  EXPECT_EQ(ask(first, 21, false), want1);
  EXPECT_EQ(ask(then, 22, true), want2);
  const Reply bad = curl("/v1/completions", R"({"prompt": "x", "session": "a b"})");
  EXPECT_EQ(bad.status, 400);
  EXPECT_NE(bad.body.find("'session' must be"), std::string::npos) << bad.body;
}

// A client that stops reading mid-stream: its slot is freed, the engine goes idle.
TEST_F(Serve, ADisconnectedStreamFreesItsSlot) {
  const Reply r = curl("/v1/completions", request("Tell me a long story", 1, 1000000, 1.0f, true), "--max-time 1");
  EXPECT_NE(r.body.find("data: "), std::string::npos) << "it streamed before the client left";
  bool idle = false;
  for (int i = 0; i < 500 && !idle; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    idle = curl("/health").status == 200 && server_->running() == 0;
  }
  EXPECT_TRUE(idle) << "the abandoned stream still holds its slot";
}

}  // namespace
}  // namespace mamba2
