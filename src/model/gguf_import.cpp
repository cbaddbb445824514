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

// The per-layer tensors: GGUF suffix → Hugging Face suffix.
struct LayerName {
  const char* gguf;
  const char* hf;
};
constexpr LayerName kLayerNames[] = {
    {"attn_norm.weight", "norm.weight"},          {"ssm_in.weight", "mixer.in_proj.weight"},
    {"ssm_conv1d.weight", "mixer.conv1d.weight"}, {"ssm_conv1d.bias", "mixer.conv1d.bias"},
    {"ssm_dt.bias", "mixer.dt_bias"},             {"ssm_a", "mixer.A_log"},
    {"ssm_d", "mixer.D"},                         {"ssm_norm.weight", "mixer.norm.weight"},
    {"ssm_out.weight", "mixer.out_proj.weight"}};

}  // namespace

Checkpoint import_gguf_model(const std::filesystem::path& path) {
  const std::string where = "[gguf] " + path.string();
  auto g = std::make_shared<GgufFile>(read_gguf(path));
  const auto arch = g->metadata.find("general.architecture");
  if (arch == g->metadata.end() || !arch->is_string())
    fail("{}: general.architecture is missing or not a string", where);
  if (*arch != "mamba2")
    fail("{}: general.architecture is \"{}\"; mamba2 reads Mamba2 models (\"mamba2\")", where,
         arch->get<std::string>());

  Checkpoint m;
  ModelConfig& c = m.config;
  c.layout = CheckpointLayout::HuggingFace;
  c.d_model = count_key(*g, "mamba2.embedding_length", where);
  c.n_layer = count_key(*g, "mamba2.block_count", where);
  c.d_state = count_key(*g, "mamba2.ssm.state_size", where);
  c.d_conv = count_key(*g, "mamba2.ssm.conv_kernel", where);
  c.ngroups = count_key(*g, "mamba2.ssm.group_count", where);
  const int64_t d_inner = count_key(*g, "mamba2.ssm.inner_size", where);
  const int64_t nheads = count_key(*g, "mamba2.ssm.time_step_rank", where);
  if (c.d_model == 0 || d_inner % c.d_model != 0)
    fail("{}: mamba2.ssm.inner_size {} is not a multiple of mamba2.embedding_length {}", where, d_inner, c.d_model);
  if (nheads == 0 || d_inner % nheads != 0)
    fail("{}: mamba2.ssm.inner_size {} is not a multiple of mamba2.ssm.time_step_rank (the head count) {}", where,
         d_inner, nheads);
  c.expand = d_inner / c.d_model;
  c.headdim = d_inner / nheads;
  if (const auto eps = g->metadata.find("mamba2.attention.layer_norm_rms_epsilon"); eps != g->metadata.end()) {
    if (!eps->is_number() || !(eps->get<double>() > 0.0))
      fail("{}: mamba2.attention.layer_norm_rms_epsilon is {}, not a positive number", where, eps->dump());
    c.norm_eps = eps->get<double>();
  }
  const StoredTensor* embd = g->tensors.find("token_embd.weight");
  if (!embd) fail("{}: tensor token_embd.weight is missing", where);
  if (embd->shape.size() != 2 || embd->shape[1] != c.d_model)
    fail("{}: tensor token_embd.weight is {}, not (vocabulary, {})", where, embd->shape_str(), c.d_model);
  c.vocab_size = embd->shape[0];
  c.pad_vocab_size_multiple = 1;  // the embedding's rows are the vocabulary, as in the HF layout
  c.tie_embeddings = g->tensors.find("output.weight") == nullptr;
  c.validate(where);

  // Every tensor under its Hugging Face name, pointing into the GGUF's mapping (kept alive).
  TensorArchive& out = m.archive;
  out.keep_alive(g);
  auto add = [&](const StoredTensor& t, const std::string& hf_name, std::vector<int64_t> shape) {
    StoredTensor s = t;
    s.name = hf_name;
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    if (n != t.numel())
      fail("{}: tensor {} is {}, expected {} elements for this model", where, t.name, t.shape_str(), n);
    s.shape = std::move(shape);
    out.add(std::move(s));
  };
  const int64_t H = nheads;
  for (const auto& [name, t] : g->tensors.tensors()) {
    if (name == "token_embd.weight") {
      add(t, "backbone.embeddings.weight", t.shape);
    } else if (name == "output_norm.weight") {
      add(t, "backbone.norm_f.weight", t.shape);
    } else if (name == "output.weight") {
      add(t, "lm_head.weight", t.shape);
    } else if (name.rfind("blk.", 0) == 0) {
      const size_t dot = name.find('.', 4);
      const std::string index = name.substr(4, dot == std::string::npos ? std::string::npos : dot - 4);
      const std::string suffix = dot == std::string::npos ? "" : name.substr(dot + 1);
      const LayerName* ln = nullptr;
      for (const LayerName& cand : kLayerNames)
        if (suffix == cand.gguf) ln = &cand;
      int64_t layer = -1;
      if (!index.empty() && index.size() < 6 && index.find_first_not_of("0123456789") == std::string::npos)
        layer = std::stoll(index);
      if (!ln || layer < 0 || layer >= c.n_layer)
        fail("{}: tensor {} is not part of a {}-layer Mamba2 model", where, name, c.n_layer);
      const std::string hf = fmt::format("backbone.layers.{}.{}", layer, ln->hf);
      if (suffix == "ssm_a") {
        // A = −exp(A_log) → A_log = log(−A), in a buffer the archive owns.
        if (t.numel() != H) fail("{}: tensor {} is {}, expected {} heads", where, name, t.shape_str(), H);
        auto a = std::shared_ptr<float[]>(new float[size_t(H)]);
        convert_to_f32(t.dtype, t.data, a.get(), size_t(H));
        for (int64_t h = 0; h < H; ++h) {
          if (!(a[size_t(h)] < 0.0f))
            fail("{}: tensor {} holds A = {} for head {}: a Mamba2 A is negative (A = -exp(A_log))", where, name,
                 a[size_t(h)], h);
          a[size_t(h)] = float(std::log(-double(a[size_t(h)])));
        }
        StoredTensor s = t;
        s.dtype = DType::F32;
        s.data = reinterpret_cast<const unsigned char*>(a.get());
        s.nbytes = size_t(H) * sizeof(float);
        out.keep_alive(std::move(a));
        add(s, hf, {H});
      } else if (suffix == "ssm_d" || suffix == "ssm_norm.weight") {
        add(t, hf, {t.numel()});  // GGUF's (1, H) and (ngroups, d_inner / ngroups)
      } else if (suffix == "ssm_conv1d.weight") {
        add(t, hf, {c.conv_dim(), 1, c.d_conv});  // GGUF squeezes the conv's middle dimension
      } else {
        add(t, hf, t.shape);
      }
    } else {
      fail("{}: tensor {} is not part of a Mamba2 model", where, name);
    }
  }
  for (int64_t i = 0; i < c.n_layer; ++i)
    for (const LayerName& ln : kLayerNames)
      if (!out.find(fmt::format("backbone.layers.{}.{}", i, ln.hf)))
        fail("{}: tensor blk.{}.{} is missing", where, i, ln.gguf);
  if (!out.find("backbone.norm_f.weight")) fail("{}: tensor output_norm.weight is missing", where);
  return m;
}

}  // namespace mamba2
