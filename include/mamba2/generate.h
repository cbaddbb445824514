// Text generation: load a model and a tokenizer once, then generate for one prompt or a batch of
// prompts of different lengths (one batched prefill, then batched decode steps), with a callback
// per token that carries the text ready to show.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mamba2/state.h"

namespace mamba2 {

class Model;
class Tokenizer;

// The filters apply in the order of Hugging Face's generate: repetition penalty, temperature,
// top-k, top-p, min-p; then one token is drawn from what remains.
struct SamplingParams {
  float temperature = 0.8f;         // 0: greedy (the most likely token after the penalty)
  int64_t top_k = 40;               // keep the k most likely tokens (ties kept); 0: off
  float top_p = 0.95f;              // keep the most likely tokens covering this mass; 1: off
  float min_p = 0.05f;              // drop tokens below min_p · p(most likely); 0: off
  float repetition_penalty = 1.0f;  // CTRL penalty on every token of prompt + generation; 1: off
  uint64_t seed = 0;                // every sequence draws from its own generator seeded with this
};

struct GenerationParams {
  int64_t max_new_tokens = 128;
  std::vector<std::string> stop;  // stop when the text contains one (it is not shown)
  bool ignore_eos = false;        // otherwise the tokenizer's end-of-text token stops a sequence
  SamplingParams sampling;
  // Continue these states (one per prompt; empty: fresh sequences): each prompt is then the text
  // that follows what its state has consumed.
  std::vector<StateSnapshot> start_states;
  // Each result's final_state has then consumed its prompt and every generated token (the last
  // one too: one more decode step), ready to be continued.
  bool keep_states = false;
};

enum class FinishReason { Length, Eos, Stop };
const char* to_string(FinishReason reason);

// One generated token of sequence `sequence` (its index among the prompts), with the text that
// became ready to show: whole UTF-8 characters only, and never the start of a possible stop
// string. The last event of a sequence has `finished` set; its text is the rest (token is -1
// when that event only flushes text held back).
struct TokenEvent {
  int64_t sequence = 0;
  int32_t token = -1;
  std::string_view text;
  bool finished = false;
  FinishReason reason = FinishReason::Length;
};

struct SequenceResult {
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  FinishReason reason = FinishReason::Length;
  StateSnapshot final_state;  // with GenerationParams::keep_states
};

struct GenerationStats {
  int64_t prompt_tokens = 0, generated_tokens = 0;
  double prefill_seconds = 0, decode_seconds = 0;  // decode includes sampling and detokenizing
};

class Generator {
 public:
  // Both must outlive the generator. Ids the model has beyond the tokenizer's (padding of the
  // vocabulary) are never sampled.
  Generator(const Model& model, const Tokenizer& tokenizer);

  using TokenCallback = std::function<void(const TokenEvent&)>;
  // Each prompt's output is the same as when it runs alone with the same parameters and seed.
  // Memory does not grow with the number of generated tokens.
  std::vector<SequenceResult> generate(std::span<const std::string> prompts, const GenerationParams& params,
                                       const TokenCallback& on_token, GenerationStats* stats = nullptr) const;

  // One prompt; the generated text (without the prompt).
  std::string complete(const std::string& prompt, const GenerationParams& params) const;

 private:
  const Model& model_;
  const Tokenizer& tokenizer_;
};

}  // namespace mamba2
