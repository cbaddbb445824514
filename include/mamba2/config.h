// The resolved hyper-parameters of a Mamba2 language model, whichever layout they came from.
#pragma once
#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>

namespace mamba2 {

enum class CheckpointLayout { Official, HuggingFace };

struct ModelConfig {
  CheckpointLayout layout = CheckpointLayout::HuggingFace;
  int64_t d_model = 768;
  int64_t n_layer = 24;
  int64_t vocab_size = 50277;        // ids the tokenizer may produce
  int64_t pad_vocab_size_multiple = 16;
  int64_t d_state = 128;             // N
  int64_t d_conv = 4;                // K
  int64_t expand = 2;
  int64_t headdim = 64;              // P
  int64_t ngroups = 1;               // G
  int64_t chunk_size = 256;          // Q
  double dt_limit_min = 0.0;
  double dt_limit_max = std::numeric_limits<double>::infinity();
  double norm_eps = 1e-5;
  bool tie_embeddings = true;
  // Initialisation only (mamba2 init).
  double dt_min = 1e-3, dt_max = 1e-1, dt_init_floor = 1e-4;
  double A_init_min = 1.0, A_init_max = 16.0;

  int64_t d_inner() const { return expand * d_model; }
  int64_t nheads() const { return d_inner() / headdim; }
  int64_t conv_dim() const { return d_inner() + 2 * ngroups * d_state; }
  int64_t d_in_proj() const { return 2 * d_inner() + 2 * ngroups * d_state + nheads(); }
  // A sequence's recurrent state per layer, in fp32 values: the conv window's last K−1 inputs and
  // the SSM state (H, P, N).
  int64_t conv_state_width() const { return (d_conv - 1) * conv_dim(); }
  int64_t ssm_state_width() const { return nheads() * headdim * d_state; }
  // Rows of the embedding and columns of the logits.
  int64_t vocab_padded() const;
  bool has_dt_limit() const {
    return dt_limit_min != 0.0 || dt_limit_max != std::numeric_limits<double>::infinity();
  }
  int64_t parameter_count() const;

  // Throws naming the offending field if the numbers do not make a valid model.
  void validate(const std::string& source) const;
};

// Reads config.json of either layout; missing ssm_cfg keys take the mamba_ssm defaults,
// unknown or unsupported values are refused naming the key.
ModelConfig load_config(const std::filesystem::path& config_json);
// The Hugging Face Mamba2ForCausalLM config.json text for this model.
std::string config_to_hf_json(const ModelConfig& config);
// Published sizes: "130m", "370m", "780m", "1.3b", "2.7b".
ModelConfig preset_config(const std::string& name);
std::string config_summary(const ModelConfig& config);

}  // namespace mamba2
