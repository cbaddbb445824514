#include "serve/engine.h"

#include <algorithm>
#include <cstdio>
#include <exception>

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
  int64_t done = 0;       // prompt tokens in the slot's state
  bool decoding = false;  // the prompt is in; tokens are being generated
  std::string session;    // kept after the request, when set
  bool in_session = false;  // the state continues a session: no prefix cache either way
  bool finishing = false;   // done; one more step consumes the last token for the session
  Job(std::vector<int32_t> p, const GenerationParams& gp, int64_t vocab)
      : stream(std::make_shared<RequestStream>()),
        prompt(std::move(p)),
        params(gp),
        sampler(gp.sampling, vocab),
        text(gp.stop) {}
};

Engine::Engine(const Model& model, const Tokenizer& tokenizer, Limits limits)
    : model_(model),
      tokenizer_(tokenizer),
      limits_(limits),
      cache_(limits.cache_bytes, limits.cache_interval > 0 ? limits.cache_interval : model.config().chunk_size) {
  const int64_t Q = model.config().chunk_size;
  if (limits.slots <= 0 || limits.queue < 0 || limits.prompt_tokens <= 0 || limits.prefill_tokens <= 0)
    fail("[serve] slots ({}), queue ({}), prompt tokens ({}) and prefill tokens per step ({}) must be positive",
         limits.slots, limits.queue, limits.prompt_tokens, limits.prefill_tokens);
  if (cache_.interval() % Q)
    fail("[serve] the cache interval {} is not a multiple of the model's chunk size {}", cache_.interval(), Q);
  limits_.prefill_tokens = std::max(Q, limits.prefill_tokens / Q * Q);
  if (tokenizer.vocab_size() > model.vocab())
    fail("[serve] the tokenizer has {} tokens but the model's vocabulary only {}", tokenizer.vocab_size(),
         model.vocab());
  state_ = model_.new_state(limits.slots);
  for (const auto* layers : {&state_->conv, &state_->ssm})
    for (const Tensor& t : *layers) sequence_state_bytes_ += int64_t(t.nbytes()) / limits.slots;
  slots_.resize(size_t(limits.slots));
  worker_ = std::thread([this] { run(); });
}

Engine::~Engine() { stop(); }

void Engine::stop() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  if (worker_.joinable()) worker_.join();
}

std::shared_ptr<RequestStream> Engine::submit(std::vector<int32_t> prompt, const GenerationParams& params,
                                              const std::string& session) {
  if (prompt.empty()) fail("[serve] the prompt is empty: there is no token to continue from");
  if (!session.empty() && params.max_new_tokens == 0) fail("[serve] a session request must generate at least one token");
  if (int64_t(prompt.size()) > limits_.prompt_tokens)
    fail("[serve] the prompt has {} tokens, more than the limit of {}", prompt.size(), limits_.prompt_tokens);
  if (params.max_new_tokens < 0) fail("[serve] max_tokens must be ≥ 0, got {}", params.max_new_tokens);
  Sampler check(params.sampling, tokenizer_.vocab_size());  // refuses bad sampling values here
  auto job = std::make_unique<Job>(std::move(prompt), params, tokenizer_.vocab_size());
  job->stream->prompt_tokens = int64_t(job->prompt.size());
  job->session = session;
  auto stream = job->stream;
  {
    std::lock_guard lock(mutex_);
    if (stop_ || int64_t(queue_.size()) >= limits_.queue) throw QueueFull{};  // (stopping: nothing runs it)
    queue_.push_back(std::move(job));
  }
  wake_.notify_all();
  return stream;
}

int64_t Engine::waiting() const {
  std::lock_guard lock(mutex_);
  return int64_t(queue_.size());
}

bool Engine::advance(Job& j, int32_t token) {
  j.sampler.observe(token);
  j.last = token;
  ++j.generated;
  ++j.stream->completion_tokens;
  ++generated_tokens_;
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
  return true;
}

// New jobs into free slots, each from the longest cached prefix of its prompt (or zeros).
void Engine::admit(std::vector<std::unique_ptr<Job>>& jobs) {
  size_t next_free = 0;
  for (auto& job : jobs) {
    if (job->stream->cancelled() || job->params.max_new_tokens == 0) {
      job->stream->push({"", true, FinishReason::Length});
      continue;
    }
    while (slots_[next_free]) ++next_free;
    job->slot = int64_t(next_free);
    for (int32_t t : job->prompt) job->sampler.observe(t);
    bool resumed = false;
    if (!job->session.empty()) {
      std::lock_guard lock(sessions_mutex_);
      for (auto it = sessions_.begin(); it != sessions_.end(); ++it)
        if (it->first == job->session) {
          copy_state(*it->second, 0, *state_, job->slot);
          sessions_.splice(sessions_.begin(), sessions_, it);
          resumed = true;
          break;
        }
    }
    job->in_session = resumed;
    if (!resumed) {
      // At least the last prompt token is prefilled: its logits give the first new token.
      std::shared_ptr<const InferenceState> cached;
      const int64_t hit = cache_.lookup(job->prompt, int64_t(job->prompt.size()) - 1, cached);
      if (hit > 0) {
        copy_state(*cached, 0, *state_, job->slot);
        job->done = hit;
        job->stream->cached_tokens = hit;
      } else {
        clear_state(*state_, job->slot);
      }
    }
    ++requests_;
    prompt_tokens_ += int64_t(job->prompt.size());
    slots_[next_free] = std::move(job);
  }
}

// The next piece of every prompt being prefilled, together: whole chunks up to the next cache
// boundary (or the prompt's end), within the step's token budget.
void Engine::prefill_step() {
  const int64_t Q = model_.config().chunk_size, I = cache_.interval();
  int64_t budget = limits_.prefill_tokens;
  std::vector<int32_t> ids;
  std::vector<int64_t> lengths, slots;
  std::vector<Job*> jobs;
  for (auto& s : slots_) {
    if (!s || s->decoding) continue;
    Job& j = *s;
    const int64_t n = int64_t(j.prompt.size());
    int64_t piece = std::min(n - j.done, (j.done / I + 1) * I - j.done);
    if (j.done + piece < n) piece = piece / Q * Q;  // ends at a chunk boundary of the prompt
    if (piece > budget) piece = budget / Q * Q;
    if (piece <= 0) continue;
    budget -= piece;
    ids.insert(ids.end(), j.prompt.begin() + j.done, j.prompt.begin() + j.done + piece);
    lengths.push_back(piece);
    slots.push_back(j.slot);
    jobs.push_back(&j);
  }
  if (jobs.empty()) return;
  std::vector<float>& logits = logits_;
  model_.prefill(ids, lengths, state_.get(), false, logits, slots);
  const size_t V = size_t(model_.vocab());
  for (size_t i = 0; i < jobs.size(); ++i) {
    Job& j = *jobs[i];
    j.done += lengths[i];
    const std::span<const int32_t> prefix(j.prompt.data(), size_t(j.done));
    if (cache_.enabled() && !j.in_session && j.done % I == 0 && !cache_.contains(prefix))
      cache_.insert(prefix, kept_state(j.slot));
    if (j.done < int64_t(j.prompt.size())) continue;
    j.decoding = true;
    const std::span<const float> row(logits.data() + i * V, size_t(tokenizer_.vocab_size()));
    if (!advance(j, j.sampler.sample(row))) done_with(j);
  }
}

// A job whose stream has ended: a session keeps its state once the last token is consumed (the
// next decode step); otherwise the slot is free now.
void Engine::done_with(Job& j) {
  if (!j.session.empty() && !j.stream->cancelled() && !j.finishing) {
    j.finishing = true;
    return;
  }
  if (j.finishing) {
    std::shared_ptr<const InferenceState> s = kept_state(j.slot);
    std::lock_guard lock(sessions_mutex_);
    for (auto it = sessions_.begin(); it != sessions_.end(); ++it)
      if (it->first == j.session) {
        sessions_.erase(it);
        break;
      }
    sessions_.emplace_front(j.session, std::move(s));
    while (int64_t(sessions_.size()) > limits_.sessions) sessions_.pop_back();
  }
  slots_[size_t(j.slot)].reset();
}

std::shared_ptr<const InferenceState> Engine::kept_state(int64_t slot) const {
  std::shared_ptr<InferenceState> s = model_.new_state(1);
  copy_state(*state_, slot, *s, 0);
  return s;
}

int64_t Engine::sessions() const {
  std::lock_guard lock(sessions_mutex_);
  return int64_t(sessions_.size());
}

// One token for every sequence that is generating. When all of them decode plain greedy, the
// model picks the tokens where the logits are (on the GPU only the ids come back), as generate does.
void Engine::decode_step() {
  std::vector<int32_t> tokens, k;
  std::vector<int64_t> rows;
  std::vector<float> temperature;
  bool greedy = true, by_candidates = true;
  for (const auto& s : slots_)
    if (s && s->decoding) {
      tokens.push_back(s->last);
      rows.push_back(s->slot);
      const SamplingParams& p = s->params.sampling;
      greedy = greedy && p.temperature == 0.0f && p.repetition_penalty == 1.0f;
      k.push_back(int32_t(s->sampler.candidates_k()));
      temperature.push_back(s->sampler.candidates_temperature());
      by_candidates = by_candidates && k.back() > 0;
    }
  if (rows.empty()) return;
  std::vector<float>& logits = logits_;
  std::vector<int32_t> chosen;
  const int64_t vocab_ids = tokenizer_.vocab_size();
  if (greedy)
    model_.decode_greedy(tokens, rows, *state_, vocab_ids, chosen);
  else if (by_candidates)  // only what top-k sampling needs comes back from the GPU
    model_.decode_candidates(tokens, rows, *state_, vocab_ids, k, temperature, candidates_);
  else
    model_.decode(tokens, rows, *state_, logits);
  const size_t V = size_t(model_.vocab()), vocab = size_t(vocab_ids);
  if (!greedy) {
    // Each row draws from its own sampler: in parallel, the same draws as one by one. (An
    // exception must not leave an OpenMP region: the first is kept and rethrown.)
    chosen.assign(rows.size(), -1);
    std::exception_ptr error;
#pragma omp parallel for schedule(dynamic)
    for (size_t i = 0; i < rows.size(); ++i) {
      Job& j = *slots_[size_t(rows[i])];
      try {
        if (j.finishing) continue;
        chosen[i] = by_candidates ? sample_candidates(j.sampler, candidates_, i, V)
                                  : j.sampler.sample(std::span<const float>(logits).subspan(i * V, vocab));
      } catch (...) {
#pragma omp critical
        if (!error) error = std::current_exception();
      }
    }
    if (error) std::rethrow_exception(error);
  }
  for (size_t i = 0; i < rows.size(); ++i) {
    Job& j = *slots_[size_t(rows[i])];
    if (j.finishing || !advance(j, chosen[i])) done_with(j);
  }
}

Engine::Counters Engine::counters() const { return {requests_, prompt_tokens_, generated_tokens_}; }

void Engine::run() {
  for (;;) {
    std::vector<std::unique_ptr<Job>> admitted;
    {
      std::unique_lock lock(mutex_);
      // (A queued request waiting for its session's state to be kept has running_ > 0 with it.)
      wake_.wait(lock, [&] { return stop_ || !queue_.empty() || running_ > 0; });
      if (stop_) break;
      int64_t free = 0;
      std::vector<std::string> busy;  // sessions whose state a slot is still making
      for (const auto& s : slots_) {
        free += s ? 0 : 1;
        if (s && !s->session.empty()) busy.push_back(s->session);
      }
      for (auto it = queue_.begin(); free > 0 && it != queue_.end();) {
        const std::string& session = (*it)->session;
        if (!session.empty() && std::find(busy.begin(), busy.end(), session) != busy.end()) {
          ++it;  // waits until that session's state is kept
          continue;
        }
        if (!session.empty()) busy.push_back(session);
        admitted.push_back(std::move(*it));
        it = queue_.erase(it);
        --free;
      }
    }
    try {
      for (auto& s : slots_)
        if (s && s->stream->cancelled()) {
          s->stream->push({"", true, FinishReason::Length});
          s.reset();
        }
      admit(admitted);
      prefill_step();
      decode_step();
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
