// train and eval: run (or resume) a training run from a JSON config and/or flags, with a progress
// bar; a model's loss, perplexity and bits per byte on a text file.
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/file.h"
#include "core/utf8.h"
#include "core/device.h"
#include "cuda/collectives.h"
#include "cuda/runtime.h"
#include "mamba2/error.h"
#include "mamba2/model.h"
#include "mamba2/tokenizer.h"
#include "mamba2/train.h"
#include "train/collective.h"
#include "train/distributed.h"

namespace mamba2::cli {

namespace fs = std::filesystem;

namespace {

std::atomic<bool> g_stop_requested{false};

extern "C" void on_sigint(int) {
  g_stop_requested = true;
  std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C ends the process at once
}

// Flags that override the config file: each applies only when given.
class Overrides {
 public:
  explicit Overrides(CLI::App* sub) : sub_(sub) {}
  template <class T, class Set>
  void add(const std::string& flag, const std::string& help, Set set) {
    auto value = std::make_shared<T>();
    CLI::Option* opt = sub_->add_option(flag, *value, help);
    apply_.push_back([opt, value, set](TrainConfig& c) {
      if (opt->count() > 0) set(c, *value);
    });
  }
  template <class Set>
  void flag(const std::string& flag, const std::string& help, Set set) {
    CLI::Option* opt = sub_->add_flag(flag, help);
    apply_.push_back([opt, set](TrainConfig& c) {
      if (opt->count() > 0) set(c);
    });
  }
  void apply(TrainConfig& c) const {
    for (const auto& f : apply_) f(c);
  }

 private:
  CLI::App* sub_;
  std::vector<std::function<void(TrainConfig&)>> apply_;
};

std::string clock_text(double seconds) {
  if (!(seconds >= 0.0) || seconds > 1e8) return "?";
  const int64_t s = int64_t(seconds + 0.5);
  return fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
}

}  // namespace

void add_train(CLI::App& app) {
  auto* sub = app.add_subcommand(
      "train", "Train a model (from a preset or a checkpoint) on text files; flags override the --config file");
  struct Opts {
    std::string config;
    bool resume = false;
    training::LaunchSpec launch;
    int gpus = 0, nproc = 0;
  };
  auto o = std::make_shared<Opts>();
  auto ov = std::make_shared<Overrides>(sub);
  sub->add_option("--config", o->config, "JSON config (keys as the flags, with underscores: max_steps, ...)");
  sub->add_flag("--resume", o->resume,
                "Continue the run in --out from its latest checkpoint (without --config: with the run's config)");
  ov->add<std::string>("--out", "Run folder: data/, checkpoints/, latest, metrics.jsonl, final/",
                       [](TrainConfig& c, const std::string& v) { c.out = v; });
  ov->add<std::string>("--preset", "Model preset (130m, 370m, 780m, 1.3b, 2.7b); the config's model section may refine it",
                       [](TrainConfig& c, const std::string& v) {
                         if (!c.model) c.model.emplace();
                         c.model->preset = v;
                       });
  ov->add<int64_t>("--d-model", "Override the model's d_model (other dimensions: the config's model section)",
                   [](TrainConfig& c, int64_t v) {
                     if (!c.model) c.model.emplace();
                     c.model->d_model = v;
                   });
  ov->add<int64_t>("--n-layer", "Override the model's n_layer", [](TrainConfig& c, int64_t v) {
    if (!c.model) c.model.emplace();
    c.model->n_layer = v;
  });
  ov->add<std::string>("--init-from", "Start from this model folder (Hugging Face or official layout)",
                       [](TrainConfig& c, const std::string& v) { c.init_from = v; });
  ov->add<std::string>("--tokenizer", "tokenizer.json (default: the one in --init-from)",
                       [](TrainConfig& c, const std::string& v) { c.tokenizer = v; });
  ov->add<std::vector<std::string>>("--train", "Training text files or folders (their *.txt files)",
                                    [](TrainConfig& c, const std::vector<std::string>& v) {
                                      c.train.assign(v.begin(), v.end());
                                    });
  ov->add<std::vector<std::string>>("--val", "Validation text files or folders",
                                    [](TrainConfig& c, const std::vector<std::string>& v) {
                                      c.val.assign(v.begin(), v.end());
                                    });
  ov->add<double>("--val-fraction", "Hold out this last fraction of the training tokens for validation",
                  [](TrainConfig& c, double v) { c.val_fraction = v; });
  ov->add<int64_t>("--seq-len", "Tokens per row (default 512)", [](TrainConfig& c, int64_t v) { c.seq_len = v; });
  ov->add<int64_t>("--batch-size", "Rows per micro-batch (default 1)", [](TrainConfig& c, int64_t v) { c.batch_size = v; });
  ov->add<int64_t>("--grad-accum", "Micro-batches per optimiser step (default 1)",
                   [](TrainConfig& c, int64_t v) { c.grad_accum = v; });
  ov->add<int64_t>("--max-steps", "Optimiser steps", [](TrainConfig& c, int64_t v) { c.max_steps = v; });
  ov->add<double>("--epochs", "Passes over the training rows (when --max-steps is not set)",
                  [](TrainConfig& c, double v) { c.epochs = v; });
  ov->add<double>("--lr", "Peak learning rate (default 6e-4)", [](TrainConfig& c, double v) { c.lr = v; });
  ov->add<double>("--min-lr", "Final learning rate of the cosine (default lr/10)",
                  [](TrainConfig& c, double v) { c.min_lr = v; });
  ov->add<int64_t>("--warmup-steps", "Linear warmup steps (default 0)",
                   [](TrainConfig& c, int64_t v) { c.warmup_steps = v; });
  ov->add<std::string>("--schedule", "cosine (default) or constant",
                       [](TrainConfig& c, const std::string& v) { c.schedule = v; });
  ov->add<double>("--weight-decay", "AdamW weight decay of the matrices (default 0.1)",
                  [](TrainConfig& c, double v) { c.weight_decay = v; });
  ov->add<double>("--beta1", "AdamW beta1 (default 0.9)", [](TrainConfig& c, double v) { c.beta1 = v; });
  ov->add<double>("--beta2", "AdamW beta2 (default 0.95)", [](TrainConfig& c, double v) { c.beta2 = v; });
  ov->add<double>("--eps", "AdamW eps (default 1e-8)", [](TrainConfig& c, double v) { c.eps = v; });
  ov->add<double>("--grad-clip", "Max global gradient norm, 0: none (default 1.0)",
                  [](TrainConfig& c, double v) { c.grad_clip = v; });
  ov->add<uint64_t>("--seed", "Seed of the init and the data order (default 1337)",
                    [](TrainConfig& c, uint64_t v) { c.seed = v; });
  ov->add<int64_t>("--eval-interval", "Evaluate every N steps (default 0: at the end)",
                   [](TrainConfig& c, int64_t v) { c.eval_interval = v; });
  ov->add<int64_t>("--eval-rows", "Validation rows per evaluation, 0: all (default 64)",
                   [](TrainConfig& c, int64_t v) { c.eval_rows = v; });
  ov->add<int64_t>("--log-interval", "Progress line every N steps when stderr is not a terminal (default 10)",
                   [](TrainConfig& c, int64_t v) { c.log_interval = v; });
  ov->add<int64_t>("--checkpoint-interval", "Checkpoint every N steps (default 0: at the end)",
                   [](TrainConfig& c, int64_t v) { c.checkpoint_interval = v; });
  ov->add<int64_t>("--keep-checkpoints", "Keep the newest N checkpoints, 0: all (default 2)",
                   [](TrainConfig& c, int64_t v) { c.keep_checkpoints = v; });
  ov->flag("--keep-best", "Keep <out>/best/: the model of the lowest validation loss so far (a model folder)",
           [](TrainConfig& c) { c.keep_best = true; });
  ov->add<std::string>("--dtype",
                       "f32, bf16, f16 (default f32): the final model's stored dtype and, on the GPU, the projections' "
                       "compute dtype (mixed precision on fp32 master weights and moments)",
                       [](TrainConfig& c, const std::string& v) { c.dtype = v; });
  ov->add<std::string>("--device", "cpu, cuda or cuda:N: where the steps run, in fp32 (default: the first GPU when "
                                   "there is one)",
                       [](TrainConfig& c, const std::string& v) { c.device = v; });
  ov->add<int>("--threads", "Threads (default: all cores)", [](TrainConfig& c, int v) { c.threads = v; });
  sub->add_option("--gpus", o->gpus,
                  "Data parallel on GPUs: processes (one per GPU: cuda:0 … of this node) that each take an equal "
                  "share of every micro-batch (default 1)");
  sub->add_option("--nproc-per-node", o->nproc,
                  "Data parallel on this node's device: --gpus on the GPU; with --device cpu, CPU processes (each "
                  "with --threads threads; by default the cores shared out)");
  sub->add_option("--nnodes", o->launch.nnodes, "Data parallel over hosts: how many run this command (default 1)");
  sub->add_option("--node-rank", o->launch.node_rank, "This host's index, 0 … nnodes-1 (node 0 writes the run)");
  sub->add_option("--master-addr", o->launch.master_addr, "Node 0's address, where the nodes meet (default 127.0.0.1)");
  sub->add_option("--master-port", o->launch.master_port, "Node 0's TCP port for the meeting (default 29500)");

  on_run(sub, [o, ov] {
    TrainConfig cfg;
    if (!o->config.empty()) {
      cfg = load_train_config(o->config);
    } else if (o->resume) {
      // The run's own config; --out must say which run.
      TrainConfig probe;
      ov->apply(probe);
      if (probe.out.empty()) fail("[cli] --resume without --config needs --out (the run folder)");
      cfg = resume_config(probe.out);
    }
    ov->apply(cfg);
    cfg.resume = o->resume;
    if (cfg.threads < 0) fail("[cli] --threads must be positive, got {}", cfg.threads);
    set_threads(cfg.threads);
    validate_train_config(cfg);

    const bool tty = ::isatty(STDERR_FILENO) == 1;
    bool bar_shown = false;
    auto clear_bar = [&] {
      if (bar_shown) std::fputs("\r\033[K", stderr);
      bar_shown = false;
    };
    TrainCallbacks cb;
    cb.on_message = [&](const std::string& m) {
      clear_bar();
      std::fprintf(stderr, "%s\n", m.c_str());
    };
    cb.on_eval = [&](const EvalInfo& e) {
      clear_bar();
      std::fprintf(stderr, "step %lld: val_loss %.4f | val_bpb %.4f (%lld rows)\n", (long long)e.step, e.val_loss,
                   e.val_bpb, (long long)e.rows);
    };
    const int64_t log_interval = cfg.log_interval;
    cb.on_step = [&](const StepInfo& s) {
      const std::string stats = fmt::format("loss {:.4f} | lr {:.2e} | grad_norm {:.3f} | {:.0f} tok/s", s.loss, s.lr,
                                            s.grad_norm, s.tokens_per_s);
      if (tty) {
        constexpr int kWidth = 24;
        const int filled = int(double(kWidth) * double(s.step) / double(std::max<int64_t>(1, s.max_steps)));
        std::fprintf(stderr, "\r\033[Kstep %lld/%lld [%s%s] %s | ETA %s", (long long)s.step, (long long)s.max_steps,
                     std::string(size_t(filled), '=').c_str(), std::string(size_t(kWidth - filled), ' ').c_str(),
                     stats.c_str(), clock_text(s.eta_s).c_str());
        bar_shown = true;
      } else if (s.step % log_interval == 0 || s.step == s.max_steps) {
        std::fprintf(stderr, "step %lld/%lld | %s | ETA %s\n", (long long)s.step, (long long)s.max_steps, stats.c_str(),
                     clock_text(s.eta_s).c_str());
      }
      std::fflush(stderr);
      if (g_stop_requested) {
        clear_bar();
        std::fprintf(stderr, "interrupted: saving a checkpoint and stopping (resume with --resume)\n");
        return StepAction::SaveAndStop;
      }
      return StepAction::Continue;
    };
    if (o->gpus > 0 && cfg.device == "cpu")
      fail("[train] --gpus {} with --device cpu: --nproc-per-node runs CPU processes", o->gpus);
    if (o->gpus > 0 && cfg.device.empty()) cfg.device = "cuda";  // every rank resolves the same device
    // CPU processes share the node's cores unless --threads says otherwise.
    if (o->nproc > 1 && cfg.threads == 0 && default_device(cfg.device) == "cpu") {
      cfg.threads = std::max(1, omp_get_num_procs() / o->nproc);
      set_threads(cfg.threads);
    }
    // A worker of a data-parallel run (started by its node's launcher below): quiet, and stopped
    // by rank 0's decision, not by its own Ctrl-C.
    if (const std::optional<DataParallel> worker = training::worker_from_environment()) {
      std::signal(SIGINT, SIG_IGN);
      train(cfg, {}, &*worker);
      return;
    }
    if (o->gpus > 0 && o->nproc > 0) fail("[train] --gpus and --nproc-per-node say the same: give one");
    training::LaunchSpec spec = o->launch;
    spec.gpus = o->gpus > 0 ? o->gpus : o->nproc > 0 ? o->nproc : 1;
    training::validate_launch_spec(spec);
    const bool on_cpu = default_device(cfg.device) == "cpu";
    TrainResult r;
    if (spec.world() > 1) {
      if (!on_cpu && cuda::device_count() < spec.gpus)
        fail("[train] --gpus {}: this machine shows {} CUDA GPU(s){}", spec.gpus, cuda::device_count(),
             cuda::device_count() == 0 ? " (" + cuda::no_gpu_reason() + ")" : std::string());
      // The ranks' links: NCCL's id, or where rank 0 listens for the CPU processes.
      const auto make_id = [&] {
        if (!on_cpu) return cuda::new_comm_id();
        return spec.nnodes > 1 ? fmt::format("{}:{}", spec.master_addr, spec.master_port + 1)
                               : training::local_collective_address();
      };
      training::NodeGroup group(spec, make_id);
      training::Workers workers(spec, group.comm_id());
      group.watch();
      const DataParallel dp{spec.node_rank * spec.gpus, spec.world(), 0, group.comm_id()};
      std::signal(SIGINT, on_sigint);
      r = train(cfg, cb, &dp);
      std::signal(SIGINT, SIG_DFL);
      workers.wait();
      group.finish();
    } else {
      std::signal(SIGINT, on_sigint);
      r = train(cfg, cb);
      std::signal(SIGINT, SIG_DFL);
    }
    clear_bar();
    // A run on the GPU: also its memory pool's high-water mark (what the run needed there).
    const size_t gpu_bytes = cuda::peak_reserved_bytes();
    std::string memory = fmt::format("peak memory {:.0f} MiB", peak_rss_mib());
    if (gpu_bytes) memory += fmt::format(", on the GPU {:.0f} MiB", double(gpu_bytes) / 1048576.0);
    if (r.finished)
      fmt::print("trained to step {}: loss {:.4f}{}; {:.1f} tokens/s, {}; final model in {}{}\n", r.step, r.last_loss,
                 r.last_val_loss ? fmt::format(", val_loss {:.4f}", *r.last_val_loss) : std::string(), r.tokens_per_s,
                 memory, r.final_dir.string(),
                 cfg.keep_best ? fmt::format(", the lowest validation loss's in {}", (cfg.out / "best").string())
                               : std::string());
    else
      fmt::print("stopped at step {}: loss {:.4f}; {:.1f} tokens/s, {}; resume with --resume --out {}\n", r.step,
                 r.last_loss, r.tokens_per_s, memory, cfg.out.string());
  });
}

void add_eval(CLI::App& app) {
  auto* sub = app.add_subcommand("eval", "Loss, perplexity and bits per byte of a model on a text file");
  struct Opts {
    std::string model, text, tokenizer;
    bool json = false;
    int threads = 0;
    Placement placement;
  };
  auto o = std::make_shared<Opts>();
  sub->add_option("--model", o->model, "Model folder")->required();
  sub->add_option("--text", o->text, "UTF-8 text file")->required();
  sub->add_option("--tokenizer", o->tokenizer, "tokenizer.json (default: the one in the model folder)");
  sub->add_flag("--json", o->json, "Print one JSON object");
  sub->add_option("--threads", o->threads, "Threads (default: all cores)");
  add_placement_options(sub, o->placement);
  on_run(sub, [o] {
    set_threads(o->threads);
    const std::string text = read_file(o->text, "[cli] --text:");
    if (const size_t bad = utf8::first_invalid(text); bad != std::string::npos)
      fail("[cli] --text: {} is not valid UTF-8 (byte offset {})", o->text, bad);
    const Tokenizer tokenizer = load_tokenizer(o->model, o->tokenizer);
    const Model model = load_model(o->model, o->placement);
    const EvalResult r = evaluate(model, tokenizer, text);
    if (o->json) {
      const nlohmann::json j = {{"tokens", r.tokens},     {"predictions", r.predictions}, {"bytes", r.bytes},
                                {"nats", r.nats},         {"loss", r.loss},               {"perplexity", r.perplexity},
                                {"bits_per_byte", r.bits_per_byte}};
      fmt::print("{}\n", j.dump());
    } else {
      fmt::print("tokens {} ({} predicted), bytes {}\nloss {:.6f} nats/token\nperplexity {:.4f}\nbits per byte {:.6f}\n",
                 r.tokens, r.predictions, r.bytes, r.loss, r.perplexity, r.bits_per_byte);
    }
  });
}

}  // namespace mamba2::cli
