// init and info: make a randomly initialised model, describe a model folder.
#include <filesystem>

#include "commands.h"
#include "mamba2/error.h"
#include "mamba2/version.h"
#include "model/weights.h"

namespace mamba2::cli {

namespace fs = std::filesystem;

void add_init(CLI::App& app) {
  auto* sub = app.add_subcommand("init", "Write a randomly initialised model (official init) in the Hugging Face layout");
  struct Opts {
    std::string preset = "130m", out, dtype = "f32";
    int64_t d_model = 0, n_layer = 0, d_state = 0, headdim = 0, ngroups = 0, chunk_size = 0, vocab_size = 0;
    uint64_t seed = 0;
    bool force = false;
  };
  auto o = std::make_shared<Opts>();
  sub->add_option("--preset", o->preset, "130m, 370m, 780m, 1.3b or 2.7b")->capture_default_str();
  sub->add_option("--out", o->out, "Folder to write (config.json + model.safetensors)")->required();
  sub->add_option("--dtype", o->dtype, "Stored dtype: f32, bf16 or f16")->capture_default_str();
  sub->add_option("--d-model", o->d_model, "Override d_model");
  sub->add_option("--n-layer", o->n_layer, "Override n_layer");
  sub->add_option("--d-state", o->d_state, "Override d_state");
  sub->add_option("--headdim", o->headdim, "Override headdim");
  sub->add_option("--ngroups", o->ngroups, "Override ngroups");
  sub->add_option("--chunk-size", o->chunk_size, "Override chunk_size");
  sub->add_option("--vocab-size", o->vocab_size, "Override vocab_size (padded to a multiple of 16)");
  sub->add_option("--seed", o->seed, "Random seed")->capture_default_str();
  sub->add_flag("--force", o->force, "Replace the files of an existing model in --out");
  on_run(sub, [o] {
    ModelConfig c = preset_config(o->preset);
    if (o->d_model) c.d_model = o->d_model;
    if (o->n_layer) c.n_layer = o->n_layer;
    if (o->d_state) c.d_state = o->d_state;
    if (o->headdim) c.headdim = o->headdim;
    if (o->ngroups) c.ngroups = o->ngroups;
    if (o->chunk_size) c.chunk_size = o->chunk_size;
    if (o->vocab_size) c.vocab_size = o->vocab_size;
    c.validate("init flags");
    const std::optional<DType> parsed = parse_dtype(o->dtype);
    if (!parsed) fail("[init] --dtype must be f32, bf16 or f16, got '{}'", o->dtype);
    const DType dtype = *parsed;
    const fs::path dir = o->out;
    if (!o->force && (fs::exists(dir / "config.json") || fs::exists(dir / "model.safetensors")))
      fail("[init] {} already holds a model; pass --force to replace it", dir.string());
    fs::create_directories(dir);
    save_model(dir, c, init_weights(c, o->seed), dtype);
    fmt::print("wrote {} ({} parameters, {}) to {}\n", o->preset, c.parameter_count(), o->dtype, dir.string());
  });
}

void add_info(CLI::App& app) {
  auto* sub = app.add_subcommand("info", "Print the resolved config, parameter count and tensor dtypes of a model");
  auto dir = std::make_shared<std::string>();
  sub->add_option("--model", *dir, "Model folder")->required();
  on_run(sub, [dir] {
    const ModelConfig c = load_config(fs::path(*dir) / "config.json");
    const auto archive_ptr = std::make_shared<const TensorArchive>(open_checkpoint(*dir));
    const TensorArchive& archive = *archive_ptr;
    fmt::print("{}", config_summary(c));
    std::map<std::string, int64_t> by_dtype;
    int64_t stored = 0;
    for (const auto& [name, t] : archive.tensors()) {
      by_dtype[std::string(dtype_name(t.dtype))] += t.numel();
      stored += t.numel();
    }
    fmt::print("files:");
    for (const auto& f : archive.files()) fmt::print(" {}", f);
    fmt::print("\ntensors: {} ({} stored values)\n", archive.tensors().size(), stored);
    for (const auto& [dt, n] : by_dtype) fmt::print("dtype {}: {} values\n", dt, n);
    load_weights(archive_ptr, c);  // checks names and shapes
    fmt::print("weights: all tensors present with the expected shapes\n{}", version_info());
  });
}

}  // namespace mamba2::cli
