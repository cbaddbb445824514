// Training: a Mamba2 LM trained from a preset or an existing checkpoint on text files, with AdamW,
// warmup + cosine schedule, gradient accumulation and clipping, periodic evaluation, atomic
// checkpoints that resume exactly; and the evaluation of a model on a text (loss, perplexity,
// bits per byte).
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mamba2 {

class Model;
class Tokenizer;

// The "model" section: a preset with overrides (0 or unset: the preset's value). vocab_size 0
// takes the tokenizer's vocab_size().
struct TrainModelSpec {
  std::string preset = "130m";
  int64_t d_model = 0, n_layer = 0, d_state = 0, headdim = 0, ngroups = 0, chunk_size = 0, expand = 0, d_conv = 0;
  int64_t vocab_size = 0, pad_vocab_size_multiple = 0;
  std::optional<bool> tie_embeddings;
};

// One training run. JSON keys have the field names; CLI flags the same names with dashes
// (max_steps ↔ --max-steps). Defaults follow nanoGPT / the Mamba recipes.
struct TrainConfig {
  std::filesystem::path out;               // run folder: data/, checkpoints/, latest, metrics.jsonl, final/
  // The model: `model` (a preset and overrides), or `init_from`, an existing model folder
  // (Hugging Face or official layout); not both.
  std::optional<TrainModelSpec> model;
  std::filesystem::path init_from;
  std::filesystem::path tokenizer;         // tokenizer.json; default: init_from/tokenizer.json
  // Data: text files or folders (their *.txt files, recursively, sorted by path); each file is one
  // document. Validation: `val` files, or the last `val_fraction` of the training tokens; neither:
  // no evaluation.
  std::vector<std::filesystem::path> train, val;
  double val_fraction = 0.0;
  // Rows: seq_len consecutive tokens of the stream (seq_len - 1 predictions); batch_size rows per
  // micro-batch, grad_accum micro-batches per optimiser step.
  int64_t seq_len = 512, batch_size = 1, grad_accum = 1;
  int64_t max_steps = 0;                   // optimiser steps; 0: from epochs
  double epochs = 0.0;                     // passes over the training rows, when max_steps is 0
  // AdamW and the schedule: linear warmup over warmup_steps to lr, then cosine to min_lr at
  // max_steps ("cosine"), or lr held ("constant"). min_lr unset: lr / 10.
  double lr = 6e-4;
  std::optional<double> min_lr;
  int64_t warmup_steps = 0;
  std::string schedule = "cosine";
  double weight_decay = 0.1, beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double grad_clip = 1.0;                  // max global gradient norm; 0: no clipping
  uint64_t seed = 1337;                    // model init and data order
  // Evaluation on the validation split every eval_interval steps (0: at the end only), over its
  // first eval_rows rows (0: all of them).
  int64_t eval_interval = 0, eval_rows = 64;
  int64_t log_interval = 10;               // plain progress lines (when stderr is not a terminal)
  // Checkpoints every checkpoint_interval steps (0: at the end only); the newest keep_checkpoints
  // are kept (0: all).
  int64_t checkpoint_interval = 0, keep_checkpoints = 2;
  // The run's precision: the final model's stored dtype (checkpoints: f32) and, on the GPU, the
  // projections' compute dtype (bf16 / f16: mixed precision on fp32 master weights, gradients and
  // moments; f32: true fp32).
  std::string dtype = "f32";
  // Also keep <out>/best/, a model folder as final/ (with best.json: step, val_loss, val_bpb),
  // rewritten whenever an evaluation's validation loss is the lowest so far. Needs validation data.
  bool keep_best = false;
  // Where the steps run, in fp32: "cpu", "cuda" or "cuda:N"; empty: the first GPU when there is one.
  // Not fixed on resume (a run may move), but only the same device repeats its bits.
  std::string device;
  int threads = 0;                         // 0: OMP_NUM_THREADS / all cores
  bool resume = false;                     // continue from <out>/latest
};

// Reads a JSON config; unknown keys and values of the wrong type are refused naming the key.
TrainConfig load_train_config(const std::filesystem::path& path);
TrainConfig parse_train_config(std::string_view json_text, const std::string& source);
std::string train_config_to_json(const TrainConfig& config);
// Checks the values (ranges, conflicts, files that must exist); errors name the key and its flag.
void validate_train_config(const TrainConfig& config);
// The config a run in `out` was started with (from its latest checkpoint), for resuming.
TrainConfig resume_config(const std::filesystem::path& out);

struct StepInfo {
  int64_t step = 0, max_steps = 0, epoch = 0;
  double loss = 0.0, lr = 0.0, grad_norm = 0.0;
  int64_t tokens = 0;         // input tokens of this step's rows (rows × seq_len)
  double tokens_per_s = 0.0;  // this step's
  double elapsed_s = 0.0;     // since this process started training
  double eta_s = 0.0;         // at the mean step time of this process
};
struct EvalInfo {
  int64_t step = 0, rows = 0, predictions = 0;
  double val_loss = 0.0, val_bpb = 0.0;
};
enum class StepAction { Continue, Stop, SaveAndStop };
struct TrainCallbacks {
  std::function<void(const std::string&)> on_message;  // data preparation, checkpoints, resume
  std::function<StepAction(const StepInfo&)> on_step;  // after every step; Stop: return at once
  std::function<void(const EvalInfo&)> on_eval;
};
struct TrainResult {
  int64_t step = 0;                 // the last step done
  bool finished = false;            // reached max_steps (else stopped by on_step)
  double last_loss = 0.0;
  std::optional<double> last_val_loss;
  std::filesystem::path final_dir;  // <out>/final when finished
  std::filesystem::path best_dir;   // <out>/best when keep_best has written one
  double tokens_per_s = 0.0;        // over this process's steps (evaluation and saving excluded)
};

// One process of a data-parallel run on `world` GPUs (`mamba2 train --gpus`, train/distributed.h):
// its global rank, its GPU (cuda:local_rank of its host) and the NCCL id of the run. Each step's
// rows are those of a one-GPU run with the same config: every micro-batch's batch_size rows are
// split evenly over the ranks (batch_size a multiple of world), the gradients summed over them
// (weighted to the mean over all predicted positions) before one identical update on every rank.
// Rank 0 alone prepares the data, evaluates and writes metrics, checkpoints and models; the others
// read the run folder's data/ (every node must see --out), and take the weights, moments and
// trainer state from rank 0 at the start.
struct DataParallel {
  int rank = 0, world = 1, local_rank = 0;
  std::string comm_id;
};

// Runs (or resumes) a training run; see TrainConfig. Writes <out>/metrics.jsonl (one JSON line
// per step), checkpoints, and <out>/final (config.json, model.safetensors, tokenizer.json).
TrainResult train(const TrainConfig& config, const TrainCallbacks& callbacks = {},
                  const DataParallel* data_parallel = nullptr);

struct EvalResult {
  int64_t tokens = 0;       // tokens of the text
  int64_t predictions = 0;  // positions scored
  int64_t bytes = 0;        // UTF-8 bytes of the text
  double nats = 0.0;        // summed cross-entropy
  double loss = 0.0;        // nats / predictions
  double perplexity = 0.0;  // exp(loss)
  double bits_per_byte = 0.0;  // nats / ln 2 / bytes
};
// The model's cross-entropy on a text over the padded vocabulary (as lm_loss), with exact full
// context in bounded memory: prefill in pieces of piece_tokens positions (0: whole chunks, about
// 2^24 logits) that carry the state. With an EOS token the text is preceded by it, so every token
// of the text is predicted; without one, all but the first.
EvalResult evaluate(const Model& model, const Tokenizer& tokenizer, std::string_view text, int64_t piece_tokens = 0);

}  // namespace mamba2
