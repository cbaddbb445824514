// Per-sequence token sampling (SamplingParams in mamba2/generate.h): the filters, in Hugging
// Face's order, over one row of logits, then a draw from a generator seeded per sequence.
#pragma once
#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "mamba2/generate.h"
#include "mamba2/model.h"

namespace mamba2 {

class Sampler {
 public:
  // Only ids below `vocab` are candidates (the model's logits may be padded past the tokenizer).
  Sampler(const SamplingParams& params, int64_t vocab);

  // A token of the prompt or of the generation: the repetition penalty applies to it from now on.
  void observe(int32_t token);

  int32_t sample(std::span<const float> logits);
  // The same draw from a row's candidates alone (Model::decode_candidates): logits[i] is token
  // ids[i]'s, ids ascending, and every token not listed is known to fall below the top-k cut at
  // candidates_k() and candidates_temperature(). Only when candidates_k() > 0.
  int32_t sample(std::span<const float> logits, std::span<const int32_t> ids);
  // The k and temperature of the candidates sample() can draw from instead of a whole row: top_k
  // (1 when greedy, at temperature 1); 0 when it needs the whole row (no top-k, or a repetition
  // penalty, which moves tokens across the cut).
  int64_t candidates_k() const;
  float candidates_temperature() const;

  // The probabilities sample() draws from (0 for filtered tokens), for tests; (vocab).
  std::vector<double> distribution(std::span<const float> logits);

 private:
  struct Candidate {
    float score;
    int32_t id;
  };
  // The surviving candidates in id order and their probabilities (same order); `ids` empty: the
  // whole row, else logits[i] is ids[i]'s.
  void filter(std::span<const float> logits, std::span<const int32_t> ids);
  int32_t draw(std::span<const float> logits, std::span<const int32_t> ids);
  void sort_descending(const std::vector<Candidate>& in, std::vector<Candidate>& out);

  SamplingParams params_;
  int64_t vocab_;
  std::vector<uint8_t> seen_;  // (vocab) tokens of prompt + generation; O(vocab), not O(length)
  std::mt19937_64 rng_;
  std::vector<float> scores_, sorted_;
  struct Keyed {
    uint32_t key;
    int32_t index;
  };
  std::vector<Candidate> kept_, order_;
  std::vector<Keyed> keyed_, scratch_;
  std::vector<double> probs_, weights_;  // weights_: exp(score - top) by id, under top-p
  std::vector<uint8_t> keep_;
};

// Row r's draw from Model::decode_candidates' output: from its candidates, or from its whole row
// (row_cols = Model::vocab() wide) when some row overflowed.
int32_t sample_candidates(Sampler& sampler, const DecodeCandidates& c, size_t r, size_t row_cols);

}  // namespace mamba2
