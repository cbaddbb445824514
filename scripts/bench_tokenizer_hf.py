#!/usr/bin/env python3
"""Single-thread encode throughput of Hugging Face `tokenizers`, measured as bench/tokenizer_bench.cpp
measures ours, and a check that both give the same ids.

    cat /usr/share/common-licenses/* /usr/lib/python3.11/*.py > /tmp/tok_corpus.txt   # the corpus
    build/bin/tokenizer_bench --tokenizer tests/fixtures/tokenizer/gpt-neox-20b.json \\
        --text /tmp/tok_corpus.txt --mode whole --ids-out /tmp/ours.bin
    python3 scripts/bench_tokenizer_hf.py --tokenizer tests/fixtures/tokenizer/gpt-neox-20b.json \\
        --text /tmp/tok_corpus.txt --mode whole --compare /tmp/ours.bin

whole: `Tokenizer.encode(text, add_special_tokens=False)` on the whole file. lines: one
`encode_batch` over the lines (newline included), run serially. One thread: RAYON_NUM_THREADS=1
and TOKENIZERS_PARALLELISM=false are set before `tokenizers` is imported. MB = 10^6 bytes of
UTF-8 input; only the encode call is timed; the first run starts with an empty BPE cache.
"""
import argparse
import array
import os
import sys
import time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import tokenizers  # noqa: E402  (after the thread settings)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--mode", choices=["whole", "lines"], default="whole")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compare", help="ids written by tokenizer_bench --ids-out (int32 LE)")
    args = ap.parse_args()

    with open(args.text, "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8")
    mb = len(raw) / 1e6
    docs = [text]
    if args.mode == "lines":  # split at "\n" only, as tokenizer_bench does (splitlines knows more breaks)
        docs = [line + "\n" for line in text.split("\n")]
        docs[-1] = docs[-1][:-1]
        if not docs[-1]:
            docs.pop()
    print(f"tokenizers {tokenizers.__version__}, tokenizer {args.tokenizer}")
    print(f"text {args.text}: {mb:.3f} MB, {len(docs)} calls (mode {args.mode})")
    tok = tokenizers.Tokenizer.from_file(args.tokenizer)
    best = None
    first_ids = None
    for r in range(args.repeats):
        t0 = time.perf_counter()
        if args.mode == "whole":
            encodings = [tok.encode(text, add_special_tokens=False)]
        else:
            encodings = tok.encode_batch(docs, add_special_tokens=False)
        seconds = time.perf_counter() - t0
        ids = [i for e in encodings for i in e.ids]
        print(f"run {r + 1}: {seconds:.3f} s  {mb / seconds:.2f} MB/s  {len(ids) / seconds:.0f} tokens/s  "
              f"({len(ids)} tokens)")
        if first_ids is None:
            first_ids = ids
        best = seconds if best is None else min(best, seconds)
    print(f"best: {mb / best:.2f} MB/s  {len(first_ids) / best:.0f} tokens/s")
    if args.compare:
        ours = array.array("i")
        with open(args.compare, "rb") as f:
            ours.frombytes(f.read())
        if sys.byteorder != "little":
            ours.byteswap()
        if list(ours) == first_ids:
            print(f"ids identical: {len(first_ids)} tokens")
        else:
            n = next((k for k, (a, b) in enumerate(zip(ours, first_ids)) if a != b), min(len(ours), len(first_ids)))
            print(f"ids DIFFER at token {n} (ours {len(ours)} tokens, tokenizers {len(first_ids)})")
            sys.exit(1)


if __name__ == "__main__":
    main()
