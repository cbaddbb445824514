// serve: the OpenAI-compatible HTTP server over the continuous-batching engine (src/serve).
#include <atomic>
#include <chrono>
#include <csignal>
#include <exception>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <thread>

#include "commands.h"
#include "mamba2/error.h"
#include "mamba2/model.h"
#include "mamba2/tokenizer.h"
#include "serve/server.h"

namespace mamba2::cli {

namespace {
// The handler only sets the flag (async-signal-safe); a watcher thread stops the server.
std::atomic<bool> stop_requested{false};
extern "C" void on_signal(int) { stop_requested = true; }
}  // namespace

void add_serve(CLI::App& app) {
  auto* sub = app.add_subcommand("serve", "Serve the model over HTTP (OpenAI-compatible completions and chat)");
  struct Opts {
    std::string model, tokenizer, host = "127.0.0.1", api_key, name, chat_template;
    int port = 8080, threads = 0;
    Engine::Limits limits;
    Placement placement;
  };
  auto o = std::make_shared<Opts>();
  sub->add_option("--model", o->model, "Model folder or GGUF file")->required();
  sub->add_option("--tokenizer", o->tokenizer, "tokenizer.json (default: the model folder's, or a GGUF file's own)");
  sub->add_option("--host", o->host, "Address to listen on")->capture_default_str();
  sub->add_option("--port", o->port, "Port (0: any free one, printed)")->capture_default_str()->check(CLI::Range(0, 65535));
  sub->add_option("--api-key", o->api_key, "Require 'Authorization: Bearer KEY' on every request but /health");
  sub->add_option("--name", o->name, "The model id clients see (default: the folder's name)");
  sub->add_option("--chat-template", o->chat_template,
                  "A Jinja chat template file for /v1/chat/completions (default: the model folder's "
                  "tokenizer_config.json chat_template, or a GGUF file's tokenizer.chat_template)");
  sub->add_option("--slots", o->limits.slots, "Sequences decoded together at most")->capture_default_str();
  sub->add_option("--queue", o->limits.queue, "Requests waiting for a slot at most (then 503)")->capture_default_str();
  sub->add_option("--max-prompt-tokens", o->limits.prompt_tokens, "Longest prompt accepted")->capture_default_str();
  sub->add_option("--prefill-tokens", o->limits.prefill_tokens,
                  "Prompt tokens prefilled per step, between decode steps")->capture_default_str();
  sub->add_option("--cache-bytes", o->limits.cache_bytes,
                  "Prefix state cache budget in bytes, in the model device's memory (0: off)")
      ->capture_default_str();
  sub->add_option("--sessions", o->limits.sessions, "Sessions kept (the least recently used go first)")
      ->capture_default_str();
  sub->add_option("--cache-interval", o->limits.cache_interval,
                  "Tokens between cached states, a multiple of the chunk size (default: one chunk)");
  sub->add_option("--threads", o->threads, "Threads (default: all cores)");
  add_placement_options(sub, o->placement);
  on_run(sub, [o] {
    set_threads(o->threads);
    // What fails fast comes first; the server listens while the model loads (/health: 503).
    const Tokenizer tokenizer = load_tokenizer(o->model, o->tokenizer);
    std::optional<ChatFormat> chat = load_chat_format(o->model, o->chat_template);
    ServeOptions options;
    options.host = o->host;
    options.port = o->port;
    options.api_key = o->api_key;
    options.limits = o->limits;
    options.model_name = o->name.empty() ? std::filesystem::path(o->model).lexically_normal().filename().string() : o->name;
    if (options.model_name.empty()) options.model_name = "mamba2";
    if (chat)
      options.chat = std::make_shared<const ChatFormat>(std::move(*chat));
    else
      std::fprintf(stderr, "[serve] no chat template (none in tokenizer_config.json or the GGUF file, no --chat-template): "
                           "/v1/chat/completions will answer 400\n");
    std::optional<Model> model;  // outlives the server, which serves it
    Server server(options);
    server.bind();
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    std::atomic<bool> done{false};
    std::thread watcher([&] {
      while (!stop_requested && !done) std::this_thread::sleep_for(std::chrono::milliseconds(50));
      if (stop_requested) server.stop();  // listen() returns; the engine ends the streams in flight
    });
    std::exception_ptr listen_error, load_error;
    std::thread http([&] {
      try {
        server.listen();
      } catch (...) {
        listen_error = std::current_exception();
      }
    });
    try {
      model.emplace(load_model(o->model, o->placement));
      server.serve_model(*model, tokenizer);
      std::fprintf(stderr, "[serve] model loaded: serving\n");
    } catch (...) {
      load_error = std::current_exception();
      server.stop();
    }
    http.join();
    done = true;
    watcher.join();
    if (load_error) std::rethrow_exception(load_error);
    if (listen_error) std::rethrow_exception(listen_error);
    std::fprintf(stderr, "[serve] stopped\n");
  });
}

}  // namespace mamba2::cli
