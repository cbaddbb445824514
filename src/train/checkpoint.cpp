#include "train/checkpoint.h"

#include <cmath>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>

#include "core/file.h"
#include "core/json.h"
#include "io/atomic_file.h"
#include "mamba2/error.h"

namespace mamba2::training {

namespace fs = std::filesystem;

namespace {

constexpr const char* kFiles[] = {"config.json", "model.safetensors", "tokenizer.json", "optimizer.safetensors",
                                  "trainer_state.json"};

void fsync_dir(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

void write_text(const fs::path& path, const std::string& text) {
  AtomicFile f(path, "[checkpoint]");
  f.write(text.data(), text.size());
  f.commit();
}

// step-N folders under checkpoints/, by N.
std::vector<std::pair<int64_t, fs::path>> step_folders(const fs::path& dir) {
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (!e.is_directory() || name.rfind("step-", 0) != 0) continue;
    try {
      size_t used = 0;
      const int64_t n = std::stoll(name.substr(5), &used);
      if (used == name.size() - 5) out.emplace_back(n, e.path());
    } catch (const std::exception&) {
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

fs::path save_checkpoint(const fs::path& out, int64_t step, const CheckpointFiles& files, int64_t keep,
                         const std::function<void(const std::string&)>& after) {
  const fs::path dir = out / "checkpoints", tmp = dir / fmt::format(".tmp-step-{}", step),
                 final_dir = dir / fmt::format("step-{}", step);
  auto stage = [&](const char* name) {
    if (after) after(name);
  };
  fs::create_directories(dir);
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  save_model(tmp, *files.config, *files.weights, DType::F32);
  stage("model");
  write_text(tmp / "tokenizer.json", read_file(files.tokenizer_json, "[checkpoint]"));
  stage("tokenizer");
  files.optimizer->save(tmp / "optimizer.safetensors");
  stage("optimizer");
  write_text(tmp / "trainer_state.json", files.trainer_state_json);
  stage("state");
  fsync_dir(tmp);
  // A folder of this step left by an earlier run that went further, then resumed from before it.
  if (fs::exists(final_dir)) {
    if (latest_checkpoint(out) == final_dir) fail("[checkpoint] {} is the latest checkpoint already", final_dir.string());
    fs::remove_all(final_dir);
  }
  fs::rename(tmp, final_dir);
  fsync_dir(dir);
  stage("renamed");
  write_text(out / "latest", fmt::format("checkpoints/step-{}\n", step));
  if (keep > 0) {
    const auto folders = step_folders(dir);
    for (size_t i = 0; i + size_t(keep) < folders.size(); ++i)
      if (folders[i].second != final_dir) fs::remove_all(folders[i].second);
  }
  return final_dir;
}

fs::path latest_checkpoint(const fs::path& out) {
  const fs::path latest = out / "latest";
  if (!fs::exists(latest)) return {};
  std::ifstream in(latest);
  std::string rel;
  std::getline(in, rel);
  if (rel.empty()) fail("[checkpoint] {} is empty", latest.string());
  const fs::path dir = out / rel;
  for (const char* f : kFiles)
    if (!fs::is_regular_file(dir / f))
      fail("[checkpoint] {} names {}, which has no {}", latest.string(), dir.string(), f);
  return dir;
}

void remove_partial_checkpoints(const fs::path& out) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(out / "checkpoints", ec))
    if (e.path().filename().string().rfind(".tmp-", 0) == 0) fs::remove_all(e.path());
}

SavedTrainerState parse_trainer_state(std::string_view text, const std::string& where) {
  const nlohmann::json s = parse_json(text, "[train] " + where);
  if (!s.is_object() || !s.contains("format") || s["format"] != kTrainerStateFormat)
    fail("[train] {} is not a trainer state", where);
  auto field = [&](const char* key) -> const nlohmann::json& {
    if (!s.contains(key)) fail("[train] {}: '{}' is missing", where, key);
    return s[key];
  };
  auto non_negative = [&](const char* key, uint64_t max) -> uint64_t {
    const nlohmann::json& v = field(key);
    if (!v.is_number_unsigned() || v.get<uint64_t>() > max)
      fail("[train] {}: '{}' must be an integer in [0, {}], got {}", where, key, max, json_excerpt(v));
    return v.get<uint64_t>();
  };
  auto text_of = [&](const char* key) -> std::string {
    const nlohmann::json& v = field(key);
    if (!v.is_string()) fail("[train] {}: '{}' must be a string, got {}", where, key, json_excerpt(v));
    return v.get<std::string>();
  };
  SavedTrainerState st;
  constexpr uint64_t kMaxCount = uint64_t(1) << 62;
  st.step = int64_t(non_negative("step", kMaxCount));
  st.epoch = int64_t(non_negative("epoch", kMaxCount));
  st.index = non_negative("index", kMaxCount);
  st.epoch_key = non_negative("epoch_key", UINT64_MAX);
  st.tokens_seen = int64_t(non_negative("tokens_seen", kMaxCount));
  st.rng = text_of("rng");
  if (const nlohmann::json& v = field("best_val_loss"); !v.is_null()) {
    if (!v.is_number()) fail("[train] {}: 'best_val_loss' must be a number or null, got {}", where, json_excerpt(v));
    st.best_val_loss = v.get<double>();
  }
  if (s.contains("loss_scale")) {
    const nlohmann::json& v = s["loss_scale"];
    if (!v.is_number() || !(v.get<double>() > 0.0) || !std::isfinite(v.get<double>()))
      fail("[train] {}: 'loss_scale' must be a positive number, got {}", where, json_excerpt(v));
    st.loss_scale = v.get<double>();
    st.good_steps = int64_t(non_negative("good_steps", kMaxCount));
  }
  st.train_fingerprint = text_of("train_fingerprint");
  st.val_fingerprint = text_of("val_fingerprint");
  if (!field("config").is_object()) fail("[train] {}: 'config' must be an object", where);
  st.config_json = s["config"].dump();
  return st;
}

SavedTrainerState read_trainer_state(const fs::path& checkpoint_dir) {
  const fs::path path = checkpoint_dir / "trainer_state.json";
  return parse_trainer_state(read_file(path, "[train]"), path.string());
}

}  // namespace mamba2::training
