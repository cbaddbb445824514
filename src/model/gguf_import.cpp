#include "model/gguf_import.h"

#include <fmt/format.h>

#include <cmath>
#include <memory>

#include "io/gguf.h"
#include "mamba2/error.h"

namespace mamba2 {
namespace {

// A required unsigned integer key.
int64_t count_key(const GgufFile& g, const std::string& key, const std::string& where) {
  const auto it = g.metadata.find(key);
  if (it == g.metadata.end()) fail("{}: metadata key {} is missing", where, key);
  if (!it->is_number_unsigned() && !(it->is_number_integer() && it->get<int64_t>() >= 0))
    fail("{}: metadata key {} is {}, not a non-negative integer", where, key, it->dump());
  const uint64_t v = it->get<uint64_t>();
  if (v > (uint64_t(1) << 31)) fail("{}: metadata key {} is {}, out of range", where, key, v);
  return int64_t(v);
}

// A per-layer tensor: its GGUF suffix and shape (row-major, the one llama.cpp's loader requires),
// and its Hugging Face suffix and the shape model/weights.h takes.
struct LayerTensor {
  const char* gguf;
  const char* hf;
  Shape gguf_shape;
  Shape hf_shape;
};

std::vector<LayerTensor> layer_tensors(const ModelConfig& c) {
  const int64_t D = c.d_model, di = c.d_inner(), K = c.d_conv;
  std::vector<LayerTensor> t = {
      {"attn_norm.weight", "norm.weight", {D}, {D}},
      {"ssm_in.weight", "mixer.in_proj.weight", {c.d_in_proj(), D}, {c.d_in_proj(), D}},
      // GGUF squeezes the conv's middle dimension.
      {"ssm_conv1d.weight", "mixer.conv1d.weight", {c.conv_dim(), K}, {c.conv_dim(), 1, K}},
      {"ssm_conv1d.bias", "mixer.conv1d.bias", {c.conv_dim()}, {c.conv_dim()}},
      {"ssm_out.weight", "mixer.out_proj.weight", {D, di}, {D, di}}};
  if (c.mamba1()) {
    const int64_t N = c.d_state, R = c.dt_rank;
    t.insert(t.end(), {{"ssm_x.weight", "mixer.x_proj.weight", {c.x_proj_rows(), di}, {c.x_proj_rows(), di}},
                       {"ssm_dt.weight", "mixer.dt_proj.weight", {di, R}, {di, R}},
                       {"ssm_dt.bias", "mixer.dt_proj.bias", {di}, {di}},
                       {"ssm_a", "mixer.A_log", {di, N}, {di, N}},
                       {"ssm_d", "mixer.D", {di}, {di}}});
  } else {
    const int64_t H = c.nheads(), G = c.ngroups;
    t.insert(t.end(), {{"ssm_dt.bias", "mixer.dt_bias", {H}, {H}},
                       {"ssm_a", "mixer.A_log", {H, 1}, {H}},
                       {"ssm_d", "mixer.D", {H, 1}, {H}},
                       {"ssm_norm.weight", "mixer.norm.weight", {G, di / G}, {di}}});
  }
  return t;
}

// The hyper-parameters under `arch.` (llama.cpp's "mamba2" or "mamba"), checked.
ModelConfig read_config(const GgufFile& g, const std::string& arch, const std::string& where) {
  const std::string k = arch + ".";
  ModelConfig c;
  c.layout = CheckpointLayout::HuggingFace;
  c.family = arch == "mamba" ? Family::Mamba1 : Family::Mamba2;
  c.d_model = count_key(g, k + "embedding_length", where);
  c.n_layer = count_key(g, k + "block_count", where);
  c.d_state = count_key(g, k + "ssm.state_size", where);
  c.d_conv = count_key(g, k + "ssm.conv_kernel", where);
  const int64_t d_inner = count_key(g, k + "ssm.inner_size", where);
  if (c.d_model == 0 || d_inner % c.d_model != 0)
    fail("{}: {}ssm.inner_size {} is not a multiple of {}embedding_length {}", where, k, d_inner, k, c.d_model);
  c.expand = d_inner / c.d_model;
  if (c.mamba1()) {
    c.dt_rank = count_key(g, k + "ssm.time_step_rank", where);
    // llama.cpp's Mamba-1 always has the conv bias and never projection biases.
    c.conv_bias = true;
    c.proj_bias = false;
  } else {
    c.ngroups = count_key(g, k + "ssm.group_count", where);
    const int64_t nheads = count_key(g, k + "ssm.time_step_rank", where);
    if (nheads == 0 || d_inner % nheads != 0)
      fail("{}: mamba2.ssm.inner_size {} is not a multiple of mamba2.ssm.time_step_rank (the head count) {}", where,
           d_inner, nheads);
    c.headdim = d_inner / nheads;
  }
  if (const auto eps = g.metadata.find(k + "attention.layer_norm_rms_epsilon"); eps != g.metadata.end()) {
    if (!eps->is_number() || !(eps->get<double>() > 0.0))
      fail("{}: {}attention.layer_norm_rms_epsilon is {}, not a positive number", where, k, eps->dump());
    c.norm_eps = eps->get<double>();
  }
  if (const auto rms = g.metadata.find(k + "ssm.dt_b_c_rms"); c.mamba1() && rms != g.metadata.end()) {
    if (!rms->is_boolean()) fail("{}: mamba.ssm.dt_b_c_rms is {}, not a bool", where, rms->dump());
    // Falcon-Mamba's weightless norms on dt, B and C, which llama.cpp gives the model's epsilon.
    c.mixer_norms = rms->get<bool>();
    c.mixer_rms_eps = c.norm_eps;
  }
  const StoredTensor* embd = g.tensors.find("token_embd.weight");
  if (!embd) fail("{}: tensor token_embd.weight is missing", where);
  if (embd->shape.size() != 2 || embd->shape[1] != c.d_model)
    fail("{}: tensor token_embd.weight is {}, not (vocabulary, {})", where, embd->shape_str(), c.d_model);
  c.vocab_size = embd->shape[0];
  c.pad_vocab_size_multiple = 1;  // the embedding's rows are the vocabulary, as in the HF layout
  c.tie_embeddings = g.tensors.find("output.weight") == nullptr;
  c.validate(where);
  return c;
}

}  // namespace

Checkpoint import_gguf_model(const std::filesystem::path& path) {
  const std::string where = "[gguf] " + path.string();
  auto g = std::make_shared<GgufFile>(read_gguf(path));
  const auto arch = g->metadata.find("general.architecture");
  if (arch == g->metadata.end() || !arch->is_string())
    fail("{}: general.architecture is missing or not a string", where);
  if (*arch != "mamba2" && *arch != "mamba")
    fail("{}: general.architecture is \"{}\"; mamba2 reads Mamba2 (\"mamba2\") and Mamba-1 (\"mamba\") models", where,
         arch->get<std::string>());

  Checkpoint m;
  m.config = read_config(*g, arch->get<std::string>(), where);
  const ModelConfig& c = m.config;
  const char* family = c.mamba1() ? "Mamba-1" : "Mamba2";
  const std::vector<LayerTensor> layer = layer_tensors(c);

  // Every tensor under its Hugging Face name, pointing into the GGUF's mapping (kept alive).
  TensorArchive& out = m.archive;
  out.keep_alive(g);
  auto add = [&](const StoredTensor& t, const std::string& hf_name, Shape shape) {
    StoredTensor s = t;
    s.name = hf_name;
    s.shape = std::move(shape);
    out.add(std::move(s));
  };
  // The tensor's values as fp32 in a buffer the archive owns, added under `hf_name`.
  auto add_widened = [&](const StoredTensor& t, const std::string& hf_name, Shape shape, auto&& transform) {
    const size_t n = size_t(t.numel());
    auto v = std::shared_ptr<float[]>(new float[n]);
    convert_to_f32(t.dtype, t.data, v.get(), n);
    for (size_t i = 0; i < n; ++i) v[i] = transform(v[i], i);
    StoredTensor s = t;
    s.dtype = DType::F32;
    s.data = reinterpret_cast<const unsigned char*>(v.get());
    s.nbytes = n * sizeof(float);
    out.keep_alive(std::move(v));
    add(s, hf_name, std::move(shape));
  };
  for (const auto& entry : g->tensors.tensors()) {
    // Plain references, not a structured binding: clang 14 cannot capture those in the lambdas.
    const std::string& name = entry.first;
    const StoredTensor& t = entry.second;
    auto expect = [&](const Shape& shape) {
      if (t.shape != shape)
        fail("{}: tensor {} is {}, expected {} for this model", where, name, t.shape_str(), shape_str(shape));
    };
    if (name == "token_embd.weight") {
      add(t, "backbone.embeddings.weight", t.shape);
    } else if (name == "output_norm.weight") {
      expect({c.d_model});
      add(t, "backbone.norm_f.weight", t.shape);
    } else if (name == "output.weight") {
      expect({c.vocab_size, c.d_model});
      add(t, "lm_head.weight", t.shape);
    } else if (name.rfind("blk.", 0) == 0) {
      const size_t dot = name.find('.', 4);
      const std::string index = name.substr(4, dot == std::string::npos ? std::string::npos : dot - 4);
      const std::string suffix = dot == std::string::npos ? "" : name.substr(dot + 1);
      const LayerTensor* lt = nullptr;
      for (const LayerTensor& cand : layer)
        if (suffix == cand.gguf) lt = &cand;
      int64_t li = -1;
      if (!index.empty() && index.size() < 6 && index.find_first_not_of("0123456789") == std::string::npos)
        li = std::stoll(index);
      if (!lt || li < 0 || li >= c.n_layer)
        fail("{}: tensor {} is not part of a {}-layer {} model", where, name, c.n_layer, family);
      expect(lt->gguf_shape);
      const std::string hf = fmt::format("backbone.layers.{}.{}", li, lt->hf);
      if (suffix == "ssm_a") {
        // A = −exp(A_log) → A_log = log(−A).
        const int64_t per_row = t.shape.back();
        add_widened(t, hf, lt->hf_shape, [&](float a, size_t i) {
          if (!(a < 0.0f))
            fail("{}: tensor {} holds A = {} at ({}, {}): a {} A is negative (A = -exp(A_log))", where, name, a,
                 int64_t(i) / per_row, int64_t(i) % per_row, family);
          return float(std::log(-double(a)));
        });
      } else if (is_quantized(t.dtype) && (suffix == "ssm_x.weight" || suffix == "ssm_dt.weight")) {
        // convert_hf_to_gguf.py quantizes Mamba-1's x_proj and dt_proj too; they run in fp32 here.
        add_widened(t, hf, lt->hf_shape, [](float v, size_t) { return v; });
      } else {
        add(t, hf, lt->hf_shape);
      }
    } else {
      fail("{}: tensor {} is not part of a {} model", where, name, family);
    }
  }
  for (int64_t i = 0; i < c.n_layer; ++i)
    for (const LayerTensor& lt : layer)
      if (!out.find(fmt::format("backbone.layers.{}.{}", i, lt.hf)))
        fail("{}: tensor blk.{}.{} is missing", where, i, lt.gguf);
  if (!out.find("backbone.norm_f.weight")) fail("{}: tensor output_norm.weight is missing", where);
  return m;
}

}  // namespace mamba2
