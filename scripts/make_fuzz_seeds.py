#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora under fuzz/corpus/<target>/: small valid inputs (and a
few near-misses) from which libFuzzer mutates. Pure Python, no torch needed; small test fixtures
are copied where they exist. Run from the repository root: python3 scripts/make_fuzz_seeds.py"""
import json
import os
import shutil
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
FIX = os.path.join(ROOT, "tests", "fixtures")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def copy(target, src, name=None):
    put(target, name or os.path.basename(src), open(src, "rb").read())


def safetensors(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, raw bytes)."""
    header, blobs, off = {}, b"", 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs += raw
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + blobs


def torch_seeds():
    """Small uncompressed torch.save archives (what pytorch_model.bin is), when torch is here."""
    try:
        import io
        import torch
    except ImportError:
        print("torch not found: torch seeds other than the fixture skipped")
        return
    sd = {"backbone.embedding.weight": torch.arange(6, dtype=torch.float32).reshape(3, 2),
          "backbone.layers.0.mixer.A_log": torch.tensor([0.5, -1.0], dtype=torch.bfloat16),
          "backbone.layers.0.mixer.D": torch.tensor([1.0, 2.0], dtype=torch.float16),
          "lm_head.weight": torch.arange(6, dtype=torch.float32).reshape(3, 2)[:, :1]}  # a view: offset, stride
    for name, obj in (("state_dict.bin", sd), ("one.bin", {"w": torch.zeros(1)})):
        buf = io.BytesIO()
        torch.save(obj, buf)
        put("torch", name, buf.getvalue())


def chat_template_seeds():
    """The whole templates of the chat-template fixtures, and a few that fail."""
    templates = json.load(open(os.path.join(FIX, "chat_template", "cases.json"), encoding="utf-8"))["templates"]
    for name, template in templates.items():
        put("chat_template", name + ".jinja", template)
    put("chat_template", "syntax_error.jinja", "{% for m in messages %}{{ m.role | upper }")
    put("chat_template", "deep.jinja", "{{ " + "(" * 70 + "1" + ")" * 70 + " }}")
    put("chat_template", "loops.jinja", "{% for i in range(9) %}{% for j in range(i) %}{{ j ~ loop.index }}{% endfor %}{% endfor %}")


def main():
    shutil.rmtree(CORPUS, ignore_errors=True)
    f32 = struct.pack("<4f", 1.0, -2.0, 0.5, 3.0)
    put("safetensors", "f32.safetensors", safetensors([("a.weight", "F32", [2, 2], f32)], {"format": "pt"}))
    put("safetensors", "mixed.safetensors", safetensors([
        ("x", "BF16", [3], struct.pack("<3H", 0x3F80, 0xC000, 0x7F80)),
        ("y", "F16", [1, 2], struct.pack("<2H", 0x3C00, 0xFC00)),
        ("z", "F32", [], struct.pack("<f", 7.0)),
        ("empty", "F32", [0, 4], b"")]))
    put("safetensors", "short.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    # Block-quantized rows (io/safetensors.h): U8 (rows, k/32, block bytes) under the metadata
    # that names the format; fp16 scale 1.0 (0x3C00), then the values.
    q8 = struct.pack("<H", 0x3C00) + bytes(range(32))
    q4 = struct.pack("<H", 0x3C00) + bytes(range(0, 256, 16))
    put("safetensors", "q8_0.safetensors", safetensors([
        ("w", "U8", [2, 1, 34], q8 * 2), ("n", "F32", [2], struct.pack("<2f", 1.0, 2.0))],
        {"format": "pt", "mamba2.quantization": "q8_0"}))
    put("safetensors", "q4_0.safetensors", safetensors([("w", "U8", [1, 2, 18], q4 * 2)],
                                                       {"mamba2.quantization": "q4_0"}))

    # GGUF (tests/fixtures/gguf, scripts/make_gguf_fixtures.py): every tensor type, a Mamba2 q4_0
    # model and a Mamba-1 q8_0 one (architecture "mamba"; its x_proj blocks widened on import).
    copy("gguf", os.path.join(FIX, "gguf", "types.gguf"))
    copy("gguf", os.path.join(FIX, "gguf", "official_fp32.q4_0.gguf"))
    copy("gguf", os.path.join(FIX, "gguf", "m1_hf_bf16.q8_0.gguf"))
    shards = os.path.join(FIX, "golden", "hf_bf16_sharded", "model", "model.safetensors.index.json")
    copy("safetensors_index", shards)
    put("safetensors_index", "two.json", json.dumps({"metadata": {"total_size": 32}, "weight_map": {
        "a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}}))

    copy("torch", os.path.join(FIX, "io", "compressed.pt"))
    torch_seeds()

    for d in sorted(os.listdir(os.path.join(FIX, "golden"))):
        p = os.path.join(FIX, "golden", d, "model", "config.json")
        if os.path.exists(p):
            copy("config", p, d + ".json")
    put("config", "infinity.json", '{"d_model": 64, "n_layer": 2, "vocab_size": 100, "ssm_cfg": '
        '{"layer": "Mamba2", "dt_limit": [0.0, Infinity], "headdim": 16}}')

    put("train_config", "small.json", json.dumps({
        "out": "runs/tiny", "model": {"preset": "130m", "d_model": 256, "n_layer": 4},
        "tokenizer": "tokenizer.json", "train": ["corpus/"], "val_fraction": 0.05, "seq_len": 512,
        "batch_size": 8, "grad_accum": 1, "max_steps": 2000, "lr": 6e-4, "warmup_steps": 100,
        "eval_interval": 200, "checkpoint_interval": 500, "schedule": "cosine", "seed": 1}))
    put("train_config", "init_from.json", json.dumps({
        "out": "o", "init_from": "m", "train": "a.txt", "val": ["b.txt"], "epochs": 1.5, "dtype": "bf16"}))

    put("trainer_state", "state.json", json.dumps({
        "format": "mamba2-trainer-state", "version": 1, "step": 12, "max_steps": 100, "epoch": 0, "index": 12,
        "rows_per_epoch": 40, "epoch_key": 18446744073709551557, "rng": " ".join(str(i) for i in range(313)),
        "tokens_seen": 6144, "best_val_loss": None, "train_fingerprint": "a1", "val_fingerprint": "",
        "config": {"out": "runs/x", "model": {"preset": "130m", "d_model": 64, "n_layer": 2},
                   "train": ["a.txt"], "seq_len": 512, "batch_size": 1, "max_steps": 100, "seed": 1}}, indent=2))

    for name in ("tiny-bpe.json", "tiny-split.json", "tiny-unk.json"):
        copy("tokenizer_load", os.path.join(FIX, "tokenizer", name))

    put("tokenize", "en.txt", "Hello, world! It's 2026; the cat sat on the mat.\n\n\tdef f(x):\n        return x")
    put("tokenize", "uni.txt", "caf\u00e9 cafe\u0301 \u3053\u3093\u306b\u3061\u306f \U0001F642 \u00c5ngstr\u00f6m <|endoftext|>")
    put("tokenize", "bad-utf8.bin", b"ok \xc3\x28 \xed\xa0\x80 \xf4\x90\x80\x80")

    for name, ids, docs, width, eos in (("u16.bin", [0, 5, 6, 0, 7, 0], [0, 3], 2, 0),
                                        ("u32.bin", [70000, 1, 2], [0], 4, None),
                                        ("empty.bin", [], [], 2, 0)):
        meta = json.dumps({"format": "mamba2-token-corpus", "version": 1, "tokens": len(ids), "documents": len(docs),
                           "token_bytes": width, "eos_id": eos, "fingerprint": "0123456789abcdef"}).encode()
        toks = b"".join(struct.pack("<H" if width == 2 else "<I", i) for i in ids)
        put("token_corpus", name, struct.pack("<II", len(meta), len(toks)) + meta + toks +
            b"".join(struct.pack("<Q", d) for d in docs))

    for name in ("f4_v2.npy", "f8.npy", "fortran.npy", "i8.npy"):
        copy("npy", os.path.join(FIX, "io", name))

    meta = {"format": "mamba2.cpp state", "version": "1", "model": "0123456789abcdef", "dtype": "F32",
            "device": "cpu", "n_layer": "2", "tokens": "3", "tokens_fnv1a64": "cbf29ce484222325"}
    rows = [(f"{kind}.{l}", "F32", [n], struct.pack(f"<{n}f", *range(n))) for l in range(2)
            for kind, n in (("conv", 6), ("ssm", 8))]
    put("state", "two_layers.safetensors", safetensors(rows, meta))
    put("state", "wrong_version.safetensors", safetensors(rows, dict(meta, version="2")))
    put("state", "no_layers.safetensors", safetensors([], dict(meta, n_layer="0")))

    put("serve_request", "completion.json", json.dumps({
        "model": "m", "prompt": "Hello", "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "top_k": 40,
        "min_p": 0.05, "repeat_penalty": 1.1, "seed": 3, "stop": ["\n", "END"], "stream": True, "ignore_eos": False,
        "n": 1, "echo": False, "logprobs": None}))
    put("serve_request", "ids.json", json.dumps({"prompt": [1, 2, 50276], "max_tokens": 0, "stop": "x"}))
    put("serve_request", "tokenize.json", json.dumps({"content": "caf\u00e9 \U0001F642", "tokens": [0, 5, 50000]}))

    chat_template_seeds()


if __name__ == "__main__":
    main()
