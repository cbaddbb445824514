// The training config: JSON keys named as TrainConfig's fields, CLI flags the same names with
// dashes. Parsing refuses unknown keys and wrong types naming the key; validation names the key
// and its flag.
#include <nlohmann/json.hpp>

#include "core/device.h"
#include "core/file.h"
#include "core/json.h"
#include "mamba2/config.h"
#include "mamba2/error.h"
#include "mamba2/train.h"
#include "train/checkpoint.h"

namespace mamba2 {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const char* const kKeys[] = {"out",          "model",       "init_from",     "tokenizer",     "train",
                             "val",          "val_fraction", "seq_len",      "batch_size",    "grad_accum",
                             "max_steps",    "epochs",      "lr",            "min_lr",        "warmup_steps",
                             "schedule",     "weight_decay", "beta1",        "beta2",         "eps",
                             "grad_clip",    "seed",        "eval_interval", "eval_rows",     "log_interval",
                             "checkpoint_interval", "keep_checkpoints", "keep_best", "dtype", "device", "threads"};
const char* const kModelKeys[] = {"preset",  "d_model",    "n_layer",    "d_state",
                                  "headdim", "ngroups",    "chunk_size", "expand",
                                  "d_conv",  "vocab_size", "pad_vocab_size_multiple", "tie_embeddings"};

std::string known_list(const auto& keys) {
  std::string s;
  for (const char* k : keys) s += (s.empty() ? "" : ", ") + std::string(k);
  return s;
}

// "lr (--lr)": how errors name a setting, as a key and as a flag.
std::string setting(const std::string& key) {
  std::string flag = key;
  std::replace(flag.begin(), flag.end(), '_', '-');
  return fmt::format("{} (--{})", key, flag);
}

struct Reader {
  const json& obj;
  std::string where;  // "F.json" or "F.json: model"

  const json* get(const char* key) const {
    auto it = obj.find(key);
    return it == obj.end() ? nullptr : &*it;
  }
  [[noreturn]] void bad(const char* key, const json& v, const char* expected) const {
    fail("[train-config] {}: '{}' must be {}, got {}", where, key, expected, json_excerpt(v));
  }
  void integer(const char* key, int64_t& out) const {
    if (const json* v = get(key)) {
      if (!v->is_number_integer() || (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX)))
        bad(key, *v, "an integer");
      out = v->get<int64_t>();
    }
  }
  void unsigned_integer(const char* key, uint64_t& out) const {
    if (const json* v = get(key)) {
      if (!v->is_number_unsigned()) bad(key, *v, "a non-negative integer");
      out = v->get<uint64_t>();
    }
  }
  void number(const char* key, double& out) const {
    if (const json* v = get(key)) {
      if (!v->is_number()) bad(key, *v, "a number");
      out = v->get<double>();
    }
  }
  void number(const char* key, std::optional<double>& out) const {
    if (const json* v = get(key)) {
      if (!v->is_number()) bad(key, *v, "a number");
      out = v->get<double>();
    }
  }
  void boolean(const char* key, bool& out) const {
    if (const json* v = get(key)) {
      if (!v->is_boolean()) bad(key, *v, "true or false");
      out = v->get<bool>();
    }
  }
  void string(const char* key, std::string& out) const {
    if (const json* v = get(key)) {
      if (!v->is_string()) bad(key, *v, "a string");
      out = v->get<std::string>();
    }
  }
  void path(const char* key, fs::path& out) const {
    std::string s;
    string(key, s);
    if (get(key)) out = s;
  }
  void paths(const char* key, std::vector<fs::path>& out) const {
    if (const json* v = get(key)) {
      out.clear();
      if (v->is_string()) {
        out.emplace_back(v->get<std::string>());
        return;
      }
      if (!v->is_array()) bad(key, *v, "a path or a list of paths");
      for (const json& e : *v) {
        if (!e.is_string()) bad(key, *v, "a path or a list of paths");
        out.emplace_back(e.get<std::string>());
      }
    }
  }
  void check_known(const auto& keys) const {
    for (const auto& item : obj.items()) {
      const std::string& k = item.key();
      if (std::find_if(std::begin(keys), std::end(keys), [&](const char* x) { return k == x; }) == std::end(keys))
        fail("[train-config] {}: unknown key '{}' (known: {})", where, k, known_list(keys));
    }
  }
};

TrainModelSpec parse_model(const json& j, const std::string& where) {
  if (!j.is_object()) fail("[train-config] {}: 'model' must be an object, got {}", where, j.dump());
  const Reader r{j, where + ": model"};
  r.check_known(kModelKeys);
  TrainModelSpec m;
  r.string("preset", m.preset);
  r.integer("d_model", m.d_model);
  r.integer("n_layer", m.n_layer);
  r.integer("d_state", m.d_state);
  r.integer("headdim", m.headdim);
  r.integer("ngroups", m.ngroups);
  r.integer("chunk_size", m.chunk_size);
  r.integer("expand", m.expand);
  r.integer("d_conv", m.d_conv);
  r.integer("vocab_size", m.vocab_size);
  r.integer("pad_vocab_size_multiple", m.pad_vocab_size_multiple);
  if (const json* v = r.get("tie_embeddings")) {
    if (!v->is_boolean()) r.bad("tie_embeddings", *v, "true or false");
    m.tie_embeddings = v->get<bool>();
  }
  return m;
}

}  // namespace

TrainConfig parse_train_config(std::string_view text, const std::string& source) {
  json j;
  j = parse_json(text, "[train-config] " + source);
  if (!j.is_object()) fail("[train-config] {}: the top level must be an object", source);
  const Reader r{j, source};
  r.check_known(kKeys);
  TrainConfig c;
  r.path("out", c.out);
  if (const json* m = r.get("model")) c.model = parse_model(*m, source);
  r.path("init_from", c.init_from);
  r.path("tokenizer", c.tokenizer);
  r.paths("train", c.train);
  r.paths("val", c.val);
  r.number("val_fraction", c.val_fraction);
  r.integer("seq_len", c.seq_len);
  r.integer("batch_size", c.batch_size);
  r.integer("grad_accum", c.grad_accum);
  r.integer("max_steps", c.max_steps);
  r.number("epochs", c.epochs);
  r.number("lr", c.lr);
  r.number("min_lr", c.min_lr);
  r.integer("warmup_steps", c.warmup_steps);
  r.string("schedule", c.schedule);
  r.number("weight_decay", c.weight_decay);
  r.number("beta1", c.beta1);
  r.number("beta2", c.beta2);
  r.number("eps", c.eps);
  r.number("grad_clip", c.grad_clip);
  r.unsigned_integer("seed", c.seed);
  r.integer("eval_interval", c.eval_interval);
  r.integer("eval_rows", c.eval_rows);
  r.integer("log_interval", c.log_interval);
  r.integer("checkpoint_interval", c.checkpoint_interval);
  r.integer("keep_checkpoints", c.keep_checkpoints);
  r.boolean("keep_best", c.keep_best);
  r.string("dtype", c.dtype);
  r.string("device", c.device);
  int64_t threads = c.threads;
  r.integer("threads", threads);
  if (threads < 0 || threads > 4096) fail("[train-config] {}: 'threads' must be in [0, 4096], got {}", source, threads);
  c.threads = int(threads);
  return c;
}

TrainConfig load_train_config(const fs::path& path) {
  return parse_train_config(read_file(path, "[train-config]"), path.string());
}

std::string train_config_to_json(const TrainConfig& c) {
  auto paths = [](const std::vector<fs::path>& v) {
    json a = json::array();
    for (const auto& p : v) a.push_back(p.string());
    return a;
  };
  json j = {{"out", c.out.string()},
            {"train", paths(c.train)},
            {"val", paths(c.val)},
            {"val_fraction", c.val_fraction},
            {"seq_len", c.seq_len},
            {"batch_size", c.batch_size},
            {"grad_accum", c.grad_accum},
            {"max_steps", c.max_steps},
            {"epochs", c.epochs},
            {"lr", c.lr},
            {"warmup_steps", c.warmup_steps},
            {"schedule", c.schedule},
            {"weight_decay", c.weight_decay},
            {"beta1", c.beta1},
            {"beta2", c.beta2},
            {"eps", c.eps},
            {"grad_clip", c.grad_clip},
            {"seed", c.seed},
            {"eval_interval", c.eval_interval},
            {"eval_rows", c.eval_rows},
            {"log_interval", c.log_interval},
            {"checkpoint_interval", c.checkpoint_interval},
            {"keep_checkpoints", c.keep_checkpoints},
            {"keep_best", c.keep_best},
            {"dtype", c.dtype},
            {"device", c.device},
            {"threads", c.threads}};
  if (c.min_lr) j["min_lr"] = *c.min_lr;
  if (!c.init_from.empty()) j["init_from"] = c.init_from.string();
  if (!c.tokenizer.empty()) j["tokenizer"] = c.tokenizer.string();
  if (c.model) {
    const TrainModelSpec& m = *c.model;
    json jm = {{"preset", m.preset}};
    auto opt = [&](const char* k, int64_t v) {
      if (v) jm[k] = v;
    };
    opt("d_model", m.d_model);
    opt("n_layer", m.n_layer);
    opt("d_state", m.d_state);
    opt("headdim", m.headdim);
    opt("ngroups", m.ngroups);
    opt("chunk_size", m.chunk_size);
    opt("expand", m.expand);
    opt("d_conv", m.d_conv);
    opt("vocab_size", m.vocab_size);
    opt("pad_vocab_size_multiple", m.pad_vocab_size_multiple);
    if (m.tie_embeddings) jm["tie_embeddings"] = *m.tie_embeddings;
    j["model"] = jm;
  }
  return j.dump(2) + "\n";
}

void validate_train_config(const TrainConfig& c) {
  auto bad = [](const char* key, const std::string& why) { fail("[train] {} {}", setting(key), why); };
  auto missing = [](const char* key, const fs::path& p, const char* what) {
    fail("[train] {}: {} {}", setting(key), p.string(), what);
  };
  if (c.out.empty()) bad("out", "is required: the folder of the run");
  if (c.model && !c.init_from.empty())
    fail("[train] give either model (a preset) or {} (an existing model folder), not both", setting("init_from"));
  if (!c.model && c.init_from.empty())
    fail("[train] no model: give model (e.g. {{\"preset\": \"130m\"}}) or {} (an existing model folder)",
         setting("init_from"));
  if (!c.init_from.empty() && !fs::is_directory(c.init_from))
    missing("init_from", c.init_from, "is not a folder");
  if (c.tokenizer.empty()) {
    if (c.init_from.empty()) bad("tokenizer", "is required (a tokenizer.json) when the model comes from a preset");
    if (!fs::is_regular_file(c.init_from / "tokenizer.json"))
      bad("tokenizer", fmt::format("is required: {} holds no tokenizer.json", c.init_from.string()));
  } else if (!fs::is_regular_file(c.tokenizer)) {
    missing("tokenizer", c.tokenizer, "does not exist");
  }
  if (c.train.empty()) bad("train", "is required: text files or folders of .txt files");
  for (const auto& p : c.train)
    if (!fs::exists(p)) missing("train", p, "does not exist");
  for (const auto& p : c.val)
    if (!fs::exists(p)) missing("val", p, "does not exist");
  if (!(c.val_fraction >= 0.0 && c.val_fraction < 1.0))
    bad("val_fraction", fmt::format("must be in [0, 1), got {}", c.val_fraction));
  if (!c.val.empty() && c.val_fraction > 0.0)
    fail("[train] give either {} (files) or {}, not both", setting("val"), setting("val_fraction"));
  if (c.seq_len < 2 || c.seq_len > (int64_t(1) << 24)) bad("seq_len", fmt::format("must be in [2, 2^24], got {}", c.seq_len));
  if (c.batch_size < 1) bad("batch_size", fmt::format("must be positive, got {}", c.batch_size));
  if (c.grad_accum < 1) bad("grad_accum", fmt::format("must be positive, got {}", c.grad_accum));
  if (c.max_steps < 0) bad("max_steps", fmt::format("must be positive, got {}", c.max_steps));
  if (!(c.epochs >= 0.0) || !std::isfinite(c.epochs)) bad("epochs", fmt::format("must be positive, got {}", c.epochs));
  if (c.max_steps == 0 && c.epochs == 0.0)
    fail("[train] how long to train: give {} or {}", setting("max_steps"), setting("epochs"));
  if (!(c.lr > 0.0) || !std::isfinite(c.lr)) bad("lr", fmt::format("must be positive, got {}", c.lr));
  if (c.min_lr && !(*c.min_lr >= 0.0 && *c.min_lr <= c.lr))
    bad("min_lr", fmt::format("must be in [0, lr = {}], got {}", c.lr, *c.min_lr));
  if (c.warmup_steps < 0) bad("warmup_steps", fmt::format("must be non-negative, got {}", c.warmup_steps));
  if (c.schedule != "cosine" && c.schedule != "constant")
    bad("schedule", fmt::format("must be \"cosine\" or \"constant\", got \"{}\"", c.schedule));
  if (!(c.weight_decay >= 0.0) || !std::isfinite(c.weight_decay))
    bad("weight_decay", fmt::format("must be non-negative, got {}", c.weight_decay));
  if (!(c.beta1 >= 0.0 && c.beta1 < 1.0)) bad("beta1", fmt::format("must be in [0, 1), got {}", c.beta1));
  if (!(c.beta2 >= 0.0 && c.beta2 < 1.0)) bad("beta2", fmt::format("must be in [0, 1), got {}", c.beta2));
  if (!(c.eps > 0.0)) bad("eps", fmt::format("must be positive, got {}", c.eps));
  if (!(c.grad_clip >= 0.0) || !std::isfinite(c.grad_clip))
    bad("grad_clip", fmt::format("must be non-negative (0: no clipping), got {}", c.grad_clip));
  if (c.eval_interval < 0) bad("eval_interval", fmt::format("must be non-negative, got {}", c.eval_interval));
  if (c.eval_rows < 0) bad("eval_rows", fmt::format("must be non-negative (0: all), got {}", c.eval_rows));
  if (c.log_interval < 1) bad("log_interval", fmt::format("must be positive, got {}", c.log_interval));
  if (c.checkpoint_interval < 0)
    bad("checkpoint_interval", fmt::format("must be non-negative, got {}", c.checkpoint_interval));
  if (c.keep_checkpoints < 0)
    bad("keep_checkpoints", fmt::format("must be non-negative (0: keep all), got {}", c.keep_checkpoints));
  if (!parse_dtype(c.dtype))
    bad("dtype", fmt::format("must be f32, bf16 or f16, got \"{}\"", c.dtype));
  if (c.threads < 0) bad("threads", fmt::format("must be non-negative, got {}", c.threads));
  if (c.keep_best && c.val.empty() && !(c.val_fraction > 0.0))
    bad("keep_best", "needs validation data: give val files or a val_fraction");
  if (!c.device.empty() && !parse_device(c.device))
    bad("device", fmt::format("must be cpu, cuda or cuda:N, got \"{}\"", c.device));
  if (c.model) {
    const TrainModelSpec& m = *c.model;
    preset_config(m.preset);  // names an unknown preset
    const std::pair<const char*, int64_t> dims[] = {
        {"d_model", m.d_model},   {"n_layer", m.n_layer}, {"d_state", m.d_state}, {"headdim", m.headdim},
        {"ngroups", m.ngroups},   {"chunk_size", m.chunk_size}, {"expand", m.expand}, {"d_conv", m.d_conv},
        {"vocab_size", m.vocab_size}, {"pad_vocab_size_multiple", m.pad_vocab_size_multiple}};
    for (const auto& [k, v] : dims)
      if (v < 0) fail("[train] model.{} must be positive (0: the preset's), got {}", k, v);
  }
}

TrainConfig resume_config(const fs::path& out) {
  const fs::path dir = training::latest_checkpoint(out);
  if (dir.empty()) fail("[train] --resume: {} holds no checkpoint ({} is missing)", out.string(), (out / "latest").string());
  const training::SavedTrainerState state = training::read_trainer_state(dir);
  TrainConfig c = parse_train_config(state.config_json, (dir / "trainer_state.json").string() + ": config");
  c.resume = true;
  return c;
}

}  // namespace mamba2
