#!/usr/bin/env python3
"""GGUF fixtures for tests/test_gguf.cpp, written with llama.cpp's own Python package `gguf`
(pip install gguf numpy torch): its writer, its reference quantizers and dequantizers are the
oracle for our reader.

  tests/fixtures/gguf/official_fp32.{f32,q8_0,q4_0}.gguf
      The golden case official_fp32 (tests/fixtures/golden, float64 logits there) as llama.cpp's
      convert_hf_to_gguf.py lays out a Mamba2 model: tensor names, A stored as -exp(A_log),
      the conv squeezed to (conv_dim, d_conv), D as (nheads, 1), the gated norm as
      (ngroups, d_inner / ngroups); the mamba2.* keys; the embedding tied. q8_0: every matrix
      Q8_0; q4_0: ssm_in/ssm_out Q4_0, the embedding Q8_0 (its rows of 64 cannot be Q6_K
      blocks, which llama-quantize then falls back from). No tokenizer: a byte-level one needs
      more than the model's 112 ids (the tests pass token ids).
  tests/fixtures/gguf/hf_fp32_g2.f32.gguf
      The golden case hf_fp32_g2_dtlimit (ngroups 2) likewise, for a weight-by-weight comparison
      (GGUF cannot say its dt limit, so its logits are not the golden ones).
  tests/fixtures/gguf/m1_hf_bf16.{bf16,q8_0}.gguf
      The Mamba-1 golden case m1_hf_bf16_sharded (MambaForCausalLM, bf16, untied head; float64
      logits there) as convert_hf_to_gguf.py's MambaModel lays it out (architecture "mamba"):
      ssm_in, ssm_conv1d (squeezed) + bias, ssm_x, ssm_dt + bias, ssm_a = -exp(A_log) as
      (d_inner, d_state), ssm_d, ssm_out; the mamba.* keys with ssm.time_step_rank the dt rank and
      ssm.dt_b_c_rms false; output.weight the head. bf16: every matrix BF16 (lossless: the weights
      are bf16); q8_0: every matrix Q8_0 but dt_proj, whose rows of 4 fall back to F16.
  tests/fixtures/gguf/gpt-neox-20b.vocab.gguf
      A vocabulary-only file (no tensors, as llama.cpp's models/ggml-vocab-*.gguf) from
      tests/fixtures/tokenizer/gpt-neox-20b.json, as the converter writes GPT-NeoX's: tokens
      by id, control tokens for the special added ones, user-defined for the other added ones,
      the merges, tokenizer.ggml.pre "olmo"; BOS/EOS <|endoftext|> and a small chat template.
  tests/fixtures/gguf/types.gguf + types/<name>.npy
      One tensor of each type the reader takes (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K):
      random floats quantized by `gguf` where it can (Q8_0, Q4_0, BF16), random blocks with sane
      scales for the k-quants, and `gguf`'s dequantization of each as float32, which ours must
      equal bit for bit.

Usage: python3 scripts/make_gguf_fixtures.py   (deterministic; rewrites tests/fixtures/gguf/)
Needs torch for the official_fp32 checkpoint only (pytorch_model.bin); the rest reads safetensors.
"""
import json
import pathlib
import shutil

import gguf
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "gguf"
GOLDEN = ROOT / "tests" / "fixtures" / "golden" / "official_fp32" / "model"
Q = gguf.GGMLQuantizationType
NORMAL, CONTROL, USER_DEFINED = 1, 3, 4
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def tokenizer_metadata(path):
    """tokens, types and merges of a byte-level BPE tokenizer.json, as llama.cpp converts them."""
    tj = json.loads(path.read_text(encoding="utf-8"))
    by_id = {i: t for t, i in tj["model"]["vocab"].items()}
    types = {}
    for a in tj["added_tokens"]:
        by_id[a["id"]] = a["content"]
        types[a["id"]] = CONTROL if a["special"] else USER_DEFINED
    n = max(by_id) + 1
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(n)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    return tokens, [types.get(i, NORMAL) for i in range(n)], merges


def add_tokenizer(w, path, pre, rows=0):
    """The tokenizer, its list padded with [PADi] to `rows` ids (a model's embedding rows)."""
    tokens, types, merges = tokenizer_metadata(path)
    tokens += [f"[PAD{i}]" for i in range(len(tokens), rows)]
    types += [NORMAL] * (len(tokens) - len(types))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)


def official_state_dict():
    import torch
    sd = torch.load(GOLDEN / "pytorch_model.bin", map_location="cpu", weights_only=True)
    return {k: v.to(torch.float32).numpy() for k, v in sd.items()}


def read_safetensors(path):
    """name → float32 array of a safetensors file (F32, F16, BF16: numpy has no bfloat16)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        data = raw[8 + n + begin:8 + n + end]
        if info["dtype"] == "BF16":
            a = (np.frombuffer(data, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(data, {"F32": np.float32, "F16": np.float16}[info["dtype"]]).astype(np.float32)
        out[name] = a.reshape(info["shape"])
    return out


def hf_model(folder):
    """An HF-layout model folder (model.safetensors or the shards its index names) as the official
    names and an official-style config for write_model: Mamba2, or Mamba-1 (model_type "mamba",
    as `mamba2 init --preset mamba-*` writes; "falcon_mamba") with ssm_cfg layer "Mamba1"."""
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    sd = {}
    for f in files:
        sd.update(read_safetensors(folder / f))
    sd["backbone.embedding.weight"] = sd.pop("backbone.embeddings.weight")
    hf = json.loads((folder / "config.json").read_text())
    if hf.get("model_type") in ("mamba", "falcon_mamba"):
        d_model = hf["hidden_size"]
        dt_rank = hf.get("time_step_rank", "auto")
        if hf.get("use_bias", False) or not hf.get("use_conv_bias", True):
            raise SystemExit(f"{folder}: llama.cpp's Mamba-1 GGUF has no projection biases and needs the conv bias")
        cfg = {"d_model": d_model, "n_layer": hf["num_hidden_layers"], "norm_eps": hf.get("layer_norm_epsilon", 1e-5),
               "falcon": hf["model_type"] == "falcon_mamba",
               "ssm_cfg": {"layer": "Mamba1", "expand": hf.get("expand", 2), "d_conv": hf.get("conv_kernel", 4),
                           "d_state": hf.get("state_size", 16),
                           "dt_rank": -(-d_model // 16) if dt_rank == "auto" else dt_rank}}
        return sd, cfg
    cfg = {"d_model": hf["hidden_size"], "n_layer": hf["num_hidden_layers"],
           "ssm_cfg": {"layer": "Mamba2", "expand": hf["expand"], "headdim": hf["head_dim"], "d_conv": hf["conv_kernel"],
                       "d_state": hf["state_size"], "ngroups": hf["n_groups"]}}
    return sd, cfg


def write_model(path, sd, cfg, matrix_type, embedding_type, tokenizer=None):
    """cfg: an official config.json's fields; ssm_cfg layer "Mamba1" (mamba_ssm's default) is written
    as llama.cpp's "mamba" architecture, "Mamba2" as "mamba2". The projection matrices (and Mamba-1's
    x_proj and dt_proj, which convert_hf_to_gguf.py quantizes too) in matrix_type, falling back to F16
    where their rows are not whole blocks as the converter does; the embedding and an untied head in
    embedding_type; everything else F32. tokenizer: a byte-level BPE tokenizer.json to write as
    GPT-NeoX's (BOS/EOS id 0), or None."""
    d_model, ssm = cfg["d_model"], cfg["ssm_cfg"]
    mamba1 = ssm.get("layer", "Mamba1") == "Mamba1"
    d_inner = ssm["expand"] * d_model
    if mamba1 and d_inner != 2 * d_model:
        raise SystemExit(f"{path}: llama.cpp's Mamba-1 takes expand 2 only (d_inner = 2 * d_model)")
    w = gguf.GGUFWriter(str(path), "mamba" if mamba1 else "mamba2")
    if tokenizer is not None:
        add_tokenizer(w, tokenizer, "olmo", sd["backbone.embedding.weight"].shape[0])
        w.add_bos_token_id(0)
        w.add_eos_token_id(0)
    w.add_context_length(1 << 20)
    w.add_embedding_length(d_model)
    w.add_feed_forward_length(0)
    w.add_head_count(0)
    w.add_block_count(cfg["n_layer"])
    w.add_ssm_conv_kernel(ssm["d_conv"])
    w.add_ssm_inner_size(d_inner)
    w.add_ssm_state_size(ssm["d_state"])
    if mamba1:
        w.add_ssm_time_step_rank(ssm["dt_rank"])
        w.add_layer_norm_rms_eps(cfg["norm_eps"])
        # Falcon-Mamba's weightless norms on dt, B and C (llama.cpp gives them the eps above).
        w.add_ssm_dt_b_c_rms(cfg["falcon"])
    else:
        nheads = d_inner // ssm["headdim"]
        w.add_ssm_time_step_rank(nheads)
        w.add_ssm_group_count(ssm["ngroups"])
        w.add_layer_norm_rms_eps(1e-5)

    def add(name, a, qtype=Q.F32):
        a = np.ascontiguousarray(a, dtype=np.float32)
        if qtype == Q.F32:
            w.add_tensor(name, a)
            return
        try:
            raw = gguf.quants.quantize(a, qtype)
        except gguf.QuantError:  # rows not whole blocks (dt_proj's dt_rank columns)
            qtype = Q.F16
            raw = gguf.quants.quantize(a, qtype)
        w.add_tensor(name, raw, raw_dtype=qtype)

    embedding = sd["backbone.embedding.weight"]
    add("token_embd.weight", embedding, embedding_type)
    for i in range(cfg["n_layer"]):
        p = f"backbone.layers.{i}."
        add(f"blk.{i}.attn_norm.weight", sd[p + "norm.weight"])
        add(f"blk.{i}.ssm_in.weight", sd[p + "mixer.in_proj.weight"], matrix_type)
        add(f"blk.{i}.ssm_conv1d.weight", sd[p + "mixer.conv1d.weight"].squeeze(1))
        add(f"blk.{i}.ssm_conv1d.bias", sd[p + "mixer.conv1d.bias"])
        if mamba1:
            add(f"blk.{i}.ssm_x.weight", sd[p + "mixer.x_proj.weight"], matrix_type)
            add(f"blk.{i}.ssm_dt.weight", sd[p + "mixer.dt_proj.weight"], matrix_type)
            add(f"blk.{i}.ssm_dt.bias", sd[p + "mixer.dt_proj.bias"])
            add(f"blk.{i}.ssm_a", -np.exp(sd[p + "mixer.A_log"]))  # (d_inner, d_state)
            add(f"blk.{i}.ssm_d", sd[p + "mixer.D"])
        else:
            add(f"blk.{i}.ssm_dt.bias", sd[p + "mixer.dt_bias"])
            add(f"blk.{i}.ssm_a", -np.exp(sd[p + "mixer.A_log"]).reshape(nheads, 1))
            add(f"blk.{i}.ssm_d", sd[p + "mixer.D"].reshape(nheads, 1))
            add(f"blk.{i}.ssm_norm.weight", sd[p + "mixer.norm.weight"].reshape(ssm["ngroups"], -1))
        add(f"blk.{i}.ssm_out.weight", sd[p + "mixer.out_proj.weight"], matrix_type)
    add("output_norm.weight", sd["backbone.norm_f.weight"])
    # An untied head; the converter leaves out one equal to the embedding.
    head = sd.get("lm_head.weight")
    if head is not None and not np.array_equal(head, embedding):
        add("output.weight", head, embedding_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def random_k_blocks(rng, qtype, rows, cols):
    """Random k-quant blocks: any bytes are a valid block once the fp16 scales are sane."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    scale_offsets = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}[qtype]
    for off in scale_offsets:
        d = rng.uniform(1e-3, 5e-2, size=raw.shape[:2]).astype(np.float16)
        raw[:, :, off:off + 2] = d.view(np.uint8).reshape(rows, cols // block, 2)
    return raw.reshape(rows, -1)


def write_types(path, npy_dir):
    rng = np.random.default_rng(20261201)
    w = gguf.GGUFWriter(str(path), "mamba2")
    expected = {}
    x = rng.standard_normal((3, 64)).astype(np.float32)
    w.add_tensor("f32", x)
    expected["f32"] = x
    w.add_tensor("f16", x.astype(np.float16))
    expected["f16"] = x.astype(np.float16).astype(np.float32)
    for name, qtype in (("bf16", Q.BF16), ("q8_0", Q.Q8_0), ("q4_0", Q.Q4_0)):
        raw = gguf.quants.quantize(x, qtype)
        w.add_tensor(name, raw, raw_dtype=qtype)
        expected[name] = gguf.quants.dequantize(raw, qtype).astype(np.float32)
    for name, qtype in (("q4_k", Q.Q4_K), ("q5_k", Q.Q5_K), ("q6_k", Q.Q6_K)):
        raw = random_k_blocks(rng, qtype, 2, 512)
        w.add_tensor(name, raw, raw_dtype=qtype)
        expected[name] = gguf.quants.dequantize(raw, qtype).astype(np.float32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    npy_dir.mkdir()
    for name, a in expected.items():
        np.save(npy_dir / f"{name}.npy", a)


def write_vocab(path):
    w = gguf.GGUFWriter(str(path), "mamba2")
    add_tokenizer(w, ROOT / "tests" / "fixtures" / "tokenizer" / "gpt-neox-20b.json", "olmo")
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_chat_template(CHAT_TEMPLATE)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    cfg = json.loads((GOLDEN / "config.json").read_text())
    sd = official_state_dict()
    write_model(OUT / "official_fp32.f32.gguf", sd, cfg, Q.F32, Q.F32)
    write_model(OUT / "official_fp32.q8_0.gguf", sd, cfg, Q.Q8_0, Q.Q8_0)
    write_model(OUT / "official_fp32.q4_0.gguf", sd, cfg, Q.Q4_0, Q.Q8_0)
    # ngroups 2 (the gated norm stored as (2, 64)); GGUF has no dt limit: the test compares weights.
    sd2, cfg2 = hf_model(ROOT / "tests" / "fixtures" / "golden" / "hf_fp32_g2_dtlimit" / "model")
    write_model(OUT / "hf_fp32_g2.f32.gguf", sd2, cfg2, Q.F32, Q.F32)
    sd1, cfg1 = hf_model(ROOT / "tests" / "fixtures" / "golden" / "m1_hf_bf16_sharded" / "model")
    write_model(OUT / "m1_hf_bf16.bf16.gguf", sd1, cfg1, Q.BF16, Q.BF16)
    write_model(OUT / "m1_hf_bf16.q8_0.gguf", sd1, cfg1, Q.Q8_0, Q.Q8_0)
    write_types(OUT / "types.gguf", OUT / "types")
    write_vocab(OUT / "gpt-neox-20b.vocab.gguf")
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(f"{p.relative_to(ROOT)}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
