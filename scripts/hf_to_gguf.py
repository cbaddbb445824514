#!/usr/bin/env python3
"""A model folder in the Hugging Face layout (`mamba2 init`'s) as llama.cpp's GGUF with a
GPT-NeoX-style tokenizer, for side-by-side benchmarks against llama.cpp on the same weights
(bench/RESULTS.md): a Mamba2 model (model_type "mamba2") as architecture "mamba2", a Mamba-1 one
("mamba", as `mamba2 init --preset mamba-130m` writes, or "falcon_mamba") as "mamba". The layout is
make_gguf_fixtures.py's (that of llama.cpp's convert_hf_to_gguf.py), written and quantized by
llama.cpp's own Python package: pip install gguf numpy.

  python3 scripts/hf_to_gguf.py FOLDER OUT.gguf --type f32|f16|bf16|q8_0|q4_0 --tokenizer tokenizer.json

q4_0 keeps the embedding in q8_0, as llama-quantize does for rows it cannot hold in its k-quants.
Mamba-1's x_proj and dt_proj take the matrices' type (F16 where rows are not whole blocks).
"""
import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import make_gguf_fixtures as fixtures  # noqa: E402

Q = fixtures.Q
TYPES = {"f32": (Q.F32, Q.F32), "f16": (Q.F16, Q.F16), "bf16": (Q.BF16, Q.BF16), "q8_0": (Q.Q8_0, Q.Q8_0), "q4_0": (Q.Q4_0, Q.Q8_0)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=pathlib.Path)
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("--type", choices=sorted(TYPES), required=True)
    ap.add_argument("--tokenizer", type=pathlib.Path, required=True)
    a = ap.parse_args()
    sd, cfg = fixtures.hf_model(a.folder)
    matrices, embedding = TYPES[a.type]
    fixtures.write_model(a.out, sd, cfg, matrices, embedding, tokenizer=a.tokenizer)
    print(f"wrote {a.out} ({a.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
