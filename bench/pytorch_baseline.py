#!/usr/bin/env python3
"""Side-by-side baseline: transformers' pure-PyTorch Mamba2 (torch_forward path) on the CPU.

Times what `mamba2 bench` times, on the same model folder: prefill of one prompt (logits of the
last position) and greedy decode at batch 1 and 8 with the recurrent cache, in fp32.

    python3 bench/pytorch_baseline.py --model DIR --threads 2
"""
import argparse
import time

import torch
from transformers import Mamba2ForCausalLM


def best_of(repeats, fn):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill", default="512,2048")
    ap.add_argument("--decode-batch", default="1,8")
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = Mamba2ForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, model {args.model}")
    with torch.inference_mode():
        for n in map(int, args.prefill.split(",")):
            ids = torch.randint(0, vocab, (1, n), generator=g)
            model(ids, logits_to_keep=1)  # warm-up
            s = best_of(args.repeats, lambda: model(ids, logits_to_keep=1, use_cache=True))
            print(f"prefill 1x{n}: {n / s:.1f} tokens/s ({s:.3f} s)")
        for b in map(int, args.decode_batch.split(",")):
            prompt = torch.randint(0, vocab, (b, 8), generator=g)

            def decode():
                model.generate(prompt, max_new_tokens=args.decode_tokens, min_new_tokens=args.decode_tokens,
                               do_sample=False, use_cache=True)

            s_prompt = best_of(args.repeats, lambda: model(prompt, logits_to_keep=1, use_cache=True))
            s = best_of(args.repeats, decode) - s_prompt
            print(f"decode batch {b}: {b * args.decode_tokens / s:.1f} tokens/s ({1e3 * s / args.decode_tokens:.2f} ms/step)")


if __name__ == "__main__":
    main()
