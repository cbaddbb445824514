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

// transformers saves "architectures": null from a bare config object; the model_type decides.
TEST(Config, NullOrMissingArchitecturesAreReadByModelType) {
  const std::string body = R"("hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 100, "head_dim": 16)";
  for (const std::string arch : {R"("architectures": null, )", ""}) {
    SCOPED_TRACE(arch);
    const ModelConfig c = parse("{" + arch + R"("model_type": "mamba2", )" + body + "}");
    EXPECT_EQ(c.layout, CheckpointLayout::HuggingFace);
    EXPECT_EQ(c.d_model, 64);
    EXPECT_TRUE(parse("{" + arch + R"("model_type": "mamba", )" + body + "}").mamba1());
    EXPECT_TRUE(parse("{" + arch + R"("model_type": "falcon_mamba", )" + body + "}").mixer_norms);
    EXPECT_NE(error_for("{" + arch + R"("model_type": "jamba", )" + body + "}").find("model_type \"jamba\""),
              std::string::npos);
  }
  EXPECT_NE(error_for(R"({"architectures": ["LlamaForCausalLM"], )" + body + "}").find("Mamba2ForCausalLM"),
            std::string::npos);
  EXPECT_NE(error_for(R"({"architectures": ["MambaForCausalLM"], "model_type": "mamba2", )" + body + "}").find("disagree"),
            std::string::npos);
  EXPECT_NE(error_for(R"({"architectures": 3, )" + body + "}").find("architectures 3"), std::string::npos);
}

TEST(Config, OfficialMamba1_130m) {
  // state-spaces/mamba-130m's config.json, verbatim: an empty ssm_cfg is Mamba1 in mamba_ssm.
  const ModelConfig c = parse(R"({"d_model": 768, "n_layer": 24, "vocab_size": 50277, "ssm_cfg": {}, "rms_norm": true,
    "residual_in_fp32": true, "fused_add_norm": true, "pad_vocab_size_multiple": 8})");
  EXPECT_EQ(c.layout, CheckpointLayout::Official);
  EXPECT_TRUE(c.mamba1());
  EXPECT_EQ(c.vocab_padded(), 50280);
  EXPECT_EQ(c.d_state, 16);
  EXPECT_EQ(c.d_conv, 4);
  EXPECT_EQ(c.d_inner(), 1536);
  EXPECT_EQ(c.dt_rank, 48);  // "auto": ⌈768/16⌉
  EXPECT_TRUE(c.conv_bias);
  EXPECT_FALSE(c.proj_bias);
  EXPECT_FALSE(c.complex_scan);
  EXPECT_EQ(c.d_in_proj(), 3072);
  EXPECT_EQ(c.x_proj_rows(), 48 + 32);
  EXPECT_EQ(c.ssm_state_width(), 1536 * 16);
  EXPECT_EQ(c.conv_state_width(), 3 * 1536);
  // By hand from the module's shapes: 50280·768 embedding (tied) + norm_f 768 + 24 × (norm 768,
  // in_proj 3072·768, conv 1536·4 + 1536, x_proj 80·1536, dt_proj 1536·48 + 1536, A_log 1536·16,
  // D 1536, out_proj 768·1536) — transformers counts 129,135,360 for mamba-130m-hf.
  EXPECT_EQ(c.parameter_count(), 129135360);
  EXPECT_EQ(preset_config("mamba-130m").parameter_count(), 129135360);
}

TEST(Config, OfficialMamba1OptionsAndComplex) {
  const ModelConfig c = parse(R"({"d_model": 64, "n_layer": 2, "vocab_size": 100, "ssm_cfg": {"layer": "Mamba1",
    "d_state": 8, "dt_rank": 6, "bias": true, "conv_bias": false, "complex": true, "use_fast_path": true}})");
  EXPECT_TRUE(c.mamba1());
  EXPECT_EQ(c.d_state, 8);
  EXPECT_EQ(c.dt_rank, 6);
  EXPECT_TRUE(c.proj_bias);
  EXPECT_FALSE(c.conv_bias);
  EXPECT_TRUE(c.complex_scan);
  EXPECT_EQ(c.bc_width(), 16);
  EXPECT_EQ(c.x_proj_rows(), 6 + 32);
  EXPECT_EQ(c.ssm_state_width(), 128 * 16);
  // Written back and read again: the same model.
  const auto path = test::scratch_path("config", "config.json");
  test::write_file(path, config_to_official_json(c));
  const ModelConfig r = load_config(path);
  EXPECT_EQ(r.parameter_count(), c.parameter_count());
  EXPECT_TRUE(r.complex_scan && r.proj_bias && !r.conv_bias && r.dt_rank == 6 && r.d_state == 8);
}

TEST(Config, HuggingFaceMambaAndFalconMamba) {
  // state-spaces/mamba-130m-hf's config.json (its keys; trimmed of the initialisation-only ones).
  const ModelConfig m = parse(R"({"architectures": ["MambaForCausalLM"], "model_type": "mamba", "hidden_size": 768,
    "intermediate_size": 1536, "state_size": 16, "num_hidden_layers": 24, "vocab_size": 50280, "conv_kernel": 4,
    "expand": 2, "time_step_rank": 48, "use_bias": false, "use_conv_bias": true, "layer_norm_epsilon": 1e-05,
    "residual_in_fp32": true, "hidden_act": "silu", "tie_word_embeddings": true, "use_mambapy": false})");
  EXPECT_TRUE(m.mamba1());
  EXPECT_FALSE(m.mixer_norms);
  EXPECT_EQ(m.parameter_count(), 129135360);
  // tiiuae/falcon-mamba-7b's: 4096 wide, 64 layers, dt_rank auto (256), mixer_rms_eps 1e-6, untied.
  const ModelConfig f = parse(R"({"architectures": ["FalconMambaForCausalLM"], "model_type": "falcon_mamba",
    "hidden_size": 4096, "intermediate_size": 8192, "state_size": 16, "num_hidden_layers": 64, "vocab_size": 65024,
    "conv_kernel": 4, "expand": 2, "time_step_rank": 256, "use_bias": false, "use_conv_bias": true,
    "layer_norm_epsilon": 1e-05, "mixer_rms_eps": 1e-06, "tie_word_embeddings": false, "hidden_act": "silu"})");
  EXPECT_TRUE(f.mamba1() && f.mixer_norms);
  EXPECT_DOUBLE_EQ(f.mixer_rms_eps, 1e-6);
  EXPECT_EQ(f.dt_rank, 256);
  EXPECT_FALSE(f.tie_embeddings);
  // Written as transformers would and read back.
  const auto path = test::scratch_path("config", "config.json");
  test::write_file(path, config_to_hf_json(f));
  const ModelConfig r = load_config(path);
  EXPECT_TRUE(r.mixer_norms && r.dt_rank == 256 && !r.tie_embeddings);
  EXPECT_EQ(r.parameter_count(), f.parameter_count());
}

TEST(Config, RefusesUnsupportedValuesByName) {
  const std::string head = R"({"d_model": 64, "n_layer": 2, "vocab_size": 100, )";
  EXPECT_NE(error_for(head + R"("ssm_cfg": {"layer": "Mamba2", "D_has_hdim": true}})").find("D_has_hdim"), std::string::npos);
  EXPECT_NE(error_for(head + R"("ssm_cfg": {"layer": "Mamba2", "norm_before_gate": true}})").find("norm_before_gate"),
            std::string::npos);
  EXPECT_NE(error_for(head + R"("ssm_cfg": {"layer": "Mamba2", "bias": true}})").find("bias"), std::string::npos);
  EXPECT_NE(error_for(head + R"("ssm_cfg": {"layer": "Mamba3"}})").find("Mamba3"), std::string::npos);
  EXPECT_NE(error_for(head + R"("ssm_cfg": {"headdim": 64}})").find("'headdim' for a Mamba1"), std::string::npos);
  EXPECT_NE(error_for(head + R"("ssm_cfg": {"dt_rank": "big"}})").find("dt_rank"), std::string::npos);
  EXPECT_NE(error_for(head + R"("ssm_cfg": {"dt_rank": 0}})").find("dt_rank"), std::string::npos);
  EXPECT_NE(error_for(head + R"("ssm_cfg": {"dt_init": "sideways"}})").find("dt_init"), std::string::npos);
  EXPECT_NE(error_for(R"({"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 100, "model_type": "mamba",
                         "intermediate_size": 100})").find("intermediate_size"), std::string::npos);
  EXPECT_NE(error_for(R"({"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 100, "model_type": "falcon_mamba",
                         "mixer_rms_eps": 0})").find("mixer_rms_eps"), std::string::npos);
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
  EXPECT_NE(error_for(R"({"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 100, "model_type": "s4"})")
                .find("model_type"),
            std::string::npos);
  EXPECT_NE(error_for(R"({"hidden_size": "64", "num_hidden_layers": 2, "vocab_size": 100})").find("hidden_size"),
            std::string::npos);
  EXPECT_NE(error_for(R"({"hello": 1})").find("neither"), std::string::npos);
  EXPECT_NE(error_for(R"([1, 2])").find("not an object"), std::string::npos);
}

}  // namespace
}  // namespace mamba2
