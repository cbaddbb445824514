// The resolved hyper-parameters of a Mamba language model (Mamba2, or Mamba-1: its selective scan
// per channel, real or complex), whichever layout they came from.
#pragma once
#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>

namespace mamba2 {

enum class CheckpointLayout { Official, HuggingFace };
// The mixer: Mamba2's SSD (heads, scalar A per head, gated RMSNorm) or mamba_ssm's `Mamba` (Mamba-1:
// A per channel and state, dt through a low-rank projection).
enum class Family { Mamba2, Mamba1 };

struct ModelConfig {
  CheckpointLayout layout = CheckpointLayout::HuggingFace;
  Family family = Family::Mamba2;
  int64_t d_model = 768;
  int64_t n_layer = 24;
  int64_t vocab_size = 50277;        // ids the tokenizer may produce
  int64_t pad_vocab_size_multiple = 16;
  int64_t d_state = 128;             // N (Mamba-1's default is 16)
  int64_t d_conv = 4;                // K
  int64_t expand = 2;
  int64_t headdim = 64;              // P (Mamba2)
  int64_t ngroups = 1;               // G (Mamba2)
  int64_t chunk_size = 256;          // Q (Mamba2)
  double dt_limit_min = 0.0;
  double dt_limit_max = std::numeric_limits<double>::infinity();
  double norm_eps = 1e-5;
  bool tie_embeddings = true;
  // Mamba-1 only.
  int64_t dt_rank = 0;               // R, the rank of dt's projection ("auto": ⌈d_model/16⌉)
  bool proj_bias = false;            // in_proj and out_proj have biases (`bias`, HF use_bias)
  bool conv_bias = true;             // the conv has a bias (`conv_bias`, HF use_conv_bias)
  bool complex_scan = false;         // complex A, B and C (ssm_cfg "complex": true)
  bool mixer_norms = false;          // Falcon-Mamba: weightless RMS norms on dt_low, B and C
  double mixer_rms_eps = 1e-6;       // their epsilon
  // Initialisation only (mamba2 init).
  double dt_min = 1e-3, dt_max = 1e-1, dt_init_floor = 1e-4;
  double A_init_min = 1.0, A_init_max = 16.0;

  bool mamba1() const { return family == Family::Mamba1; }
  int64_t d_inner() const { return expand * d_model; }
  int64_t nheads() const { return d_inner() / headdim; }
  // The conv's channels: Mamba2 x | B | C, Mamba-1 x.
  int64_t conv_dim() const { return mamba1() ? d_inner() : d_inner() + 2 * ngroups * d_state; }
  // in_proj's rows: Mamba2 z | xBC | dt, Mamba-1 x | z.
  int64_t d_in_proj() const { return mamba1() ? 2 * d_inner() : 2 * d_inner() + 2 * ngroups * d_state + nheads(); }
  // Mamba-1: the width of B (and of C), 2N interleaved (re, im) when complex; x_proj's rows
  // dt_low | B | C.
  int64_t bc_width() const { return complex_scan ? 2 * d_state : d_state; }
  int64_t x_proj_rows() const { return dt_rank + 2 * bc_width(); }
  // A sequence's recurrent state per layer, in fp32 values: the conv window's last K−1 inputs and
  // the SSM state (Mamba2 (H, P, N); Mamba-1 (d_inner, N), complex (d_inner, N) pairs (re, im)).
  int64_t conv_state_width() const { return (d_conv - 1) * conv_dim(); }
  int64_t ssm_state_width() const { return mamba1() ? d_inner() * bc_width() : nheads() * headdim * d_state; }
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
// The Hugging Face config.json text for this model (Mamba2ForCausalLM, MambaForCausalLM or
// FalconMambaForCausalLM).
std::string config_to_hf_json(const ModelConfig& config);
// The official (mamba_ssm) config.json text of a Mamba-1 model: how a complex one is written.
std::string config_to_official_json(const ModelConfig& config);
// Published sizes: Mamba2 "130m", "370m", "780m", "1.3b", "2.7b"; Mamba-1 "mamba-130m", "mamba-370m",
// "mamba-790m", "mamba-1.4b", "mamba-2.8b".
ModelConfig preset_config(const std::string& name);
std::string config_summary(const ModelConfig& config);

}  // namespace mamba2
