// bench: prefill and decode throughput and peak memory of a model on this machine.
#include <sys/resource.h>

#include <chrono>
#include <random>

#include "commands.h"
#include "mamba2/error.h"
#include "mamba2/model.h"
#include "model/inference_state.h"

namespace mamba2::cli {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

void add_bench(CLI::App& app) {
  auto* sub = app.add_subcommand("bench", "Measure prefill and decode tokens/s and peak memory");
  struct Opts {
    std::string model, prefill = "512,2048", decode_batches = "1,8";
    int64_t decode_tokens = 64, repeats = 3;
    int threads = 0;
  };
  auto o = std::make_shared<Opts>();
  sub->add_option("--model", o->model, "Model folder")->required();
  sub->add_option("--prefill", o->prefill, "Prompt lengths to time (batch 1)")->capture_default_str();
  sub->add_option("--decode-batch", o->decode_batches, "Decode batch sizes to time")->capture_default_str();
  sub->add_option("--decode-tokens", o->decode_tokens, "Decode steps per measurement")->capture_default_str();
  sub->add_option("--repeats", o->repeats, "Measurements per figure (the best is kept)")->capture_default_str();
  sub->add_option("--threads", o->threads, "Threads (default: all cores)");
  on_run(sub, [o] {
    set_threads(o->threads);
    if (o->repeats <= 0 || o->decode_tokens <= 0) fail("[bench] --repeats and --decode-tokens must be positive");
    auto t_load = std::chrono::steady_clock::now();
    const Model model = Model::load(o->model);
    fmt::print("model {}: {} parameters, loaded in {:.2f} s\n", o->model, model.config().parameter_count(),
               seconds_since(t_load));
    std::mt19937 rng(0);
    std::uniform_int_distribution<int32_t> tok(0, int32_t(model.config().vocab_size - 1));
    std::vector<float> logits;
    for (int64_t len : parse_int_list(o->prefill, "--prefill")) {
      if (len <= 0) fail("[bench] --prefill lengths must be positive");
      std::vector<int32_t> ids(static_cast<size_t>(len));
      for (auto& t : ids) t = tok(rng);
      const std::vector<int64_t> lengths{len};
      double best = 1e30;
      for (int64_t r = 0; r < o->repeats; ++r) {
        auto state = make_state(model.config(), 1);
        auto t0 = std::chrono::steady_clock::now();
        model.prefill(ids, lengths, state.get(), false, logits);
        best = std::min(best, seconds_since(t0));
      }
      fmt::print("prefill 1x{}: {:.1f} tokens/s ({:.3f} s)\n", len, double(len) / best, best);
    }
    for (int64_t batch : parse_int_list(o->decode_batches, "--decode-batch")) {
      if (batch <= 0) fail("[bench] --decode-batch sizes must be positive");
      std::vector<int64_t> slots(static_cast<size_t>(batch));
      for (int64_t i = 0; i < batch; ++i) slots[size_t(i)] = i;
      std::vector<int32_t> tokens(static_cast<size_t>(batch));
      double best = 1e30;
      for (int64_t r = 0; r < o->repeats; ++r) {
        auto state = make_state(model.config(), batch);
        for (auto& t : tokens) t = tok(rng);
        model.decode(tokens, slots, *state, logits);  // warm-up step
        auto t0 = std::chrono::steady_clock::now();
        for (int64_t s = 0; s < o->decode_tokens; ++s) {
          for (auto& t : tokens) t = tok(rng);
          model.decode(tokens, slots, *state, logits);
        }
        best = std::min(best, seconds_since(t0));
      }
      fmt::print("decode batch {}: {:.1f} tokens/s ({:.2f} ms/step)\n", batch,
                 double(batch * o->decode_tokens) / best, 1e3 * best / double(o->decode_tokens));
    }
    fmt::print("peak memory: {:.0f} MiB\n", peak_rss_mib());
  });
}

}  // namespace mamba2::cli
