// State snapshots (mamba2/state.h): a slot of an InferenceState to and from the host, and the
// snapshot file.
#include "mamba2/state.h"

#include <charconv>
#include <cstring>

#include "cuda/runtime.h"
#include "io/safetensors.h"
#include "mamba2/error.h"
#include "mamba2/model.h"
#include "model/inference_state.h"

namespace mamba2 {

namespace {

constexpr const char* kFormat = "mamba2.cpp state";
constexpr const char* kVersion = "1";

// Bytes of row `slot` of a (batch, width) fp32 state buffer on its device.
void copy_row_out(const Tensor& t, int64_t slot, std::vector<float>& out) {
  const int64_t width = t.dim(1);
  out.resize(size_t(width));
  const auto* src = static_cast<const char*>(t.raw()) + slot * width * int64_t(sizeof(float));
  if (t.device() == Device::CUDA)
    cuda::copy_to_host(out.data(), src, out.size() * sizeof(float));
  else
    std::memcpy(out.data(), src, out.size() * sizeof(float));
}

void copy_row_in(Tensor& t, int64_t slot, const std::vector<float>& in) {
  auto* dst = static_cast<char*>(t.raw()) + slot * t.dim(1) * int64_t(sizeof(float));
  if (t.device() == Device::CUDA)
    cuda::copy_to_device(dst, in.data(), in.size() * sizeof(float));
  else
    std::memcpy(dst, in.data(), in.size() * sizeof(float));
}

void check_slot(const InferenceState& state, int64_t slot, const char* what) {
  if (slot < 0 || slot >= state.batch) fail("[state] {} slot {} outside the state's {} sequences", what, slot, state.batch);
}

int64_t parse_count(const std::string& file, const std::string& key, const std::string& text) {
  int64_t v = -1;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size() || v < 0)
    fail("[state] {}: metadata '{}' is '{}', not a count", file, key, text);
  return v;
}

}  // namespace

void TokenHistory::extend(std::span<const int32_t> tokens) {
  for (int32_t t : tokens) {
    const auto u = uint32_t(t);
    for (int b = 0; b < 4; ++b) hash = (hash ^ ((u >> (8 * b)) & 0xffu)) * 0x100000001b3ull;
  }
  count += int64_t(tokens.size());
}

std::string TokenHistory::hash_hex() const { return fmt::format("{:016x}", hash); }

StateSnapshot snapshot_state(const Model& model, const InferenceState& state, int64_t slot,
                             const TokenHistory& history) {
  check_slot(state, slot, "snapshot of");
  if (int64_t(state.conv.size()) != model.config().n_layer)
    fail("[state] the state has {} layers, the model {}", state.conv.size(), model.config().n_layer);
  if (model.fingerprint().empty()) fail("[state] the model has no fingerprint (its weights were never on the CPU)");
  StateSnapshot s;
  s.model = model.fingerprint();
  s.dtype = dtype_name(model.dtype());
  s.device = device_name(model.device());
  s.history = history;
  s.conv.resize(state.conv.size());
  s.ssm.resize(state.ssm.size());
  for (size_t l = 0; l < state.conv.size(); ++l) {
    copy_row_out(state.conv[l], slot, s.conv[l]);
    copy_row_out(state.ssm[l], slot, s.ssm[l]);
  }
  return s;
}

void restore_state(const Model& model, InferenceState& state, int64_t slot, const StateSnapshot& s) {
  check_slot(state, slot, "restore into");
  const ModelConfig& c = model.config();
  if (s.model != model.fingerprint())
    fail("[state] the state was made by model {}, not this one ({})", s.model, model.fingerprint());
  const size_t conv_width = size_t(c.conv_state_width()), ssm_width = size_t(c.ssm_state_width());
  bool ok = int64_t(s.conv.size()) == c.n_layer && int64_t(s.ssm.size()) == c.n_layer &&
            int64_t(state.conv.size()) == c.n_layer;
  for (size_t l = 0; ok && l < s.conv.size(); ++l)
    ok = s.conv[l].size() == conv_width && s.ssm[l].size() == ssm_width && state.conv[l].dim(1) == int64_t(conv_width) &&
         state.ssm[l].dim(1) == int64_t(ssm_width);
  if (!ok) fail("[state] the snapshot's layers or widths do not match the model");
  for (size_t l = 0; l < s.conv.size(); ++l) {
    copy_row_in(state.conv[l], slot, s.conv[l]);
    copy_row_in(state.ssm[l], slot, s.ssm[l]);
  }
}

void copy_state(const InferenceState& from, int64_t from_slot, InferenceState& to, int64_t to_slot) {
  check_slot(from, from_slot, "copy from");
  check_slot(to, to_slot, "copy into");
  bool same = from.conv.size() == to.conv.size() && from.ssm.size() == to.ssm.size();
  for (size_t l = 0; same && l < from.conv.size(); ++l)
    for (auto [a, b] : {std::pair{&from.conv[l], &to.conv[l]}, std::pair{&from.ssm[l], &to.ssm[l]}})
      same = a->dim(1) == b->dim(1) && a->device() == b->device();
  if (!same) fail("[state] copy between states of other layers, widths or devices");
  if (&from == &to && from_slot == to_slot) return;
  for (size_t l = 0; l < from.conv.size(); ++l)
    for (auto [a, b] : {std::pair{&from.conv[l], &to.conv[l]}, std::pair{&from.ssm[l], &to.ssm[l]}}) {
      const size_t row = size_t(a->dim(1)) * sizeof(float);
      const auto* src = static_cast<const char*>(a->raw()) + size_t(from_slot) * row;
      auto* dst = static_cast<char*>(b->raw()) + size_t(to_slot) * row;
      if (a->device() == Device::CUDA)
        cuda::copy_on_device(dst, src, row);
      else
        std::memcpy(dst, src, row);
    }
}

void clear_state(InferenceState& state, int64_t slot) {
  check_slot(state, slot, "clear");
  for (auto* layers : {&state.conv, &state.ssm})
    for (Tensor& t : *layers) {
      const size_t row = size_t(t.dim(1)) * sizeof(float);
      auto* dst = static_cast<char*>(t.raw()) + size_t(slot) * row;
      if (t.device() == Device::CUDA)
        cuda::fill_zero(dst, row);
      else
        std::memset(dst, 0, row);
    }
}

void save_state(const std::filesystem::path& path, const StateSnapshot& s) {
  if (s.conv.size() != s.ssm.size()) fail("[state] {}: {} conv and {} ssm layers", path.string(), s.conv.size(), s.ssm.size());
  std::vector<TensorToWrite> tensors;
  for (size_t l = 0; l < s.conv.size(); ++l) {
    tensors.push_back({fmt::format("conv.{}", l), DType::F32, {int64_t(s.conv[l].size())}, s.conv[l].data()});
    tensors.push_back({fmt::format("ssm.{}", l), DType::F32, {int64_t(s.ssm[l].size())}, s.ssm[l].data()});
  }
  write_safetensors(path, tensors,
                    {{"format", kFormat},
                     {"version", kVersion},
                     {"model", s.model},
                     {"dtype", s.dtype},
                     {"device", s.device},
                     {"n_layer", std::to_string(s.conv.size())},
                     {"tokens", std::to_string(s.history.count)},
                     {"tokens_fnv1a64", s.history.hash_hex()}});
}

StateSnapshot load_state(const std::filesystem::path& path) {
  const std::string file = path.string();
  const TensorArchive a = read_safetensors(path);
  auto meta = [&](const char* key) -> const std::string& {
    auto it = a.metadata.find(key);
    if (it == a.metadata.end()) fail("[state] {}: metadata '{}' is missing: not a state file", file, key);
    return it->second;
  };
  if (meta("format") != kFormat) fail("[state] {}: format is '{}', not '{}'", file, meta("format"), kFormat);
  if (meta("version") != kVersion)
    fail("[state] {}: version {} of the state format; this build reads version {}", file, meta("version"), kVersion);
  StateSnapshot s;
  s.model = meta("model");
  s.dtype = meta("dtype");
  s.device = meta("device");
  s.history.count = parse_count(file, "tokens", meta("tokens"));
  const std::string& hash = meta("tokens_fnv1a64");
  const auto [end, ec] = std::from_chars(hash.data(), hash.data() + hash.size(), s.history.hash, 16);
  if (hash.size() != 16 || ec != std::errc() || end != hash.data() + hash.size())
    fail("[state] {}: metadata 'tokens_fnv1a64' is '{}', not 16 hex digits", file, hash);
  const int64_t layers = parse_count(file, "n_layer", meta("n_layer"));
  if (int64_t(a.tensors().size()) != 2 * layers)
    fail("[state] {}: {} tensors for {} layers (conv.<i> and ssm.<i> each)", file, a.tensors().size(), layers);
  s.conv.resize(size_t(layers));
  s.ssm.resize(size_t(layers));
  for (int64_t l = 0; l < layers; ++l)
    for (auto [prefix, dst] : {std::pair{"conv", &s.conv[size_t(l)]}, {"ssm", &s.ssm[size_t(l)]}}) {
      const std::string name = fmt::format("{}.{}", prefix, l);
      const StoredTensor* t = a.find(name);
      if (!t) fail("[state] {}: tensor '{}' is missing", file, name);
      if (t->dtype != DType::F32 || t->shape.size() != 1)
        fail("[state] {}: tensor '{}' is {} {}, expected a 1-D F32 row", file, name, dtype_name(t->dtype), t->shape_str());
      dst->resize(size_t(t->numel()));
      std::memcpy(dst->data(), t->data, t->nbytes);
    }
  return s;
}

}  // namespace mamba2
