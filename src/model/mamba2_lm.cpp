// The Mamba2 LM forward (DESIGN.md §1) in terms of the ops; prefill and decode share every
// op but the conv and the scan, which come as a chunked/sequence form and a one-token form.
#include <algorithm>

#include "mamba2/error.h"
#include "mamba2/model.h"
#include "model/inference_state.h"
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

ops::SsdWeights ssd_weights(const LayerWeights& l, const ModelConfig& c) {
  return {l.dt_bias, l.A_log, l.D, c.headdim, c.ngroups, c.d_state, c.dt_limit_min, c.dt_limit_max};
}

// Column slices of in_proj's output: z | x | B | C | dt.
struct Projections {
  MatView z, xBC, dt;
};
Projections split(MatView zxbcdt, const ModelConfig& c) {
  return {zxbcdt.cols_slice(0, c.d_inner()), zxbcdt.cols_slice(c.d_inner(), c.conv_dim()),
          zxbcdt.cols_slice(c.d_inner() + c.conv_dim(), c.nheads())};
}
struct ConvOut {
  MatView x, B, C;
};
ConvOut split_conv(MatView xbc, const ModelConfig& c) {
  const int64_t gn = c.ngroups * c.d_state;
  return {xbc.cols_slice(0, c.d_inner()), xbc.cols_slice(c.d_inner(), gn), xbc.cols_slice(c.d_inner() + gn, gn)};
}

// Final norm and tied head over `rows` of the residual stream.
void head(const ModelWeights& w, const ModelConfig& c, MatView residual, MatView h, std::vector<float>& logits) {
  Tensor normed = Tensor::empty({residual.rows, c.d_model});
  ops::add_rmsnorm(residual, h, w.norm_f, MatView::of(normed), float(c.norm_eps));
  logits.resize(size_t(residual.rows * c.vocab_padded()));
  ops::linear(MatView::of(normed), w.lm_head, {logits.data(), residual.rows, c.vocab_padded(), c.vocab_padded()});
}

}  // namespace

void Model::prefill(std::span<const int32_t> ids, std::span<const int64_t> lengths, InferenceState* state,
                    bool all_positions, std::vector<float>& logits) const {
  const ModelConfig& c = config_;
  const ModelWeights& w = *weights_;
  const int64_t T = int64_t(ids.size()), nseq = int64_t(lengths.size());
  int64_t total = 0;
  for (int64_t len : lengths) {
    if (len <= 0) fail("[model] sequence lengths must be positive, got {}", len);
    total += len;
  }
  if (total != T) fail("[model] lengths sum to {} but {} ids were given", total, T);
  if (state) {
    check_state(*state, c);
    if (state->batch < nseq) fail("[model] state holds {} sequences, {} given", state->batch, nseq);
  }

  Tensor residual = Tensor::empty({T, c.d_model});   // (T, D) fp32 residual stream
  Tensor h = Tensor::empty({T, c.d_model});          // (T, D) block output
  Tensor u = Tensor::empty({T, c.d_model});          // (T, D) normed input
  Tensor zxbcdt = Tensor::empty({T, c.d_in_proj()}); // (T, d_in_proj)
  Tensor xbc = Tensor::empty({T, c.conv_dim()});     // (T, conv_dim) after conv + SiLU
  Tensor y = Tensor::empty({T, c.d_inner()});        // (T, d_inner)
  Tensor scratch_conv = Tensor::empty({c.d_conv - 1, c.conv_dim()});
  Tensor scratch_ssm = Tensor::empty({c.nheads(), c.headdim * c.d_state});

  ops::embedding(w.embedding, ids, MatView::of(residual));
  for (int64_t li = 0; li < c.n_layer; ++li) {
    const LayerWeights& l = w.layers[size_t(li)];
    ops::add_rmsnorm(MatView::of(residual), li == 0 ? MatView{} : MatView::of(h), l.norm, MatView::of(u),
                     float(c.norm_eps));
    ops::linear(MatView::of(u), l.in_proj, MatView::of(zxbcdt));
    const Projections pr = split(MatView::of(zxbcdt), c);
    int64_t t0 = 0;
    for (int64_t s = 0; s < nseq; ++s) {
      const int64_t L = lengths[size_t(s)];
      MatView conv_state = state ? state->conv_states(size_t(li)).rows_slice(s, 1) : MatView::of(scratch_conv);
      MatView ssm_state = state ? state->ssm_states(size_t(li)).rows_slice(s, 1) : MatView::of(scratch_ssm);
      conv_state = {conv_state.data, c.d_conv - 1, c.conv_dim(), c.conv_dim(), conv_state.device};
      ssm_state = {ssm_state.data, c.nheads(), c.headdim * c.d_state, c.headdim * c.d_state, ssm_state.device};
      ops::causal_conv1d(pr.xBC.rows_slice(t0, L), l.conv_w, l.conv_b, MatView::of(xbc).rows_slice(t0, L),
                         conv_state);
      std::fill(ssm_state.data, ssm_state.data + ssm_state.rows * ssm_state.cols, 0.0f);
      const ConvOut co = split_conv(MatView::of(xbc).rows_slice(t0, L), c);
      ops::ssd_scan(ssd_weights(l, c), co.x, co.B, co.C, pr.dt.rows_slice(t0, L), MatView::of(y).rows_slice(t0, L),
                    ssm_state, c.chunk_size);
      t0 += L;
    }
    ops::gated_rmsnorm(MatView::of(y), pr.z, l.gate_norm, MatView::of(y), c.ngroups, float(c.norm_eps));
    ops::linear(MatView::of(y), l.out_proj, MatView::of(h));
  }
  if (all_positions) {
    head(w, c, MatView::of(residual), MatView::of(h), logits);
    return;
  }
  // Only the last position of each sequence goes through the head.
  Tensor last_res = Tensor::empty({nseq, c.d_model}), last_h = Tensor::empty({nseq, c.d_model});
  int64_t end = 0;
  for (int64_t s = 0; s < nseq; ++s) {
    end += lengths[size_t(s)];
    std::copy_n(residual.data() + (end - 1) * c.d_model, c.d_model, last_res.data() + s * c.d_model);
    std::copy_n(h.data() + (end - 1) * c.d_model, c.d_model, last_h.data() + s * c.d_model);
  }
  head(w, c, MatView::of(last_res), MatView::of(last_h), logits);
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

  Tensor residual = Tensor::empty({nb, c.d_model});
  Tensor h = Tensor::empty({nb, c.d_model});
  Tensor u = Tensor::empty({nb, c.d_model});
  Tensor zxbcdt = Tensor::empty({nb, c.d_in_proj()});
  Tensor xbc = Tensor::empty({nb, c.conv_dim()});
  Tensor y = Tensor::empty({nb, c.d_inner()});

  ops::embedding(w.embedding, tokens, MatView::of(residual));
  for (int64_t li = 0; li < c.n_layer; ++li) {
    const LayerWeights& l = w.layers[size_t(li)];
    ops::add_rmsnorm(MatView::of(residual), li == 0 ? MatView{} : MatView::of(h), l.norm, MatView::of(u),
                     float(c.norm_eps));
    ops::linear(MatView::of(u), l.in_proj, MatView::of(zxbcdt));
    const Projections pr = split(MatView::of(zxbcdt), c);
    ops::causal_conv1d_step(pr.xBC, l.conv_w, l.conv_b, MatView::of(xbc), state.conv_states(size_t(li)), slots);
    const ConvOut co = split_conv(MatView::of(xbc), c);
    ops::ssd_step(ssd_weights(l, c), co.x, co.B, co.C, pr.dt, MatView::of(y), state.ssm_states(size_t(li)), slots);
    ops::gated_rmsnorm(MatView::of(y), pr.z, l.gate_norm, MatView::of(y), c.ngroups, float(c.norm_eps));
    ops::linear(MatView::of(y), l.out_proj, MatView::of(h));
  }
  head(w, c, MatView::of(residual), MatView::of(h), logits);
}

}  // namespace mamba2
