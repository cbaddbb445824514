#!/usr/bin/env python3
"""Side-by-side baseline for `mamba2 train`: one training step of transformers' pure-PyTorch
Mamba2 (torch_forward path) on the CPU, fp32.

A step is what `mamba2 train` does per step at batch 1: forward and backward over one row of
--seq-len tokens (the labels are the row shifted by one, seq_len - 1 predictions), global-norm
clipping at 1.0 and an AdamW update (betas 0.9/0.95, weight decay 0.1 on the matrices only).
Prints the tokens/s (seq_len tokens per step) of each timed step after --warmup steps.

    python3 bench/pytorch_train_baseline.py --model DIR --threads 2

DIR is a Hugging Face Mamba2 folder (e.g. `mamba2 init --preset 130m --out DIR`).
"""
import argparse
import resource
import statistics
import time

import torch
from transformers import Mamba2ForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Mamba2ForCausalLM.from_pretrained(args.model, dtype=torch.float32).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=6e-4, betas=(0.9, 0.95), eps=1e-8)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, model {args.model}, seq_len {args.seq_len}")
    rates = []
    for step in range(args.warmup + args.steps):
        ids = torch.randint(0, vocab, (1, args.seq_len), generator=g)
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        tag = "warm-up" if step < args.warmup else "timed"
        print(f"step {step + 1} ({tag}): loss {loss.item():.4f}, {dt:.2f} s, {args.seq_len / dt:.1f} tokens/s")
        if step >= args.warmup:
            rates.append(args.seq_len / dt)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(f"median {statistics.median(rates):.1f} tokens/s over {len(rates)} steps, peak memory {peak:.0f} MiB")


if __name__ == "__main__":
    main()
