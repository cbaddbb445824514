// The HTTP server (mamba2 serve): OpenAI-compatible completions over the continuous-batching
// engine, with the endpoints llama-server's clients also use. HTTP from cpp-httplib (Debian's
// libcpp-httplib): a blocking server whose connections each get a pool thread, so a streaming
// response is a loop that waits for the engine's next event and writes it; the pool is sized to
// the slots plus the queue, so every admitted stream has its thread.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "serve/chat_format.h"
#include "serve/engine.h"

namespace mamba2 {

struct ServeOptions {
  std::string host = "127.0.0.1";
  int port = 8080;              // 0: any free port (reported by port())
  std::string model_name;       // the id /v1/models reports and responses carry
  std::string api_key;          // when set, requests need "Authorization: Bearer <key>"
  std::shared_ptr<const ChatFormat> chat;  // null: /v1/chat/completions answers 400 saying why
  Engine::Limits limits;
};

class Server {
 public:
  // Without a model yet: it can listen while the model loads, every endpoint answering 503
  // ("loading the model", Retry-After) until serve_model().
  explicit Server(ServeOptions options);
  Server(const Model& model, const Tokenizer& tokenizer, ServeOptions options);  // ready at once
  ~Server();
  // Binds the address; throws naming it when it cannot (before a long model load, in a CLI).
  void bind();
  // Binds when bind() has not, then serves until stop().
  void listen();
  int port() const;  // after binding
  // The model is there: requests go to it from now on. Both must outlive the server.
  void serve_model(const Model& model, const Tokenizer& tokenizer);
  // Ends every stream, then stops listening: listen() returns. The server does not serve again.
  void stop();
  int64_t running() const;  // sequences in the engine's decode batch

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mamba2
