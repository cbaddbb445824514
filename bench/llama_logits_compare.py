#!/usr/bin/env python3
"""Our logits against llama.cpp's on the same GGUF file: llama-perplexity's saved log-probabilities
(`--kl-divergence-base FILE`: every scored position's full distribution, 16-bit) beside
`mamba2 logits` on the same chunks of tokens, each chunk from a fresh state as llama-perplexity runs
it. Prints per chunk and overall: the perplexity each side computes over the scored positions (the
second half of each chunk, llama-perplexity's), the largest difference of a log-probability (over
tokens within llama.cpp's 16-nat range below the top one, which the file resolves to ~1.2e-4),
the mean KL divergence (llama.cpp's || ours), and how often the top token is the same.

  llama-perplexity -m M.gguf -f TEXT -c 128 --chunks 4 -t 2 --kl-divergence-base /tmp/lp.bin
  python3 bench/llama_logits_compare.py /tmp/lp.bin build/bin/mamba2 M.gguf [--threads 2]

llama.cpp's file format (tools/perplexity/perplexity.cpp): "_logits_", int32 n_ctx, n_vocab,
n_chunk, the n_chunk·n_ctx token ids, then per chunk and scored position a record of
2·⌈n_vocab/2⌉ + 4 uint16: float32 scale, float32 min_log_prob, then q per token with
log p = min_log_prob + scale·q (q = 0: at or below the clip). Standard library and numpy.
"""
import argparse
import pathlib
import subprocess
import tempfile

import numpy as np


def read_llama(path):
    raw = pathlib.Path(path).read_bytes()
    if raw[:8] != b"_logits_":
        raise SystemExit(f"{path}: not a llama-perplexity logits file")
    n_ctx, n_vocab, n_chunk = np.frombuffer(raw, np.int32, 3, 8)
    at = 20
    tokens = np.frombuffer(raw, np.int32, n_chunk * n_ctx, at).reshape(n_chunk, n_ctx)
    at += tokens.nbytes
    nv = 2 * ((n_vocab + 1) // 2) + 4
    first = n_ctx // 2
    scored = n_ctx - 1 - first
    records = np.frombuffer(raw, np.uint16, n_chunk * scored * nv, at).reshape(n_chunk, scored, nv)
    head = records[:, :, :4].copy().view(np.float32)  # (chunk, pos, 2): scale, min_log_prob
    q = records[:, :, 4:4 + n_vocab].astype(np.float64)
    logp = head[:, :, 1:2].astype(np.float64) + head[:, :, 0:1].astype(np.float64) * q
    return tokens, first, logp, q == 0


def ours(mamba2, model, ids, threads):
    with tempfile.TemporaryDirectory() as d:
        out = pathlib.Path(d) / "logits.npy"
        cmd = [mamba2, "logits", "--model", model, "--device", "cpu", "--ids", ",".join(map(str, ids)), "--out", str(out)]
        if threads:
            cmd += ["--threads", str(threads)]
        subprocess.run(cmd, check=True, capture_output=True)
        return np.load(out).astype(np.float64)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("llama_file")
    ap.add_argument("mamba2")
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--bos", type=int, default=None,
                    help="the id llama-perplexity put first in each chunk when the vocabulary adds BOS")
    a = ap.parse_args()
    tokens, first, theirs, clipped = read_llama(a.llama_file)
    n_chunk, n_ctx = tokens.shape
    nll_l = nll_o = kl = 0.0
    worst = 0.0
    same_top = count = 0
    for c in range(n_chunk):
        ids = tokens[c].tolist()
        if a.bos is not None:
            ids[0] = a.bos
        z = ours(a.mamba2, a.model, ids, a.threads)[first:n_ctx - 1, :theirs.shape[2]]
        mine = z - z.max(axis=1, keepdims=True)
        mine -= np.log(np.exp(mine).sum(axis=1, keepdims=True))
        target = tokens[c, first + 1:n_ctx]
        rows = np.arange(len(target))
        t, keep = theirs[c], ~clipped[c]
        chunk_worst = np.abs(np.where(keep, t - mine, 0.0)).max()
        p = np.exp(t) * keep
        chunk_kl = (p * (t - mine)).sum(axis=1).mean()
        top = (t.argmax(axis=1) == mine.argmax(axis=1)).mean()
        nll_l += -t[rows, target].sum()
        nll_o += -mine[rows, target].sum()
        kl += chunk_kl * len(target)
        same_top += int(top * len(target))
        count += len(target)
        worst = max(worst, chunk_worst)
        print(f"chunk {c}: ppl llama.cpp {np.exp(-t[rows, target].mean()):.4f} ours {np.exp(-mine[rows, target].mean()):.4f}, "
              f"max |d log p| {chunk_worst:.2e}, KL {chunk_kl:.2e}, same top token {top:.3f}")
    print(f"all {n_chunk} chunks of {n_ctx} ({count} scored positions): ppl llama.cpp {np.exp(nll_l / count):.4f} "
          f"ours {np.exp(nll_o / count):.4f}, max |d log p| {worst:.2e}, mean KL {kl / count:.2e}, "
          f"same top token {same_top}/{count}")


if __name__ == "__main__":
    main()
