// config.json of both layouts as published: the exact files users have must parse to the
// documented dimensions; unsupported values are refused by name.
#include <gtest/gtest.h>

#include "mamba2/config.h"
#include "mamba2/error.h"
#include "test_files.h"

namespace mamba2 {
namespace {

ModelConfig parse(const std::string& json) {
  const auto path = test::scratch_path("config", "config.json");
  test::write_file(path, json);
  return load_config(path);
}

std::string error_for(const std::string& json) {
  return test::error_message([&] { parse(json); });
}

TEST(Config, OfficialMamba2_130m) {
  // state-spaces/mamba2-130m's config.json, verbatim.
  const ModelConfig c = parse(R"({"d_model": 768, "d_intermediate": 0, "n_layer": 24, "vocab_size": 50277,
    "ssm_cfg": {"layer": "Mamba2"}, "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": true,
    "residual_in_fp32": true, "fused_add_norm": true, "pad_vocab_size_multiple": 16, "tie_embeddings": true})");
  EXPECT_EQ(c.layout, CheckpointLayout::Official);
  EXPECT_EQ(c.d_model, 768);
  EXPECT_EQ(c.n_layer, 24);
  EXPECT_EQ(c.vocab_padded(), 50288);
  EXPECT_EQ(c.d_state, 128);
  EXPECT_EQ(c.headdim, 64);
  EXPECT_EQ(c.nheads(), 24);
  EXPECT_EQ(c.ngroups, 1);
  EXPECT_EQ(c.chunk_size, 256);
  EXPECT_EQ(c.d_in_proj(), 2 * 1536 + 2 * 128 + 24);
  EXPECT_FALSE(c.has_dt_limit());
  EXPECT_EQ(c.parameter_count(), 128989632);  // 50288·768 + 24 layers + norm_f, tied head
}

TEST(Config, HuggingFaceCodestralStyle) {
  // The shape of mistralai/Mamba-Codestral-7B-v0.1's config.json (Python writes Infinity;
  // norm_before_gate true is the transformers default, which its model ignores).
  const ModelConfig c = parse(R"({"architectures": ["Mamba2ForCausalLM"], "bos_token_id": 0, "chunk_size": 256,
    "conv_kernel": 4, "eos_token_id": 0, "expand": 2, "head_dim": 64, "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.1, "layer_norm_epsilon": 1e-05, "model_type": "mamba2", "n_groups": 8,
    "norm_before_gate": true, "num_heads": 128, "num_hidden_layers": 64, "pad_token_id": 0,
    "rescale_prenorm_residual": false, "residual_in_fp32": true, "rms_norm": true, "state_size": 128,
    "tie_word_embeddings": false, "time_step_floor": 0.0001, "time_step_init_scheme": "random",
    "time_step_limit": [0.0, Infinity], "time_step_max": 0.1, "time_step_min": 0.001, "time_step_rank": 256,
    "torch_dtype": "bfloat16", "use_bias": false, "use_cache": true, "use_conv_bias": true, "vocab_size": 32768})");
  EXPECT_EQ(c.layout, CheckpointLayout::HuggingFace);
  EXPECT_EQ(c.ngroups, 8);
  EXPECT_EQ(c.nheads(), 128);
  EXPECT_EQ(c.vocab_padded(), 32768);
  EXPECT_FALSE(c.tie_embeddings);
  EXPECT_FALSE(c.has_dt_limit());
}

TEST(Config, DtLimitAndDefaults) {
  const ModelConfig c = parse(R"({"d_model": 64, "n_layer": 2, "vocab_size": 100,
    "ssm_cfg": {"layer": "Mamba2", "d_state": 16, "headdim": 16, "ngroups": 2, "chunk_size": 8, "dt_limit": [0.01, 0.5]}})");
  EXPECT_TRUE(c.has_dt_limit());
  EXPECT_DOUBLE_EQ(c.dt_limit_min, 0.01);
  EXPECT_DOUBLE_EQ(c.dt_limit_max, 0.5);
  EXPECT_EQ(c.d_conv, 4);  // mamba_ssm default
  EXPECT_EQ(c.expand, 2);
}

TEST(Config, RefusesUnsupportedValuesByName) {
  const std::string head = R"({"d_model": 64, "n_layer": 2, "vocab_size": 100, )";
  EXPECT_NE(error_for(head + R"("ssm_cfg": {"layer": "Mamba2", "D_has_hdim": true}})").find("D_has_hdim"), std::string::npos);
  EXPECT_NE(error_for(head + R"("ssm_cfg": {"layer": "Mamba2", "norm_before_gate": true}})").find("norm_before_gate"),
            std::string::npos);
  EXPECT_NE(error_for(head + R"("ssm_cfg": {"layer": "Mamba2", "bias": true}})").find("bias"), std::string::npos);
  EXPECT_NE(error_for(head + R"("ssm_cfg": {"layer": "Mamba1"}})").find("Mamba2"), std::string::npos);
  EXPECT_NE(error_for(head + R"("ssm_cfg": {}})").find("Mamba1"), std::string::npos);
  EXPECT_NE(error_for(head + R"("ssm_cfg": {"layer": "Mamba2"}, "attn_layer_idx": [1]})").find("attn_layer_idx"),
            std::string::npos);
  EXPECT_NE(error_for(head + R"("ssm_cfg": {"layer": "Mamba2"}, "d_intermediate": 512})").find("d_intermediate"),
            std::string::npos);
  EXPECT_NE(error_for(head + R"("ssm_cfg": {"layer": "Mamba2", "dt_limit": [0.5, 0.1]}})").find("dt_limit"),
            std::string::npos);
  EXPECT_NE(error_for(R"({"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 100, "use_bias": true})").find("use_bias"),
            std::string::npos);
  EXPECT_NE(error_for(R"({"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 100, "num_heads": 7})").find("num_heads"),
            std::string::npos);
  EXPECT_NE(error_for(R"({"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 100, "model_type": "mamba"})")
                .find("model_type"),
            std::string::npos);
  EXPECT_NE(error_for(R"({"hidden_size": "64", "num_hidden_layers": 2, "vocab_size": 100})").find("hidden_size"),
            std::string::npos);
  EXPECT_NE(error_for(R"({"hello": 1})").find("neither"), std::string::npos);
  EXPECT_NE(error_for(R"([1, 2])").find("not an object"), std::string::npos);
}

}  // namespace
}  // namespace mamba2
