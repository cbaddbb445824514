#include "serve/server.h"

#include <httplib.h>

#include <chrono>
#include <cstdio>
#include <mutex>
#include <thread>
#include <nlohmann/json.hpp>

#include "core/json.h"
#include "mamba2/error.h"
#include "mamba2/model.h"
#include "mamba2/tokenizer.h"
#include "serve/request.h"

namespace mamba2 {

namespace {

using nlohmann::json;

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  // Messages may quote the client's bytes: invalid UTF-8 in them is replaced, never a throw.
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

void send_error(httplib::Response& res, int status, const std::string& message) {
  const char* type = status == 401   ? "authentication_error"
                     : status == 503 ? "unavailable_error"
                     : status >= 500 ? "server_error"
                                     : "invalid_request_error";
  send_json(res, status, {{"error", {{"message", message}, {"type", type}, {"code", status}}}});
}

const char* finish_reason(FinishReason r) { return r == FinishReason::Length ? "length" : "stop"; }

int64_t now_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

struct Server::Impl {
  ServeOptions options;
  // Set once by serve_model(), before `loaded`; handlers run only once `loaded` is true.
  const Tokenizer* tokenizer = nullptr;
  std::unique_ptr<Engine> engine;
  std::atomic<bool> loaded{false};
  std::mutex lifecycle;  // serve_model() against stop()
  bool stopped = false;
  httplib::Server http;
  std::atomic<int64_t> next_id{0};
  // Streamed responses still writing: stop() lets them send their last events before the HTTP
  // server stops (httplib ends a chunked response mid-way once it is stopping).
  std::atomic<int64_t> open_streams{0};
  int bound_port = -1;

  explicit Impl(ServeOptions o) : options(std::move(o)) {}

  // The body of a response or of one streamed event. Chat streams open with the assistant's role
  // and send the text as deltas; an event with no text sends an empty delta.
  enum class Api { Completion, Chat };
  json response(Api api, bool stream, bool first, const std::string& id, int64_t created, const std::string& text,
                const char* reason) {
    json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", reason ? json(reason) : json(nullptr)}};
    if (api == Api::Completion) {
      choice["text"] = text;
    } else if (!stream) {
      choice["message"] = {{"role", "assistant"}, {"content", text}};
    } else {
      json delta = json::object();
      if (first) delta["role"] = "assistant";
      if (first || !text.empty()) delta["content"] = text;
      choice["delta"] = delta;
    }
    const char* object = api == Api::Completion ? "text_completion" : stream ? "chat.completion.chunk" : "chat.completion";
    return {{"id", id}, {"object", object}, {"created", created}, {"model", options.model_name},
            {"choices", json::array({choice})}};
  }

  static json usage(const RequestStream& s) {
    const int64_t c = s.completion_tokens;
    return {{"prompt_tokens", s.prompt_tokens},
            {"completion_tokens", c},
            {"total_tokens", s.prompt_tokens + c},
            {"prompt_tokens_details", {{"cached_tokens", s.cached_tokens.load()}}}};
  }

  void completions(const httplib::Request& req, httplib::Response& res) {
    CompletionRequest r = parse_completion_request(req.body, *tokenizer);
    respond(Api::Completion, std::move(r.prompt), r.params, r.session, r.stream, res);
  }

  void chat_completions(const httplib::Request& req, httplib::Response& res) {
    ChatRequest r = parse_chat_request(req.body);
    if (!options.chat)
      throw HttpError{400, "[serve] chat completions need a chat template: the model folder's tokenizer_config.json "
                           "has no 'chat_template'; start the server with --chat-template FILE, or use /v1/completions"};
    std::vector<int32_t> prompt;
    try {
      prompt = tokenizer->encode(options.chat->prompt(r.messages));
    } catch (const Error& e) {
      throw HttpError{400, e.what()};  // the template's raise_exception, or invalid UTF-8 in a message
    }
    // The end of a turn as the template writes it ends the answer, when it is not the EOS token
    // the engine stops at anyway.
    if (!options.chat->eos_token.empty() && !r.params.ignore_eos) r.params.stop.push_back(options.chat->eos_token);
    respond(Api::Chat, std::move(prompt), r.params, "", r.stream, res);
  }

  void respond(Api api, std::vector<int32_t> prompt, const GenerationParams& params, const std::string& session,
               bool stream, httplib::Response& res) {
    std::shared_ptr<RequestStream> out;
    try {
      out = engine->submit(std::move(prompt), params, session);
    } catch (const Engine::QueueFull&) {
      res.set_header("Retry-After", "1");
      throw HttpError{503, fmt::format("[serve] {} requests are waiting already; try again", engine->limits().queue)};
    } catch (const Error& e) {
      throw HttpError{400, e.what()};
    }
    const std::string id = fmt::format("{}-{}", api == Api::Completion ? "cmpl" : "chatcmpl", next_id++);
    const int64_t created = now_seconds();
    if (!stream) {
      std::string text;
      StreamEvent e;
      FinishReason reason = FinishReason::Length;
      while (out->next(e)) {
        text += e.text;
        if (e.finished) reason = e.reason;
      }
      json j = response(api, false, true, id, created, text, finish_reason(reason));
      j["usage"] = usage(*out);
      send_json(res, 200, j);
      return;
    }
    res.set_header("Cache-Control", "no-cache");
    auto first = std::make_shared<bool>(true);
    ++open_streams;
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, api, out, id, created, first](size_t, httplib::DataSink& sink) {
          StreamEvent e;
          if (!out->next(e)) {
            sink.done();
            return true;
          }
          json j = response(api, true, *first, id, created, e.text, e.finished ? finish_reason(e.reason) : nullptr);
          *first = false;
          if (e.finished) j["usage"] = usage(*out);
          std::string msg = "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
          if (e.finished) msg += "data: [DONE]\n\n";
          if (!sink.write(msg.data(), msg.size())) {
            out->cancel();
            return false;
          }
          if (e.finished) sink.done();
          return true;
        },
        [this, out](bool success) {
          if (!success) out->cancel();  // the client went away: free the slot
          --open_streams;
        });
  }

  void routes() {
    auto guarded = [](auto handler) {
      return [handler](const httplib::Request& req, httplib::Response& res) {
        try {
          handler(req, res);
        } catch (const HttpError& e) {
          std::fprintf(stderr, "[serve] %s %s: %d %s\n", req.method.c_str(), req.path.c_str(), e.status,
                       e.message.c_str());
          send_error(res, e.status, e.message);
        } catch (const std::exception& e) {
          std::fprintf(stderr, "[serve] %s %s: 500 %s\n", req.method.c_str(), req.path.c_str(), e.what());
          send_error(res, 500, e.what());
        }
      };
    };
    http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (!loaded.load(std::memory_order_acquire)) {
        res.set_header("Retry-After", "1");
        send_error(res, 503, "[serve] loading the model");
        return httplib::Server::HandlerResponse::Handled;
      }
      if (options.api_key.empty() || req.path == "/health") return httplib::Server::HandlerResponse::Unhandled;
      if (req.get_header_value("Authorization") == "Bearer " + options.api_key)
        return httplib::Server::HandlerResponse::Unhandled;
      send_error(res, 401, "[serve] a valid API key is needed: Authorization: Bearer <key>");
      return httplib::Server::HandlerResponse::Handled;
    });
    http.Get("/health", guarded([](const httplib::Request&, httplib::Response& res) {
      send_json(res, 200, {{"status", "ok"}});
    }));
    http.Get("/v1/models", guarded([this](const httplib::Request&, httplib::Response& res) {
      send_json(res, 200,
                {{"object", "list"},
                 {"data", json::array({{{"id", options.model_name}, {"object", "model"}, {"created", 0},
                                        {"owned_by", "mamba2.cpp"}}})}});
    }));
    http.Get("/metrics", guarded([this](const httplib::Request&, httplib::Response& res) {
      const Engine::Counters c = engine->counters();
      const PrefixCache::Stats k = engine->cache_stats();
      std::string m;
      auto metric = [&m](const char* name, const char* type, const char* help, int64_t value) {
        m += fmt::format("# HELP {} {}\n# TYPE {} {}\n{} {}\n", name, help, name, type, name, value);
      };
      metric("mamba2_requests_total", "counter", "Completion requests admitted.", c.requests);
      metric("mamba2_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.", c.prompt_tokens);
      metric("mamba2_generation_tokens_total", "counter", "Tokens generated.", c.generated_tokens);
      metric("mamba2_requests_running", "gauge", "Requests holding a slot (prefilling or generating).",
             engine->running());
      metric("mamba2_requests_waiting", "gauge", "Requests waiting for a slot.", engine->waiting());
      metric("mamba2_prefix_cache_hits_total", "counter", "Prompts resumed from a cached state.", k.hits);
      metric("mamba2_prefix_cache_misses_total", "counter", "Prompts with no cached prefix.", k.misses);
      metric("mamba2_prefix_cache_cached_tokens_total", "counter", "Prompt tokens not recomputed thanks to the cache.",
             k.cached_tokens);
      metric("mamba2_prefix_cache_entries", "gauge", "States in the prefix cache.", k.entries);
      metric("mamba2_prefix_cache_bytes", "gauge", "Bytes of the prefix cache (states and their tokens).", k.bytes);
      const int64_t sessions = engine->sessions(), per = engine->sequence_state_bytes();
      metric("mamba2_sessions", "gauge", "Sessions whose state is kept.", sessions);
      metric("mamba2_session_state_bytes", "gauge", "Bytes of the sessions' kept states.", sessions * per);
      metric("mamba2_slot_state_bytes", "gauge", "Bytes of the running batch's states (every slot).",
             engine->limits().slots * per);
      res.set_content(m, "text/plain; version=0.0.4");
    }));
    http.Post("/v1/completions", guarded([this](const httplib::Request& req, httplib::Response& res) {
      completions(req, res);
    }));
    http.Post("/v1/chat/completions", guarded([this](const httplib::Request& req, httplib::Response& res) {
      chat_completions(req, res);
    }));
    http.Post("/tokenize", guarded([this](const httplib::Request& req, httplib::Response& res) {
      std::vector<int32_t> ids;
      try {
        ids = tokenizer->encode(parse_tokenize_request(req.body));
      } catch (const Error& e) {
        throw HttpError{400, e.what()};
      }
      send_json(res, 200, {{"tokens", ids}});
    }));
    http.Post("/detokenize", guarded([this](const httplib::Request& req, httplib::Response& res) {
      send_json(res, 200, {{"content", tokenizer->decode(parse_detokenize_request(req.body, tokenizer->vocab_size()))}});
    }));
    http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (res.status == 404) send_error(res, 404, "[serve] no such endpoint: " + req.method + " " + req.path);
    });
    // SO_REUSEADDR only: cpp-httplib's default also sets SO_REUSEPORT, with which a second
    // server on the same port would start and share it silently instead of failing.
    http.set_socket_options([](socket_t sock) {
      int yes = 1;
      setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, reinterpret_cast<const void*>(&yes), sizeof(yes));
    });
    // One pool thread per connection: every slot and queued request can hold one, plus a few
    // for quick requests (health, tokenize).
    const size_t threads = size_t(options.limits.slots + options.limits.queue + 8);
    http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  }
};

Server::Server(ServeOptions options) : impl_(std::make_unique<Impl>(std::move(options))) { impl_->routes(); }

Server::Server(const Model& model, const Tokenizer& tokenizer, ServeOptions options) : Server(std::move(options)) {
  serve_model(model, tokenizer);
}

Server::~Server() = default;

void Server::serve_model(const Model& model, const Tokenizer& tokenizer) {
  Impl& s = *impl_;
  std::lock_guard lock(s.lifecycle);
  if (s.stopped || s.loaded) return;
  s.tokenizer = &tokenizer;
  s.engine = std::make_unique<Engine>(model, tokenizer, s.options.limits);
  s.loaded.store(true, std::memory_order_release);
}

void Server::bind() {
  Impl& s = *impl_;
  if (s.bound_port >= 0) return;
  const int port = s.options.port == 0 ? s.http.bind_to_any_port(s.options.host)
                                       : (s.http.bind_to_port(s.options.host, s.options.port) ? s.options.port : -1);
  if (port < 0) fail("[serve] cannot listen on {}:{} (in use, or not an address of this machine)", s.options.host,
                     s.options.port);
  s.bound_port = port;
  std::fprintf(stderr, "[serve] listening on http://%s:%d (model %s)\n", s.options.host.c_str(), port,
               s.options.model_name.c_str());
  std::fflush(stderr);
}

void Server::listen() {
  bind();
  impl_->http.listen_after_bind();
}

int Server::port() const { return impl_->bound_port; }

// The engine first: it ends every stream (queued ones too); then the streamed responses send
// those last events (finish_reason, [DONE]) — for a few seconds at most, a client that reads
// nothing does not hold the shutdown — and the HTTP pool can join its threads.
void Server::stop() {
  {
    std::lock_guard lock(impl_->lifecycle);
    impl_->stopped = true;
  }
  if (impl_->engine) impl_->engine->stop();
  for (int i = 0; i < 500 && impl_->open_streams.load() > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  impl_->http.stop();
}

int64_t Server::running() const { return impl_->loaded ? impl_->engine->running() : 0; }

}  // namespace mamba2
