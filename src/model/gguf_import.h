// llama.cpp's Mamba2 and Mamba-1 GGUF files (general.architecture "mamba2" / "mamba", as its
// convert_hf_to_gguf.py writes them) as this engine's config and a checkpoint in the Hugging Face
// layout, so that the same loader (model/weights.h) maps them into the weight structs.
#pragma once
#include <filesystem>

#include "model/weights.h"

namespace mamba2 {

// The GGUF keys and tensors, mapped (ARCH. = mamba2. or mamba.):
//   ARCH.embedding_length → d_model, block_count → n_layer, ssm.state_size → d_state,
//   ssm.conv_kernel → d_conv, ssm.inner_size → d_inner (expand = d_inner / d_model),
//   attention.layer_norm_rms_epsilon → norm_eps; the vocabulary is token_embd's rows, tied
//   unless output.weight is present.
//   Mamba2: ssm.time_step_rank → nheads (headdim = d_inner / nheads), ssm.group_count → ngroups;
//   chunk_size and the dt limit, which GGUF does not record, take mamba_ssm's defaults (256; none).
//   Mamba-1: ssm.time_step_rank → dt_rank; ssm.dt_b_c_rms (optional, false) → Falcon-Mamba's
//   mixer norms, with norm_eps as their epsilon (what llama.cpp applies); the conv bias always,
//   projection biases never (llama.cpp's layout has no place for them).
//   token_embd → backbone.embeddings, output_norm → backbone.norm_f, output → lm_head,
//   blk.N.{attn_norm, ssm_in, ssm_conv1d, ssm_out} → backbone.layers.N.{norm, mixer.in_proj,
//   mixer.conv1d, mixer.out_proj}; Mamba2 blk.N.{ssm_dt.bias, ssm_d, ssm_norm} → mixer.{dt_bias, D,
//   norm}; Mamba-1 blk.N.{ssm_x, ssm_dt, ssm_d} → mixer.{x_proj, dt_proj, D}, reshaped where GGUF
//   adds or drops a dimension. blk.N.ssm_a, which holds A = −exp(A_log) ((nheads, 1) or
//   (d_inner, d_state)), → mixer.A_log = log(−A) (fp32: exp of it gives A back to within an ulp,
//   so logits differ from the original checkpoint's by float rounding, not bit for bit). Mamba-1's
//   x_proj and dt_proj, which the converter quantizes with the matrices, are dequantized to fp32.
// Every layer tensor must have the shape llama.cpp's loader requires. Anything else (another
// architecture, a missing key, a missing, unknown or misshapen tensor, a non-negative A) is refused
// naming the key or tensor; errors begin "[gguf] <path>:".
Checkpoint import_gguf_model(const std::filesystem::path& path);

}  // namespace mamba2
