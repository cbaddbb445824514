#include "generate/sampler.h"

#include <algorithm>
#include <cmath>

#include "core/float_key.h"
#include "mamba2/error.h"

namespace mamba2 {

Sampler::Sampler(const SamplingParams& params, int64_t vocab)
    : params_(params), vocab_(vocab), seen_(size_t(vocab)), rng_(params.seed) {
  const SamplingParams& p = params;
  if (vocab <= 0) fail("[sampling] the vocabulary is empty");
  if (!(p.temperature >= 0.0f) || !std::isfinite(p.temperature))
    fail("[sampling] temperature must be ≥ 0, got {}", p.temperature);
  if (p.top_k < 0) fail("[sampling] top_k must be ≥ 0 (0 turns it off), got {}", p.top_k);
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) fail("[sampling] top_p must be in (0, 1], got {}", p.top_p);
  if (!(p.min_p >= 0.0f && p.min_p < 1.0f)) fail("[sampling] min_p must be in [0, 1), got {}", p.min_p);
  if (!(p.repetition_penalty > 0.0f) || !std::isfinite(p.repetition_penalty))
    fail("[sampling] repetition_penalty must be > 0, got {}", p.repetition_penalty);
}

void Sampler::observe(int32_t token) {
  if (token >= 0 && token < vocab_) seen_[size_t(token)] = 1;
}

// Stable LSD radix sort on the scores' bits, 11 at a time: descending score, and equal scores in
// the order they come (id order). No NaN reaches it (the kept scores are ≥ a floor).
void Sampler::sort_descending(const std::vector<Candidate>& in, std::vector<Candidate>& out) {
  keyed_.resize(in.size());
  scratch_.resize(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    keyed_[i] = {~float_order_key(in[i].score), int32_t(i)};  // descending
  }
  constexpr int kBits = 11;
  for (int shift = 0; shift < 32; shift += kBits) {
    uint32_t count[(1 << kBits) + 1] = {};
    for (const Keyed& k : keyed_) ++count[((k.key >> shift) & ((1u << kBits) - 1)) + 1];
    for (int b = 0; b < (1 << kBits); ++b) count[b + 1] += count[b];
    for (const Keyed& k : keyed_) scratch_[count[(k.key >> shift) & ((1u << kBits) - 1)]++] = k;
    keyed_.swap(scratch_);
  }
  out.resize(in.size());
  for (size_t i = 0; i < in.size(); ++i) out[i] = in[size_t(keyed_[i].index)];
}

void Sampler::filter(std::span<const float> logits, std::span<const int32_t> ids) {
  const size_t n = ids.empty() ? size_t(vocab_) : ids.size();
  const auto id_of = [&](size_t i) { return ids.empty() ? int32_t(i) : ids[i]; };
  scores_.assign(logits.begin(), logits.begin() + ptrdiff_t(n));
  const float penalty = params_.repetition_penalty;
  if (penalty != 1.0f)
    for (size_t i = 0; i < n; ++i)
      if (seen_[size_t(id_of(i))]) scores_[i] = scores_[i] < 0 ? scores_[i] * penalty : scores_[i] / penalty;
  const float temperature = params_.temperature;
  for (float& s : scores_) s /= temperature;

  // top-k: everything below the k-th largest score goes (ties with it stay, as in HF). Candidates
  // hold every token at or above the cut, so its k-th largest is the whole row's.
  float floor = -INFINITY;
  if (params_.top_k > 0 && params_.top_k < vocab_) {
    if (params_.top_k > int64_t(n)) fail("[sampling] {} candidates for top_k = {}", n, params_.top_k);
    sorted_ = scores_;
    std::nth_element(sorted_.begin(), sorted_.begin() + (params_.top_k - 1), sorted_.end(), std::greater<float>());
    floor = sorted_[size_t(params_.top_k - 1)];
  }
  kept_.clear();
  float top = -INFINITY;
  for (size_t i = 0; i < n; ++i)
    if (scores_[i] >= floor) {
      kept_.push_back({scores_[i], id_of(i)});
      top = std::max(top, scores_[i]);
    }

  // top-p: from the least likely up, drop tokens while the dropped mass stays ≤ 1 - top_p. Only
  // this filter needs the candidates in order; the others are thresholds. Each exp is taken once
  // (weights_ by id), and the order comes from a radix sort: a 50k vocabulary took ~6 ms a token
  // through std::sort and repeated exps.
  const bool by_weight = params_.top_p < 1.0f && kept_.size() > 1;
  if (by_weight) {
    sort_descending(kept_, order_);
    weights_.resize(size_t(vocab_));
    double total = 0.0;
    for (const Candidate& c : order_) total += weights_[size_t(c.id)] = std::exp(double(c.score) - top);
    size_t n = order_.size();
    double dropped = 0.0;
    while (n > 1) {
      dropped += weights_[size_t(order_[n - 1].id)] / total;
      if (dropped > 1.0 - double(params_.top_p)) break;
      --n;
    }
    // Ties with the last kept score but after it in id order go too, as they would in HF's
    // sorted order: keep exactly the first n of `order_`.
    keep_.assign(size_t(vocab_), 0);
    for (size_t i = 0; i < n; ++i) keep_[size_t(order_[i].id)] = 1;
    std::erase_if(kept_, [&](const Candidate& c) { return !keep_[size_t(c.id)]; });
  }
  // min-p: drop tokens less likely than min_p times the most likely one.
  if (params_.min_p > 0.0f)
    std::erase_if(kept_, [&](const Candidate& c) { return std::exp(double(c.score) - top) < double(params_.min_p); });

  // Probabilities of what remains, in id order, in double.
  probs_.resize(kept_.size());
  double total = 0.0;
  for (size_t i = 0; i < kept_.size(); ++i)
    total += probs_[i] = by_weight ? weights_[size_t(kept_[i].id)] : std::exp(double(kept_[i].score) - top);
  for (double& p : probs_) p /= total;
}

int32_t Sampler::sample(std::span<const float> logits) {
  if (int64_t(logits.size()) < vocab_) fail("[sampling] {} logits for a vocabulary of {}", logits.size(), vocab_);
  return draw(logits, {});
}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> ids) {
  if (candidates_k() == 0) fail("[sampling] these parameters need the whole row of logits, not candidates");
  if (logits.size() != ids.size() || ids.empty())
    fail("[sampling] {} candidate logits for {} ids", logits.size(), ids.size());
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= vocab_ || (i > 0 && ids[i] <= ids[i - 1]))
      fail("[sampling] candidate ids must ascend within [0, {}), got {} at {}", vocab_, ids[i], i);
  return draw(logits, ids);
}

int64_t Sampler::candidates_k() const {
  if (params_.repetition_penalty != 1.0f) return 0;
  if (params_.temperature == 0.0f) return 1;
  return params_.top_k > 0 && params_.top_k < vocab_ ? params_.top_k : 0;
}

float Sampler::candidates_temperature() const { return params_.temperature == 0.0f ? 1.0f : params_.temperature; }

int32_t Sampler::draw(std::span<const float> logits, std::span<const int32_t> ids) {
  const auto id_of = [&](size_t i) { return ids.empty() ? int32_t(i) : ids[i]; };
  if (params_.temperature == 0.0f) {
    const size_t n = ids.empty() ? size_t(vocab_) : ids.size();
    const float penalty = params_.repetition_penalty;
    int32_t best = 0;
    float best_score = -INFINITY;
    for (size_t i = 0; i < n; ++i) {
      float s = logits[i];
      if (seen_[size_t(id_of(i))] && penalty != 1.0f) s = s < 0 ? s * penalty : s / penalty;
      if (s > best_score || i == 0) {
        best_score = s;
        best = id_of(i);
      }
    }
    return best;
  }
  filter(logits, ids);
  // 53 random bits → a double in [0, 1), the same on every platform.
  const double u = double(rng_() >> 11) * 0x1.0p-53;
  double cumulative = 0.0;
  for (size_t i = 0; i < kept_.size(); ++i) {
    cumulative += probs_[i];
    if (u < cumulative) return kept_[i].id;
  }
  return kept_.back().id;
}

std::vector<double> Sampler::distribution(std::span<const float> logits) {
  std::vector<double> out(size_t(vocab_), 0.0);
  if (params_.temperature == 0.0f) {
    out[size_t(sample(logits))] = 1.0;
    return out;
  }
  if (int64_t(logits.size()) < vocab_) fail("[sampling] {} logits for a vocabulary of {}", logits.size(), vocab_);
  filter(logits, {});
  for (size_t i = 0; i < kept_.size(); ++i) out[size_t(kept_[i].id)] = probs_[i];
  return out;
}

int32_t sample_candidates(Sampler& sampler, const DecodeCandidates& c, size_t r, size_t row_cols) {
  if (c.dense) return sampler.sample(std::span<const float>(c.whole_rows).subspan(r * row_cols, row_cols));
  const size_t at = r * size_t(c.cap), n = size_t(c.count[r]);
  return sampler.sample(std::span<const float>(c.logits).subspan(at, n), std::span<const int32_t>(c.ids).subspan(at, n));
}

}  // namespace mamba2
