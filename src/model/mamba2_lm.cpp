// The Mamba2 LM forward (DESIGN.md §1) in terms of the ops; prefill and decode share every
// op but the conv and the scan, which come as a chunked/sequence form and a one-token form.
#include <algorithm>

#include "mamba2/error.h"
#include "mamba2/model.h"
#include "model/inference_state.h"
#include "model/mixer_views.h"
#include "model/weights.h"
#include "ops/ops.h"

namespace mamba2 {

std::shared_ptr<InferenceState> make_state(const ModelConfig& c, int64_t batch) {
  if (batch <= 0) fail("[model] a state needs at least one sequence, got {}", batch);
  auto s = std::make_shared<InferenceState>();
  s->batch = batch;
  for (int64_t i = 0; i < c.n_layer; ++i) {
    s->conv.push_back(Tensor::zeros({batch, (c.d_conv - 1) * c.conv_dim()}));
    s->ssm.push_back(Tensor::zeros({batch, c.nheads() * c.headdim * c.d_state}));
  }
  return s;
}

Model Model::load(const std::filesystem::path& dir) {
  if (!std::filesystem::is_directory(dir)) fail("[model] {} is not a folder", dir.string());
  ModelConfig config = load_config(dir / "config.json");
  auto archive = std::make_shared<const TensorArchive>(open_checkpoint(dir));
  return Model(config, std::make_shared<const ModelWeights>(load_weights(std::move(archive), config)));
}

Model::Model(ModelConfig config, std::shared_ptr<const ModelWeights> weights)
    : config_(std::move(config)), weights_(std::move(weights)) {
  config_.validate("model");
}

namespace {

// A state made for another model would be read out of bounds: its layers and widths must match.
void check_state(const InferenceState& state, const ModelConfig& c) {
  const int64_t conv_width = (c.d_conv - 1) * c.conv_dim(), ssm_width = c.nheads() * c.headdim * c.d_state;
  bool ok = int64_t(state.conv.size()) == c.n_layer && int64_t(state.ssm.size()) == c.n_layer;
  for (size_t i = 0; ok && i < state.conv.size(); ++i)
    ok = state.conv[i].shape() == Shape{state.batch, conv_width} && state.ssm[i].shape() == Shape{state.batch, ssm_width};
  if (!ok) fail("[model] the inference state was made for another model configuration");
}

// Final norm and the head (tied or not) over `rows` of the residual stream.
void head(const ModelWeights& w, const ModelConfig& c, MatView residual, MatView h, ops::LinearKernel kernel,
          std::vector<float>& logits) {
  Tensor normed = Tensor::empty({residual.rows, c.d_model});
  ops::add_rmsnorm(residual, h, w.norm_f, MatView::of(normed), float(c.norm_eps));
  logits.resize(size_t(residual.rows * c.vocab_padded()));
  ops::linear(MatView::of(normed), w.lm_head, {logits.data(), residual.rows, c.vocab_padded(), c.vocab_padded()},
              kernel);
}

// Activations of `rows` tokens, reused by every layer.
struct Activations {
  Tensor residual;  // (rows, d_model) fp32 residual stream
  Tensor h;         // (rows, d_model) block output
  Tensor u;         // (rows, d_model) normed block input
  Tensor zxbcdt;    // (rows, d_in_proj)
  Tensor xbc;       // (rows, conv_dim) after conv + SiLU
  Tensor y;         // (rows, d_inner) scan output, then gated-normed in place
  Activations(int64_t rows, const ModelConfig& c)
      : residual(Tensor::empty({rows, c.d_model})),
        h(Tensor::empty({rows, c.d_model})),
        u(Tensor::empty({rows, c.d_model})),
        zxbcdt(Tensor::empty({rows, c.d_in_proj()})),
        xbc(Tensor::empty({rows, c.conv_dim()})),
        y(Tensor::empty({rows, c.d_inner()})) {}
};

// The layer stack: residual add + RMSNorm + in_proj, then `mixer(layer, weights, projections)`,
// which fills a.xbc and a.y (the conv and the scan, in their prefill or decode form), then the
// gated RMSNorm and out_proj. Leaves the last block's output in a.h for the head.
template <class Mixer>
void run_layers(const ModelWeights& w, const ModelConfig& c, std::span<const int32_t> ids, Activations& a,
                ops::LinearKernel kernel, Mixer&& mixer) {
  ops::embedding(w.embedding, ids, MatView::of(a.residual));
  for (int64_t li = 0; li < c.n_layer; ++li) {
    const LayerWeights& l = w.layers[size_t(li)];
    ops::add_rmsnorm(MatView::of(a.residual), li == 0 ? MatView{} : MatView::of(a.h), l.norm, MatView::of(a.u),
                     float(c.norm_eps));
    ops::linear(MatView::of(a.u), l.in_proj, MatView::of(a.zxbcdt), kernel);
    const Projections pr = split(MatView::of(a.zxbcdt), c);
    mixer(size_t(li), l, pr);
    ops::gated_rmsnorm(MatView::of(a.y), pr.z, l.gate_norm, MatView::of(a.y), c.ngroups, float(c.norm_eps));
    ops::linear(MatView::of(a.y), l.out_proj, MatView::of(a.h), kernel);
  }
}

}  // namespace

void Model::set_max_prefill_tokens(int64_t tokens) {
  if (tokens <= 0) fail("[model] max prefill tokens must be positive, got {}", tokens);
  max_prefill_tokens_ = tokens;
}

void Model::prefill(std::span<const int32_t> ids, std::span<const int64_t> lengths, InferenceState* state,
                    bool all_positions, std::vector<float>& logits) const {
  const int64_t T = int64_t(ids.size()), nseq = int64_t(lengths.size());
  int64_t total = 0;
  for (int64_t len : lengths) {
    if (len <= 0) fail("[model] sequence lengths must be positive, got {}", len);
    total += len;
  }
  if (total != T) fail("[model] lengths sum to {} but {} ids were given", total, T);
  if (state) {
    check_state(*state, config_);
    if (state->batch < nseq) fail("[model] state holds {} sequences, {} given", state->batch, nseq);
  }
  std::vector<int64_t> slots(static_cast<size_t>(nseq));
  for (int64_t s = 0; s < nseq; ++s) slots[size_t(s)] = s;
  if (all_positions || T <= max_prefill_tokens_) {
    prefill_pass(ids, lengths, state ? std::span<const int64_t>(slots) : std::span<const int64_t>(), state,
                 all_positions, logits);
    return;
  }
  // Rounds: each active sequence contributes its next piece; the state carries it across rounds.
  std::shared_ptr<InferenceState> own;
  if (!state) {
    own = make_state(config_, nseq);
    state = own.get();
  }
  const int64_t V = vocab();
  logits.assign(size_t(nseq * V), 0.0f);
  std::vector<int64_t> start(static_cast<size_t>(nseq)), done(static_cast<size_t>(nseq), 0);
  for (int64_t s = 1; s < nseq; ++s) start[size_t(s)] = start[size_t(s - 1)] + lengths[size_t(s - 1)];
  std::vector<float> round_logits;
  for (;;) {
    std::vector<int64_t> active;
    for (int64_t s = 0; s < nseq; ++s)
      if (done[size_t(s)] < lengths[size_t(s)]) active.push_back(s);
    if (active.empty()) break;
    // Whole chunks, so that the chunk boundaries (and so the rounding) are those of one pass.
    const int64_t share = max_prefill_tokens_ / int64_t(active.size());
    const int64_t piece = std::max<int64_t>(config_.chunk_size, share / config_.chunk_size * config_.chunk_size);
    std::vector<int32_t> round_ids;
    std::vector<int64_t> round_lengths;
    for (int64_t s : active) {
      const int64_t n = std::min(piece, lengths[size_t(s)] - done[size_t(s)]);
      const auto first = ids.begin() + start[size_t(s)] + done[size_t(s)];
      round_ids.insert(round_ids.end(), first, first + n);
      round_lengths.push_back(n);
      done[size_t(s)] += n;
    }
    prefill_pass(round_ids, round_lengths, active, state, false, round_logits);
    for (size_t i = 0; i < active.size(); ++i)
      if (done[size_t(active[i])] == lengths[size_t(active[i])])
        std::copy_n(round_logits.data() + int64_t(i) * V, V, logits.data() + active[i] * V);
  }
}

void Model::prefill_pass(std::span<const int32_t> ids, std::span<const int64_t> lengths,
                         std::span<const int64_t> slots, InferenceState* state, bool all_positions,
                         std::vector<float>& logits) const {
  const ModelConfig& c = config_;
  const ModelWeights& w = *weights_;
  const int64_t T = int64_t(ids.size()), nseq = int64_t(lengths.size());
  Activations a(T, c);
  Tensor scratch_conv = Tensor::empty({c.d_conv - 1, c.conv_dim()});
  Tensor scratch_ssm = Tensor::empty({c.nheads(), c.headdim * c.d_state});
  run_layers(w, c, ids, a, ops::LinearKernel::Prefill, [&](size_t li, const LayerWeights& l, const Projections& pr) {
    int64_t t0 = 0;
    for (int64_t s = 0; s < nseq; ++s) {
      const int64_t L = lengths[size_t(s)];
      float* conv_state = state ? state->conv_states(li).row(slots[size_t(s)]) : scratch_conv.data();
      float* ssm_state = state ? state->ssm_states(li).row(slots[size_t(s)]) : scratch_ssm.data();
      if (!state) {
        std::fill_n(conv_state, scratch_conv.numel(), 0.0f);
        std::fill_n(ssm_state, scratch_ssm.numel(), 0.0f);
      }
      ops::causal_conv1d(pr.xBC.rows_slice(t0, L), l.conv_w, l.conv_b, MatView::of(a.xbc).rows_slice(t0, L),
                         {conv_state, c.d_conv - 1, c.conv_dim(), c.conv_dim()});
      const ConvOut co = split_conv(MatView::of(a.xbc).rows_slice(t0, L), c);
      ops::ssd_scan(ssd_weights(l, c), co.x, co.B, co.C, pr.dt.rows_slice(t0, L), MatView::of(a.y).rows_slice(t0, L),
                    {ssm_state, c.nheads(), c.headdim * c.d_state, c.headdim * c.d_state}, c.chunk_size);
      t0 += L;
    }
  });
  if (all_positions) {
    head(w, c, MatView::of(a.residual), MatView::of(a.h), ops::LinearKernel::Prefill, logits);
    return;
  }
  // Only the last position of each sequence goes through the head.
  Tensor last_res = Tensor::empty({nseq, c.d_model}), last_h = Tensor::empty({nseq, c.d_model});
  int64_t end = 0;
  for (int64_t s = 0; s < nseq; ++s) {
    end += lengths[size_t(s)];
    std::copy_n(a.residual.data() + (end - 1) * c.d_model, c.d_model, last_res.data() + s * c.d_model);
    std::copy_n(a.h.data() + (end - 1) * c.d_model, c.d_model, last_h.data() + s * c.d_model);
  }
  head(w, c, MatView::of(last_res), MatView::of(last_h), ops::LinearKernel::Prefill, logits);
}

void Model::decode(std::span<const int32_t> tokens, std::span<const int64_t> slots, InferenceState& state,
                   std::vector<float>& logits) const {
  const ModelConfig& c = config_;
  const ModelWeights& w = *weights_;
  const int64_t nb = int64_t(tokens.size());
  if (int64_t(slots.size()) != nb) fail("[model] {} slots for {} tokens", slots.size(), nb);
  check_state(state, c);
  std::vector<bool> seen(size_t(state.batch));
  for (int64_t s : slots) {
    if (s < 0 || s >= state.batch) fail("[model] slot {} outside the state's {} sequences", s, state.batch);
    if (seen[size_t(s)]) fail("[model] slot {} appears twice in one decode step", s);
    seen[size_t(s)] = true;
  }

  Activations a(nb, c);
  run_layers(w, c, tokens, a, ops::LinearKernel::Decode, [&](size_t li, const LayerWeights& l, const Projections& pr) {
    ops::causal_conv1d_step(pr.xBC, l.conv_w, l.conv_b, MatView::of(a.xbc), state.conv_states(li), slots);
    const ConvOut co = split_conv(MatView::of(a.xbc), c);
    ops::ssd_step(ssd_weights(l, c), co.x, co.B, co.C, pr.dt, MatView::of(a.y), state.ssm_states(li), slots);
  });
  head(w, c, MatView::of(a.residual), MatView::of(a.h), ops::LinearKernel::Decode, logits);
}

}  // namespace mamba2
