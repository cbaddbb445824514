// The subcommands; each add_* registers its flags and the action run_selected() will call.
#pragma once
#include <CLI/CLI.hpp>

#include "mamba2/model.h"
#include "mamba2/tokenizer.h"

namespace mamba2::cli {

void add_init(CLI::App& app);
void add_quantize(CLI::App& app);
void add_info(CLI::App& app);
void add_logits(CLI::App& app);
void add_bench(CLI::App& app);
void add_generate(CLI::App& app);
void add_serve(CLI::App& app);
void add_train_tokenizer(CLI::App& app);
void add_grad(CLI::App& app);
void add_tokenize(CLI::App& app);
void add_detokenize(CLI::App& app);
void add_train(CLI::App& app);
void add_eval(CLI::App& app);
void run_selected(CLI::App& app);

// Registers the action of a subcommand (called by the add_* functions).
void on_run(CLI::App* sub, std::function<void()> action);
// Parses "5,17,3" into integers; names the flag in errors.
std::vector<int64_t> parse_int_list(const std::string& text, const char* flag);
void set_threads(int threads);

// --device cpu|cuda[:N] and --dtype f32|bf16|f16 of the commands that run a model.
struct Placement {
  std::string device, dtype;
};
void add_placement_options(CLI::App* sub, Placement& p);
// Loads a model folder where `p` says: by default the first GPU when there is one (else the
// CPU; the MAMBA2_DEVICE environment variable sets another default), in bf16 on the GPU and f32
// on the CPU (a quantized checkpoint's own format there).
Model load_model(const std::string& dir, const Placement& p);
// The tokenizer at `path`, or the model folder's tokenizer.json when `path` is empty.
Tokenizer load_tokenizer(const std::string& model_dir, const std::string& path);
// The device `p` names (the same default), selected when it is a GPU, and the dtype for it
// (`stored`: the dtype of the checkpoint's projections as Model::load placed them).
Device placement_device(const Placement& p);
DType placement_dtype(const Placement& p, Device device, DType stored = DType::F32);
// The process's peak resident memory so far.
double peak_rss_mib();

}  // namespace mamba2::cli
