#!/usr/bin/env python3
"""A synthetic token stream with oscillating long-range structure, for comparing real and complex
Mamba-1 scans (issue 11; bench/complex_vs_real.sh). Each document is a sum of K sinusoids with its
own random periods (log-uniform in [P_MIN, P_MAX] tokens), phases and amplitudes, plus Gaussian
noise, quantised to LEVELS symbols 'a', 'b', ...: predicting the next symbol well means inferring
each document's oscillators from what came before and tracking their phases. Also prints, in nats
per symbol, the entropy of the symbol frequencies (the loss of a predictor that ignores the
context) and the noise floor: the mean entropy of a symbol given its noiseless value (the loss of
a predictor that knows every oscillator exactly), over every 16th training symbol.

  python3 scripts/make_oscillation_data.py OUT_DIR [--docs 600] [--val-docs 50] [--length 2048] [--seed 0]

Writes OUT_DIR/train.txt and OUT_DIR/val.txt, one document a line. Standard library only.
"""
import argparse
import collections
import math
import random
from pathlib import Path

K, P_MIN, P_MAX, NOISE, LEVELS = 3, 16.0, 256.0, 0.15, 16


def floor_entropy(clean):
    """Entropy of the quantised clean + N(0, NOISE) given clean."""
    cdf = lambda v: 0.5 * (1 + math.erf((v - clean) / (NOISE * math.sqrt(2))))
    edges = [-math.inf] + [-1 + 2 * l / LEVELS for l in range(1, LEVELS)] + [math.inf]
    ps = [cdf(hi) - cdf(lo) for lo, hi in zip(edges, edges[1:])]
    return -sum(p * math.log(p) for p in ps if p > 0)


def document(rng, length, clean_out=None):
    waves = [(math.exp(rng.uniform(math.log(P_MIN), math.log(P_MAX))), rng.uniform(0, 2 * math.pi),
              rng.uniform(0.5, 1.0)) for _ in range(K)]
    total = sum(a for _, _, a in waves)
    chars = []
    for t in range(length):
        clean = sum(a * math.sin(2 * math.pi * t / p + ph) for p, ph, a in waves) / total
        if clean_out is not None and t % 16 == 0:
            clean_out.append(clean)
        v = clean + rng.gauss(0, NOISE)
        level = min(LEVELS - 1, max(0, int((v + 1) / 2 * LEVELS)))
        chars.append(chr(ord("a") + level))
    return "".join(chars)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--docs", type=int, default=600)
    ap.add_argument("--val-docs", type=int, default=50)
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    a.out.mkdir(parents=True, exist_ok=True)
    counts = collections.Counter()
    cleans = []
    for name, n in (("train.txt", a.docs), ("val.txt", a.val_docs)):
        docs = [document(rng, a.length, cleans if name == "train.txt" else None) for _ in range(n)]
        if name == "train.txt":
            for d in docs:
                counts.update(d)
        (a.out / name).write_text("\n".join(docs) + "\n")
    total = sum(counts.values())
    entropy = -sum(c / total * math.log(c / total) for c in counts.values())
    floor = sum(map(floor_entropy, cleans)) / len(cleans)
    print(f"wrote {a.out}/train.txt ({a.docs} documents) and val.txt ({a.val_docs}) of {a.length} symbols; "
          f"symbol-frequency entropy {entropy:.4f} nats, noise floor {floor:.4f} nats")


if __name__ == "__main__":
    main()
