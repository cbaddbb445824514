#include "mamba2/config.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "core/file.h"
#include "core/json.h"
#include "mamba2/error.h"

namespace mamba2 {

using nlohmann::json;

int64_t ModelConfig::vocab_padded() const {
  const int64_t m = pad_vocab_size_multiple;
  return (vocab_size + m - 1) / m * m;
}

int64_t ModelConfig::parameter_count() const {
  const int64_t di = d_inner();
  const int64_t per_layer =
      mamba1() ? d_model + d_in_proj() * d_model + di * d_conv + x_proj_rows() * di + di * dt_rank + di +
                     di * d_state * (complex_scan ? 2 : 1) + di + d_model * di +
                     (conv_bias ? di : 0) + (proj_bias ? d_in_proj() + d_model : 0)
               : d_model + d_in_proj() * d_model + conv_dim() * d_conv + conv_dim() + 3 * nheads() + di + d_model * di;
  return vocab_padded() * d_model * (tie_embeddings ? 1 : 2) + n_layer * per_layer + d_model;
}

void ModelConfig::validate(const std::string& source) const {
  // Bounds first: every size computed from these (d_inner, d_in_proj, parameter counts, buffer
  // sizes) must fit in int64 whatever a file says.
  struct Dim { const char* name; int64_t value, max; };
  for (const Dim& d : {Dim{"d_model", d_model, 1 << 20}, Dim{"n_layer", n_layer, 4096},
                       Dim{"vocab_size", vocab_size, 1 << 24}, Dim{"pad_vocab_size_multiple", pad_vocab_size_multiple, 1 << 16},
                       Dim{"d_state", d_state, 4096}, Dim{"d_conv", d_conv, 64}, Dim{"expand", expand, 64},
                       Dim{"headdim", headdim, 1 << 16}, Dim{"ngroups", ngroups, 1024},
                       Dim{"chunk_size", chunk_size, 1 << 16}, Dim{"dt_rank", mamba1() ? dt_rank : 1, 1 << 16}}) {
    if (d.value <= 0) fail("[config] {}: {} must be positive, got {}", source, d.name, d.value);
    if (d.value > d.max) fail("[config] {}: {} = {} is past the supported maximum {}", source, d.name, d.value, d.max);
  }
  if (!(norm_eps > 0.0)) fail("[config] {}: norm epsilon must be positive, got {}", source, norm_eps);
  if (mamba1()) {
    if (mixer_norms && !(mixer_rms_eps > 0.0))
      fail("[config] {}: mixer_rms_eps must be positive, got {}", source, mixer_rms_eps);
    return;
  }
  if (complex_scan) fail("[config] {}: the complex scan is a Mamba-1 layer's, not Mamba2's", source);
  if (d_inner() % headdim != 0)
    fail("[config] {}: d_inner {} is not a multiple of headdim {}", source, d_inner(), headdim);
  if (nheads() % ngroups != 0)
    fail("[config] {}: nheads {} is not a multiple of ngroups {}", source, nheads(), ngroups);
  if (!(dt_limit_min >= 0.0) || !(dt_limit_max > dt_limit_min))
    fail("[config] {}: dt_limit ({}, {}) is not a valid range", source, dt_limit_min, dt_limit_max);
}

namespace {

double limit_value(const json& v, const std::string& where) {
  if (v.is_number()) return v.get<double>();
  if (v.is_string() && (v == "inf" || v == "Infinity")) return std::numeric_limits<double>::infinity();
  if (v.is_null()) return std::numeric_limits<double>::infinity();  // JSON writers that map inf to null
  fail("[config] {}: dt limit value {} is not a number", where, json_excerpt(v));
}

// An integer-valued key: an integer, or a float with an integral value (some writers emit 2.0),
// within int64; anything else (32.5, 1e300, "32") is refused by name rather than cast.
int64_t integer_value(const json& v, const char* key, const std::string& where) {
  if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX))
    fail("[config] {}: '{}' = {} is out of range", where, key, json_excerpt(v));
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.007199254740992e15) return int64_t(d);
  }
  fail("[config] {}: '{}' must be an integer, got {}", where, key, json_excerpt(v));
}

// dt_limit (official) or time_step_limit (HF): [lo, hi], hi possibly infinite.
void read_dt_limit(const json& obj, const char* key, ModelConfig& c, const std::string& where) {
  if (!obj.contains(key)) return;
  const json& r = obj[key];
  if (!r.is_array() || r.size() != 2) fail("[config] {}: '{}' must be [lo, hi]", where, key);
  c.dt_limit_min = limit_value(r[0], where);
  c.dt_limit_max = limit_value(r[1], where);
}

template <class T>
T get_as(const json& obj, const char* key, const std::string& where) {
  if (!obj.contains(key)) fail("[config] {}: '{}' is missing", where, key);
  const json& v = obj.at(key);
  if constexpr (std::is_same_v<T, int64_t>) {
    return integer_value(v, key, where);
  } else {
    if constexpr (std::is_same_v<T, bool>) {
      if (!v.is_boolean()) fail("[config] {}: '{}' must be true or false, got {}", where, key, json_excerpt(v));
    } else {
      if (!v.is_number()) fail("[config] {}: '{}' must be a number, got {}", where, key, json_excerpt(v));
    }
    return v.get<T>();
  }
}

template <class T>
void read_opt(const json& obj, const char* key, T& out, const std::string& where) {
  if (obj.contains(key) && !obj.at(key).is_null()) out = get_as<T>(obj, key, where);
}

void require(bool ok, const std::string& where, const char* key, const json& value, const char* why) {
  if (!ok) fail("[config] {}: unsupported value {} for '{}' ({})", where, json_excerpt(value), key, why);
}

// Python's json.dumps writes Infinity, -Infinity and NaN for float('inf') and friends; they
// become the strings "inf", "-inf" and "nan" (outside string literals), in one pass.
std::string python_constants_as_strings(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char ch = text[i];
    if (in_string) {
      out += ch;
      if (ch == '\\' && i + 1 < text.size()) out += text[++i];
      else if (ch == '"') in_string = false;
      continue;
    }
    if (ch == '"') in_string = true;
    bool replaced = false;
    for (const auto& [token, as] : {std::pair<std::string_view, std::string_view>{"-Infinity", "\"-inf\""},
                                    {"Infinity", "\"inf\""}, {"NaN", "\"nan\""}}) {
      if (std::string_view(text).substr(i, token.size()) == token) {
        out += as;
        i += token.size() - 1;
        replaced = true;
        break;
      }
    }
    if (!replaced) out += ch;
  }
  return out;
}

// dt_rank (official) or time_step_rank (HF): "auto" (⌈d_model/16⌉) or a positive integer.
void read_dt_rank(const json& obj, const char* key, ModelConfig& c, const std::string& where) {
  c.dt_rank = (c.d_model + 15) / 16;
  if (!obj.contains(key) || obj[key].is_null() || obj[key] == "auto") return;
  c.dt_rank = integer_value(obj[key], key, where);
}

// mamba_ssm's `Mamba` (Mamba-1): its __init__ keys, and "complex" (ours: complex A, B and C).
void parse_official_mamba1(const json& ssm, ModelConfig& c, const std::string& ssm_where) {
  static const std::set<std::string> known = {"layer", "d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max",
                                              "dt_init", "dt_scale", "dt_init_floor", "conv_bias", "bias",
                                              "use_fast_path", "complex"};
  for (const auto& [key, value] : ssm.items())
    if (!known.count(key)) fail("[config] {}: unknown key '{}' for a Mamba1 layer", ssm_where, key);
  c.family = Family::Mamba1;
  c.d_state = 16;
  read_opt(ssm, "d_state", c.d_state, ssm_where);
  read_opt(ssm, "d_conv", c.d_conv, ssm_where);
  read_opt(ssm, "expand", c.expand, ssm_where);
  read_opt(ssm, "dt_min", c.dt_min, ssm_where);
  read_opt(ssm, "dt_max", c.dt_max, ssm_where);
  read_opt(ssm, "dt_init_floor", c.dt_init_floor, ssm_where);
  read_opt(ssm, "conv_bias", c.conv_bias, ssm_where);
  read_opt(ssm, "bias", c.proj_bias, ssm_where);
  read_opt(ssm, "complex", c.complex_scan, ssm_where);
  read_dt_rank(ssm, "dt_rank", c, ssm_where);
  if (ssm.contains("dt_init"))
    require(ssm["dt_init"] == "random" || ssm["dt_init"] == "constant", ssm_where, "dt_init", ssm["dt_init"],
            "mamba_ssm takes \"random\" or \"constant\"");
}

ModelConfig parse_official(const json& j, const std::string& where) {
  static const std::set<std::string> known_top = {
      "d_model", "d_intermediate", "n_layer", "vocab_size", "ssm_cfg", "attn_layer_idx",
      "attn_cfg", "rms_norm", "residual_in_fp32", "fused_add_norm", "pad_vocab_size_multiple",
      "tie_embeddings"};
  static const std::set<std::string> known_ssm = {
      "layer", "d_state", "d_conv", "expand", "headdim", "d_ssm", "ngroups", "A_init_range",
      "D_has_hdim", "rmsnorm", "norm_before_gate", "dt_min", "dt_max", "dt_init_floor",
      "dt_limit", "bias", "conv_bias", "chunk_size", "use_mem_eff_path", "conv_init"};
  for (const auto& [key, value] : j.items())
    if (!known_top.count(key)) fail("[config] {}: unknown key '{}'", where, key);
  ModelConfig c;
  c.layout = CheckpointLayout::Official;
  c.d_model = get_as<int64_t>(j, "d_model", where);
  c.n_layer = get_as<int64_t>(j, "n_layer", where);
  c.vocab_size = get_as<int64_t>(j, "vocab_size", where);
  read_opt(j, "pad_vocab_size_multiple", c.pad_vocab_size_multiple, where);
  read_opt(j, "tie_embeddings", c.tie_embeddings, where);
  if (j.contains("d_intermediate"))
    require(j["d_intermediate"] == 0, where, "d_intermediate", j["d_intermediate"], "MLP blocks are not supported");
  if (j.contains("attn_layer_idx"))
    require(j["attn_layer_idx"].is_array() && j["attn_layer_idx"].empty(), where, "attn_layer_idx",
            j["attn_layer_idx"], "attention layers are not supported");
  if (j.contains("rms_norm"))
    require(j["rms_norm"] == true, where, "rms_norm", j["rms_norm"], "only RMSNorm is supported");

  json ssm = j.value("ssm_cfg", json::object());
  if (!ssm.is_object()) fail("[config] {}: 'ssm_cfg' must be an object", where);
  const std::string ssm_where = where + " ssm_cfg";
  // mamba_ssm's default layer is Mamba1.
  if (!ssm.contains("layer") || ssm["layer"] == "Mamba1") {
    parse_official_mamba1(ssm, c, ssm_where);
    return c;
  }
  for (const auto& [key, value] : ssm.items())
    if (!known_ssm.count(key)) fail("[config] {}: unknown key '{}'", ssm_where, key);
  if (ssm["layer"] != "Mamba2")
    fail("[config] {}: 'layer' must be \"Mamba1\" or \"Mamba2\" (got {})", ssm_where, json_excerpt(ssm["layer"]));
  read_opt(ssm, "d_state", c.d_state, ssm_where);
  read_opt(ssm, "d_conv", c.d_conv, ssm_where);
  read_opt(ssm, "expand", c.expand, ssm_where);
  read_opt(ssm, "headdim", c.headdim, ssm_where);
  read_opt(ssm, "ngroups", c.ngroups, ssm_where);
  read_opt(ssm, "chunk_size", c.chunk_size, ssm_where);
  read_opt(ssm, "dt_min", c.dt_min, ssm_where);
  read_opt(ssm, "dt_max", c.dt_max, ssm_where);
  read_opt(ssm, "dt_init_floor", c.dt_init_floor, ssm_where);
  if (ssm.contains("d_ssm") && !ssm["d_ssm"].is_null()) {
    c.validate(ssm_where);  // bounds expand × d_model
    require(integer_value(ssm["d_ssm"], "d_ssm", ssm_where) == c.d_inner(), ssm_where, "d_ssm", ssm["d_ssm"],
            "must equal d_inner");
  }
  auto flag = [&](const char* key, bool supported_value, const char* why) {
    if (ssm.contains(key)) require(ssm[key] == supported_value, ssm_where, key, ssm[key], why);
  };
  flag("D_has_hdim", false, "only per-head D is supported");
  flag("rmsnorm", true, "the gated RMSNorm is required");
  flag("norm_before_gate", false, "only gate-then-norm is supported");
  flag("bias", false, "projection biases are not supported");
  flag("conv_bias", true, "the conv bias is required");
  if (ssm.contains("A_init_range")) {
    const json& r = ssm["A_init_range"];
    if (!r.is_array() || r.size() != 2 || !r[0].is_number() || !r[1].is_number())
      fail("[config] {}: 'A_init_range' must be [lo, hi]", ssm_where);
    c.A_init_min = r[0].get<double>();
    c.A_init_max = r[1].get<double>();
  }
  read_dt_limit(ssm, "dt_limit", c, ssm_where);
  return c;
}

// MambaForCausalLM (model_type "mamba") and FalconMambaForCausalLM ("falcon_mamba": the weightless
// norms on dt_low, B and C).
ModelConfig parse_hf_mamba1(const json& j, const std::string& where, bool falcon) {
  ModelConfig c;
  c.layout = CheckpointLayout::HuggingFace;
  c.family = Family::Mamba1;
  c.d_model = get_as<int64_t>(j, "hidden_size", where);
  c.n_layer = get_as<int64_t>(j, "num_hidden_layers", where);
  c.vocab_size = get_as<int64_t>(j, "vocab_size", where);
  c.pad_vocab_size_multiple = 1;  // the HF embedding has exactly vocab_size rows
  c.d_state = 16;
  read_opt(j, "state_size", c.d_state, where);
  read_opt(j, "expand", c.expand, where);
  read_opt(j, "conv_kernel", c.d_conv, where);
  read_opt(j, "layer_norm_epsilon", c.norm_eps, where);
  read_opt(j, "tie_word_embeddings", c.tie_embeddings, where);
  read_opt(j, "time_step_min", c.dt_min, where);
  read_opt(j, "time_step_max", c.dt_max, where);
  read_opt(j, "time_step_floor", c.dt_init_floor, where);
  read_opt(j, "use_bias", c.proj_bias, where);
  read_opt(j, "use_conv_bias", c.conv_bias, where);
  read_dt_rank(j, "time_step_rank", c, where);
  c.mixer_norms = falcon;
  if (falcon) read_opt(j, "mixer_rms_eps", c.mixer_rms_eps, where);
  if (j.contains("intermediate_size") && !j["intermediate_size"].is_null()) {
    c.validate(where);  // bounds expand × hidden_size
    const int64_t di = get_as<int64_t>(j, "intermediate_size", where);
    if (di != c.d_inner())
      fail("[config] {}: intermediate_size {} != expand {} × hidden_size {}", where, di, c.expand, c.d_model);
  }
  if (j.contains("hidden_act")) require(j["hidden_act"] == "silu", where, "hidden_act", j["hidden_act"], "only SiLU is supported");
  return c;
}

ModelConfig parse_hf(const json& j, const std::string& where) {
  ModelConfig c;
  c.layout = CheckpointLayout::HuggingFace;
  c.d_model = get_as<int64_t>(j, "hidden_size", where);
  c.n_layer = get_as<int64_t>(j, "num_hidden_layers", where);
  c.vocab_size = get_as<int64_t>(j, "vocab_size", where);
  c.pad_vocab_size_multiple = 1;  // the HF embedding has exactly vocab_size rows
  read_opt(j, "state_size", c.d_state, where);
  read_opt(j, "head_dim", c.headdim, where);
  read_opt(j, "n_groups", c.ngroups, where);
  read_opt(j, "expand", c.expand, where);
  read_opt(j, "conv_kernel", c.d_conv, where);
  read_opt(j, "chunk_size", c.chunk_size, where);
  read_opt(j, "layer_norm_epsilon", c.norm_eps, where);
  read_opt(j, "tie_word_embeddings", c.tie_embeddings, where);
  read_opt(j, "time_step_min", c.dt_min, where);
  read_opt(j, "time_step_max", c.dt_max, where);
  read_opt(j, "time_step_floor", c.dt_init_floor, where);
  if (j.contains("num_heads") && !j["num_heads"].is_null()) {
    const int64_t nh = get_as<int64_t>(j, "num_heads", where);
    c.validate(where);  // bounds head_dim, expand and hidden_size
    int64_t heads_width = 0;
    if (__builtin_mul_overflow(nh, c.headdim, &heads_width) || heads_width != c.d_inner())
      fail("[config] {}: num_heads {} × head_dim {} != expand {} × hidden_size {}", where, nh, c.headdim,
           c.expand, c.d_model);
  }
  auto flag = [&](const char* key, const json& supported_value, const char* why) {
    if (j.contains(key)) require(j[key] == supported_value, where, key, j[key], why);
  };
  // rms_norm and norm_before_gate are not read: transformers' Mamba2 ignores them too (its
  // mixer always gates, then applies RMSNorm), and its config defaults norm_before_gate to true.
  flag("use_bias", false, "projection biases are not supported");
  flag("use_conv_bias", true, "the conv bias is required");
  flag("hidden_act", "silu", "only SiLU is supported");
  read_dt_limit(j, "time_step_limit", c, where);
  return c;
}

}  // namespace

ModelConfig load_config(const std::filesystem::path& path) {
  const std::string where = path.string();
  const std::string text = read_file(path, "[config]");
  const json j = parse_json(python_constants_as_strings(text), "[config] " + where);
  if (!j.is_object()) fail("[config] {}: top level is not an object", where);
  ModelConfig c;
  if (j.contains("d_model") || j.contains("ssm_cfg")) {
    c = parse_official(j, where);
  } else if (j.contains("hidden_size")) {
    // The architecture names the family; null or missing (a config saved from a bare config
    // object), the model_type does, as in transformers.
    static const std::pair<const char*, const char*> kinds[] = {
        {"Mamba2ForCausalLM", "mamba2"}, {"MambaForCausalLM", "mamba"}, {"FalconMambaForCausalLM", "falcon_mamba"}};
    std::string model_type = "mamba2";
    if (j.contains("model_type") && !j["model_type"].is_null()) {
      const json& t = j["model_type"];
      if (!t.is_string() || std::none_of(std::begin(kinds), std::end(kinds), [&](const auto& k) { return t == k.second; }))
        fail("[config] {}: model_type {} is not \"mamba2\", \"mamba\" or \"falcon_mamba\"", where, json_excerpt(t));
      model_type = t.get<std::string>();
    }
    if (j.contains("architectures") && !j["architectures"].is_null()) {
      const json& a = j["architectures"];
      const auto named = std::find_if(std::begin(kinds), std::end(kinds), [&](const auto& k) {
        return a.is_array() && std::find(a.begin(), a.end(), k.first) != a.end();
      });
      if (named == std::end(kinds))
        fail("[config] {}: architectures {} names none of Mamba2ForCausalLM, MambaForCausalLM, FalconMambaForCausalLM",
             where, json_excerpt(a));
      if (j.contains("model_type") && !j["model_type"].is_null() && model_type != named->second)
        fail("[config] {}: architectures {} and model_type \"{}\" disagree", where, json_excerpt(a), model_type);
      model_type = named->second;
    }
    c = model_type == "mamba2" ? parse_hf(j, where) : parse_hf_mamba1(j, where, model_type == "falcon_mamba");
  } else {
    fail("[config] {}: neither an official mamba_ssm config (d_model, ssm_cfg) nor a Hugging Face "
         "Mamba config (hidden_size)", where);
  }
  c.validate(where);
  return c;
}

namespace {

// MambaConfig / FalconMambaConfig as transformers writes them.
std::string mamba1_hf_json(const ModelConfig& c) {
  if (c.complex_scan) fail("[config] a complex Mamba-1 model has no Hugging Face layout (it is written in the official one)");
  json j = {
      {"architectures", {c.mixer_norms ? "FalconMambaForCausalLM" : "MambaForCausalLM"}},
      {"model_type", c.mixer_norms ? "falcon_mamba" : "mamba"},
      {"hidden_size", c.d_model},
      {"num_hidden_layers", c.n_layer},
      {"vocab_size", c.vocab_padded()},
      {"state_size", c.d_state},
      {"expand", c.expand},
      {"intermediate_size", c.d_inner()},
      {"conv_kernel", c.d_conv},
      {"time_step_rank", c.dt_rank},
      {"layer_norm_epsilon", c.norm_eps},
      {"tie_word_embeddings", c.tie_embeddings},
      {"use_bias", c.proj_bias},
      {"use_conv_bias", c.conv_bias},
      {"residual_in_fp32", true},
      {"hidden_act", "silu"},
      {"time_step_min", c.dt_min},
      {"time_step_max", c.dt_max},
      {"time_step_floor", c.dt_init_floor},
  };
  if (c.mixer_norms) j["mixer_rms_eps"] = c.mixer_rms_eps;
  return j.dump(2) + "\n";
}

}  // namespace

std::string config_to_official_json(const ModelConfig& c) {
  if (!c.mamba1()) fail("[config] only Mamba-1 models are written in the official layout");
  json ssm = {{"layer", "Mamba1"}, {"d_state", c.d_state}, {"d_conv", c.d_conv}, {"expand", c.expand},
              {"dt_rank", c.dt_rank}, {"dt_min", c.dt_min}, {"dt_max", c.dt_max}, {"dt_init_floor", c.dt_init_floor},
              {"conv_bias", c.conv_bias}, {"bias", c.proj_bias}};
  if (c.complex_scan) ssm["complex"] = true;
  const json j = {{"d_model", c.d_model},   {"n_layer", c.n_layer},
                  {"vocab_size", c.vocab_padded()}, {"ssm_cfg", ssm},
                  {"rms_norm", true},       {"residual_in_fp32", true},
                  {"fused_add_norm", true}, {"pad_vocab_size_multiple", c.pad_vocab_size_multiple},
                  {"tie_embeddings", c.tie_embeddings}};
  return j.dump(2) + "\n";
}

std::string config_to_hf_json(const ModelConfig& c) {
  if (c.mamba1()) return mamba1_hf_json(c);
  json j = {
      {"architectures", {"Mamba2ForCausalLM"}},
      {"model_type", "mamba2"},
      {"hidden_size", c.d_model},
      {"num_hidden_layers", c.n_layer},
      {"vocab_size", c.vocab_padded()},
      {"state_size", c.d_state},
      {"head_dim", c.headdim},
      {"num_heads", c.nheads()},
      {"n_groups", c.ngroups},
      {"expand", c.expand},
      {"conv_kernel", c.d_conv},
      {"chunk_size", c.chunk_size},
      {"layer_norm_epsilon", c.norm_eps},
      {"tie_word_embeddings", c.tie_embeddings},
      {"use_bias", false},
      {"use_conv_bias", true},
      {"rms_norm", true},
      {"residual_in_fp32", true},
      {"hidden_act", "silu"},
      {"time_step_min", c.dt_min},
      {"time_step_max", c.dt_max},
      {"time_step_floor", c.dt_init_floor},
  };
  // JSON has no infinity (Python writes a bare Infinity): the default (0, inf) is left out, as
  // transformers then takes it; a finite limit is written as two numbers.
  if (c.has_dt_limit()) {
    if (std::isinf(c.dt_limit_max)) fail("[config] dt_limit ({}, inf) cannot be written as JSON", c.dt_limit_min);
    j["time_step_limit"] = {c.dt_limit_min, c.dt_limit_max};
  }
  return j.dump(2) + "\n";
}

ModelConfig preset_config(const std::string& name) {
  struct Size { const char* name; int64_t d_model, n_layer; };
  static const Size sizes[] = {{"130m", 768, 24}, {"370m", 1024, 48}, {"780m", 1536, 48},
                               {"1.3b", 2048, 48}, {"2.7b", 2560, 64}};
  // state-spaces/mamba-*: Mamba-1, d_state 16, the vocabulary padded to a multiple of 8.
  static const Size mamba1_sizes[] = {{"mamba-130m", 768, 24}, {"mamba-370m", 1024, 48}, {"mamba-790m", 1536, 48},
                                      {"mamba-1.4b", 2048, 48}, {"mamba-2.8b", 2560, 64}};
  for (const auto& s : sizes) {
    if (name == s.name) {
      ModelConfig c;
      c.layout = CheckpointLayout::HuggingFace;
      c.d_model = s.d_model;
      c.n_layer = s.n_layer;
      return c;
    }
  }
  for (const auto& s : mamba1_sizes) {
    if (name == s.name) {
      ModelConfig c;
      c.layout = CheckpointLayout::HuggingFace;
      c.family = Family::Mamba1;
      c.d_model = s.d_model;
      c.n_layer = s.n_layer;
      c.d_state = 16;
      c.pad_vocab_size_multiple = 8;
      c.dt_rank = (c.d_model + 15) / 16;
      return c;
    }
  }
  fail("[config] unknown preset '{}' (choose 130m, 370m, 780m, 1.3b or 2.7b for Mamba2; mamba-130m, mamba-370m, "
       "mamba-790m, mamba-1.4b or mamba-2.8b for Mamba-1)", name);
}

std::string config_summary(const ModelConfig& c) {
  if (c.mamba1()) {
    const char* layout = c.layout == CheckpointLayout::Official ? "official (mamba_ssm)"
                         : c.mixer_norms                         ? "hugging face (FalconMambaForCausalLM)"
                                                                 : "hugging face (MambaForCausalLM)";
    return fmt::format(
        "layout: {}\nfamily: Mamba-1{}\nd_model: {}\nn_layer: {}\nvocab_size: {} (padded {})\nd_inner: {}\n"
        "d_state: {}\nd_conv: {}\ndt_rank: {}\nbias: {}\nconv_bias: {}\n{}norm_eps: {}\ntie_embeddings: {}\n"
        "parameters: {}\n",
        layout, c.complex_scan ? " (complex)" : "", c.d_model, c.n_layer, c.vocab_size, c.vocab_padded(), c.d_inner(),
        c.d_state, c.d_conv, c.dt_rank, c.proj_bias, c.conv_bias,
        c.mixer_norms ? fmt::format("mixer_rms_eps: {}\n", c.mixer_rms_eps) : "", c.norm_eps, c.tie_embeddings,
        c.parameter_count());
  }
  return fmt::format(
      "layout: {}\nfamily: Mamba2\nd_model: {}\nn_layer: {}\nvocab_size: {} (padded {})\nd_inner: {}\nnheads: {}\nheaddim: {}\n"
      "d_state: {}\nngroups: {}\nd_conv: {}\nchunk_size: {}\ndt_limit: ({}, {})\nnorm_eps: {}\n"
      "tie_embeddings: {}\nparameters: {}\n",
      c.layout == CheckpointLayout::Official ? "official (mamba_ssm)" : "hugging face (Mamba2ForCausalLM)",
      c.d_model, c.n_layer, c.vocab_size, c.vocab_padded(), c.d_inner(), c.nheads(), c.headdim, c.d_state,
      c.ngroups, c.d_conv, c.chunk_size, c.dt_limit_min, c.dt_limit_max, c.norm_eps, c.tie_embeddings,
      c.parameter_count());
}

}  // namespace mamba2
