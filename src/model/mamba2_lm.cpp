// The Mamba LM forward (DESIGN.md §1; Mamba-1: §6) in terms of the ops; prefill and decode share
// every op but the conv and the scan, which come as a chunked/sequence form and a one-token form.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <tuple>

#include "cuda/runtime.h"
#include "mamba2/error.h"
#include "mamba2/model.h"
#include "model/inference_state.h"
#include "model/mixer_views.h"
#include "model/weights.h"
#include "ops/ops.h"

namespace mamba2 {

std::shared_ptr<InferenceState> make_state(const ModelConfig& c, int64_t batch, Device device) {
  if (batch <= 0) fail("[model] a state needs at least one sequence, got {}", batch);
  auto s = std::make_shared<InferenceState>();
  s->batch = batch;
  for (int64_t i = 0; i < c.n_layer; ++i) {
    s->conv.push_back(Tensor::zeros({batch, c.conv_state_width()}, device));
    s->ssm.push_back(Tensor::zeros({batch, c.ssm_state_width()}, device));
  }
  return s;
}

namespace {

void check_placement(const ModelConfig& c, Device device, DType dtype) {
  if (device == Device::CPU && dtype == DType::F16)
    fail("[model] the CPU takes F32, BF16, Q8_0 or Q4_0 weights, not F16");
  if (device == Device::CUDA && is_quantized(dtype))
    fail("[model] the GPU takes F32, BF16 or F16 weights, not {}", dtype_name(dtype));
}

}  // namespace

Model Model::load(const std::filesystem::path& path, bool keep_bf16) {
  Checkpoint ck = open_model(path);
  auto archive = std::make_shared<const TensorArchive>(std::move(ck.archive));
  auto weights = std::make_shared<const ModelWeights>(load_weights(std::move(archive), ck.config, keep_bf16));
  const DType dtype = stored_matrix_dtype(*weights);
  // A GGUF file of q8_0/q4_0 matrices may hold others as k-quants, read as fp32 (llama.cpp's q4_0
  // keeps the embedding in Q6_K): those are placed in the file's format as `mamba2 quantize`
  // would have written them.
  const DType vocab = vocab_matrix_dtype(dtype);
  const bool mixed = weights->embedding.dtype() != vocab || weights->lm_head.dtype() != vocab ||
                     std::any_of(weights->layers.begin(), weights->layers.end(), [&](const LayerWeights& l) {
                       return l.in_proj.dtype() != dtype || l.out_proj.dtype() != dtype;
                     });
  if (mixed) weights = std::make_shared<const ModelWeights>(place_weights(*weights, Device::CPU, dtype));
  return Model(ck.config, std::move(weights), Device::CPU, dtype);
}

Model::Model(ModelConfig config, std::shared_ptr<const ModelWeights> weights, Device device, DType dtype)
    : config_(std::move(config)), weights_(std::move(weights)), device_(device), dtype_(dtype) {
  config_.validate("model");
  check_placement(config_, device, dtype);
  // Of the weights as loaded (on the host: fp32, or a quantized checkpoint's blocks or bf16); a
  // placed copy inherits it (to()).
  if (weights_->embedding.device() == Device::CPU)
    fingerprint_ = model_fingerprint(config_, *weights_);
}

Model Model::to(Device device, DType dtype) const {
  check_placement(config_, device, dtype);
  if (device == device_ && dtype == dtype_) return *this;
  Model m(config_, std::make_shared<const ModelWeights>(place_weights(*weights_, device, dtype)), device, dtype);
  m.fingerprint_ = fingerprint_;  // the same weights, placed
  return m;
}

namespace {

void copy_bytes(void* dst, const void* src, size_t bytes, Device device) {
  if (device == Device::CUDA)
    cuda::copy_on_device(dst, src, bytes);
  else
    std::memcpy(dst, src, bytes);
}

// A state made for another model would be read out of bounds: its layers and widths must match.
void check_state(const InferenceState& state, const ModelConfig& c, Device device) {
  const int64_t conv_width = c.conv_state_width(), ssm_width = c.ssm_state_width();
  bool ok = int64_t(state.conv.size()) == c.n_layer && int64_t(state.ssm.size()) == c.n_layer;
  for (size_t i = 0; ok && i < state.conv.size(); ++i)
    ok = state.conv[i].shape() == Shape{state.batch, conv_width} && state.ssm[i].shape() == Shape{state.batch, ssm_width};
  if (!ok) fail("[model] the inference state was made for another model configuration");
  if (state.conv.front().device() != device)
    fail("[model] the inference state is on the {}, the model on the {}", device_name(state.conv.front().device()),
         device_name(device));
}

// Final norm and the head (tied or not) over `rows` of the residual stream, on its device:
// normed (rows, d_model) in the compute dtype, logits (rows, vocab) fp32.
void head_into(const ModelWeights& w, const ModelConfig& c, MatView residual, MatView h, ops::LinearKernel kernel,
               MatView normed, MatView logits) {
  ops::add_rmsnorm(residual, h, w.norm_f, normed, float(c.norm_eps));
  ops::linear(normed, w.lm_head, logits, kernel);
}

// The same, the logits brought to the host.
void head(const ModelWeights& w, const ModelConfig& c, MatView residual, MatView h, ops::LinearKernel kernel,
          DType dtype, std::vector<float>& logits) {
  const Device dev = residual.device;
  const int64_t V = c.vocab_padded();
  Tensor normed = Tensor::empty({residual.rows, c.d_model}, dev, dtype);
  logits.resize(size_t(residual.rows * V));
  if (dev == Device::CPU) {
    head_into(w, c, residual, h, kernel, MatView::of(normed), {logits.data(), residual.rows, V, V});
    return;
  }
  Tensor out = Tensor::empty({residual.rows, V}, dev);
  head_into(w, c, residual, h, kernel, MatView::of(normed), MatView::of(out));
  cuda::copy_to_host(logits.data(), out.raw(), out.nbytes());
}

// Activations of `rows` tokens, reused by every layer. fp32 except the projections' inputs and
// the conv's output, the scans' operands, which are in the compute dtype (on the CPU, fp32: yn is
// then y, normed in place).
struct Activations {
  Tensor residual;  // (rows, d_model) fp32 residual stream
  Tensor h;         // (rows, d_model) block output
  Tensor u;         // (rows, d_model) normed block input, compute dtype
  Tensor zxbcdt;    // (rows, d_in_proj) (Mamba-1: x | z)
  Tensor xbc;       // (rows, conv_dim) after conv + SiLU, compute dtype (Mamba-1: fp32, as x_proj's
                    // weights and the scan take it)
  Tensor y;         // (rows, d_inner) scan output (Mamba-1: gated by silu(z))
  Tensor yn;        // (rows, d_inner) y gated (Mamba2: and normed), compute dtype
  // Mamba-1.
  Tensor x_dbl;         // (rows, dt_rank + 2·bc_width) x_proj's output dt_low | B | C
  Tensor dt;            // (rows, d_inner) dt_proj's output (the scan adds its bias)
  Tensor dt_low, B, C;  // Falcon-Mamba: x_dbl's parts, normed
  Tensor norm_in;       // Falcon-Mamba: a part copied contiguous, as the norm takes it
  Tensor ones;          // Falcon-Mamba: the weightless norms' weight
  Activations(int64_t rows, const ModelConfig& c, Device dev, DType dtype)
      : residual(Tensor::empty({rows, c.d_model}, dev)),
        h(Tensor::empty({rows, c.d_model}, dev)),
        u(Tensor::empty({rows, c.d_model}, dev, dtype)),
        zxbcdt(Tensor::empty({rows, c.d_in_proj()}, dev)),
        xbc(Tensor::empty({rows, c.conv_dim()}, dev, c.mamba1() ? DType::F32 : dtype)),
        y(Tensor::empty({rows, c.d_inner()}, dev)),
        yn(dtype == DType::F32 ? y : Tensor::empty({rows, c.d_inner()}, dev, dtype)) {
    if (!c.mamba1()) return;
    x_dbl = Tensor::empty({rows, c.x_proj_rows()}, dev);
    dt = Tensor::empty({rows, c.d_inner()}, dev);
    if (c.mixer_norms) {
      const int64_t widest = std::max(c.dt_rank, c.bc_width());
      dt_low = Tensor::empty({rows, c.dt_rank}, dev);
      B = Tensor::empty({rows, c.bc_width()}, dev);
      C = Tensor::empty({rows, c.bc_width()}, dev);
      norm_in = Tensor::empty({rows, widest}, dev);
      Tensor one = Tensor::empty({widest});
      std::fill(one.data(), one.data() + one.numel(), 1.0f);
      ones = one.to(dev, DType::F32);
    }
  }
};

// The layer stack: residual add + RMSNorm + in_proj, then the mixer, then out_proj. Leaves the last
// block's output in a.h for the head. `forms` gives the conv and the scans in their prefill or
// decode form, each layer's from its states:
//   forms.conv(layer, in, w, bias, out), forms.ssd(layer, weights, x, B, C, dt, y),
//   forms.selective(layer, weights, x, dt, B, C, z, y)
// Mamba2: the conv over xBC, the SSD scan, the gated RMSNorm. Mamba-1: the conv over x, x_proj into
// dt_low | B | C (Falcon: each normed), dt_proj, the selective scan gated by silu(z).
// device_ids: the ids already on the GPU (a captured decode step's).
template <class Forms>
void run_layers(const ModelWeights& w, const ModelConfig& c, std::span<const int32_t> ids, Activations& a,
                ops::LinearKernel kernel, Forms&& forms, const int32_t* device_ids = nullptr) {
  ops::embedding(w.embedding, ids, MatView::of(a.residual), device_ids);
  // Mamba-1's x_proj and dt_proj stay fp32 in a bf16 / f16 run; a prefill's take TF32 tensor
  // cores, as training's do.
  const bool tf32 = kernel == ops::LinearKernel::Prefill && a.u.device() == Device::CUDA && a.u.dtype() != DType::F32;
  const ops::LinearKernel proj = tf32 ? ops::LinearKernel::PrefillTf32 : kernel;
  for (int64_t li = 0; li < c.n_layer; ++li) {
    const LayerWeights& l = w.layers[size_t(li)];
    const size_t layer = size_t(li);
    ops::add_rmsnorm(MatView::of(a.residual), li == 0 ? MatView{} : MatView::of(a.h), l.norm, MatView::of(a.u),
                     float(c.norm_eps));
    if (c.mamba1()) {
      const Tensor* in_bias = c.proj_bias ? &l.in_proj_b : nullptr;
      ops::linear(MatView::of(a.u), l.in_proj, MatView::of(a.zxbcdt), kernel, in_bias);
      const int64_t di = c.d_inner(), R = c.dt_rank, bw = c.bc_width();
      const MatView xz = MatView::of(a.zxbcdt), x = xz.cols_slice(0, di), z = xz.cols_slice(di, di);
      const MatView xc = MatView::of(a.xbc);
      forms.conv(layer, x, l.conv_w, l.conv_b, xc);
      ops::linear(xc, l.x_proj, MatView::of(a.x_dbl), proj);
      const MatView dbl = MatView::of(a.x_dbl);
      MatView dt_low = dbl.cols_slice(0, R), B = dbl.cols_slice(R, bw), C = dbl.cols_slice(R + bw, bw);
      if (c.mixer_norms) {
        const float eps = float(c.mixer_rms_eps);
        weightless_rmsnorm(dt_low, a.norm_in, a.dt_low, a.ones, eps);
        weightless_rmsnorm(B, a.norm_in, a.B, a.ones, eps);
        weightless_rmsnorm(C, a.norm_in, a.C, a.ones, eps);
        dt_low = MatView::of(a.dt_low), B = MatView::of(a.B), C = MatView::of(a.C);
      }
      ops::linear(dt_low, l.dt_proj, MatView::of(a.dt), proj);
      forms.selective(layer, selective_weights(l, c), xc, MatView::of(a.dt), B, C, z, MatView::of(a.y));
      if (a.yn.raw() != a.y.raw()) ops::cast(MatView::of(a.y), MatView::of(a.yn));
      ops::linear(MatView::of(a.yn), l.out_proj, MatView::of(a.h), kernel, c.proj_bias ? &l.out_proj_b : nullptr);
      continue;
    }
    ops::linear(MatView::of(a.u), l.in_proj, MatView::of(a.zxbcdt), kernel);
    const Projections pr = split(MatView::of(a.zxbcdt), c);
    forms.conv(layer, pr.xBC, l.conv_w, l.conv_b, MatView::of(a.xbc));
    const ConvOut co = split_conv(MatView::of(a.xbc), c);
    forms.ssd(layer, ssd_weights(l, c), co.x, co.B, co.C, pr.dt, MatView::of(a.y));
    ops::gated_rmsnorm(MatView::of(a.y), pr.z, l.gate_norm, MatView::of(a.yn), c.ngroups, float(c.norm_eps));
    ops::linear(MatView::of(a.yn), l.out_proj, MatView::of(a.h), kernel);
  }
}

// The decode forms of the conv and the scans: one token per sequence, from and back to its state.
struct DecodeForms {
  InferenceState& state;
  const ops::SeqBatch& seqs;
  void conv(size_t li, MatView in, const Tensor& w, const Tensor& b, MatView out) {
    ops::causal_conv1d_step(in, w, b, out, state.conv_states(li), seqs);
  }
  void ssd(size_t li, const ops::SsdWeights& w, MatView x, MatView B, MatView C, MatView dt, MatView y) {
    ops::ssd_step(w, x, B, C, dt, y, state.ssm_states(li), seqs);
  }
  void selective(size_t li, const ops::SelectiveScanWeights& w, MatView x, MatView dt, MatView B, MatView C,
                 MatView z, MatView y) {
    ops::selective_scan_step(w, x, dt, B, C, z, y, state.ssm_states(li), seqs);
  }
};

}  // namespace

void Model::set_max_prefill_tokens(int64_t tokens) {
  if (tokens <= 0) fail("[model] max prefill tokens must be positive, got {}", tokens);
  max_prefill_tokens_ = tokens;
}

void Model::prefill(std::span<const int32_t> ids, std::span<const int64_t> lengths, InferenceState* state,
                    bool all_positions, std::vector<float>& logits, std::span<const int64_t> given_slots) const {
  const int64_t T = int64_t(ids.size()), nseq = int64_t(lengths.size());
  int64_t total = 0;
  for (int64_t len : lengths) {
    if (len <= 0) fail("[model] sequence lengths must be positive, got {}", len);
    total += len;
  }
  if (total != T) fail("[model] lengths sum to {} but {} ids were given", total, T);
  std::vector<int64_t> slots(static_cast<size_t>(nseq));
  for (int64_t s = 0; s < nseq; ++s) slots[size_t(s)] = s;
  if (!given_slots.empty()) {
    if (!state) fail("[model] prefill slots are slots of a state, and none was given");
    if (int64_t(given_slots.size()) != nseq) fail("[model] {} slots for {} sequences", given_slots.size(), nseq);
    slots.assign(given_slots.begin(), given_slots.end());
  }
  if (state) {
    check_state(*state, config_, device_);
    std::vector<bool> seen(size_t(state->batch));
    for (int64_t s : slots) {
      if (s < 0 || s >= state->batch) fail("[model] slot {} outside the state's {} sequences", s, state->batch);
      if (seen[size_t(s)]) fail("[model] slot {} given to two sequences", s);
      seen[size_t(s)] = true;
    }
  }
  if (all_positions || T <= max_prefill_tokens_) {
    prefill_pass(ids, lengths, slots, state, all_positions, logits);
    return;
  }
  // Rounds: each active sequence contributes its next piece; the state carries it across rounds.
  std::shared_ptr<InferenceState> own;
  if (!state) {
    own = new_state(nseq);
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
    std::vector<int64_t> round_lengths, round_slots;
    for (int64_t s : active) {
      round_slots.push_back(slots[size_t(s)]);
      const int64_t n = std::min(piece, lengths[size_t(s)] - done[size_t(s)]);
      const auto first = ids.begin() + start[size_t(s)] + done[size_t(s)];
      round_ids.insert(round_ids.end(), first, first + n);
      round_lengths.push_back(n);
      done[size_t(s)] += n;
    }
    prefill_pass(round_ids, round_lengths, round_slots, state, false, round_logits);
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
  Activations a(T, c, device_, activation_dtype());
  // Without a state every sequence starts from zeros (its slot is its index): one layer's worth
  // of zero states, cleared before each layer.
  Tensor scratch_conv, scratch_ssm;
  if (!state) {
    scratch_conv = Tensor::empty({nseq, c.conv_state_width()}, device_);
    scratch_ssm = Tensor::empty({nseq, c.ssm_state_width()}, device_);
  }
  const ops::SeqBatch seqs(lengths, slots, c.chunk_size, device_);
  struct PrefillForms {
    InferenceState* state;
    Tensor &scratch_conv, &scratch_ssm;
    const ops::SeqBatch& seqs;
    DType compute;
    size_t cleared = size_t(-1);
    // A layer's states: the state's, or zeros cleared once per layer.
    std::pair<MatView, MatView> states(size_t li) {
      if (state) return {state->conv_states(li), state->ssm_states(li)};
      if (cleared != li) {
        scratch_conv.set_zero();
        scratch_ssm.set_zero();
        cleared = li;
      }
      return {MatView::of(scratch_conv), MatView::of(scratch_ssm)};
    }
    void conv(size_t li, MatView in, const Tensor& w, const Tensor& b, MatView out) {
      ops::causal_conv1d(in, w, b, out, states(li).first, seqs);
    }
    void ssd(size_t li, const ops::SsdWeights& w, MatView x, MatView B, MatView C, MatView dt, MatView y) {
      ops::ssd_scan(w, x, B, C, dt, y, states(li).second, seqs, compute);
    }
    void selective(size_t li, const ops::SelectiveScanWeights& w, MatView x, MatView dt, MatView B, MatView C,
                   MatView z, MatView y) {
      ops::selective_scan(w, x, dt, B, C, z, y, states(li).second, seqs);
    }
  };
  run_layers(w, c, ids, a, ops::LinearKernel::Prefill,
             PrefillForms{state, scratch_conv, scratch_ssm, seqs, activation_dtype()});
  if (all_positions) {
    head(w, c, MatView::of(a.residual), MatView::of(a.h), ops::LinearKernel::Prefill, activation_dtype(), logits);
    return;
  }
  // Only the last position of each sequence goes through the head.
  Tensor last_res = Tensor::empty({nseq, c.d_model}, device_), last_h = Tensor::empty({nseq, c.d_model}, device_);
  const size_t row_bytes = size_t(c.d_model) * sizeof(float);
  for (int64_t s = 0; s < nseq; ++s) {
    const int64_t last = seqs.starts()[size_t(s) + 1] - 1;
    copy_bytes(MatView::of(last_res).row(s), MatView::of(a.residual).row(last), row_bytes, device_);
    copy_bytes(MatView::of(last_h).row(s), MatView::of(a.h).row(last), row_bytes, device_);
  }
  head(w, c, MatView::of(last_res), MatView::of(last_h), ops::LinearKernel::Prefill, activation_dtype(), logits);
}

void Model::check_decode(std::span<const int32_t> tokens, std::span<const int64_t> slots,
                         const InferenceState& state) const {
  const int64_t nb = int64_t(tokens.size());
  if (int64_t(slots.size()) != nb) fail("[model] {} slots for {} tokens", slots.size(), nb);
  check_state(state, config_, device_);
  // A replayed decode graph reads the embedding at the ids as they are: check them here.
  const int64_t vocab = weights_->embedding.dim(0);
  for (size_t t = 0; t < tokens.size(); ++t)
    if (tokens[t] < 0 || tokens[t] >= vocab)
      fail("[model] token id {} at position {} is out of range [0, {})", tokens[t], t, vocab);
  std::vector<bool> seen(size_t(state.batch));
  for (int64_t s : slots) {
    if (s < 0 || s >= state.batch) fail("[model] slot {} outside the state's {} sequences", s, state.batch);
    if (seen[size_t(s)]) fail("[model] slot {} appears twice in one decode step", s);
    seen[size_t(s)] = true;
  }
}

void Model::decode(std::span<const int32_t> tokens, std::span<const int64_t> slots, InferenceState& state,
                   std::vector<float>& logits) const {
  const ModelConfig& c = config_;
  const ModelWeights& w = *weights_;
  const int64_t nb = int64_t(tokens.size());
  check_decode(tokens, slots, state);

  if (device_ == Device::CUDA) {
    decode_on_gpu(tokens, slots, state, &logits, 0, nullptr);
    return;
  }
  Activations a(nb, c, device_, activation_dtype());
  const ops::SeqBatch seqs = ops::SeqBatch::decode(slots, device_);
  run_layers(w, c, tokens, a, ops::LinearKernel::Decode, DecodeForms{state, seqs});
  head(w, c, MatView::of(a.residual), MatView::of(a.h), ops::LinearKernel::Decode, activation_dtype(), logits);
}

// A decode step on the GPU for a model and a batch size, kept with the state it advances: its
// buffers, and the step captured as one CUDA graph after a first eager run (which also makes
// cuBLASLt's plans, so the capture allocates nothing). Later steps copy the tokens and slots in,
// replay the graph and copy the logits out. The graph has the addresses of the state's buffers
// and of the weights baked in: it lives with the state (InferenceState::decode_graphs) and holds
// the weights, so neither can go while it may be replayed.
//
// A decode step is latency-bound (a few rows): its layers run fused, three kernels each, launched
// overlapped (each starts while the one before ends), each warming the L2 with the weights of the
// projection after it (in_proj: this layer's out_proj; the SSD step: the next in_proj or the head).
// The norms are applied by the projections on the way in (ops::RowNorm): in_proj normalises the
// residual (the RMSNorm's scale found from the row it loads) and runs the conv step on its xBC
// columns, the SSD step gates y by silu(z), out_proj normalises that (with more than one group,
// from the sums of y² the SSD step leaves per group) and adds its output to the residual.
struct DecodeStep {
  std::shared_ptr<const ModelWeights> weights;
  Tensor residual;   // (nb, d_model) fp32
  Tensor zxbcdt;     // (nb, d_in_proj)
  Tensor xbc;        // (nb, conv_dim)
  Tensor y;          // (nb, d_inner) the gated scan output (Mamba-1: in the compute dtype, out_proj's input)
  Tensor gate_sums;  // (nb, ssd_step_sum_count(nheads, headdim)) partial Σ y², with ngroups > 1
  Tensor logits;     // (nb, vocab_padded)
  Tensor x_dbl;      // Mamba-1: (nb, dt_rank + 2·bc_width) x_proj's output
  std::unique_ptr<Activations> m1;  // Mamba-1 with projection biases or mixer norms: the unfused stack's
  std::shared_ptr<void> ids;   // (nb) int32
  std::shared_ptr<void> next;  // (nb) int32: the greedy choice of each row
  int64_t greedy_cols = 0;     // the columns argmax looks at, as captured
  ops::SeqBatch seqs;
  std::unique_ptr<cuda::Graph> graph;
  uint64_t last_use = 0;
  DecodeStep(std::shared_ptr<const ModelWeights> w, int64_t nb, std::span<const int64_t> slots, const ModelConfig& c,
             DType dtype)
      : weights(std::move(w)),
        residual(Tensor::empty({nb, c.d_model}, Device::CUDA)),
        zxbcdt(unfused(c) ? Tensor() : Tensor::empty({nb, c.d_in_proj()}, Device::CUDA)),
        xbc(unfused(c) ? Tensor() : Tensor::empty({nb, c.conv_dim()}, Device::CUDA)),
        y(unfused(c) ? Tensor() : Tensor::empty({nb, c.d_inner()}, Device::CUDA, c.mamba1() ? dtype : DType::F32)),
        gate_sums(!c.mamba1() && c.ngroups > 1
                      ? Tensor::empty({nb, ops::ssd_step_sum_count(c.nheads(), c.headdim)}, Device::CUDA)
                      : Tensor()),
        logits(Tensor::empty({nb, c.vocab_padded()}, Device::CUDA)),
        x_dbl(c.mamba1() && !unfused(c) ? Tensor::empty({nb, c.x_proj_rows()}, Device::CUDA) : Tensor()),
        m1(unfused(c) ? std::make_unique<Activations>(nb, c, Device::CUDA, dtype) : nullptr),
        ids(cuda::allocate(size_t(nb) * sizeof(int32_t), "decode token ids")),
        next(cuda::allocate(size_t(nb) * sizeof(int32_t), "decode greedy ids")),
        seqs(ops::SeqBatch::decode(slots, Device::CUDA)) {}

  // Mamba-1 with projection biases or Falcon's mixer norms: the layer stack's decode form, unfused.
  static bool unfused(const ModelConfig& c) { return c.mamba1() && (c.proj_bias || c.mixer_norms); }

  void run(const ModelWeights& w, const ModelConfig& c, std::span<const int32_t> tokens, InferenceState& state) {
    if (c.mamba1() && !m1) {
      run_mamba1(w, c, tokens, state);
      return;
    }
    if (m1) {
      run_layers(w, c, tokens, *m1, ops::LinearKernel::Decode, DecodeForms{state, seqs},
                 static_cast<const int32_t*>(ids.get()));
      head_into(w, c, MatView::of(m1->residual), MatView::of(m1->h), ops::LinearKernel::Decode, MatView::of(m1->u),
                MatView::of(logits));
      ops::argmax(MatView::of(logits), greedy_cols, static_cast<int32_t*>(next.get()));
      return;
    }
    const float eps = float(c.norm_eps);
    ops::embedding(w.embedding, tokens, MatView::of(residual), static_cast<const int32_t*>(ids.get()),
                   &w.layers[0].in_proj);
    cuda::mark("embedding");
    const MatView gsums = c.ngroups > 1 ? MatView::of(gate_sums) : MatView{};
    for (int64_t li = 0; li < c.n_layer; ++li) {
      const LayerWeights& l = w.layers[size_t(li)];
      const ops::ConvStepFusion conv{c.d_inner(), l.conv_w, l.conv_b, MatView::of(xbc), state.conv_states(size_t(li)),
                                     seqs};
      const Tensor& next_in = li + 1 < c.n_layer ? w.layers[size_t(li) + 1].in_proj : w.lm_head;
      ops::linear_normed(MatView::of(residual), {{}, 1, l.norm, eps}, l.in_proj, MatView::of(zxbcdt), &conv,
                         &l.out_proj);
      cuda::mark("in_proj + conv step");
      const Projections pr = split(MatView::of(zxbcdt), c);
      const ConvOut co = split_conv(MatView::of(xbc), c);
      ops::ssd_step(ssd_weights(l, c), co.x, co.B, co.C, pr.dt, MatView::of(y), state.ssm_states(size_t(li)), seqs,
                    pr.z, gsums, &next_in);
      cuda::mark("ssd step + gate");
      ops::linear_normed_residual(MatView::of(y), {gsums, c.ngroups, l.gate_norm, eps}, l.out_proj,
                                  MatView::of(residual));
      cuda::mark("out_proj + residual");
    }
    ops::linear_normed(MatView::of(residual), {{}, 1, w.norm_f, eps}, w.lm_head, MatView::of(logits));
    cuda::mark("head");
    ops::argmax(MatView::of(logits), greedy_cols, static_cast<int32_t*>(next.get()));
    cuda::mark("argmax");
  }

  // Mamba-1, four kernels a layer: in_proj normalising the residual on the way in, with the conv
  // step on its x columns; x_proj; the scan step with dt_proj and softplus inside it, gating y and
  // writing it in the compute dtype; out_proj adding its output to the residual.
  void run_mamba1(const ModelWeights& w, const ModelConfig& c, std::span<const int32_t> tokens, InferenceState& state) {
    const float eps = float(c.norm_eps);
    const int64_t di = c.d_inner(), R = c.dt_rank, bw = c.bc_width();
    ops::embedding(w.embedding, tokens, MatView::of(residual), static_cast<const int32_t*>(ids.get()),
                   &w.layers[0].in_proj);
    cuda::mark("embedding");
    for (int64_t li = 0; li < c.n_layer; ++li) {
      const LayerWeights& l = w.layers[size_t(li)];
      const ops::ConvStepFusion conv{0, l.conv_w, l.conv_b, MatView::of(xbc), state.conv_states(size_t(li)), seqs};
      ops::linear_normed(MatView::of(residual), {{}, 1, l.norm, eps}, l.in_proj, MatView::of(zxbcdt), &conv,
                         &l.out_proj);
      cuda::mark("in_proj + conv step");
      // (cuBLASLt's fp32 plan took 86 µs a call here against the decode kernel's 12: H200, 2026-12-04.)
      ops::linear(MatView::of(xbc), l.x_proj, MatView::of(x_dbl), ops::LinearKernel::Decode);
      cuda::mark("x_proj");
      const MatView dbl = MatView::of(x_dbl);
      ops::selective_scan_step_fused(selective_weights(l, c), MatView::of(xbc), dbl.cols_slice(0, R), l.dt_proj,
                                     dbl.cols_slice(R, bw), dbl.cols_slice(R + bw, bw),
                                     MatView::of(zxbcdt).cols_slice(di, di), MatView::of(y),
                                     state.ssm_states(size_t(li)), seqs);
      cuda::mark("dt_proj + scan step + gate");
      ops::linear_residual(MatView::of(y), l.out_proj, MatView::of(residual));
      cuda::mark("out_proj + residual");
    }
    ops::linear_normed(MatView::of(residual), {{}, 1, w.norm_f, eps}, w.lm_head, MatView::of(logits));
    cuda::mark("head");
    ops::argmax(MatView::of(logits), greedy_cols, static_cast<int32_t*>(next.get()));
    cuda::mark("argmax");
  }
};

// A state's captured steps by (weights, compute dtype, batch size).
struct DecodeGraphs {
  static constexpr size_t kMaxEntries = 16;  // the least recently used goes beyond this
  std::map<std::tuple<const ModelWeights*, DType, int64_t>, std::unique_ptr<DecodeStep>> steps;
  uint64_t clock = 0;
};

void Model::set_decode_graphs(bool on) { decode_graphs_ = on; }

void Model::decode_greedy(std::span<const int32_t> tokens, std::span<const int64_t> slots, InferenceState& state,
                          int64_t vocab, std::vector<int32_t>& next) const {
  if (vocab <= 0 || vocab > config_.vocab_padded())
    fail("[model] greedy decoding over {} ids of a vocabulary of {}", vocab, config_.vocab_padded());
  if (device_ == Device::CUDA) {
    check_decode(tokens, slots, state);
    decode_on_gpu(tokens, slots, state, nullptr, vocab, &next);
    return;
  }
  std::vector<float> logits;
  decode(tokens, slots, state, logits);
  next.resize(tokens.size());
  ops::argmax({logits.data(), int64_t(tokens.size()), config_.vocab_padded(), config_.vocab_padded()}, vocab,
              next.data());
}

void Model::decode_candidates(std::span<const int32_t> tokens, std::span<const int64_t> slots, InferenceState& state,
                              int64_t vocab, std::span<const int32_t> k, std::span<const float> temperature,
                              DecodeCandidates& out) const {
  if (vocab <= 0 || vocab > config_.vocab_padded())
    fail("[model] sampling candidates over {} ids of a vocabulary of {}", vocab, config_.vocab_padded());
  const int64_t nb = int64_t(tokens.size());
  if (int64_t(k.size()) != nb) fail("[model] {} values of k for {} rows", k.size(), nb);
  // Room for twice the largest k: more only with many ties at the cut, and then the whole rows.
  const int64_t k_max = k.empty() ? 1 : *std::max_element(k.begin(), k.end());
  out.cap = std::min(vocab, std::max<int64_t>(256, 2 * k_max));
  out.count.resize(size_t(nb));
  out.ids.resize(size_t(nb * out.cap));
  out.logits.resize(size_t(nb * out.cap));
  out.dense = false;
  const auto some_row_overflowed = [&] {
    return std::find(out.count.begin(), out.count.end(), -1) != out.count.end();
  };
  const int64_t V = config_.vocab_padded();
  if (device_ == Device::CUDA) {
    check_decode(tokens, slots, state);
    const Tensor& logits = decode_on_gpu(tokens, slots, state, nullptr, 0, nullptr);
    auto ids = cuda::allocate(out.ids.size() * sizeof(int32_t), "sampling candidates");
    auto values = cuda::allocate(out.logits.size() * sizeof(float), "sampling candidates");
    auto counts = cuda::allocate(out.count.size() * sizeof(int32_t), "sampling candidates");
    ops::top_k(MatView::of(const_cast<Tensor&>(logits)), vocab, k, temperature, out.cap,
               static_cast<int32_t*>(ids.get()), static_cast<float*>(values.get()),
               static_cast<int32_t*>(counts.get()));
    cuda::copy_to_host(out.count.data(), counts.get(), out.count.size() * sizeof(int32_t));
    if (some_row_overflowed()) {
      out.dense = true;
      out.whole_rows.resize(size_t(nb * V));
      cuda::copy_to_host(out.whole_rows.data(), logits.raw(), out.whole_rows.size() * sizeof(float));
      return;
    }
    cuda::copy_to_host(out.ids.data(), ids.get(), out.ids.size() * sizeof(int32_t));
    cuda::copy_to_host(out.logits.data(), values.get(), out.logits.size() * sizeof(float));
    return;
  }
  decode(tokens, slots, state, out.whole_rows);
  ops::top_k({out.whole_rows.data(), nb, V, V}, vocab, k, temperature, out.cap, out.ids.data(), out.logits.data(),
             out.count.data());
  out.dense = some_row_overflowed();
}

const Tensor& Model::decode_on_gpu(std::span<const int32_t> tokens, std::span<const int64_t> slots,
                                   InferenceState& state, std::vector<float>* logits, int64_t greedy_cols,
                                   std::vector<int32_t>* next) const {
  const ModelConfig& c = config_;
  const ModelWeights& w = *weights_;
  const int64_t nb = int64_t(tokens.size());
  if (!state.decode_graphs) state.decode_graphs = std::make_shared<DecodeGraphs>();
  DecodeGraphs& graphs = *state.decode_graphs;
  auto& steps = graphs.steps;
  const auto key = std::make_tuple(weights_.get(), dtype_, nb);
  auto it = steps.find(key);
  if (it == steps.end()) {
    if (steps.size() >= DecodeGraphs::kMaxEntries) {
      auto oldest = steps.begin();
      for (auto e = steps.begin(); e != steps.end(); ++e)
        if (e->second->last_use < oldest->second->last_use) oldest = e;
      steps.erase(oldest);
    }
    it = steps.emplace(key, std::make_unique<DecodeStep>(weights_, nb, slots, c, activation_dtype())).first;
  }
  DecodeStep& d = *it->second;
  d.last_use = ++graphs.clock;
  cuda::copy_to_device(d.ids.get(), tokens.data(), tokens.size_bytes());
  d.seqs.set_decode_slots(slots);
  auto body = [&] { d.run(w, c, tokens, state); };
  const int64_t cols = greedy_cols > 0 ? greedy_cols : d.greedy_cols > 0 ? d.greedy_cols : c.vocab_padded();
  if (cols != d.greedy_cols) d.graph.reset();
  d.greedy_cols = cols;
  if (d.graph) {
#if MAMBA2_CUDA_TRACE
    // The trace build: each replayed step's kernels, the file holding the latest.
    const char* trace_file = std::getenv("MAMBA2_TRACE_FILE");
    if (trace_file) cuda::trace_begin();
    d.graph->launch();
    if (trace_file) cuda::trace_dump(trace_file);
#else
    d.graph->launch();
#endif
  } else {
    body();
    if (decode_graphs_) d.graph = std::make_unique<cuda::Graph>(body);
  }
  if (logits) {
    logits->resize(size_t(nb * c.vocab_padded()));
    cuda::copy_to_host(logits->data(), d.logits.raw(), d.logits.nbytes());
  }
  if (next) {
    next->resize(size_t(nb));
    cuda::copy_to_host(next->data(), d.next.get(), size_t(nb) * sizeof(int32_t));
  }
  return d.logits;
}

}  // namespace mamba2
