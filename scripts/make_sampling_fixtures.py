#!/usr/bin/env python3
"""Oracle for the sampling filters: Hugging Face transformers' own logits processors.

Writes tests/fixtures/sampling/cases.json: random logit rows, the tokens already seen, the
parameters, and the distribution HF would draw from (softmax of the processed scores) after
RepetitionPenalty → Temperature → TopK → TopP → MinP, the order of HF's generate.
A case is kept only when float32 and float64 runs of the processors keep the same tokens, so
that no case sits on a filter's boundary within rounding.

Usage: python3 scripts/make_sampling_fixtures.py  (torch + transformers; any version with MinP)
"""
import json
import pathlib

import torch
from transformers.generation.logits_process import (MinPLogitsWarper, RepetitionPenaltyLogitsProcessor,
                                                     TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/sampling/cases.json"


def processed(logits, seen, p, dtype):
    scores = logits.to(dtype).unsqueeze(0).clone()
    ids = torch.tensor([seen if seen else [0]], dtype=torch.long)
    if p["repetition_penalty"] != 1.0 and seen:
        scores = RepetitionPenaltyLogitsProcessor(p["repetition_penalty"])(ids, scores)
    scores = TemperatureLogitsWarper(p["temperature"])(ids, scores)
    if p["top_k"] > 0:
        scores = TopKLogitsWarper(p["top_k"])(ids, scores)
    if p["top_p"] < 1.0:
        scores = TopPLogitsWarper(p["top_p"])(ids, scores)
    if p["min_p"] > 0.0:
        scores = MinPLogitsWarper(p["min_p"])(ids, scores)
    return scores[0].double().softmax(-1)


def main():
    g = torch.Generator().manual_seed(1234)
    cases = []
    grid = [
        dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0),
        dict(temperature=0.7, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0),
        dict(temperature=1.0, top_k=5, top_p=1.0, min_p=0.0, repetition_penalty=1.0),
        dict(temperature=1.0, top_k=0, top_p=0.9, min_p=0.0, repetition_penalty=1.0),
        dict(temperature=1.0, top_k=0, top_p=0.5, min_p=0.0, repetition_penalty=1.0),
        dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.1, repetition_penalty=1.0),
        dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.3),
        dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, repetition_penalty=1.0),
        dict(temperature=1.5, top_k=20, top_p=0.8, min_p=0.02, repetition_penalty=1.2),
        dict(temperature=0.5, top_k=3, top_p=0.99, min_p=0.3, repetition_penalty=0.8),
    ]
    for vocab in (7, 64, 300):
        for p in grid:
            for trial in range(3):
                scale = [1.0, 3.0, 6.0][trial]
                logits = torch.randn(vocab, generator=g, dtype=torch.float64).float() * scale
                seen = sorted(set(torch.randint(0, vocab, (min(10, vocab),), generator=g).tolist()))
                p32, p64 = processed(logits, seen, p, torch.float32), processed(logits, seen, p, torch.float64)
                if not torch.equal(p32 > 0, p64 > 0):
                    continue  # a filter boundary within rounding: not a fair test
                cases.append(dict(params=p, logits=logits.tolist(), seen=seen, probs=[float(f"{x:.10g}") for x in p64.tolist()]))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"cases": cases}, indent=None) + "\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
