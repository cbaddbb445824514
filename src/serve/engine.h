// The serving engine: continuous batching over one model. Requests wait in a bounded queue; at
// every step the engine admits as many as there are free slots, prefills the next pieces of the
// prompts being prefilled (together, at most `prefill_tokens` a step, each piece ending at a
// chunk boundary of its prompt or at its end), then runs one decode step over every running
// sequence. So a request joins the running batch at the next step, a long prompt does not stall
// the streams already running, and a request leaves as soon as it finishes or is cancelled.
// The state at every cache boundary of a prompt goes to the prefix cache, and a new prompt
// resumes from the longest cached prefix. Each request samples and detokenizes exactly as
// Generator does; pieces at chunk boundaries, cache hits and batching change no bit (the model's
// kernels give a row the same arithmetic whatever the batch, and a prefill resumed at a chunk
// boundary that of one pass), so a request's text is what `mamba2 generate` gives it alone.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "mamba2/generate.h"
#include "mamba2/model.h"
#include "serve/prefix_cache.h"

namespace mamba2 {

class Tokenizer;
class InferenceState;

struct StreamEvent {
  std::string text;  // ready to show: whole UTF-8 characters, never the start of a stop string
  bool finished = false;
  FinishReason reason = FinishReason::Length;
};

// One request's output, filled by the engine and read by the connection that asked for it.
class RequestStream {
 public:
  // Waits for the next event; false once the last one (finished) has been read.
  bool next(StreamEvent& out);
  // The client went away or gave up: the engine frees the slot at its next step.
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }
  int64_t prompt_tokens = 0;
  std::atomic<int64_t> cached_tokens{0};  // of the prompt, resumed from the prefix cache
  std::atomic<int64_t> completion_tokens{0};

 private:
  friend class Engine;
  void push(StreamEvent e);
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<StreamEvent> events_;
  bool ended_ = false;  // the finished event was pushed
  std::atomic<bool> cancelled_{false};
};

class Engine {
 public:
  struct Limits {
    int64_t slots = 64;           // sequences decoded together at most
    int64_t queue = 256;          // requests waiting for a slot at most
    int64_t prompt_tokens = 32768;
    int64_t prefill_tokens = 2048;  // prompt tokens prefilled per step (whole chunks; one chunk at least)
    int64_t cache_bytes = int64_t(1) << 30;  // the prefix cache's budget; 0: off
    int64_t cache_interval = 0;   // tokens between cached states (a multiple of the chunk size; 0: one chunk)
    int64_t sessions = 64;        // sessions kept at most, the least recently used going first
  };
  Engine(const Model& model, const Tokenizer& tokenizer, Limits limits);
  ~Engine();  // stop()
  // Stops the worker: waiting and running requests end (reason Length), their streams close.
  void stop();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request. Throws QueueFull when the queue is at its limit; the prompt must be tokens.
  // `session` (optional): the prompt continues that session's state (where its last request
  // stopped: every token generated consumed), and the session keeps the state this request
  // leaves; an unknown session starts fresh. Continuing a session gives the bits continuing
  // the sequence without a pause would.
  struct QueueFull {};
  std::shared_ptr<RequestStream> submit(std::vector<int32_t> prompt, const GenerationParams& params,
                                        const std::string& session = "");
  int64_t sessions() const;
  // Bytes of one sequence's recurrent state (conv and SSM, every layer), on the model's device.
  int64_t sequence_state_bytes() const { return sequence_state_bytes_; }

  int64_t waiting() const;
  int64_t running() const { return running_; }  // sequences holding a slot (prefilling or decoding)
  const Limits& limits() const { return limits_; }
  struct Counters {
    int64_t requests = 0, prompt_tokens = 0, generated_tokens = 0;
  };
  Counters counters() const;
  PrefixCache::Stats cache_stats() const { return cache_.stats(); }

 private:
  struct Job;
  void run();
  void admit(std::vector<std::unique_ptr<Job>>& jobs);
  void prefill_step();
  void decode_step();
  void done_with(Job& j);
  // Slot `slot` copied into a state of its own (on the model's device), for the cache or a session.
  std::shared_ptr<const InferenceState> kept_state(int64_t slot) const;
  // Job j's next token (sampled from its logits row, or the model's greedy choice) goes out;
  // false when the job is done.
  bool advance(Job& j, int32_t token);

  const Model& model_;
  const Tokenizer& tokenizer_;
  Limits limits_;
  std::shared_ptr<InferenceState> state_;
  int64_t sequence_state_bytes_ = 0;
  std::vector<float> logits_;  // a step's logits, kept: 13 MB at 64 rows, page-faulted in once
  DecodeCandidates candidates_;  // or only its sampling candidates
  std::vector<std::unique_ptr<Job>> slots_;  // by slot; null: free
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::unique_ptr<Job>> queue_;
  bool stop_ = false;
  std::atomic<int64_t> running_{0};
  std::atomic<int64_t> requests_{0}, prompt_tokens_{0}, generated_tokens_{0};
  PrefixCache cache_;
  // Sessions: id → the state after its last request, most recently used first.
  mutable std::mutex sessions_mutex_;
  std::list<std::pair<std::string, std::shared_ptr<const InferenceState>>> sessions_;
  std::thread worker_;
};

}  // namespace mamba2
