// llama.cpp's Mamba2 GGUF files (general.architecture "mamba2", as its convert_hf_to_gguf.py
// writes them) as this engine's config and a checkpoint in the Hugging Face layout, so that the
// same loader (model/weights.h) maps them into the weight structs.
#pragma once
#include <filesystem>

#include "model/weights.h"

namespace mamba2 {

// The GGUF keys and tensors, mapped:
//   mamba2.embedding_length → d_model, block_count → n_layer, ssm.state_size → d_state,
//   ssm.conv_kernel → d_conv, ssm.inner_size → d_inner (expand = d_inner / d_model),
//   ssm.time_step_rank → nheads (headdim = d_inner / nheads), ssm.group_count → ngroups,
//   attention.layer_norm_rms_epsilon → norm_eps; the vocabulary is token_embd's rows, tied
//   unless output.weight is present; chunk_size and the dt limit, which GGUF does not record,
//   take mamba_ssm's defaults (256; none).
//   token_embd → backbone.embeddings, output_norm → backbone.norm_f, output → lm_head,
//   blk.N.{attn_norm, ssm_in, ssm_conv1d, ssm_dt.bias, ssm_d, ssm_norm, ssm_out} →
//   backbone.layers.N.{norm, mixer.in_proj, mixer.conv1d, mixer.dt_bias, mixer.D, mixer.norm,
//   mixer.out_proj} (reshaped where GGUF adds a dimension), and blk.N.ssm_a, which holds
//   A = −exp(A_log), → mixer.A_log = log(−A) (fp32: exp of it gives A back to within an ulp,
//   so logits differ from the original checkpoint's by float rounding, not bit for bit).
// Anything else (another architecture, a missing or unknown tensor, a non-negative A) is refused
// naming the key or tensor; errors begin "[gguf] <path>:".
Checkpoint import_gguf_model(const std::filesystem::path& path);

}  // namespace mamba2
