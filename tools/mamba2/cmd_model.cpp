// init, quantize and info: make a randomly initialised model, write a model's projections in a
// narrower format, describe a model folder.
#include <filesystem>

#include "commands.h"
#include "io/atomic_file.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "mamba2/error.h"
#include "mamba2/model.h"
#include "mamba2/version.h"
#include "model/weights.h"
#include "tokenizer/gguf_vocab.h"

namespace mamba2::cli {

namespace fs = std::filesystem;

void add_init(CLI::App& app) {
  auto* sub = app.add_subcommand("init", "Write a randomly initialised model (official init) in the Hugging Face layout");
  struct Opts {
    std::string preset = "130m", out, dtype = "f32";
    int64_t d_model = 0, n_layer = 0, d_state = 0, headdim = 0, ngroups = 0, chunk_size = 0, vocab_size = 0,
            dt_rank = 0;
    uint64_t seed = 0;
    bool force = false, complex = false;
  };
  auto o = std::make_shared<Opts>();
  sub->add_option("--preset", o->preset,
                  "Mamba2: 130m, 370m, 780m, 1.3b or 2.7b; Mamba-1: mamba-130m, mamba-370m, mamba-790m, mamba-1.4b or "
                  "mamba-2.8b")
      ->capture_default_str();
  sub->add_option("--out", o->out, "Folder to write (config.json + model.safetensors)")->required();
  sub->add_option("--dtype", o->dtype, "Stored dtype: f32, bf16 or f16")->capture_default_str();
  sub->add_option("--d-model", o->d_model, "Override d_model");
  sub->add_option("--n-layer", o->n_layer, "Override n_layer");
  sub->add_option("--d-state", o->d_state, "Override d_state");
  sub->add_option("--headdim", o->headdim, "Override headdim");
  sub->add_option("--ngroups", o->ngroups, "Override ngroups");
  sub->add_option("--chunk-size", o->chunk_size, "Override chunk_size");
  sub->add_option("--vocab-size", o->vocab_size, "Override vocab_size (padded to a multiple of 16; Mamba-1: 8)");
  sub->add_option("--dt-rank", o->dt_rank, "Mamba-1: override dt_rank (default ⌈d_model/16⌉)");
  sub->add_flag("--complex", o->complex,
                "Mamba-1: a complex-valued scan (S4D-Lin A = -1/2 + iπn; written in the official layout)");
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
    if (c.mamba1()) {
      if (o->headdim || o->ngroups || o->chunk_size)
        fail("[init] --headdim, --ngroups and --chunk-size are Mamba2's; {} is a Mamba-1 preset", o->preset);
      c.dt_rank = o->dt_rank ? o->dt_rank : (c.d_model + 15) / 16;
      c.complex_scan = o->complex;
      if (c.complex_scan) c.layout = CheckpointLayout::Official;
    } else if (o->dt_rank || o->complex) {
      fail("[init] --dt-rank and --complex are Mamba-1's; {} is a Mamba2 preset", o->preset);
    }
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

void add_quantize(CLI::App& app) {
  auto* sub = app.add_subcommand(
      "quantize", "Write a model with its projection matrices in bf16, q8 or q4 (llama.cpp's q8_0 / q4_0 block layouts) "
                  "and every other tensor in f32, for CPU inference: loads memory-mapped, runs in that format");
  struct Opts {
    std::string model, type, out;
    bool force = false;
  };
  auto o = std::make_shared<Opts>();
  sub->add_option("--model", o->model, "Model folder or GGUF file to read (any checkpoint layout mamba2 loads)")
      ->required();
  sub->add_option("--type", o->type, "bf16, q8 or q4")->required();
  sub->add_option("--out", o->out, "Folder to write (config.json, model.safetensors, the tokenizer files)")->required();
  sub->add_flag("--force", o->force, "Replace the files of an existing model in --out");
  on_run(sub, [o] {
    DType dtype;
    if (o->type == "bf16") dtype = DType::BF16;
    else if (o->type == "q8") dtype = DType::Q8_0;
    else if (o->type == "q4") dtype = DType::Q4_0;
    else fail("[quantize] --type must be bf16, q8 or q4, got '{}'", o->type);
    const fs::path in = o->model, out = o->out;
    std::error_code ec;
    if (fs::exists(out) && fs::equivalent(in, out, ec))
      fail("[quantize] --out {} is the --model folder: write the quantized model to another folder", out.string());
    if (!o->force && (fs::exists(out / "config.json") || fs::exists(out / "model.safetensors")))
      fail("[quantize] {} already holds a model; pass --force to replace it", out.string());
    const Model model = Model::load(in);
    const ModelConfig& c = model.config();
    if (is_quantized(dtype) && (c.d_model % kQuantBlock || c.d_inner() % kQuantBlock))
      fail("[quantize] --type {}: blocks of 32 need d_model ({}) and d_inner ({}) to be multiples of 32", o->type,
           c.d_model, c.d_inner());
    fs::create_directories(out);
    save_model(out, c, model.weights(), DType::F32, dtype);
    // The tokenizer and its chat template travel with the weights, so that the folder runs as is.
    // (A GGUF file's tokenizer, when it has one, as the tokenizer.json it stands for.)
    if (fs::is_regular_file(in)) {
      const GgufFile g = read_gguf(in, false);
      if (g.metadata.contains("tokenizer.ggml.model")) {
        const std::string json = gguf_tokenizer_json(g, "[quantize] " + in.string()).dump(2);
        AtomicFile f(out / "tokenizer.json", "[quantize]");
        f.write(json.data(), json.size());
        f.commit();
      }
    } else {
      for (const char* name : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"})
        if (fs::exists(in / name)) fs::copy_file(in / name, out / name, fs::copy_options::overwrite_existing);
    }
    const auto mib = [](const fs::path& p) { return double(fs::file_size(p)) / (1 << 20); };
    double before = 0.0;
    for (const auto& f : model_files(in)) before += mib(f);
    fmt::print("wrote {} ({:.1f} MiB of weights, from {:.1f} MiB): projections {}, other tensors F32\n", out.string(),
               mib(out / "model.safetensors"), before, dtype_name(dtype));
  });
}

void add_info(CLI::App& app) {
  auto* sub = app.add_subcommand("info", "Print the resolved config, parameter count and tensor dtypes of a model");
  auto dir = std::make_shared<std::string>();
  sub->add_option("--model", *dir, "Model folder or GGUF file")->required();
  on_run(sub, [dir] {
    Checkpoint ck = open_model(*dir);
    const ModelConfig c = ck.config;
    const auto archive_ptr = std::make_shared<const TensorArchive>(std::move(ck.archive));
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
    if (const auto q = archive.metadata.find(kQuantizationKey); q != archive.metadata.end())
      fmt::print("quantized: {} (mamba2 quantize): the CPU runs it in that format unless --dtype says otherwise\n",
                 q->second);
    if (fs::is_regular_file(*dir)) {  // a GGUF file: what it says of itself, and its types as stored
      const GgufFile g = read_gguf(*dir, false);
      const auto name = g.metadata.find("general.name");
      fmt::print("gguf: version {}, {} metadata keys{}; tensors stored as", g.version, g.metadata.size(),
                 name != g.metadata.end() && name->is_string() ? ", general.name " + name->get<std::string>() : "");
      for (const auto& [type, n] : g.stored_types) fmt::print(" {} {}", type, n);
      fmt::print(" (k-quants read as F32)\n");
    }
    load_weights(archive_ptr, c);  // checks names and shapes
    fmt::print("weights: all tensors present with the expected shapes\n{}", version_info());
  });
}

}  // namespace mamba2::cli
