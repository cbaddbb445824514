// Named weight structs of the Mamba2 LM, fp32 on the compute device (the projections may be
// narrower: see place_weights), and their loading
// from a checkpoint archive (shape-checked, converted from the stored dtype).
#pragma once
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/tensor_archive.h"
#include "mamba2/config.h"

namespace mamba2 {

// One block. Mamba2 uses the first nine; a Mamba-1 block (ModelConfig::mamba1) has in_proj
// (2·d_inner, d_model) with rows x | z, the conv over x's d_inner channels (conv_b zeros when the
// checkpoint has no conv bias), dt_bias = dt_proj.bias (d_inner), A_log (d_inner, N), D (d_inner),
// no gate_norm, and the tensors after out_proj.
struct LayerWeights {
  Tensor norm;       // (d_model) pre-mixer RMSNorm
  Tensor in_proj;    // (d_in_proj, d_model): rows z | xBC | dt
  Tensor conv_w;     // (conv_dim, d_conv) depthwise taps, stored (conv_dim, 1, d_conv)
  Tensor conv_b;     // (conv_dim)
  Tensor dt_bias;    // (nheads)
  Tensor A_log;      // (nheads)
  Tensor D;          // (nheads)
  Tensor gate_norm;  // (d_inner) gated RMSNorm weight
  Tensor out_proj;   // (d_model, d_inner)
  // Mamba-1.
  Tensor x_proj;      // (dt_rank + 2·bc_width, d_inner): rows dt_low | B | C
  Tensor dt_proj;     // (d_inner, dt_rank)
  Tensor A_imag;      // (d_inner, N) Im A, the complex scan only
  Tensor in_proj_b;   // (2·d_inner) with ModelConfig::proj_bias
  Tensor out_proj_b;  // (d_model) with ModelConfig::proj_bias

  // A layer of f(t) for each tensor t present here; absent ones (no data) stay absent.
  template <class F>
  LayerWeights map(F&& f) const;
  // The tensors present, in declaration order.
  std::vector<Tensor*> present();
};

inline constexpr Tensor LayerWeights::*kLayerTensors[] = {
    &LayerWeights::norm,    &LayerWeights::in_proj, &LayerWeights::conv_w,    &LayerWeights::conv_b,
    &LayerWeights::dt_bias, &LayerWeights::A_log,   &LayerWeights::D,         &LayerWeights::gate_norm,
    &LayerWeights::out_proj, &LayerWeights::x_proj, &LayerWeights::dt_proj,   &LayerWeights::A_imag,
    &LayerWeights::in_proj_b, &LayerWeights::out_proj_b};

template <class F>
LayerWeights LayerWeights::map(F&& f) const {
  LayerWeights o;
  for (Tensor LayerWeights::*m : kLayerTensors)
    if ((this->*m).raw()) o.*m = f(this->*m);
  return o;
}

inline std::vector<Tensor*> LayerWeights::present() {
  std::vector<Tensor*> out;
  for (Tensor LayerWeights::*m : kLayerTensors)
    if ((this->*m).raw()) out.push_back(&(this->*m));
  return out;
}

struct ModelWeights {
  Tensor embedding;  // (vocab_padded, d_model)
  std::vector<LayerWeights> layers;
  Tensor norm_f;     // (d_model)
  Tensor lm_head;    // (vocab_padded, d_model); shares the embedding's buffer when tied
  // The embedding's name in the checkpoint it came from (official: backbone.embedding.weight).
  std::string embedding_name = "backbone.embeddings.weight";
  // When set, every tensor above is a view into it (make_gradients': zeroed by one memset).
  Tensor storage;
};

// Every tensor the model needs must be present with the right shape, and nothing else
// may be (an unexpected name means the config and the weights disagree). fp32 tensors are used
// in place (the archive's mappings stay alive with them), and so are block-quantized projection
// matrices (Q8_0, Q4_0: `mamba2 quantize`) and BF16 ones where the file is a `mamba2 quantize
// --type bf16` folder's or keep_bf16 asks; other dtypes are converted to fp32.
ModelWeights load_weights(std::shared_ptr<const TensorArchive> archive, const ModelConfig& config,
                          bool keep_bf16 = false);

// The weights on `device`, converted once: the projection matrices (embedding, in_proj,
// out_proj, the head) in `dtype`, every other tensor fp32 (norms, conv, dt_bias, A_log, D). A
// tied head stays one buffer with the embedding. Q4_0 keeps the embedding and head in Q8_0
// (vocab_matrix_dtype), as llama.cpp's q4_0 files keep their output matrix at 6 bits: 4-bit
// logits cost more than the whole rest of the model's quantization.
ModelWeights place_weights(const ModelWeights& w, Device device, DType dtype);
DType vocab_matrix_dtype(DType dtype);

// A model's config and its tensors under their Hugging Face or official names.
struct Checkpoint {
  ModelConfig config;
  TensorArchive archive;
};
// A model folder (config.json and its weight files) or a llama.cpp Mamba2 or Mamba-1 GGUF file
// (model/gguf_import.h).
Checkpoint open_model(const std::filesystem::path& path);
// The files the model's tensors come from.
std::vector<std::string> model_files(const std::filesystem::path& path);
// Opens the weight files of a model folder: model.safetensors.index.json, model.safetensors
// or pytorch_model.bin, in that order.
TensorArchive open_checkpoint(const std::filesystem::path& model_dir);

// The official initialisation (mamba_ssm), deterministic for a seed.
ModelWeights init_weights(const ModelConfig& config, uint64_t seed);

// Tensor names and values in the Hugging Face layout, for writing (a complex Mamba-1 model, which
// has no HF layout: the official names).
struct NamedTensor {
  std::string name;
  const Tensor* tensor;
  Shape stored_shape;  // conv1d.weight is stored (conv_dim, 1, d_conv)
};
std::vector<NamedTensor> hf_named_tensors(const ModelWeights& weights, const ModelConfig& config);
// The same, named as in the checkpoint the weights were loaded from (the embedding's name as
// found there); a tied head is the embedding, listed once.
std::vector<NamedTensor> checkpoint_named_tensors(const ModelWeights& weights, const ModelConfig& config);

// A hash (16 hex digits) of the architecture and of up to 1024 evenly spaced values of every
// tensor, in the Hugging Face layout: what Model::fingerprint() is. Weights on the CPU.
std::string model_fingerprint(const ModelConfig& config, const ModelWeights& weights);

// Writes config.json and model.safetensors (Hugging Face layout, `dtype`; a complex Mamba-1 model
// in the official layout) into `dir`, each file replaced atomically. With `matrix_dtype` (`mamba2 quantize`): the projection matrices (embedding,
// in_proj, out_proj, an untied head) in it — BF16, or Q8_0 / Q4_0 blocks (io/safetensors.h; the
// embedding and head as place_weights keeps them) — and every other tensor (norms, conv,
// dt_bias, A_log, D) in F32.
void save_model(const std::filesystem::path& dir, const ModelConfig& config, const ModelWeights& weights, DType dtype,
                std::optional<DType> matrix_dtype = std::nullopt);

// The format of the in/out projections as loaded: a `mamba2 quantize` checkpoint's (Q8_0, Q4_0
// blocks or BF16, used in place, memory-mapped), or F32.
DType stored_matrix_dtype(const ModelWeights& weights);

}  // namespace mamba2
