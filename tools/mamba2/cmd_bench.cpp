// bench: prefill and decode throughput and peak memory of a model on this machine.
#include <sys/resource.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <string_view>

#include "commands.h"
#include "cuda/runtime.h"
#include "mamba2/error.h"
#include "mamba2/model.h"
#include "model/inference_state.h"
#include "model/weights.h"
#include "ops/ops.h"

namespace mamba2::cli {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// `shape` as positive integers separated by 'x', as many as `form` names (e.g. "MxNxK"), or an
// error naming the flag and the form.
std::vector<int64_t> parse_dims(const std::string& shape, const char* flag, std::string_view form) {
  std::vector<int64_t> d;
  for (size_t pos = 0; pos <= shape.size();) {
    size_t end = shape.find('x', pos);
    if (end == std::string::npos) end = shape.size();
    int64_t v = 0;
    const auto [p, ec] = std::from_chars(shape.data() + pos, shape.data() + end, v);
    if (end == pos || ec != std::errc() || p != shape.data() + end) fail("[bench] {}: '{}' is not {}", flag, shape, form);
    d.push_back(v);
    pos = end + 1;
  }
  if (d.size() != size_t(std::count(form.begin(), form.end(), 'x')) + 1)
    fail("[bench] {}: '{}' is not {}", flag, shape, form);
  for (int64_t v : d)
    if (v <= 0) fail("[bench] {}: '{}' has a dimension that is not positive", flag, shape);
  return d;
}

// The median of `rounds` timed calls of f after a warm-up call, in ms (the GPU waited for).
double median_ms(Device dev, int64_t rounds, const std::function<void()>& f) {
  f();
  std::vector<double> ms;
  for (int64_t r = 0; r < rounds; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    if (dev == Device::CUDA) cuda::synchronize();
    ms.push_back(1e3 * seconds_since(t0));
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// The chunked SSD scan alone on random inputs, `d` = BxLxHxPxN (ngroups 1, chunks of 256): the
// median of `repeats` timed runs after a warm-up. x, B and C in the dtype the model gives the scan
// (the compute dtype on the GPU, as mamba_ssm's scan takes them), dt and y in fp32.
// With `grad`, the backward too and the fp32 forward and backward beside them: x, B, C and d_y in
// the products' dtype and y and d_dt written in it, as training runs them (and as mamba_ssm's
// bf16 forward and backward take and give them; d_x, d_B and d_C stay fp32, as training's conv
// backward reads them).
void bench_ssd(const std::vector<int64_t>& d, Device dev, DType dtype, int64_t repeats, bool grad) {
  const int64_t b = d[0], L = d[1], H = d[2], P = d[3], N = d[4], T = b * L;
  const DType in = dev == Device::CUDA ? dtype : DType::F32;  // the CPU's scan is fp32 throughout
  std::mt19937 rng(1);
  auto random = [&](Shape s, float lo, float hi, DType as = DType::F32) {
    Tensor t = Tensor::empty(std::move(s));
    std::uniform_real_distribution<float> u(lo, hi);
    for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = u(rng);
    return t.to(dev, as);
  };
  Tensor x = random({T, H * P}, -1, 1, in), B = random({T, N}, -1, 1, in), C = random({T, N}, -1, 1, in),
         dt = random({T, H}, -3, 0), y = Tensor::empty({T, H * P}, dev);
  Tensor dt_bias = random({H}, -1, 0), A_log = random({H}, 0, 2.7f), D = random({H}, 0, 1);
  Tensor states = Tensor::zeros({b, H * P * N}, dev);
  const ops::SsdWeights w{dt_bias, A_log, D, P, 1, N, 0.0, std::numeric_limits<double>::infinity()};
  std::vector<int64_t> lengths(static_cast<size_t>(b), L), slots(static_cast<size_t>(b));
  for (int64_t i = 0; i < b; ++i) slots[size_t(i)] = i;
  const ops::SeqBatch seqs(lengths, slots, 256, dev);
  const int64_t rounds = std::max<int64_t>(repeats, 5);
  auto median = [&](const std::function<void()>& f) { return median_ms(dev, rounds, f); };
  auto forward = [&](const Tensor& xs, const Tensor& Bs, const Tensor& Cs, Tensor& ys, DType compute) {
    return [&, compute] {
      ops::ssd_scan(w, MatView::of(const_cast<Tensor&>(xs)), MatView::of(const_cast<Tensor&>(Bs)),
                    MatView::of(const_cast<Tensor&>(Cs)), MatView::of(dt), MatView::of(ys), MatView::of(states), seqs,
                    compute);
    };
  };
  fmt::print("ssd scan b{} L{} H{} P{} N{} (x, B, C in {}, y fp32, {} products, chunks of 256): {:.3f} ms (median of {})\n",
             b, L, H, P, N, dtype_name(in), dtype_name(in), median(forward(x, B, C, y, dtype)), rounds);
  if (!grad) return;
  const Tensor x32 = x.to(dev, DType::F32), B32 = B.to(dev, DType::F32), C32 = C.to(dev, DType::F32);
  Tensor d_y = random({T, H * P}, -1, 1), d_x = Tensor::empty({T, H * P}, dev), d_B = Tensor::empty({T, N}, dev);
  Tensor d_C = Tensor::empty({T, N}, dev), d_bias = Tensor::zeros({H}, dev);
  Tensor d_A = Tensor::zeros({H}, dev), d_D = Tensor::zeros({H}, dev);
  const Tensor d_y_in = d_y.to(dev, in);
  // As training runs them: the products in fp32, or (GPU) in the compute dtype with x, B, C and d_y
  // in it, and y and d_dt written in it (the gated norm and in_proj's backward read them so).
  auto both = [&](DType compute) {
    const bool f32 = compute == DType::F32;
    const Tensor &xs = f32 ? x32 : x, &Bs = f32 ? B32 : B, &Cs = f32 ? C32 : C, &dys = f32 ? d_y : d_y_in;
    Tensor ys = Tensor::empty({T, H * P}, dev, compute), d_dt = Tensor::empty({T, H}, dev, compute);
    const ops::SsdGrads g{MatView::of(d_x), MatView::of(d_B), MatView::of(d_C), MatView::of(d_dt), MatView{},
                          d_bias, d_A, d_D};
    const auto fwd_call = forward(xs, Bs, Cs, ys, compute);
    const auto bwd_call = [&] {
      ops::ssd_scan_backward(w, MatView::of(const_cast<Tensor&>(xs)), MatView::of(const_cast<Tensor&>(Bs)),
                             MatView::of(const_cast<Tensor&>(Cs)), MatView::of(dt), MatView{},
                             MatView::of(const_cast<Tensor&>(dys)), MatView{}, g, seqs, compute);
    };
    const double fwd = median(fwd_call), bwd = median(bwd_call);
    fmt::print("ssd scan b{} L{} H{} P{} N{}, {} products: forward {:.3f} ms, backward {:.3f} ms, both {:.3f} ms "
               "(medians of {})\n",
               b, L, H, P, N, dtype_name(compute), fwd, bwd, fwd + bwd, rounds);
    if (dev != Device::CUDA) return;
    // The medians are the host's clock a call, the first launch's and the final wait's latency in
    // them; triton's do_bench (mamba_ssm's figures) reads the GPU's events with launches queued
    // ahead. This is that measure: pairs back to back, an event after each.
    double pairs_ms = 0;
    {
      cuda::StepTimer timer;
      for (int64_t r = 0; r < rounds; ++r) {
        fwd_call();
        bwd_call();
        cuda::mark("pair");
      }
      for (const auto& [name, ms] : timer.totals()) pairs_ms += ms;
    }
    fmt::print("  forward + backward back to back on the GPU's clock: {:.3f} ms a pair (mean of {})\n",
               pairs_ms / double(rounds), rounds);
  };
  both(DType::F32);
  if (dtype != DType::F32) both(dtype);
}

// The Mamba-1 selective scan alone on random inputs, `d` = BxDxLxN (channels D, d_state N), real
// or complex, gated by z, with the model's fp32 operands: forward, backward and both (medians). On
// the GPU as training runs it: the forward leaves the checkpoints the backward takes; the backward
// forming its own (training past Auto's memory budget) is timed too.
void bench_selective(const std::vector<int64_t>& d, Device dev, bool complex, int64_t repeats) {
  const int64_t b = d[0], Dc = d[1], L = d[2], N = d[3], T = b * L, bw = complex ? 2 * N : N;
  std::mt19937 rng(1);
  auto random = [&](Shape s, float lo, float hi) {
    Tensor t = Tensor::empty(std::move(s));
    std::uniform_real_distribution<float> u(lo, hi);
    for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = u(rng);
    return t.to(dev, DType::F32);
  };
  Tensor x = random({T, Dc}, -1, 1), dt = random({T, Dc}, -1, 1), B = random({T, bw}, -1, 1), C = random({T, bw}, -1, 1);
  Tensor z = random({T, Dc}, -2, 2), y = Tensor::empty({T, Dc}, dev), states = Tensor::zeros({b, Dc * bw}, dev);
  Tensor A_log = random({Dc, N}, 0, 2.7f), A_imag = random({Dc, N}, 0, 50), D = random({Dc}, 0, 1);
  Tensor dt_bias = random({Dc}, -4, -2);
  const ops::SelectiveScanWeights w{A_log, complex ? &A_imag : nullptr, D, dt_bias};
  std::vector<int64_t> lengths(static_cast<size_t>(b), L), slots(static_cast<size_t>(b));
  for (int64_t i = 0; i < b; ++i) slots[size_t(i)] = i;
  const ops::SeqBatch seqs(lengths, slots, 256, dev);
  const int64_t rounds = std::max<int64_t>(repeats, 5);
  Tensor ckpt;
  if (dev == Device::CUDA) ckpt = Tensor::empty({ops::selective_scan_checkpoint_rows(w, seqs), Dc * bw}, dev);
  const MatView checkpoints = ckpt.raw() ? MatView::of(ckpt) : MatView{};
  const double fwd = median_ms(dev, rounds, [&] {
    states.set_zero();
    ops::selective_scan(w, MatView::of(x), MatView::of(dt), MatView::of(B), MatView::of(C), MatView::of(z),
                        MatView::of(y), MatView::of(states), seqs, checkpoints);
  });
  Tensor d_y = random({T, Dc}, -1, 1), d_x = Tensor::empty({T, Dc}, dev), d_dt = Tensor::empty({T, Dc}, dev);
  Tensor d_B = Tensor::empty({T, bw}, dev), d_C = Tensor::empty({T, bw}, dev), d_z = Tensor::empty({T, Dc}, dev);
  Tensor d_A = Tensor::zeros({Dc, N}, dev), d_Ai = Tensor::zeros({Dc, N}, dev), d_D = Tensor::zeros({Dc}, dev);
  Tensor d_bias = Tensor::zeros({Dc}, dev);
  const ops::SelectiveScanGrads g{MatView::of(d_x), MatView::of(d_dt), MatView::of(d_B), MatView::of(d_C),
                                  MatView::of(d_z), MatView{}, d_A, complex ? &d_Ai : nullptr, d_D, d_bias};
  const auto backward = [&](MatView ck) {
    return median_ms(dev, rounds, [&] {
      ops::selective_scan_backward(w, MatView::of(x), MatView::of(dt), MatView::of(B), MatView::of(C),
                                   MatView::of(z), MatView{}, MatView::of(d_y), MatView{}, g, seqs, ck);
    });
  };
  const double bwd = backward(checkpoints);
  fmt::print("selective scan b{} D{} L{} N{} {} (fp32, gated): forward {:.3f} ms, backward {:.3f} ms, both {:.3f} ms "
             "(medians of {})",
             b, Dc, L, N, complex ? "complex" : "real", fwd, bwd, fwd + bwd, rounds);
  if (checkpoints.ptr) fmt::print("; backward forming its checkpoints {:.3f} ms", backward(MatView{}));
  fmt::print("\n");
}

// How fast this machine reads `bytes` laid out in one buffer, with the threads the model uses: the
// best of 7 sums over it after a first pass. Measured right before the decode figures it is the
// floor of, over as many bytes as a step reads: the machine's bandwidth swings between phases, and
// a working set that fits its last-level cache (260 MiB on some of the development machines) is
// read from there, as the model's weights then are.
double read_gbps(double bytes) {
  const size_t n = std::max<size_t>(size_t(bytes / sizeof(float)), 1 << 16);
  std::unique_ptr<float[]> buf(new float[n]);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) buf[i] = float(i & 7);
  double best = 1e30;
  [[maybe_unused]] volatile float sink = 0.0f;  // the sums are used: not optimised away
  for (int r = 0; r < 8; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    float total = 0.0f;
#pragma omp parallel reduction(+ : total)
    {
      // 64 independent sums: vectors of them, several in flight (one chain would bound the rate).
      float acc[64] = {};
#pragma omp for schedule(static)
      for (size_t i = 0; i < n / 64; ++i)
        for (int j = 0; j < 64; ++j) acc[j] += buf[i * 64 + size_t(j)];
      for (float a : acc) total += a;
    }
    if (r > 0) best = std::min(best, seconds_since(t0));
    sink = total;
  }
  return double(n * sizeof(float)) / best * 1e-9;
}

// Bytes a decode step of `batch` sequences must move at least on the CPU: every weight the step
// reads once (the embedding's few rows aside; a tied head is the embedding, read whole), and each
// sequence's conv and SSM states read and written.
double decode_step_bytes(const Model& m, int64_t batch) {
  const ModelWeights& w = m.weights();
  double bytes = double(w.norm_f.nbytes() + w.lm_head.nbytes());
  for (const LayerWeights& l : w.layers)
    for (const Tensor* t : const_cast<LayerWeights&>(l).present()) bytes += double(t->nbytes());
  const ModelConfig& c = m.config();
  const double state = double(c.n_layer * (c.conv_state_width() + c.ssm_state_width())) * sizeof(float);
  return bytes + 2.0 * state * double(batch);
}

// The projection alone, `d` = MxNxK (x (M, K), W (N, K), random): each kernel kind called 200
// times back to back (queued, so launch overhead hides behind the kernels), cycling over copies
// of W that together exceed the GPU's L2 cache (each call reads its weights from memory, as in a
// model's forward); the median over `repeats` of the time per call and the weight bytes per
// second it makes.
void bench_linear(const std::vector<int64_t>& d, Device dev, DType dtype, int64_t repeats) {
  const int64_t m = d[0], n = d[1], k = d[2];
  std::mt19937 rng(2);
  auto random = [&](Shape s, DType as) {
    Tensor t = Tensor::empty(std::move(s));
    std::uniform_real_distribution<float> u(-1, 1);
    for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = u(rng);
    return t.to(dev, as);
  };
  // The GPU's projection inputs are in the compute dtype, the CPU's in fp32 (whatever the weights').
  Tensor x = random({m, k}, dev == Device::CPU ? DType::F32 : dtype), y = Tensor::empty({m, n}, dev);
  std::vector<Tensor> Ws{random({n, k}, dtype)};
  const int64_t bytes = Ws[0].nbytes(), copies = std::clamp<int64_t>((int64_t(512) << 20) / bytes + 1, 1, 64);
  if (dev == Device::CUDA)
    while (int64_t(Ws.size()) < copies) Ws.push_back(Ws[0].to(Device::CPU, dtype).to(dev, dtype));
  constexpr int kCalls = 200;
  for (auto kind : {ops::LinearKernel::Decode, ops::LinearKernel::Prefill}) {
    auto run = [&] {
      for (int i = 0; i < kCalls; ++i) ops::linear(MatView::of(x), Ws[size_t(i) % Ws.size()], MatView::of(y), kind);
      if (dev == Device::CUDA) cuda::synchronize();
    };
    run();
    std::vector<double> us;
    for (int64_t r = 0; r < std::max<int64_t>(repeats, 3); ++r) {
      auto t0 = std::chrono::steady_clock::now();
      run();
      us.push_back(1e6 * seconds_since(t0) / kCalls);
    }
    std::sort(us.begin(), us.end());
    const double t = us[us.size() / 2];
    fmt::print("linear {}x{}x{} {} ({} kernel): {:.2f} us per call, weights at {:.0f} GB/s\n", m, n, k,
               dtype_name(dtype), kind == ops::LinearKernel::Decode ? "decode" : "prefill", t,
               double(bytes) / t * 1e-3);
  }
}

}  // namespace

void add_bench(CLI::App& app) {
  auto* sub = app.add_subcommand("bench", "Measure prefill and decode tokens/s and peak memory");
  struct Opts {
    std::string model, prefill = "512,2048", decode_batches = "1,8";
    std::vector<std::string> ssd, linear, selective, selective_complex;
    bool ssd_grad = false;
    int64_t decode_tokens = 64, repeats = 3;
    bool decode_profile = false;
    int threads = 0;
    Placement placement;
  };
  auto o = std::make_shared<Opts>();
  sub->add_option("--model", o->model, "Model folder or GGUF file");
  sub->add_option("--ssd", o->ssd, "Also time the SSD scan alone on shapes BxLxHxPxN (repeatable)");
  sub->add_flag("--ssd-grad", o->ssd_grad,
                "With --ssd: its backward too, as training runs it (in fp32, and in --dtype); on the GPU also "
                "forward + backward back to back on the GPU's clock");
  sub->add_option("--linear", o->linear, "Also time a projection alone on shapes MxNxK (repeatable)");
  sub->add_option("--selective", o->selective,
                  "Also time the Mamba-1 selective scan alone, forward and backward, on shapes BxDxLxN (repeatable)");
  sub->add_option("--selective-complex", o->selective_complex, "The same for the complex scan (repeatable)");
  sub->add_option("--prefill", o->prefill, "Prompt lengths to time (batch 1)")->capture_default_str();
  sub->add_option("--decode-batch", o->decode_batches, "Decode batch sizes to time")->capture_default_str();
  sub->add_option("--decode-tokens", o->decode_tokens, "Decode steps per measurement")->capture_default_str();
  sub->add_flag("--decode-profile", o->decode_profile,
                "GPU: also where an eager decode step's time goes, per part of the layer (summed over layers)");
  sub->add_option("--repeats", o->repeats, "Measurements per figure (the best is kept)")->capture_default_str();
  sub->add_option("--threads", o->threads, "Threads (default: all cores)");
  add_placement_options(sub, o->placement);
  on_run(sub, [o] {
    set_threads(o->threads);
    if (o->repeats <= 0 || o->decode_tokens <= 0) fail("[bench] --repeats and --decode-tokens must be positive");
    if (o->model.empty() && o->ssd.empty() && o->linear.empty() && o->selective.empty() && o->selective_complex.empty())
      fail("[bench] needs --model DIR, --ssd BxLxHxPxN, --selective BxDxLxN or --linear MxNxK");
    // Every value parsed and checked before anything runs or loads.
    std::vector<std::vector<int64_t>> ssd, linear, selective, selective_complex;
    for (const std::string& shape : o->ssd) ssd.push_back(parse_dims(shape, "--ssd", "BxLxHxPxN"));
    for (const std::string& shape : o->selective) selective.push_back(parse_dims(shape, "--selective", "BxDxLxN"));
    for (const std::string& shape : o->selective_complex)
      selective_complex.push_back(parse_dims(shape, "--selective-complex", "BxDxLxN"));
    for (const std::string& shape : o->linear) linear.push_back(parse_dims(shape, "--linear", "MxNxK"));
    const std::vector<int64_t> prefill = parse_int_list(o->prefill, "--prefill");
    const std::vector<int64_t> batches = parse_int_list(o->decode_batches, "--decode-batch");
    for (int64_t len : prefill)
      if (len <= 0) fail("[bench] --prefill lengths must be positive");
    for (int64_t batch : batches)
      if (batch <= 0) fail("[bench] --decode-batch sizes must be positive");
    if (!ssd.empty() || !linear.empty() || !selective.empty() || !selective_complex.empty()) {
      const Device dev = placement_device(o->placement);
      for (const auto& d : selective) bench_selective(d, dev, false, o->repeats);
      for (const auto& d : selective_complex) bench_selective(d, dev, true, o->repeats);
      for (const auto& d : ssd) bench_ssd(d, dev, placement_dtype(o->placement, dev), o->repeats, o->ssd_grad);
      for (const auto& d : linear) bench_linear(d, dev, placement_dtype(o->placement, dev), o->repeats);
    }
    if (o->model.empty()) return;
    auto t_load = std::chrono::steady_clock::now();
    const Model model = load_model(o->model, o->placement);
    fmt::print("model {}: {} parameters, loaded in {:.2f} s, on the {} in {}\n", o->model,
               model.config().parameter_count(), seconds_since(t_load),
               model.device() == Device::CUDA ? "GPU " + cuda::device_description(cuda::current_device()) : std::string("CPU"),
               dtype_name(model.dtype()));
    std::mt19937 rng(0);
    std::uniform_int_distribution<int32_t> tok(0, int32_t(model.config().vocab_size - 1));
    std::vector<float> logits;
    for (int64_t len : prefill) {
      std::vector<int32_t> ids(static_cast<size_t>(len));
      for (auto& t : ids) t = tok(rng);
      const std::vector<int64_t> lengths{len};
      double best = 1e30;
      for (int64_t r = 0; r < o->repeats; ++r) {
        auto state = model.new_state(1);
        auto t0 = std::chrono::steady_clock::now();
        model.prefill(ids, lengths, state.get(), false, logits);
        best = std::min(best, seconds_since(t0));
      }
      fmt::print("prefill 1x{}: {:.1f} tokens/s ({:.3f} ms; time to first token)\n", len, double(len) / best, 1e3 * best);
    }
    for (int64_t batch : batches) {
      const double step_bytes = decode_step_bytes(model, batch);
      const double gbps = model.device() == Device::CPU ? read_gbps(step_bytes) : 0.0;
      std::vector<int64_t> slots(static_cast<size_t>(batch));
      for (int64_t i = 0; i < batch; ++i) slots[size_t(i)] = i;
      std::vector<int32_t> tokens(static_cast<size_t>(batch));
      // Two ways: every step's logits to the host (what sampling needs), and greedy decoding
      // with the choice made where the model runs (mamba_ssm's generate with top_k=1).
      double best = 1e30, best_greedy = 1e30;
      const int64_t vocab = model.config().vocab_size;
      for (int64_t r = 0; r < o->repeats; ++r) {
        auto state = model.new_state(batch);
        for (auto& t : tokens) t = tok(rng);
        model.decode(tokens, slots, *state, logits);  // warm-up step (on the GPU: captures the graph)
        auto t0 = std::chrono::steady_clock::now();
        for (int64_t s = 0; s < o->decode_tokens; ++s) {
          for (auto& t : tokens) t = tok(rng);
          model.decode(tokens, slots, *state, logits);
        }
        best = std::min(best, seconds_since(t0));
        std::vector<int32_t> next = tokens;
        model.decode_greedy(tokens, slots, *state, vocab, next);  // warm-up
        t0 = std::chrono::steady_clock::now();
        for (int64_t s = 0; s < o->decode_tokens; ++s) model.decode_greedy(next, slots, *state, vocab, next);
        best_greedy = std::min(best_greedy, seconds_since(t0));
      }
      const double steps = double(o->decode_tokens);
      fmt::print("decode batch {}: {:.1f} tokens/s ({:.3f} ms/step); greedy: {:.1f} tokens/s ({:.3f} ms/step)\n", batch,
                 double(batch) * steps / best, 1e3 * best / steps, double(batch) * steps / best_greedy,
                 1e3 * best_greedy / steps);
      if (model.device() == Device::CPU) {
        const double mb = step_bytes * 1e-6, floor_ms = mb / gbps;
        fmt::print("  floor: {:.1f} MB a step (weights once, states in and out) at {:.1f} GB/s (that many bytes "
                   "read just before): {:.3f} ms; the step takes {:.2f}x that\n",
                   mb, gbps, floor_ms, 1e3 * best / steps / floor_ms);
      }
      if (o->decode_profile && model.device() == Device::CUDA) {
        // The same greedy steps launched one kernel at a time, timed between the model's marks.
        Model eager = model;
        eager.set_decode_graphs(false);
        auto state = eager.new_state(batch);
        std::vector<int32_t> next = tokens;
        eager.decode_greedy(tokens, slots, *state, vocab, next);  // warm-up
        cuda::StepTimer timer;
        for (int64_t s = 0; s < o->decode_tokens; ++s) eager.decode_greedy(next, slots, *state, vocab, next);
        const auto totals = timer.totals();
        double sum = 0;
        for (const auto& [name, ms] : totals) sum += ms;
        fmt::print("  eager step, where the time goes ({:.3f} ms/step on the GPU's clock):", sum / steps);
        for (const auto& [name, ms] : totals) fmt::print(" {} {:.3f} ms ({:.0f}%);", name, ms / steps, 100 * ms / sum);
        fmt::print("\n");
      }
    }
    fmt::print("peak memory: {:.0f} MiB\n", peak_rss_mib());
    if (model.device() == Device::CUDA)
      fmt::print("peak GPU memory (pool high-water mark): {:.0f} MiB\n", double(cuda::peak_reserved_bytes()) / 1048576.0);
  });
}

}  // namespace mamba2::cli
