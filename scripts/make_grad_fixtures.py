#!/usr/bin/env python3
"""Loss and gradient fixtures for the C++ Mamba2 training pass, computed in float64 on the CPU.

For each case this script builds a tiny random Mamba2 language model with the conventions of
scripts/make_golden.py (its weights, checkpoint writers and its per-token recurrence written
from DESIGN.md §1 are imported from there), writes it in one of the two checkpoint layouts,
and writes what `mamba2 grad` must produce for a batch of packed sequences:

  tests/fixtures/grad/<case>/model/              config.json + weights (fp32)
  tests/fixtures/grad/<case>/case.json           {"ids", "lengths", "loss", "description"}
  tests/fixtures/grad/<case>/grads.safetensors   F32: "loss" (0-d) and "grad.<name>" for every
                                                 parameter, named as in the checkpoint (a tied
                                                 head is the embedding, listed once), in the
                                                 stored shapes (conv1d.weight (conv_dim, 1, K))

The loss is the mean next-token cross-entropy over the padded vocabulary, over every predicted
position of every sequence (a sequence of length L predicts L-1 tokens), each sequence run from
a zero state. Oracle A: make_golden's per-token recurrence in float64, differentiated by
torch.autograd. Oracle B (cross-check): transformers' Mamba2ForCausalLM (chunked SSD) in
float64 with its internal float32 casts suppressed, also differentiated by autograd; asserted
to agree with A for ngroups 1 (transformers 5.17 is wrong for ngroups > 1, DESIGN.md §3), printed
otherwise.

Usage: python3 scripts/make_grad_fixtures.py   (deterministic; rewrites tests/fixtures/grad/)
"""

import json
import math
import os
import shutil
import sys
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_golden as mg  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
GRAD_DIR = REPO_ROOT / "tests" / "fixtures" / "grad"
F64 = torch.float64
CROSS_CHECK_TOL = 1e-10  # oracle A vs B, relative L2 per gradient tensor


@dataclass
class GradCase(mg.Case):
    tied: bool = True
    # Smaller than the golden cases so that model + gradients stay ~150 KB per case:
    # d_inner 64, nheads 8, V_pad 64.
    vocab_size: int = 50
    d_model: int = 32
    d_state: int = 8
    headdim: int = 8


CASES = [
    GradCase(name="official_tied_g1", layout="official", dtype=torch.float32, ngroups=1,
             lengths=[11, 6], seed=5005, chunk_size=4,
             description="official layout (pytorch_model.bin, tied lm_head), ngroups 1, chunk_size 4; "
                         "two packed sequences crossing chunk boundaries (4+4+3, 4+2)"),
    GradCase(name="hf_g2_dtlimit", layout="hf", dtype=torch.float32, ngroups=2,
             lengths=[9, 1, 14], seed=6006, chunk_size=4, dt_limit=(0.005, 0.05),
             description="HF layout, tied, ngroups 2, chunk_size 4, time_step_limit (0.005, 0.05) binding "
                         "on both sides; a length-1 sequence in the batch (no prediction)"),
    GradCase(name="hf_untied_g1", layout="hf", dtype=torch.float32, ngroups=1,
             lengths=[19, 5], seed=7007, chunk_size=8, tied=False,
             description="HF layout, untied lm_head (its own gradient), ngroups 1, chunk_size 8"),
]


def make_weights(c, gen):
    w = mg.make_weights(c, gen)
    if not c.tied:  # nn.Linear's default init, as `mamba2 init` gives an untied head
        w["lm_head.weight"] = mg.uniform(gen, (c.vocab_pad, c.d_model), 1 / math.sqrt(c.d_model))
    return w


def write_model(c, stored, model_dir):
    """The checkpoint. Tied: make_golden's writers. Untied (HF layout): lm_head.weight is stored
    and tie_word_embeddings is false."""
    if c.tied:
        if c.layout == "official":
            mg.write_official(c, stored, model_dir)
        else:
            mg.write_hf(c, stored, model_dir, shards=1)
        return
    assert c.layout == "hf"
    model_dir.mkdir(parents=True, exist_ok=True)
    cfg = mg.hf_config(c)
    cfg["tie_word_embeddings"] = False
    (model_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file(mg.hf_names(stored), str(model_dir / "model.safetensors"), metadata={"format": "pt"})


def logits_a(c, w, ids, dt_log, rnd=mg.keep):
    """make_golden's oracle A with the head taken from lm_head.weight when untied; rnd as
    mg.mixer_forward's (also "normed_f", the head's input, and "logits")."""
    E = w["backbone.embedding.weight"]
    head = w.get("lm_head.weight", E)
    h = E[ids]
    residual = None
    for i in range(c.n_layer):
        p = f"backbone.layers.{i}."
        residual = h if residual is None else residual + h
        u = mg.rmsnorm(residual, w[p + "norm.weight"])
        h = mg.mixer_forward(c, w, p + "mixer.", u, dt_log, rnd)
    return rnd("logits", rnd("normed_f", mg.rmsnorm(residual + h, w["backbone.norm_f.weight"])) @ head.T)


def mean_loss(per_sequence_logits, seqs):
    """Mean next-token cross-entropy over all predicted positions of all sequences."""
    total, count = 0, 0
    for logits, s in zip(per_sequence_logits, seqs):
        if len(s) < 2:
            continue
        total = total + F.cross_entropy(logits[:-1], torch.tensor(s[1:]), reduction="sum")
        count += len(s) - 1
    return total / count


def oracle_a(c, stored, seqs):
    w = OrderedDict((k, v.to(F64).requires_grad_(True)) for k, v in stored.items())
    dt_log = []
    loss = mean_loss([logits_a(c, w, torch.tensor(s), dt_log) for s in seqs], seqs)
    loss.backward()
    mg.check_dt_limit(c, torch.cat([d.detach().flatten() for d in dt_log]))
    return loss.item(), OrderedDict((k, v.grad) for k, v in w.items())


def oracle_b(c, stored, seqs):
    """transformers in float64, or None. Returns gradients under official names."""
    with tempfile.TemporaryDirectory() as tmp:
        if c.tied:
            mg.write_hf(c, stored, Path(tmp), shards=1)
        else:
            write_model(c, stored, Path(tmp))
        model = mg.load_hf_model(Path(tmp))
        if model is None:
            return None
        with mg.keep_float64():
            logits = [model(torch.tensor([s])).logits[0].to(F64) for s in seqs]
            loss = mean_loss(logits, seqs)
            loss.backward()
        grads = OrderedDict()
        for name, p in model.named_parameters():
            grads[name.replace("backbone.embeddings.", "backbone.embedding.")] = p.grad
        return loss.item(), grads


def checkpoint_name(c, name):
    return name if c.layout == "official" else name.replace("backbone.embedding.", "backbone.embeddings.")


def case_inputs(c):
    """The case's stored weights and its sequences of token ids."""
    gen = torch.Generator().manual_seed(c.seed)
    stored = mg.quantize(make_weights(c, gen), c.dtype)
    id_gen = torch.Generator().manual_seed(c.seed + 1)
    return stored, [torch.randint(0, c.vocab_size, (n,), generator=id_gen).tolist() for n in c.lengths]


def make_case(c):
    stored, seqs = case_inputs(c)

    case_dir = GRAD_DIR / c.name
    if case_dir.exists():
        shutil.rmtree(case_dir)
    write_model(c, stored, case_dir / "model")

    print(f"{c.name}: layout {c.layout}, {'tied' if c.tied else 'untied'}, G {c.ngroups}, Q {c.chunk_size}, "
          f"dt_limit {c.dt_limit}, lengths {c.lengths}")
    loss, grads = oracle_a(c, stored, seqs)
    print(f"  loss {loss:.10f}")

    b = oracle_b(c, stored, seqs)
    if b is None:
        print("  oracle B: not run (transformers unavailable)")
    else:
        loss_b, grads_b = b
        assert set(grads_b) == set(grads), f"parameter names differ: {set(grads_b) ^ set(grads)}"
        worst = max(mg.rel_l2(grads[k], grads_b[k]) for k in grads)
        worst = max(worst, abs(loss - loss_b) / abs(loss))
        status = "asserted" if c.ngroups == 1 else "information only: ngroups > 1"
        print(f"  oracle A vs B: loss {loss_b:.10f}, worst rel L2 over loss and gradients {worst:.2e} ({status})")
        if c.ngroups == 1:
            assert worst < CROSS_CHECK_TOL, f"{c.name}: oracle A vs B {worst:.3e} >= {CROSS_CHECK_TOL}"

    out = OrderedDict()
    out["loss"] = torch.tensor(loss, dtype=torch.float32)  # 0-d
    for k, g in grads.items():
        assert g is not None and g.abs().max() > 0, f"{c.name}: {k} has no gradient"
        out["grad." + checkpoint_name(c, k)] = g.to(torch.float32).contiguous()
    save_file(out, str(case_dir / "grads.safetensors"))
    meta = {"ids": [t for s in seqs for t in s], "lengths": c.lengths, "loss": loss, "description": c.description}
    (case_dir / "case.json").write_text(json.dumps(meta) + "\n")


def main():
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    GRAD_DIR.mkdir(parents=True, exist_ok=True)
    for c in CASES:
        make_case(c)


if __name__ == "__main__":
    main()
