#!/usr/bin/env python3
"""Full-size check: `mamba2 logits` against transformers' Mamba2ForCausalLM run in float64.

The committed golden fixtures are tiny; this runs a real-size model folder (e.g. one written by
`mamba2 init --preset 130m`: d_state 128, headdim 64, chunk 256) on sequences that cross chunk
boundaries, in both prefill and decode modes, and prints the relative L2 error per sequence.
Only for ngroups == 1 (transformers is wrong for ngroups > 1, DESIGN.md §3).

    python3 scripts/check_against_hf.py --model DIR [--lengths 600,1,255] [--cli build/bin/mamba2]
"""
import argparse
import subprocess
import tempfile

import numpy as np
import torch
from transformers import Mamba2ForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--lengths", default="600,1,255")
    ap.add_argument("--cli", default="build/bin/mamba2")
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    model = Mamba2ForCausalLM.from_pretrained(args.model, dtype=torch.float64).eval()
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, model.config.vocab_size, (n,), generator=g) for n in lengths]
    with torch.inference_mode():
        refs = [model(s[None]).logits[0].numpy() for s in seqs]
    ids = ",".join(str(int(t)) for s in seqs for t in s)
    for mode in ("prefill", "decode"):
        with tempfile.NamedTemporaryFile(suffix=".npy") as f:
            subprocess.run([args.cli, "logits", "--model", args.model, "--ids", ids, "--lengths", args.lengths,
                            "--mode", mode, "--out", f.name], check=True)
            got = np.load(f.name).astype(np.float64)
        start = 0
        for n, ref in zip(lengths, refs):
            err = np.linalg.norm(got[start:start + n] - ref) / np.linalg.norm(ref)
            print(f"{mode} length {n}: relative L2 error {err:.2e}")
            start += n


if __name__ == "__main__":
    main()
