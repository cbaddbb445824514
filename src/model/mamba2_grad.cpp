// The LM's training pass in terms of the ops, on the device the weights are on (fp32, or on the GPU
// with bf16 / f16 projections): a forward over packed sequences that keeps what the backward
// needs (or lets it recompute part of that), the loss through the tied (or untied) head in row
// blocks, and the backward through the layers in reverse. The residual stream's gradient lives in
// one buffer: the gradient of residual_{i+1} = residual_i + h_i is that of both residual_i and
// h_i, and each layer's RMSNorm adds its part in place (ops::add_rmsnorm_backward).
#include "model/mamba2_grad.h"

#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

#include "cuda/runtime.h"
#include "mamba2/error.h"
#include "model/mixer_views.h"
#include "ops/ops.h"

namespace mamba2 {

namespace {

// The logits of this many entries (rows × padded vocab) at most are alive at once: 32 MiB of fp32
// on the CPU; 512 MiB on the GPU, where the head's weight-gradient product needs thousands of rows
// a block to run at tensor-core speed (166 rows of a 50k vocabulary took 5× its time).
constexpr int64_t kHeadBlockElementsCpu = int64_t(1) << 23, kHeadBlockElementsCuda = int64_t(1) << 27;

// The packed batch: sequence lengths, and the rows that predict (all but each sequence's last)
// with their targets.
struct Batch {
  std::span<const int32_t> ids;
  std::vector<int64_t> lengths;
  std::vector<int32_t> pred_rows;  // as ids of the rows gathered for the head (ops::embedding)
  std::vector<int32_t> targets;
};

Batch make_batch(std::span<const int32_t> ids, std::span<const int64_t> lengths) {
  int64_t total = 0;
  for (int64_t len : lengths) {
    if (len <= 0) fail("[model] sequence lengths must be positive, got {}", len);
    total += len;
  }
  if (total != int64_t(ids.size())) fail("[model] lengths sum to {} but {} ids were given", total, ids.size());
  if (total > INT32_MAX) fail("[model] {} tokens in one batch: at most {}", total, INT32_MAX);
  Batch b{ids, {lengths.begin(), lengths.end()}, {}, {}};
  int64_t start = 0;
  for (int64_t len : lengths) {
    for (int64_t t = start; t + 1 < start + len; ++t) {
      b.pred_rows.push_back(int32_t(t));
      b.targets.push_back(ids[size_t(t + 1)]);
    }
    start += len;
  }
  if (b.pred_rows.empty())
    fail("[model] no positions to predict: every sequence has length 1 (a sequence of length L predicts L-1 tokens)");
  return b;
}

// What the backward reads: per layer the residual after its add, in_proj's output and the scan
// output; the final residual (after the last add) and its norm.
struct Saved {
  // y: the scan output; for Mamba-1 in bf16 / f16 its copy rounded to the compute dtype (out_proj's
  // input, all the backward reads of it). dt: in_proj's dt columns where zxbcdt holds z | xBC alone
  // (InProj).
  std::vector<Tensor> residual, zxbcdt, dt, y;
  // Kept (Recompute::No) rather than recomputed by the backward: the normed input and the conv
  // output; Mamba2's gated norm output (Mamba-1's x_dbl, dt and norms: Mamba1Mixer::kept).
  std::vector<Tensor> u, xbc, gated;
  Tensor residual_f, normed_f;
};

// The conv output's dtype: Mamba2's is the SSD scan's operands, forward and backward, in the
// compute dtype; Mamba-1's scan takes fp32.
DType conv_out_dtype(const ModelConfig& c, DType compute) { return c.mamba1() ? DType::F32 : compute; }
// in_proj's output: Mamba2's z | xBC in the compute dtype, rounded once by the product (as
// autocast's product hands it on to the conv and the gated norm); fp32 for Mamba-1, whose mixer
// reads fp32, and where a bias is added after the product.
DType zxbcdt_dtype(const ModelConfig& c, DType compute) { return c.mamba1() || c.proj_bias ? DType::F32 : compute; }
// The scan output's dtype, rounded once by the scan: Mamba-1's is out_proj's input, in the compute
// dtype; Mamba2's goes to the gated norm, which takes it (and out_proj's d_gated) in z's dtype.
DType scan_out_dtype(const ModelConfig& c, DType compute) { return c.mamba1() ? compute : zxbcdt_dtype(c, compute); }

// One layer's in_proj output. Narrow, it is two products: z | xBC in the compute dtype, and dt
// (nheads columns) in fp32, as the scan takes it (it is exponentiated): its own product writes it
// so, in place of a rounding and a widening copy. In fp32 one product writes z | xBC | dt (bias
// added) into zxbcdt alone.
struct InProj {
  Tensor zxbcdt, dt;

  static InProj empty(const ModelConfig& c, int64_t T, Device dev, DType compute) {
    const DType zt = zxbcdt_dtype(c, compute);
    if (zt == DType::F32) return {Tensor::empty({T, c.d_in_proj()}, dev), Tensor()};
    return {Tensor::empty({T, c.d_in_proj() - c.nheads()}, dev, zt), Tensor::empty({T, c.nheads()}, dev)};
  }
  void forward(MatView u, const Tensor& W, const Tensor* bias) {
    if (!dt.defined()) return ops::linear(u, W, MatView::of(zxbcdt), ops::LinearKernel::Training, bias);
    const int64_t zx = zxbcdt.shape()[1], k = W.shape()[1];
    ops::linear(u, W.view(0, {zx, k}), MatView::of(zxbcdt), ops::LinearKernel::Training);
    ops::linear(u, W.view(zx * k, {W.shape()[0] - zx, k}), MatView::of(dt), ops::LinearKernel::Training);
  }
  Projections split(const ModelConfig& c) {
    if (!dt.defined()) return mamba2::split(MatView::of(zxbcdt), c);
    const MatView v = MatView::of(zxbcdt);
    return {v.cols_slice(0, c.d_inner()), v.cols_slice(c.d_inner(), c.conv_dim()), MatView::of(dt)};
  }
};

// The bytes a layer saves whatever Recompute says: the residual, in_proj's output and the scan
// output (Saved's residual, zxbcdt, y).
int64_t saved_bytes_a_layer(const ModelConfig& c, int64_t tokens, DType compute) {
  const int64_t f32 = int64_t(sizeof(float)), y_es = int64_t(dtype_size(scan_out_dtype(c, compute)));
  const DType zt = zxbcdt_dtype(c, compute);
  const int64_t in_proj = zt == DType::F32 ? c.d_in_proj() * f32
                                           : (c.d_in_proj() - c.nheads()) * int64_t(dtype_size(zt)) + c.nheads() * f32;
  return tokens * (c.d_model * f32 + in_proj + c.d_inner() * y_es);
}

// The bytes a layer keeps beyond those when the backward recomputes nothing (Saved's u, xbc,
// gated; Mamba1Mixer::kept).
int64_t kept_bytes_a_layer(const ModelConfig& c, int64_t tokens, DType compute) {
  const int64_t es = int64_t(dtype_size(compute)), f32 = int64_t(sizeof(float));
  const int64_t conv_es = int64_t(dtype_size(conv_out_dtype(c, compute)));
  const int64_t common = tokens * c.d_model * es + tokens * c.conv_dim() * conv_es;
  if (!c.mamba1()) return common + tokens * c.d_inner() * es;
  const int64_t normed = c.mixer_norms ? tokens * c.x_proj_rows() * f32 : 0;
  return common + tokens * (c.x_proj_rows() + c.d_inner()) * f32 + normed;
}

// Auto: keep on the GPU while all that the layers save, the kept tensors included, takes at most
// half of its memory; the rest is left to the weights, their gradients and moments (24 GB for the
// 1.3b) and the step's scratch. At 8 × 2048 tokens in bf16: the 130m 8.3 GB (3.2 of them kept),
// mamba-130m 13 GB, the 1.3b 43 GB, mamba-1.4b 68 GB: all four keep on an H200 (141 GB), the
// larger two recompute on an H100 (80 GB). Recompute on the CPU, where keeping measured no faster
// (bench/RESULTS.md) and memory is tighter.
bool within_budget(const ModelConfig& c, int64_t tokens, DType compute, double extra_a_layer = 0.0) {
  const double a_layer =
      double(saved_bytes_a_layer(c, tokens, compute) + kept_bytes_a_layer(c, tokens, compute)) + extra_a_layer;
  return double(c.n_layer) * a_layer <= double(cuda::memory_bytes()) / 2.0;
}

bool keep_activations(Recompute r, const ModelConfig& c, int64_t tokens, DType compute, Device dev) {
  if (r != Recompute::Auto) return r == Recompute::No;
  if (dev != Device::CUDA) return false;
  return within_budget(c, tokens, compute);
}

// With kept activations on the GPU, Mamba-1 also keeps its scan's checkpoints (the states every 8
// tokens, 4 complex: 0.2 GB a 130m layer at 8 × 2048, sparing the backward a pass over the
// sequence, bench/RESULTS.md) while they fit Auto's budget beside the rest (mamba-1.4b's 26 GB
// do not: its backward forms them). The checkpoint rows: `rows`.
bool keep_checkpoints(bool keep, Recompute r, const ModelConfig& c, int64_t tokens, int64_t rows, DType compute,
                      Device dev) {
  if (!keep || !c.mamba1() || dev != Device::CUDA) return false;
  if (r == Recompute::No) return true;
  const double ckpt = double(rows) * double(c.ssm_state_width()) * sizeof(float);
  return within_budget(c, tokens, compute, ckpt);
}

// The batch's sequences in state slots 0, 1, ... on `dev`, for the conv and the scan.
ops::SeqBatch sequences(const ModelConfig& c, const Batch& b, Device dev) {
  std::vector<int64_t> slots(b.lengths.size());
  for (size_t s = 0; s < slots.size(); ++s) slots[s] = int64_t(s);
  return ops::SeqBatch(b.lengths, slots, c.chunk_size, dev);
}

// The conv and the scan of every sequence from a zero state (as prefill without a state). The
// scan's products in `compute` (mixed precision: bf16 / f16 on tensor cores). xbc in the compute
// dtype: the conv rounds its fp32 sums once, as the inference scan rounds its operands, and the
// backward takes the same rounded x, B and C (the gradient of what the forward computed).
void mixer_forward(const ModelConfig& c, const LayerWeights& l, const ops::SeqBatch& seqs, const Projections& pr,
                   MatView xbc, std::optional<MatView> y, DType compute) {
  const Device dev = seqs.device();
  Tensor conv_states = Tensor::zeros({seqs.count(), c.conv_state_width()}, dev);
  ops::causal_conv1d(pr.xBC, l.conv_w, l.conv_b, xbc, MatView::of(conv_states), seqs);
  if (!y) return;
  Tensor ssm_states = Tensor::zeros({seqs.count(), c.ssm_state_width()}, dev);
  const ConvOut v = split_conv(xbc, c);
  ops::ssd_scan(ssd_weights(l, c), v.x, v.B, v.C, pr.dt, *y, MatView::of(ssm_states), seqs, compute);
}

// Mamba-1's mixer in training, fp32 on either device: the conv over x, x_proj into dt_low | B | C (Falcon:
// each normed without a weight), dt_proj, the selective scan gated by silu(z); its scratch
// tensors, reused by every layer unless the backward keeps each layer's (keep_layer / use_layer);
// otherwise everything but the scan output is recomputed from in_proj's.
// In a bf16 / f16 run x_proj's and dt_proj's products (forward and backward) take TF32 tensor
// cores (`proj`): in fp32 they were a fifth of the 130m's step (bench/RESULTS.md).
struct Mamba1Mixer {
  const ModelConfig& c;
  const ops::SeqBatch& seqs;
  int64_t T;
  Device dev;
  Tensor x_dbl, dt, ones, norm_in, normed[3];  // normed: Falcon's dt_low, B, C, contiguous
  Tensor d_x_dbl, d_dt, d_xc, d_normed[3], d_norm_in, norm_w_grad;
  Tensor ckpt;  // the layer's scan checkpoints, when kept (empty: the backward forms them)
  struct Kept {
    Tensor x_dbl, dt, normed[3], ckpt;
  };
  std::vector<Kept> kept;  // per layer, when the backward keeps them
  int64_t ckpt_rows;       // > 0: keep_layer keeps the scan's checkpoints too
  ops::LinearKernel proj;  // x_proj's and dt_proj's products
  // keep: every layer gets its own x_dbl, dt and normed parts (keep_layer), no shared ones.
  Mamba1Mixer(const ModelConfig& cfg, const ops::SeqBatch& s, int64_t tokens, Device device, DType compute, bool keep,
              int64_t checkpoint_rows)
      : c(cfg), seqs(s), T(tokens), dev(device), ckpt_rows(checkpoint_rows),
        proj(compute == DType::F32 ? ops::LinearKernel::Training : ops::LinearKernel::TrainingTf32) {
    if (!keep) fresh();
    if (!c.mixer_norms) return;
    const int64_t widest = std::max(c.dt_rank, c.bc_width());
    Tensor one = Tensor::empty({widest});
    std::fill(one.data(), one.data() + one.numel(), 1.0f);
    ones = one.to(dev, DType::F32);
    norm_in = Tensor::empty({T, widest}, dev);
  }
  // x_dbl, dt and the normed parts, newly allocated.
  void fresh() {
    x_dbl = Tensor::empty({T, c.x_proj_rows()}, dev);
    dt = Tensor::empty({T, c.d_inner()}, dev);
    const int64_t widths[3] = {c.dt_rank, c.bc_width(), c.bc_width()};
    for (int i = 0; c.mixer_norms && i < 3; ++i) normed[i] = Tensor::empty({T, widths[i]}, dev);
  }
  // Before a layer's forward: fresh x_dbl, dt and normed parts, kept for its backward.
  void keep_layer() {
    fresh();
    if (ckpt_rows > 0) ckpt = Tensor::empty({ckpt_rows, c.ssm_state_width()}, dev);
    kept.push_back({x_dbl, dt, {normed[0], normed[1], normed[2]}, ckpt});
  }
  // In the backward, instead of forward(l, xz, xc, nullopt): the layer's kept tensors.
  void use_layer(size_t li) {
    x_dbl = kept[li].x_dbl;
    dt = kept[li].dt;
    for (int i = 0; i < 3; ++i) normed[i] = kept[li].normed[i];
    ckpt = kept[li].ckpt;
  }
  MatView checkpoints() { return ckpt.raw() ? MatView::of(ckpt) : MatView{}; }
  // x_dbl's three column ranges.
  MatView part(MatView m, int i) const {
    const int64_t R = c.dt_rank, bw = c.bc_width();
    return i == 0 ? m.cols_slice(0, R) : i == 1 ? m.cols_slice(R, bw) : m.cols_slice(R + bw, bw);
  }
  // The scan's dt_low, B and C: x_dbl's parts, or their normed copies.
  MatView input(int i) { return c.mixer_norms ? MatView::of(normed[i]) : part(MatView::of(x_dbl), i); }
  // norm_in's first `cols` columns, contiguous (the norm's input).
  MatView contiguous(Tensor& t, int64_t cols) const { return {t.raw(), T, cols, cols, dev, DType::F32}; }

  // xc (T, d_inner, fp32) from xz; then x_dbl, dt and (when y is given) the gated scan output.
  // x_proj and dt_proj are fp32 on every device (their inputs too; TF32 products in mixed precision).
  void forward(const LayerWeights& l, MatView xz, MatView xc, std::optional<MatView> y) {
    const int64_t di = c.d_inner();
    Tensor conv_states = Tensor::zeros({seqs.count(), c.conv_state_width()}, dev);
    ops::causal_conv1d(xz.cols_slice(0, di), l.conv_w, l.conv_b, xc, MatView::of(conv_states), seqs);
    ops::linear(xc, l.x_proj, MatView::of(x_dbl), proj);
    for (int i = 0; c.mixer_norms && i < 3; ++i)
      weightless_rmsnorm(part(MatView::of(x_dbl), i), norm_in, normed[i], ones, float(c.mixer_rms_eps));
    ops::linear(input(0), l.dt_proj, MatView::of(dt), proj);
    if (!y) return;
    Tensor ssm_states = Tensor::zeros({seqs.count(), c.ssm_state_width()}, dev);
    ops::selective_scan(selective_weights(l, c), xc, MatView::of(dt), input(1), input(2), xz.cols_slice(di, di), *y,
                        MatView::of(ssm_states), seqs, checkpoints());
  }

  // From d_y (the gated scan output's gradient), after forward(l, xz, xc, nullopt): d_xz (both
  // halves overwritten) and the layer's parameter gradients but in_proj's.
  void backward(const LayerWeights& l, LayerWeights& gl, MatView xz, MatView xc, MatView d_y, MatView d_xz) {
    const int64_t di = c.d_inner();
    if (!d_x_dbl.raw()) {
      d_x_dbl = Tensor::empty({T, c.x_proj_rows()}, dev);
      d_dt = Tensor::empty({T, di}, dev);
      d_xc = Tensor::empty({T, di}, dev);
      for (int i = 0; c.mixer_norms && i < 3; ++i) d_normed[i] = Tensor::empty(normed[i].shape(), dev);
      if (c.mixer_norms) {
        d_norm_in = Tensor::empty(norm_in.shape(), dev);
        norm_w_grad = Tensor::zeros({ones.numel()}, dev);
      }
    }
    const MatView dxd = MatView::of(d_x_dbl);
    auto d_input = [&](int i) { return c.mixer_norms ? MatView::of(d_normed[i]) : part(dxd, i); };
    const ops::SelectiveScanGrads sg{MatView::of(d_xc), MatView::of(d_dt), d_input(1), d_input(2),
                                     d_xz.cols_slice(di, di), MatView{}, gl.A_log,
                                     c.complex_scan ? &gl.A_imag : nullptr, gl.D, gl.dt_bias};
    ops::selective_scan_backward(selective_weights(l, c), xc, MatView::of(dt),
                                 input(1), input(2), xz.cols_slice(di, di), MatView{}, d_y, MatView{}, sg, seqs,
                                 checkpoints());
    ops::linear_backward(input(0), l.dt_proj, MatView::of(d_dt), d_input(0), gl.dt_proj, proj);
    for (int i = 0; c.mixer_norms && i < 3; ++i) {
      // The norm's input again (the forward's copy holds the last part), its gradient into a
      // zeroed buffer, then into x_dbl's part. The weightless norm's weight gradient is dropped.
      const MatView src = part(MatView::of(x_dbl), i), in = contiguous(norm_in, src.cols);
      const MatView d_in = contiguous(d_norm_in, src.cols);
      ops::cast(src, in);
      d_norm_in.set_zero();
      Tensor dw = norm_w_grad.prefix(src.cols);
      ops::add_rmsnorm_backward(in, ones.prefix(src.cols), MatView::of(d_normed[i]), d_in, dw,
                                float(c.mixer_rms_eps));
      ops::cast(d_in, part(dxd, i));
    }
    ops::linear_backward(xc, l.x_proj, dxd, MatView::of(d_xc), gl.x_proj, proj, /*add_dx=*/true);
    ops::causal_conv1d_backward(xz.cols_slice(0, di), l.conv_w, l.conv_b, MatView{}, MatView::of(d_xc),
                                d_xz.cols_slice(0, di), gl.conv_w, gl.conv_b, seqs);
  }
};

// Weights on one device, fp32 but for the projection matrices, which may be bf16 or f16 on the GPU
// (compute_weights); returns the device and the matrices' dtype.
std::pair<Device, DType> check_weights(const ModelWeights& w) {
  const Device dev = w.embedding.device();
  const DType cdt = w.embedding.dtype();
  if (!(cdt == DType::F32 || (dev == Device::CUDA && (cdt == DType::BF16 || cdt == DType::F16))))
    fail("[model] training computes in F32 (on the GPU also in BF16 or F16), not {}", dtype_name(cdt));
  auto check = [&](const Tensor& t, DType want) {
    if (t.device() != dev || t.dtype() != want)
      fail("[model] training takes its weights on one device, fp32 but for the projection matrices ({} here): got {} on "
           "the {} beside an embedding on the {}",
           dtype_name(cdt), dtype_name(t.dtype()), device_name(t.device()), device_name(dev));
  };
  for (const LayerWeights& l : w.layers)
    for (const Tensor* t : const_cast<LayerWeights&>(l).present())
      check(*t, t == &l.in_proj || t == &l.out_proj ? cdt : DType::F32);
  check(w.norm_f, DType::F32);
  check(w.lm_head, cdt);
  return {dev, cdt};
}

void check_gradients(const Gradients& g, const ModelWeights& w) {
  bool ok = g.embedding.device() == w.embedding.device() && g.layers.size() == w.layers.size() &&
            g.embedding.shape() == w.embedding.shape() && g.norm_f.shape() == w.norm_f.shape() &&
            g.lm_head.shape() == w.lm_head.shape() &&
            (g.lm_head.raw() == g.embedding.raw()) == (w.lm_head.raw() == w.embedding.raw());
  for (size_t i = 0; ok && i < w.layers.size(); ++i)
    for (Tensor LayerWeights::*m : kLayerTensors)
      ok = ok && (g.layers[i].*m).shape() == (w.layers[i].*m).shape() &&
           bool((g.layers[i].*m).raw()) == bool((w.layers[i].*m).raw());
  if (!ok) fail("[model] the gradients were made for another model (shapes or tying differ)");
}

// The training pass. Without grads: the loss only (nothing is kept per layer).
double run(const ModelConfig& c, const ModelWeights& w, std::span<const int32_t> ids, std::span<const int64_t> lengths,
           Gradients* g, double grad_scale, const GradsReady& ready, Recompute recompute) {
  c.validate("model");
  const auto [dev, cdt] = check_weights(w);
  const Batch b = make_batch(ids, lengths);
  const ops::SeqBatch seqs = sequences(c, b, dev);
  if (g) check_gradients(*g, w);
  const int64_t T = int64_t(ids.size()), D = c.d_model, V = c.vocab_padded(), n_layer = c.n_layer;
  const float eps = float(c.norm_eps);

  // Forward.
  Saved sv;
  const bool keep = g && keep_activations(recompute, c, T, cdt, dev);
  // The projections' inputs (u, gated, normed_f) and Mamba2's conv output (the SSD scan's operands,
  // forward and backward) in the matrices' dtype; everything else fp32.
  // u, xbc and gated are every layer's scratch, or with `keep` each layer's own (Saved).
  Tensor residual = Tensor::empty({T, D}, dev), h = Tensor::empty({T, D}, dev), u, xbc, gated;
  const DType xbc_dtype = conv_out_dtype(c, cdt);
  if (!keep) {
    u = Tensor::empty({T, D}, dev, cdt);
    xbc = Tensor::empty({T, c.conv_dim()}, dev, xbc_dtype);
    gated = Tensor::empty({T, c.d_inner()}, dev, cdt);
  }
  std::optional<Mamba1Mixer> m1;
  if (c.mamba1()) {
    const int64_t rows = dev == Device::CUDA ? ops::selective_scan_checkpoint_rows(selective_weights(w.layers[0], c), seqs) : 0;
    m1.emplace(c, seqs, T, dev, cdt, keep, keep_checkpoints(keep, recompute, c, T, rows, cdt, dev) ? rows : 0);
  }
  // The scan writes its output rounded to scan_out_dtype (GPU), and that is what the backward
  // keeps: Mamba-1's out_proj input; Mamba2's gated norm input (as mamba_ssm's bf16 chunk scan
  // hands it on).
  const DType y_dtype = scan_out_dtype(c, cdt);
  const bool m1_narrow = m1 && y_dtype != DType::F32;
  InProj in_one;
  Tensor y_one;
  if (!g) in_one = InProj::empty(c, T, dev, cdt);
  if (!g && !m1_narrow) y_one = Tensor::empty({T, c.d_inner()}, dev, y_dtype);
  const auto bias = [&](const Tensor& b) { return c.proj_bias ? &b : nullptr; };
  ops::embedding(w.embedding, ids, MatView::of(residual));
  for (int64_t li = 0; li < n_layer; ++li) {
    const LayerWeights& l = w.layers[size_t(li)];
    if (keep) {
      u = Tensor::empty({T, D}, dev, cdt);
      sv.u.push_back(u);
      xbc = Tensor::empty({T, c.conv_dim()}, dev, xbc_dtype);
      sv.xbc.push_back(xbc);
      if (m1) {
        m1->keep_layer();
      } else {
        gated = Tensor::empty({T, c.d_inner()}, dev, cdt);
        sv.gated.push_back(gated);
      }
    }
    // The sum into a buffer of its own where the backward keeps each layer's (no copy of it).
    if (g && li > 0) {
      Tensor sum = Tensor::empty({T, D}, dev);
      ops::add_rmsnorm(MatView::of(residual), MatView::of(h), l.norm, MatView::of(u), eps, MatView::of(sum));
      residual = sum;
    } else {
      ops::add_rmsnorm(MatView::of(residual), li == 0 ? MatView{} : MatView::of(h), l.norm, MatView::of(u), eps);
    }
    InProj in = g ? InProj::empty(c, T, dev, cdt) : in_one;
    Tensor y = g ? Tensor::empty({T, c.d_inner()}, dev, y_dtype) : m1_narrow ? gated : y_one;
    if (g) sv.residual.push_back(residual);
    in.forward(MatView::of(u), l.in_proj, bias(l.in_proj_b));
    if (m1) {
      m1->forward(l, MatView::of(in.zxbcdt), MatView::of(xbc), MatView::of(y));
      ops::linear(MatView::of(y), l.out_proj, MatView::of(h), ops::LinearKernel::Training, bias(l.out_proj_b));
    } else {
      const Projections pr = in.split(c);
      mixer_forward(c, l, seqs, pr, MatView::of(xbc), MatView::of(y), cdt);
      ops::gated_rmsnorm(MatView::of(y), pr.z, l.gate_norm, MatView::of(gated), c.ngroups, eps);
      ops::linear(MatView::of(gated), l.out_proj, MatView::of(h), ops::LinearKernel::Training);
    }
    if (g) {
      sv.zxbcdt.push_back(in.zxbcdt);
      sv.dt.push_back(in.dt);
      sv.y.push_back(y);
    }
  }
  sv.normed_f = Tensor::empty({T, D}, dev, cdt);
  sv.residual_f = g ? Tensor::empty({T, D}, dev) : residual;
  ops::add_rmsnorm(MatView::of(residual), MatView::of(h), w.norm_f, MatView::of(sv.normed_f), eps,
                   MatView::of(sv.residual_f));

  // Head and loss over the predicting rows, in blocks; d_normed_f gets the head's gradient.
  const int64_t npred = int64_t(b.pred_rows.size());
  const float scale = float(grad_scale / double(npred));
  const int64_t block_elements = dev == Device::CUDA ? kHeadBlockElementsCuda : kHeadBlockElementsCpu;
  const int64_t block = std::clamp<int64_t>(block_elements / std::max<int64_t>(V, 1), 1, npred);
  Tensor rows = Tensor::empty({block, D}, dev), logits = Tensor::empty({block, V}, dev);
  Tensor d_rows = Tensor::empty({block, D}, dev), rows_c = cdt == DType::F32 ? rows : Tensor::empty({block, D}, dev, cdt);
  // In mixed precision the loss's gradient is written rounded, as the head's backward takes it.
  Tensor d_logits = g && cdt != DType::F32 ? Tensor::empty({block, V}, dev, cdt) : logits;
  Tensor d_normed_f;
  if (g) d_normed_f = Tensor::zeros({T, D}, dev);
  // The blocks' loss sums add up on the loss's device; the GPU's is read once the backward is
  // launched (a read a block drained the GPU's queue 7 times a 130m step).
  double loss_host = 0.0;
  double* loss_sum = &loss_host;
  std::shared_ptr<void> loss_dev;
  if (dev == Device::CUDA) {
    loss_dev = cuda::allocate(sizeof(double), "loss");
    cuda::fill_zero(loss_dev.get(), sizeof(double));
    loss_sum = static_cast<double*>(loss_dev.get());
  }
  std::optional<cuda::DeviceRead> loss_read;
  const auto loss = [&] {
    if (loss_read) loss_read->into(&loss_host);
    return loss_host / double(npred);
  };
  for (int64_t r0 = 0; r0 < npred; r0 += block) {
    const int64_t n = std::min(block, npred - r0);
    // The block's predicting rows gathered (and their gradients scattered back) as an embedding's.
    const std::span<const int32_t> picked(b.pred_rows.data() + r0, size_t(n));
    const MatView x = MatView::of(rows_c).rows_slice(0, n), lg = MatView::of(logits).rows_slice(0, n);
    ops::embedding(sv.normed_f, picked, MatView::of(rows).rows_slice(0, n));  // fp32, exact
    if (cdt != DType::F32) ops::cast(MatView::of(rows).rows_slice(0, n), x);
    ops::linear(x, w.lm_head, lg, ops::LinearKernel::Training);
    const std::span<const int32_t> tg(b.targets.data() + r0, size_t(n));
    const MatView dlg = MatView::of(d_logits).rows_slice(0, n);
    ops::cross_entropy(lg, tg, g ? dlg : MatView{}, scale, loss_sum);
    if (!g) continue;
    const MatView dx = MatView::of(d_rows).rows_slice(0, n);
    ops::linear_backward(x, w.lm_head, dlg, dx, g->lm_head);
    ops::embedding_backward(picked, dx, d_normed_f);
  }
  if (loss_dev) loss_read.emplace(loss_dev.get(), sizeof(double));
  if (!g) return loss();

  // Backward. d_res: the gradient of the residual stream at the current depth.
  Tensor d_res = Tensor::zeros({T, D}, dev);
  ops::add_rmsnorm_backward(MatView::of(sv.residual_f), w.norm_f, MatView::of(d_normed_f), MatView::of(d_res),
                            g->norm_f, eps);
  // Mamba2's d_y feeds the SSD backward alone, which takes it with x, B and C in the compute dtype;
  // out_proj's backward writes d_gated in y's dtype for the gated norm's backward, which takes them
  // alike.
  Tensor d_gated = Tensor::empty({T, c.d_inner()}, dev, y_dtype);
  Tensor d_y = Tensor::empty({T, c.d_inner()}, dev, xbc_dtype);
  // d_zxbcdt feeds in_proj's backward alone: the ops that write it round it to the compute dtype
  // once, in place of the cast the product would make; fp32 when an in_proj bias sums it.
  Tensor d_xbc = Tensor::empty({T, c.conv_dim()}, dev),
         d_zxbcdt = Tensor::empty({T, c.d_in_proj()}, dev, c.proj_bias ? DType::F32 : cdt);
  Tensor d_u = Tensor::empty({T, D}, dev);
  for (int64_t li = n_layer - 1; li >= 0; --li) {
    const LayerWeights& l = w.layers[size_t(li)];
    LayerWeights& gl = g->layers[size_t(li)];
    const MatView res = MatView::of(sv.residual[size_t(li)]), y = MatView::of(sv.y[size_t(li)]);
    // Recomputed unless kept: the normed input, the conv output, and Mamba2's gated norm output or
    // Mamba-1's x_proj and dt_proj outputs.
    if (keep) u = sv.u[size_t(li)];
    else ops::add_rmsnorm(res, MatView{}, l.norm, MatView::of(u), eps);
    if (m1) {
      const MatView xz = MatView::of(sv.zxbcdt[size_t(li)]);
      if (keep) {
        xbc = sv.xbc[size_t(li)];
        m1->use_layer(size_t(li));
      } else {
        m1->forward(l, xz, MatView::of(xbc), std::nullopt);
      }
      if (c.proj_bias) ops::bias_backward(MatView::of(d_res), gl.out_proj_b);
      ops::linear_backward(y, l.out_proj, MatView::of(d_res), MatView::of(d_y), gl.out_proj);
      m1->backward(l, gl, xz, MatView::of(xbc), MatView::of(d_y), MatView::of(d_zxbcdt));
      if (c.proj_bias) ops::bias_backward(MatView::of(d_zxbcdt), gl.in_proj_b);
      ops::linear_backward(MatView::of(u), l.in_proj, MatView::of(d_zxbcdt), MatView::of(d_u), gl.in_proj);
      ops::add_rmsnorm_backward(res, l.norm, MatView::of(d_u), MatView::of(d_res), gl.norm, eps);
      if (ready) ready(li);
      continue;
    }
    const Projections pr = InProj{sv.zxbcdt[size_t(li)], sv.dt[size_t(li)]}.split(c);
    const Projections dpr = split(MatView::of(d_zxbcdt), c);
    if (keep) {
      xbc = sv.xbc[size_t(li)];
      gated = sv.gated[size_t(li)];
    } else {
      mixer_forward(c, l, seqs, pr, MatView::of(xbc), std::nullopt, cdt);
      ops::gated_rmsnorm(y, pr.z, l.gate_norm, MatView::of(gated), c.ngroups, eps);
    }

    ops::linear_backward(MatView::of(gated), l.out_proj, MatView::of(d_res), MatView::of(d_gated), gl.out_proj);
    ops::gated_rmsnorm_backward(y, pr.z, l.gate_norm, MatView::of(d_gated), MatView::of(d_y), dpr.z, gl.gate_norm,
                                c.ngroups, eps);
    const ops::SsdWeights sw = ssd_weights(l, c);
    const ConvOut v = split_conv(MatView::of(xbc), c), dv = split_conv(MatView::of(d_xbc), c);
    const ops::SsdGrads sg{dv.x, dv.B, dv.C, dpr.dt, MatView{}, gl.dt_bias, gl.A_log, gl.D};
    ops::ssd_scan_backward(sw, v.x, v.B, v.C, pr.dt, MatView{}, MatView::of(d_y), MatView{}, sg, seqs, cdt);
    ops::causal_conv1d_backward(pr.xBC, l.conv_w, l.conv_b, MatView{}, MatView::of(d_xbc), dpr.xBC, gl.conv_w,
                                gl.conv_b, seqs);
    ops::linear_backward(MatView::of(u), l.in_proj, MatView::of(d_zxbcdt), MatView::of(d_u), gl.in_proj);
    ops::add_rmsnorm_backward(res, l.norm, MatView::of(d_u), MatView::of(d_res), gl.norm, eps);
    if (ready) ready(li);
  }
  ops::embedding_backward(ids, MatView::of(d_res), g->embedding);
  if (ready) ready(-1);
  return loss();
}

}  // namespace

ModelWeights compute_weights(const ModelWeights& masters, DType dtype) {
  if (dtype == DType::F32) return masters;
  if (masters.embedding.device() != Device::CUDA || !(dtype == DType::BF16 || dtype == DType::F16))
    fail("[model] mixed precision runs on the GPU in BF16 or F16, not {} on the {}", dtype_name(dtype),
         device_name(masters.embedding.device()));
  ModelWeights v = masters;  // shares every tensor; the matrices are replaced below
  auto narrow = [&](const Tensor& t) {
    Tensor r = Tensor::empty(t.shape(), t.device(), dtype);
    ops::cast(MatView::of(const_cast<Tensor&>(t)), MatView::of(r));
    return r;
  };
  v.embedding = narrow(masters.embedding);
  v.lm_head = masters.lm_head.raw() == masters.embedding.raw() ? v.embedding : narrow(masters.lm_head);
  for (size_t i = 0; i < v.layers.size(); ++i) {
    v.layers[i].in_proj = narrow(masters.layers[i].in_proj);
    v.layers[i].out_proj = narrow(masters.layers[i].out_proj);
  }
  return v;
}

Gradients make_gradients(const ModelWeights& w) {
  // fp32 whatever w's dtype, each a view into one buffer on a 256-byte boundary: zero_gradients
  // clears them with one memset (one per tensor was ~240 a 130m step, ~0.7 ms on the H200).
  const bool tied = w.lm_head.raw() == w.embedding.raw();
  const auto span = [](const Tensor& t) { return (t.numel() + 63) / 64 * 64; };
  int64_t total = span(w.embedding) + span(w.norm_f) + (tied ? 0 : span(w.lm_head));
  for (const LayerWeights& l : w.layers)
    l.map([&](const Tensor& t) { return total += span(t), Tensor(); });
  Gradients g;
  g.storage = Tensor::zeros({total}, w.embedding.device());
  int64_t at = 0;
  const auto like = [&](const Tensor& t) {
    Tensor v = g.storage.view(at, t.shape());
    at += span(t);
    return v;
  };
  g.embedding = like(w.embedding);
  for (const LayerWeights& l : w.layers)
    g.layers.push_back(l.map(like));
  g.norm_f = like(w.norm_f);
  g.lm_head = tied ? g.embedding : like(w.lm_head);
  g.embedding_name = w.embedding_name;
  return g;
}

void zero_gradients(Gradients& g) {
  if (!g.storage.raw()) fail("[model] zero_gradients: gradients not made by make_gradients (no common buffer)");
  g.storage.set_zero();
}

double lm_loss(const ModelConfig& config, const ModelWeights& weights, std::span<const int32_t> ids,
               std::span<const int64_t> lengths) {
  return run(config, weights, ids, lengths, nullptr, 1.0, {}, Recompute::Auto);
}

double lm_loss_and_grad(const ModelConfig& config, const ModelWeights& weights, std::span<const int32_t> ids,
                        std::span<const int64_t> lengths, Gradients& grads, double grad_scale, const GradsReady& ready,
                        Recompute recompute) {
  return run(config, weights, ids, lengths, &grads, grad_scale, ready, recompute);
}

}  // namespace mamba2
