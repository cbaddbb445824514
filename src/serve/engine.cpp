#include "serve/engine.h"

#include <cstdio>

#include "generate/sampler.h"
#include "generate/text_stream.h"
#include "mamba2/error.h"
#include "mamba2/model.h"
#include "mamba2/state.h"
#include "mamba2/tokenizer.h"
#include "model/inference_state.h"

namespace mamba2 {

bool RequestStream::next(StreamEvent& out) {
  std::unique_lock lock(mutex_);
  ready_.wait(lock, [&] { return !events_.empty() || ended_; });
  if (events_.empty()) return false;
  out = std::move(events_.front());
  events_.pop_front();
  return true;
}

void RequestStream::push(StreamEvent e) {
  {
    std::lock_guard lock(mutex_);
    if (ended_) return;
    ended_ = e.finished;
    events_.push_back(std::move(e));
  }
  ready_.notify_all();
}

struct Engine::Job {
  std::shared_ptr<RequestStream> stream;
  std::vector<int32_t> prompt;
  GenerationParams params;
  Sampler sampler;
  TextStream text;
  int64_t generated = 0;
  int32_t last = -1;  // the last token, to be decoded next
  int64_t slot = -1;
  Job(std::vector<int32_t> p, const GenerationParams& gp, int64_t vocab)
      : stream(std::make_shared<RequestStream>()),
        prompt(std::move(p)),
        params(gp),
        sampler(gp.sampling, vocab),
        text(gp.stop) {}
};

Engine::Engine(const Model& model, const Tokenizer& tokenizer, Limits limits)
    : model_(model), tokenizer_(tokenizer), limits_(limits) {
  if (limits.slots <= 0 || limits.queue < 0 || limits.prompt_tokens <= 0)
    fail("[serve] slots ({}), queue ({}) and prompt tokens ({}) must be positive", limits.slots, limits.queue,
         limits.prompt_tokens);
  if (tokenizer.vocab_size() > model.vocab())
    fail("[serve] the tokenizer has {} tokens but the model's vocabulary only {}", tokenizer.vocab_size(),
         model.vocab());
  state_ = model_.new_state(limits.slots);
  slots_.resize(size_t(limits.slots));
  worker_ = std::thread([this] { run(); });
}

Engine::~Engine() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  worker_.join();
}

std::shared_ptr<RequestStream> Engine::submit(std::vector<int32_t> prompt, const GenerationParams& params) {
  if (prompt.empty()) fail("[serve] the prompt is empty: there is no token to continue from");
  if (int64_t(prompt.size()) > limits_.prompt_tokens)
    fail("[serve] the prompt has {} tokens, more than the limit of {}", prompt.size(), limits_.prompt_tokens);
  if (params.max_new_tokens < 0) fail("[serve] max_tokens must be ≥ 0, got {}", params.max_new_tokens);
  Sampler check(params.sampling, tokenizer_.vocab_size());  // refuses bad sampling values here
  auto job = std::make_unique<Job>(std::move(prompt), params, tokenizer_.vocab_size());
  job->stream->prompt_tokens = int64_t(job->prompt.size());
  auto stream = job->stream;
  {
    std::lock_guard lock(mutex_);
    if (int64_t(queue_.size()) >= limits_.queue) throw QueueFull{};
    queue_.push_back(std::move(job));
  }
  wake_.notify_all();
  return stream;
}

int64_t Engine::waiting() const {
  std::lock_guard lock(mutex_);
  return int64_t(queue_.size());
}

bool Engine::advance(Job& j, std::span<const float> logits) {
  const int32_t token = j.sampler.sample(logits);
  j.sampler.observe(token);
  ++j.generated;
  ++j.stream->completion_tokens;
  const auto eos = j.params.ignore_eos ? std::nullopt : tokenizer_.eos_id();
  if (eos && token == *eos) {
    j.stream->push({j.text.finish(), true, FinishReason::Eos});
    return false;
  }
  std::string text = j.text.push(tokenizer_.token_bytes(token));
  if (j.text.stopped()) {
    j.stream->push({std::move(text), true, FinishReason::Stop});
    return false;
  }
  if (j.generated == j.params.max_new_tokens) {
    text += j.text.finish();
    j.stream->push({std::move(text), true, FinishReason::Length});
    return false;
  }
  j.stream->push({std::move(text), false, FinishReason::Length});
  j.last = token;
  return true;
}

// New jobs into free slots, their prompts prefilled together, then each one's first token.
void Engine::admit(std::vector<std::unique_ptr<Job>>& jobs) {
  std::vector<int32_t> ids;
  std::vector<int64_t> lengths, slots;
  std::vector<Job*> started;
  size_t next_free = 0;
  for (auto& job : jobs) {
    if (job->stream->cancelled()) {
      job->stream->push({"", true, FinishReason::Length});
      continue;
    }
    if (job->params.max_new_tokens == 0) {
      job->stream->push({"", true, FinishReason::Length});
      continue;
    }
    while (slots_[next_free]) ++next_free;
    job->slot = int64_t(next_free);
    for (int32_t t : job->prompt) job->sampler.observe(t);
    clear_state(*state_, job->slot);
    ids.insert(ids.end(), job->prompt.begin(), job->prompt.end());
    lengths.push_back(int64_t(job->prompt.size()));
    slots.push_back(job->slot);
    started.push_back(job.get());
    slots_[next_free] = std::move(job);
  }
  if (started.empty()) return;
  std::vector<float> logits;
  model_.prefill(ids, lengths, state_.get(), false, logits, slots);
  const size_t V = size_t(model_.vocab());
  for (size_t i = 0; i < started.size(); ++i) {
    const std::span<const float> row(logits.data() + i * V, size_t(tokenizer_.vocab_size()));
    if (!advance(*started[i], row)) slots_[size_t(started[i]->slot)].reset();
  }
}

void Engine::run() {
  std::vector<float> logits;
  std::vector<int32_t> tokens;
  std::vector<int64_t> rows;
  for (;;) {
    std::vector<std::unique_ptr<Job>> admitted;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || !queue_.empty() || running_ > 0; });
      if (stop_) break;
      int64_t free = 0;
      for (const auto& s : slots_) free += s ? 0 : 1;
      while (free-- > 0 && !queue_.empty()) {
        admitted.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    try {
      for (auto& s : slots_)
        if (s && s->stream->cancelled()) {
          s->stream->push({"", true, FinishReason::Length});
          s.reset();
        }
      admit(admitted);
      tokens.clear();
      rows.clear();
      for (const auto& s : slots_)
        if (s) {
          tokens.push_back(s->last);
          rows.push_back(s->slot);
        }
      if (!rows.empty()) {
        model_.decode(tokens, rows, *state_, logits);
        const size_t V = size_t(model_.vocab());
        for (size_t i = 0; i < rows.size(); ++i) {
          const std::span<const float> row(logits.data() + i * V, size_t(tokenizer_.vocab_size()));
          if (!advance(*slots_[size_t(rows[i])], row)) slots_[size_t(rows[i])].reset();
        }
      }
    } catch (const std::exception& e) {
      // Inputs are checked at submit; a failure here is the engine's: end every running stream.
      std::fprintf(stderr, "[serve] step failed: %s\n", e.what());
      for (auto& s : slots_)
        if (s) {
          s->stream->push({"", true, FinishReason::Length});
          s.reset();
        }
    }
    int64_t n = 0;
    for (const auto& s : slots_) n += s ? 1 : 0;
    running_ = n;
  }
  std::lock_guard lock(mutex_);
  for (auto& s : slots_)
    if (s) s->stream->push({"", true, FinishReason::Length});
  for (auto& j : queue_) j->stream->push({"", true, FinishReason::Length});
}

}  // namespace mamba2
