#include "model/weights.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <random>
#include <set>

#include "io/atomic_file.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "io/torch_checkpoint.h"
#include "model/gguf_import.h"
#include "mamba2/error.h"

namespace mamba2 {

namespace {

class Loader {
 public:
  Loader(std::shared_ptr<const TensorArchive> archive, bool keep_bf16) : archive_(*archive), owner_(std::move(archive)) {
    const auto q = archive_.metadata.find(kQuantizationKey);
    bf16_in_place_ = keep_bf16 || (q != archive_.metadata.end() && q->second == "bf16");
  }

  // Accepts the first of `names` present; checks the element count against `shape`. Only a
  // projection matrix (`matrix`) may be stored block-quantized: it is then used in place, as are
  // the BF16 matrices of a file `mamba2 quantize --type bf16` wrote (io/safetensors.h) or, asked
  // (keep_bf16), of any file; other tensors are read as fp32.
  Tensor take(std::initializer_list<std::string> names, const Shape& shape, const Shape& stored_shape,
              bool matrix = false) {
    const StoredTensor* t = nullptr;
    for (const auto& n : names) {
      if ((t = archive_.find(n))) break;
    }
    if (!t) {
      std::string files;
      for (const auto& f : archive_.files()) files += (files.empty() ? "" : ", ") + f;
      fail("[weights] tensor '{}' is missing from {}", *names.begin(), files.empty() ? "the checkpoint" : files);
    }
    if (t->shape != stored_shape)
      fail("[weights] tensor '{}' in {} has shape {}, expected {}", t->name, t->file, t->shape_str(),
           shape_str(stored_shape));
    used_.insert(t->name);
    if (t->dtype == DType::F32 && reinterpret_cast<uintptr_t>(t->data) % alignof(float) == 0)
      return Tensor::borrow(reinterpret_cast<const float*>(t->data), shape, owner_);
    if (is_quantized(t->dtype)) {
      if (!matrix)
        fail("[weights] tensor '{}' in {} is {}: only the projection matrices may be block-quantized", t->name,
             t->file, dtype_name(t->dtype));
      return Tensor::borrow(t->data, shape, t->dtype, owner_);  // even offsets: the blocks' scales are aligned
    }
    if (matrix && t->dtype == DType::BF16 && bf16_in_place_) return Tensor::borrow(t->data, shape, t->dtype, owner_);
    Tensor out = Tensor::empty(shape);
    convert_to_f32(t->dtype, t->data, out.data(), size_t(out.numel()));
    return out;
  }
  Tensor take(const std::string& name, const Shape& shape) { return take({name}, shape, shape); }
  Tensor take_matrix(std::initializer_list<std::string> names, const Shape& shape) {
    return take(names, shape, shape, true);
  }

  void check_all_used() const {
    for (const auto& [name, t] : archive_.tensors())
      if (!used_.count(name))
        fail("[weights] unexpected tensor '{}' {} in {} (does config.json match the weights?)", name,
             t.shape_str(), t.file);
  }
  void mark_used(const std::string& name) { used_.insert(name); }

 private:
  const TensorArchive& archive_;
  std::shared_ptr<const TensorArchive> owner_;
  std::set<std::string> used_;
  bool bf16_in_place_ = false;
};

}  // namespace

ModelWeights load_weights(std::shared_ptr<const TensorArchive> archive_ptr, const ModelConfig& c, bool keep_bf16) {
  const TensorArchive& archive = *archive_ptr;
  Loader ld(std::move(archive_ptr), keep_bf16);
  ModelWeights w;
  const int64_t V = c.vocab_padded(), D = c.d_model;
  w.embedding = ld.take_matrix({"backbone.embedding.weight", "backbone.embeddings.weight"}, {V, D});
  if (archive.find("backbone.embedding.weight")) w.embedding_name = "backbone.embedding.weight";
  for (int64_t i = 0; i < c.n_layer; ++i) {
    const std::string p = fmt::format("backbone.layers.{}.", i);
    LayerWeights l;
    l.norm = ld.take(p + "norm.weight", {D});
    l.in_proj = ld.take_matrix({p + "mixer.in_proj.weight"}, {c.d_in_proj(), D});
    l.conv_w = ld.take({p + "mixer.conv1d.weight"}, {c.conv_dim(), c.d_conv}, {c.conv_dim(), 1, c.d_conv});
    l.conv_b = c.conv_bias ? ld.take(p + "mixer.conv1d.bias", {c.conv_dim()}) : Tensor::zeros({c.conv_dim()});
    l.D = ld.take(p + "mixer.D", {c.mamba1() ? c.d_inner() : c.nheads()});
    l.out_proj = ld.take_matrix({p + "mixer.out_proj.weight"}, {D, c.d_inner()});
    if (c.mamba1()) {
      const int64_t di = c.d_inner();
      l.x_proj = ld.take(p + "mixer.x_proj.weight", {c.x_proj_rows(), di});
      l.dt_proj = ld.take(p + "mixer.dt_proj.weight", {di, c.dt_rank});
      l.dt_bias = ld.take(p + "mixer.dt_proj.bias", {di});
      l.A_log = ld.take(p + "mixer.A_log", {di, c.d_state});
      if (c.complex_scan) l.A_imag = ld.take(p + "mixer.A_imag", {di, c.d_state});
      if (c.proj_bias) {
        l.in_proj_b = ld.take(p + "mixer.in_proj.bias", {c.d_in_proj()});
        l.out_proj_b = ld.take(p + "mixer.out_proj.bias", {D});
      }
    } else {
      l.dt_bias = ld.take(p + "mixer.dt_bias", {c.nheads()});
      l.A_log = ld.take(p + "mixer.A_log", {c.nheads()});
      l.gate_norm = ld.take(p + "mixer.norm.weight", {c.d_inner()});
    }
    w.layers.push_back(std::move(l));
  }
  w.norm_f = ld.take("backbone.norm_f.weight", {D});
  if (c.tie_embeddings) {
    // A tied head may still be saved (official checkpoints do); it must then be the embedding.
    if (const StoredTensor* head = archive.find("lm_head.weight")) {
      if (head->shape != Shape{V, D})
        fail("[weights] tensor 'lm_head.weight' in {} has shape {}, expected {}", head->file, head->shape_str(),
             shape_str({V, D}));
      ld.mark_used(head->name);
    }
    w.lm_head = w.embedding;
  } else {
    w.lm_head = ld.take_matrix({"lm_head.weight"}, {V, D});
  }
  ld.check_all_used();
  return w;
}

DType stored_matrix_dtype(const ModelWeights& w) {
  const auto kept = [](DType d) { return is_quantized(d) || d == DType::BF16; };
  for (const LayerWeights& l : w.layers)
    for (const Tensor* t : {&l.in_proj, &l.out_proj})
      if (kept(t->dtype())) return t->dtype();
  for (const Tensor* t : {&w.embedding, &w.lm_head})
    if (kept(t->dtype())) return t->dtype();
  return DType::F32;
}

DType vocab_matrix_dtype(DType dtype) { return dtype == DType::Q4_0 ? DType::Q8_0 : dtype; }

ModelWeights place_weights(const ModelWeights& w, Device device, DType dtype) {
  auto f32 = [&](const Tensor& t) { return t.to(device, DType::F32); };
  auto matrix = [&](const Tensor& t) { return t.to(device, dtype); };
  ModelWeights out;
  out.embedding_name = w.embedding_name;
  out.embedding = w.embedding.to(device, vocab_matrix_dtype(dtype));
  for (const LayerWeights& l : w.layers) {
    LayerWeights p = l.map(f32);
    p.in_proj = matrix(l.in_proj);
    p.out_proj = matrix(l.out_proj);
    out.layers.push_back(std::move(p));
  }
  out.norm_f = f32(w.norm_f);
  out.lm_head = w.lm_head.raw() == w.embedding.raw() ? out.embedding : w.lm_head.to(device, vocab_matrix_dtype(dtype));
  return out;
}

Checkpoint open_model(const std::filesystem::path& path) {
  if (std::filesystem::is_regular_file(path) && is_gguf(path)) return import_gguf_model(path);
  if (!std::filesystem::is_directory(path))
    fail("[model] {} is neither a model folder nor a GGUF file", path.string());
  return {load_config(path / "config.json"), open_checkpoint(path)};
}

std::vector<std::string> model_files(const std::filesystem::path& path) {
  if (std::filesystem::is_regular_file(path) && is_gguf(path)) return {path.string()};
  return open_checkpoint(path).files();
}

TensorArchive open_checkpoint(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  if (fs::exists(dir / "model.safetensors.index.json")) return read_safetensors_index(dir / "model.safetensors.index.json");
  if (fs::exists(dir / "model.safetensors")) return read_safetensors(dir / "model.safetensors");
  if (fs::exists(dir / "pytorch_model.bin")) return read_torch_checkpoint(dir / "pytorch_model.bin");
  fail("[weights] {} holds no model.safetensors, model.safetensors.index.json or pytorch_model.bin", dir.string());
}

ModelWeights init_weights(const ModelConfig& c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto fill_uniform = [&](Tensor& t, double lo, double hi) {
    std::uniform_real_distribution<double> u(lo, hi);
    for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = float(u(rng));
  };
  auto fill_const = [](Tensor& t, float v) { std::fill(t.data(), t.data() + t.numel(), v); };
  const int64_t V = c.vocab_padded(), D = c.d_model, H = c.nheads();
  ModelWeights w;
  w.embedding = Tensor::empty({V, D});
  {
    std::normal_distribution<double> n(0.0, 0.02);
    for (int64_t i = 0; i < w.embedding.numel(); ++i) w.embedding.data()[i] = float(n(rng));
  }
  for (int64_t i = 0; i < c.n_layer; ++i) {
    LayerWeights l;
    l.norm = Tensor::empty({D});
    fill_const(l.norm, 1.0f);
    // nn.Linear's default: U(±1/sqrt(fan_in)); out_proj is then rescaled by 1/sqrt(n_layer).
    l.in_proj = Tensor::empty({c.d_in_proj(), D});
    fill_uniform(l.in_proj, -1.0 / std::sqrt(double(D)), 1.0 / std::sqrt(double(D)));
    // Depthwise conv: fan_in = d_conv.
    const double conv_bound = 1.0 / std::sqrt(double(c.d_conv));
    l.conv_w = Tensor::empty({c.conv_dim(), c.d_conv});
    fill_uniform(l.conv_w, -conv_bound, conv_bound);
    l.conv_b = Tensor::empty({c.conv_dim()});
    if (c.conv_bias) fill_uniform(l.conv_b, -conv_bound, conv_bound);
    else l.conv_b.set_zero();
    std::uniform_real_distribution<double> u01(0.0, 1.0);
    // dt's bias: softplus⁻¹ of dt log-uniform in [dt_min, dt_max], at least dt_init_floor.
    auto fill_dt_bias = [&](Tensor& t) {
      for (int64_t h = 0; h < t.numel(); ++h) {
        double dt = std::exp(u01(rng) * (std::log(c.dt_max) - std::log(c.dt_min)) + std::log(c.dt_min));
        dt = std::max(dt, c.dt_init_floor);
        t.data()[h] = float(dt + std::log(-std::expm1(-dt)));  // inverse softplus
      }
    };
    if (c.mamba1()) {
      // mamba_ssm's Mamba: x_proj an nn.Linear; dt_proj's weight U(±dt_rank^-1/2) ("random", dt_scale
      // 1); S4D-Real A = −(n+1) per channel; projection biases zero (_init_weights). Complex: S4D-Lin,
      // A = −1/2 + iπn.
      const int64_t di = c.d_inner(), N = c.d_state;
      l.x_proj = Tensor::empty({c.x_proj_rows(), di});
      fill_uniform(l.x_proj, -1.0 / std::sqrt(double(di)), 1.0 / std::sqrt(double(di)));
      l.dt_proj = Tensor::empty({di, c.dt_rank});
      fill_uniform(l.dt_proj, -1.0 / std::sqrt(double(c.dt_rank)), 1.0 / std::sqrt(double(c.dt_rank)));
      l.dt_bias = Tensor::empty({di});
      fill_dt_bias(l.dt_bias);
      l.A_log = Tensor::empty({di, N});
      if (c.complex_scan) l.A_imag = Tensor::empty({di, N});
      for (int64_t d = 0; d < di; ++d)
        for (int64_t n = 0; n < N; ++n) {
          l.A_log.data()[d * N + n] = float(c.complex_scan ? std::log(0.5) : std::log(double(n + 1)));
          if (c.complex_scan) l.A_imag.data()[d * N + n] = float(M_PI * double(n));
        }
      l.D = Tensor::empty({di});
      fill_const(l.D, 1.0f);
      if (c.proj_bias) {
        l.in_proj_b = Tensor::zeros({c.d_in_proj()});
        l.out_proj_b = Tensor::zeros({D});
      }
    } else {
      l.dt_bias = Tensor::empty({H});
      fill_dt_bias(l.dt_bias);
      l.A_log = Tensor::empty({H});
      for (int64_t h = 0; h < H; ++h)
        l.A_log.data()[h] = float(std::log(c.A_init_min + u01(rng) * (c.A_init_max - c.A_init_min)));
      l.D = Tensor::empty({H});
      fill_const(l.D, 1.0f);
      l.gate_norm = Tensor::empty({c.d_inner()});
      fill_const(l.gate_norm, 1.0f);
    }
    l.out_proj = Tensor::empty({D, c.d_inner()});
    const double out_bound = 1.0 / std::sqrt(double(c.d_inner()));
    fill_uniform(l.out_proj, -out_bound, out_bound);
    const float rescale = float(1.0 / std::sqrt(double(c.n_layer)));
    for (int64_t k = 0; k < l.out_proj.numel(); ++k) l.out_proj.data()[k] *= rescale;
    w.layers.push_back(std::move(l));
  }
  w.norm_f = Tensor::empty({D});
  fill_const(w.norm_f, 1.0f);
  if (c.tie_embeddings) {
    w.lm_head = w.embedding;
  } else {
    // An untied head is an nn.Linear left at its default init.
    w.lm_head = Tensor::empty({V, D});
    fill_uniform(w.lm_head, -1.0 / std::sqrt(double(D)), 1.0 / std::sqrt(double(D)));
  }
  return w;
}

std::vector<NamedTensor> hf_named_tensors(const ModelWeights& w, const ModelConfig& c) {
  std::vector<NamedTensor> out;
  auto add = [&](std::string name, const Tensor& t) { out.push_back({std::move(name), &t, t.shape()}); };
  add(c.complex_scan ? "backbone.embedding.weight" : "backbone.embeddings.weight", w.embedding);
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const LayerWeights& l = w.layers[i];
    const std::string p = fmt::format("backbone.layers.{}.", i);
    add(p + "norm.weight", l.norm);
    add(p + "mixer.in_proj.weight", l.in_proj);
    if (c.proj_bias && c.mamba1()) add(p + "mixer.in_proj.bias", l.in_proj_b);
    out.push_back({p + "mixer.conv1d.weight", &l.conv_w, {c.conv_dim(), 1, c.d_conv}});
    if (c.conv_bias) add(p + "mixer.conv1d.bias", l.conv_b);
    if (c.mamba1()) {
      add(p + "mixer.x_proj.weight", l.x_proj);
      add(p + "mixer.dt_proj.weight", l.dt_proj);
      add(p + "mixer.dt_proj.bias", l.dt_bias);
      add(p + "mixer.A_log", l.A_log);
      if (c.complex_scan) add(p + "mixer.A_imag", l.A_imag);
      add(p + "mixer.D", l.D);
    } else {
      add(p + "mixer.dt_bias", l.dt_bias);
      add(p + "mixer.A_log", l.A_log);
      add(p + "mixer.D", l.D);
      add(p + "mixer.norm.weight", l.gate_norm);
    }
    add(p + "mixer.out_proj.weight", l.out_proj);
    if (c.proj_bias && c.mamba1()) add(p + "mixer.out_proj.bias", l.out_proj_b);
  }
  add("backbone.norm_f.weight", w.norm_f);
  if (!c.tie_embeddings) add("lm_head.weight", w.lm_head);
  return out;
}

std::vector<NamedTensor> checkpoint_named_tensors(const ModelWeights& w, const ModelConfig& c) {
  std::vector<NamedTensor> out = hf_named_tensors(w, c);
  out.front().name = w.embedding_name;
  return out;
}

void save_model(const std::filesystem::path& dir, const ModelConfig& config, const ModelWeights& weights, DType dtype,
                std::optional<DType> matrix_dtype) {
  const ModelWeights* w = &weights;
  ModelWeights widened;  // fp32 copies, where the weights are held in another dtype
  const auto named = hf_named_tensors(weights, config);
  if (std::any_of(named.begin(), named.end(), [](const NamedTensor& nt) { return nt.tensor->dtype() != DType::F32; })) {
    widened = place_weights(weights, Device::CPU, DType::F32);
    w = &widened;
  }
  std::set<const Tensor*> projections, vocab{&w->embedding, &w->lm_head};
  for (const LayerWeights& l : w->layers) projections.insert({&l.in_proj, &l.out_proj});
  std::vector<TensorToWrite> tensors;
  for (const auto& nt : hf_named_tensors(*w, config)) {
    DType as = dtype;
    if (matrix_dtype)
      as = projections.count(nt.tensor) ? *matrix_dtype : vocab.count(nt.tensor) ? vocab_matrix_dtype(*matrix_dtype) : DType::F32;
    tensors.push_back({nt.name, as, nt.stored_shape, nt.tensor->data()});
  }
  std::map<std::string, std::string> meta{{"format", "pt"}};
  if (matrix_dtype == DType::BF16) meta[kQuantizationKey] = "bf16";  // (block formats: write_safetensors names them)
  write_safetensors(dir / "model.safetensors", tensors, meta);
  ModelConfig written = config;
  written.vocab_size = config.vocab_padded();  // the HF layout stores the padded size
  const std::string json = config.complex_scan ? config_to_official_json(written) : config_to_hf_json(written);
  AtomicFile f(dir / "config.json", "[model]");
  f.write(json.data(), json.size());
  f.commit();
}

}  // namespace mamba2

namespace mamba2 {

namespace {

// Element `at` of a CPU tensor of any dtype, widened as convert_to_f32 widens it (a block format:
// its block dequantized).
float element_as_f32(const Tensor& t, int64_t at) {
  if (t.dtype() == DType::F32) return t.data()[at];
  const int64_t first = is_quantized(t.dtype()) ? at / kQuantBlock * kQuantBlock : at;
  const int64_t count = is_quantized(t.dtype()) ? kQuantBlock : 1;
  float widened[kQuantBlock];
  convert_to_f32(t.dtype(), static_cast<const unsigned char*>(t.raw()) + dtype_bytes(t.dtype(), size_t(first)),
                 widened, size_t(count));
  return widened[at - first];
}

// FNV-1a 64 over bytes, continuing from `h`.
uint64_t fnv1a(uint64_t h, const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

}  // namespace

std::string model_fingerprint(const ModelConfig& c, const ModelWeights& w) {
  uint64_t h = 0xcbf29ce484222325ull;
  std::string arch = fmt::format("mamba2 d_model={} n_layer={} vocab={}/{} d_state={} d_conv={} expand={} "
                                 "headdim={} ngroups={} chunk={} dt_limit=({},{}) eps={} tied={}",
                                 c.d_model, c.n_layer, c.vocab_size, c.pad_vocab_size_multiple, c.d_state, c.d_conv,
                                 c.expand, c.headdim, c.ngroups, c.chunk_size, c.dt_limit_min, c.dt_limit_max,
                                 c.norm_eps, c.tie_embeddings);
  if (c.mamba1())
    arch += fmt::format(" mamba1 dt_rank={} bias={} conv_bias={} complex={} mixer_norms={} mixer_eps={}", c.dt_rank,
                        c.proj_bias, c.conv_bias, c.complex_scan, c.mixer_norms, c.mixer_rms_eps);
  h = fnv1a(h, arch.data(), arch.size());
  for (const NamedTensor& nt : hf_named_tensors(w, c)) {
    h = fnv1a(h, nt.name.data(), nt.name.size() + 1);
    const int64_t n = nt.tensor->numel();
    constexpr int64_t kSamples = 1024;
    for (int64_t i = 0; i < std::min(n, kSamples); ++i) {
      const int64_t at = n <= kSamples ? i : i * (n / kSamples);
      const float v = element_as_f32(*nt.tensor, at);
      h = fnv1a(h, &v, sizeof(float));
    }
  }
  return fmt::format("{:016x}", h);
}

}  // namespace mamba2
