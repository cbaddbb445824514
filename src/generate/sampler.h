// Per-sequence token sampling (SamplingParams in mamba2/generate.h): the filters, in Hugging
// Face's order, over one row of logits, then a draw from a generator seeded per sequence.
#pragma once
#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "mamba2/generate.h"

namespace mamba2 {

class Sampler {
 public:
  // Only ids below `vocab` are candidates (the model's logits may be padded past the tokenizer).
  Sampler(const SamplingParams& params, int64_t vocab);

  // A token of the prompt or of the generation: the repetition penalty applies to it from now on.
  void observe(int32_t token);

  int32_t sample(std::span<const float> logits);

  // The probabilities sample() draws from (0 for filtered tokens), for tests; (vocab).
  std::vector<double> distribution(std::span<const float> logits);

 private:
  struct Candidate {
    float score;
    int32_t id;
  };
  // The surviving candidates in id order and their probabilities (same order).
  void filter(std::span<const float> logits);
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

}  // namespace mamba2
