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
  Server(const Model& model, const Tokenizer& tokenizer, ServeOptions options);
  ~Server();
  // Binds (throws naming the address when it cannot), then serves until stop().
  void listen();
  int port() const;  // after listen() has bound
  // Ends every stream, then stops listening: listen() returns. The server does not serve again.
  void stop();
  int64_t running() const;  // sequences in the engine's decode batch

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mamba2
