// Batched generation: one prefill over every prompt, then decode steps over the sequences still
// running. Each sequence owns its sampler (seeded alike) and text stream, and the model's kernels
// give a row the same arithmetic whatever the batch, so batching does not change any output.
#include <chrono>

#include "generate/sampler.h"
#include "generate/text_stream.h"
#include "mamba2/error.h"
#include "mamba2/generate.h"
#include "mamba2/model.h"
#include "mamba2/tokenizer.h"
#include "mamba2/state.h"
#include "model/inference_state.h"

namespace mamba2 {

const char* to_string(FinishReason reason) {
  switch (reason) {
    case FinishReason::Length: return "length";
    case FinishReason::Eos: return "eos";
    case FinishReason::Stop: return "stop";
  }
  return "?";
}

Generator::Generator(const Model& model, const Tokenizer& tokenizer) : model_(model), tokenizer_(tokenizer) {
  if (tokenizer.vocab_size() > model.vocab())
    fail("[generate] the tokenizer has {} tokens but the model's vocabulary only {}", tokenizer.vocab_size(),
         model.vocab());
}

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct Sequence {
  Sampler sampler;
  TextStream text;
  SequenceResult result;
  bool running = true;
  TokenHistory history;  // what its state has consumed or is about to (the last token)
  int32_t last = -1;     // the last generated token, not yet consumed by the state
};

}  // namespace

std::vector<SequenceResult> Generator::generate(std::span<const std::string> prompts, const GenerationParams& params,
                                                const TokenCallback& on_token, GenerationStats* stats) const {
  if (prompts.empty()) fail("[generate] no prompts given");
  if (params.max_new_tokens < 0) fail("[generate] max_new_tokens must be ≥ 0, got {}", params.max_new_tokens);
  const auto t_prefill = Clock::now();
  if (!params.start_states.empty() && params.start_states.size() != prompts.size())
    fail("[generate] {} start states for {} prompts", params.start_states.size(), prompts.size());
  std::vector<int32_t> ids;
  std::vector<int64_t> lengths;
  std::vector<Sequence> seqs;
  seqs.reserve(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    const std::vector<int32_t> prompt = tokenizer_.encode(prompts[i]);
    if (prompt.empty()) fail("[generate] prompt {} is empty: there is no token to continue from", i);
    seqs.push_back({Sampler(params.sampling, tokenizer_.vocab_size()), TextStream(params.stop), {}, true, {}, -1});
    for (int32_t t : prompt) seqs.back().sampler.observe(t);
    seqs.back().result.prompt_tokens = int64_t(prompt.size());
    if (!params.start_states.empty()) seqs.back().history = params.start_states[i].history;
    seqs.back().history.extend(prompt);
    ids.insert(ids.end(), prompt.begin(), prompt.end());
    lengths.push_back(int64_t(prompt.size()));
  }
  const int64_t B = int64_t(prompts.size()), V = model_.vocab();
  auto state = model_.new_state(B);
  for (size_t i = 0; i < params.start_states.size(); ++i)
    restore_state(model_, *state, int64_t(i), params.start_states[i]);
  std::vector<float> logits;
  model_.prefill(ids, lengths, state.get(), false, logits);
  if (stats) {
    stats->prompt_tokens = int64_t(ids.size());
    stats->prefill_seconds = seconds_since(t_prefill);
  }

  const auto t_decode = Clock::now();
  const std::optional<int32_t> eos = params.ignore_eos ? std::nullopt : tokenizer_.eos_id();
  const auto emit = [&](int64_t s, int32_t token, const std::string& text, bool finished) {
    if (on_token) on_token({s, token, text, finished, seqs[size_t(s)].result.reason});
  };
  const auto finish = [&](int64_t s, int32_t token, std::string text, FinishReason reason) {
    Sequence& q = seqs[size_t(s)];
    q.running = false;
    q.result.reason = reason;
    if (reason != FinishReason::Stop) text += q.text.finish();
    emit(s, token, text, true);
  };
  // Rows of `logits` belong to the sequences in `rows`, in order.
  std::vector<int64_t> rows(static_cast<size_t>(B));
  for (int64_t s = 0; s < B; ++s) rows[size_t(s)] = s;
  if (params.max_new_tokens == 0)
    for (int64_t s : rows) finish(s, -1, "", FinishReason::Length);
  // Plain greedy decoding is picked where the logits are (on the GPU only the ids come back);
  // the first token, from the prefill's logits, goes through the sampler like any other.
  const bool model_greedy = params.sampling.temperature == 0.0f && params.sampling.repetition_penalty == 1.0f;
  // Otherwise, under top-k, only each row's candidates come back from the model (every sequence
  // samples with the same parameters).
  const Sampler& sampler_params = seqs.front().sampler;
  const int32_t candidates_k = int32_t(sampler_params.candidates_k());
  DecodeCandidates candidates;  // of `rows`, when they came back instead of the logits
  bool from_candidates = false;
  std::vector<int32_t> chosen;  // the model's greedy ids of `rows`, when it chose them
  std::vector<int32_t> next_tokens;
  std::vector<int64_t> next_rows;
  while (params.max_new_tokens > 0) {
    next_tokens.clear();
    next_rows.clear();
    for (size_t r = 0; r < rows.size(); ++r) {
      const int64_t s = rows[r];
      Sequence& q = seqs[size_t(s)];
      const int32_t token = !chosen.empty()  ? chosen[r]
                            : from_candidates ? sample_candidates(q.sampler, candidates, r, size_t(V))
                                              : q.sampler.sample(std::span<const float>(logits).subspan(r * size_t(V), size_t(V)));
      q.sampler.observe(token);
      ++q.result.generated_tokens;
      q.history.extend(std::span<const int32_t>(&token, 1));
      q.last = token;
      if (eos && token == *eos) {
        finish(s, token, "", FinishReason::Eos);
        continue;
      }
      std::string text = q.text.push(tokenizer_.token_bytes(token));
      if (q.text.stopped()) {
        finish(s, token, std::move(text), FinishReason::Stop);
      } else if (q.result.generated_tokens == params.max_new_tokens) {
        finish(s, token, std::move(text), FinishReason::Length);
      } else {
        emit(s, token, text, false);
        next_tokens.push_back(token);
        next_rows.push_back(s);
      }
    }
    if (next_rows.empty()) break;
    if (model_greedy) {
      model_.decode_greedy(next_tokens, next_rows, *state, tokenizer_.vocab_size(), chosen);
    } else if (candidates_k > 0) {
      const std::vector<int32_t> k(next_rows.size(), candidates_k);
      const std::vector<float> temperature(next_rows.size(), sampler_params.candidates_temperature());
      model_.decode_candidates(next_tokens, next_rows, *state, tokenizer_.vocab_size(), k, temperature, candidates);
      from_candidates = true;
    } else {
      model_.decode(next_tokens, next_rows, *state, logits);
    }
    rows.swap(next_rows);
  }
  if (params.keep_states) {
    // The last generated token of each sequence has not been through the model yet.
    next_tokens.clear();
    next_rows.clear();
    for (int64_t s = 0; s < B; ++s)
      if (seqs[size_t(s)].last >= 0) {
        next_tokens.push_back(seqs[size_t(s)].last);
        next_rows.push_back(s);
      }
    if (!next_rows.empty()) model_.decode(next_tokens, next_rows, *state, logits);
    for (int64_t s = 0; s < B; ++s)
      seqs[size_t(s)].result.final_state = snapshot_state(model_, *state, s, seqs[size_t(s)].history);
  }
  if (stats) {
    stats->decode_seconds = seconds_since(t_decode);
    stats->generated_tokens = 0;
    for (const Sequence& q : seqs) stats->generated_tokens += q.result.generated_tokens;
  }
  std::vector<SequenceResult> results;
  for (const Sequence& q : seqs) results.push_back(q.result);
  return results;
}

std::string Generator::complete(const std::string& prompt, const GenerationParams& params) const {
  std::string out;
  generate(std::span<const std::string>(&prompt, 1), params, [&](const TokenEvent& e) { out += e.text; });
  return out;
}

}  // namespace mamba2
