#!/usr/bin/env python3
"""Golden-logit fixtures for the engine's Mamba-1 models, computed in float64 on the CPU.

For each case it builds a tiny random Mamba-1 language model, writes it in the layout a user
brings (official mamba_ssm: config.json with an empty or "Mamba1" ssm_cfg + pytorch_model.bin;
Hugging Face MambaForCausalLM / FalconMambaForCausalLM: safetensors, single or sharded; the
complex layer of our Mamba-1 issue: official layout with A_imag and 2N-wide interleaved B and C),
and the logits the model must produce:

  <out>/<case>/model/      config.json + weights
  <out>/<case>/case.json   {"ids", "lengths", "description"}
  <out>/<case>/logits.npy  float32 (sum(lengths), embedding rows)

Every sequence is evaluated on its own from a zero state; rows in input order.

Oracle A: a per-token recurrence in float64 written here from the definition (DESIGN.md §6; the
  complex layer as the issue defines it), used for the written logits.
Oracle B: transformers' MambaForCausalLM / FalconMambaForCausalLM in float64 on the CPU (its slow
  path), from an HF copy of the same weights; asserted to agree to 1e-10 per sequence (the complex
  layer has no transformers counterpart).
Oracle C: official mamba_ssm's selective_scan_ref (state-spaces/mamba, read from --mamba-src:
  never committed), run in float64 (its .float() casts made .double()) on every layer's scan inputs
  of oracle A, real and complex; asserted to agree to 1e-10.

With --grads DIR it also writes the training pass's fixtures, as scripts/make_grad_fixtures.py
does for Mamba2 (fp32 models):

  DIR/<case>/model/  DIR/<case>/case.json {"ids", "lengths", "loss", "description"}
  DIR/<case>/grads.safetensors  F32 "loss" (0-d) and "grad.<checkpoint name>" of every parameter

the mean next-token cross-entropy over the embedding's rows of every predicted position, its
gradients by torch.autograd through oracle A, cross-checked against transformers' autograd
(1e-10; not for the complex layer).

Needs torch, transformers, einops, numpy, safetensors (the GPU machine has them).
Usage: python3 scripts/make_mamba1_golden.py --out tests/fixtures/golden [--grads tests/fixtures/grad]
       [--mamba-src .anchors/mamba]
"""

import argparse
import ast
import json
import math
import shutil
import sys
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_golden import keep_float64, rel_l2  # noqa: E402  (transformers' fp32 casts kept fp64)
from make_grad_fixtures import mean_loss  # noqa: E402

F64 = torch.float64
EPS = 1e-5
TOL = 1e-10


@dataclass
class Case:
    name: str
    layout: str            # "official", "hf" or "falcon"
    dtype: torch.dtype
    lengths: list
    seed: int
    description: str
    d_state: int = 16
    dt_rank: object = "auto"
    bias: bool = False
    conv_bias: bool = True
    complex: bool = False
    tie: bool = True
    shards: int = 1
    mixer_rms_eps: float = 1e-6
    vocab_size: int = 100
    d_model: int = 64
    n_layer: int = 2
    d_conv: int = 4
    expand: int = 2

    @property
    def d_inner(self):
        return self.expand * self.d_model

    @property
    def R(self):
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else self.dt_rank

    @property
    def bw(self):  # width of B and of C
        return 2 * self.d_state if self.complex else self.d_state

    @property
    def vocab_rows(self):  # official: padded to a multiple of 16; HF: as given
        return (self.vocab_size + 15) // 16 * 16 if self.layout == "official" else self.vocab_size


CASES = [
    Case("m1_official_fp32", "official", torch.float32, [1, 5, 17, 64], 101,
         "official layout (empty ssm_cfg = Mamba1, pytorch_model.bin, tied head), fp32"),
    Case("m1_official_bias_fp16", "official", torch.float16, [3, 64, 2], 202,
         "official layout, ssm_cfg Mamba1 with bias true, conv_bias false, dt_rank 6, d_state 8; fp16",
         d_state=8, dt_rank=6, bias=True, conv_bias=False),
    Case("m1_hf_bf16_sharded", "hf", torch.bfloat16, [64, 1, 9], 303,
         "MambaForCausalLM, bf16, two safetensors shards, untied head", tie=False, shards=2),
    Case("m1_falcon_fp32", "falcon", torch.float32, [2, 33, 64], 404,
         "FalconMambaForCausalLM (weightless RMS norms on dt_low, B, C; mixer_rms_eps 1e-6), fp32"),
    Case("m1_official_complex", "official", torch.float32, [1, 12, 64], 505,
         "official layout, complex Mamba1 layer (A_imag, B and C 2N wide interleaved), fp32", complex=True),
]


GRAD_CASES = [
    Case("m1_official_bias", "official", torch.float32, [1, 9, 20], 601,
         "official layout, Mamba1 with projection biases and no conv bias, tied head, fp32",
         bias=True, conv_bias=False, dt_rank=6),
    Case("m1_falcon_untied", "falcon", torch.float32, [5, 16], 602,
         "FalconMambaForCausalLM, untied head, fp32", tie=False),
    Case("m1_official_complex", "official", torch.float32, [12, 7], 603,
         "official layout, complex Mamba1 layer, tied head, fp32", complex=True),
]


def uniform(gen, shape, bound):
    return (torch.rand(shape, generator=gen, dtype=F64) * 2 - 1) * bound


def make_weights(c, gen):
    """mamba_ssm's init, perturbed so that every parameter moves the logits. Official names."""
    w = OrderedDict()
    w["backbone.embedding.weight"] = torch.randn(c.vocab_rows, c.d_model, generator=gen, dtype=F64) * 0.1
    di, N, R = c.d_inner, c.d_state, c.R
    for i in range(c.n_layer):
        p = f"backbone.layers.{i}.mixer."
        if c.complex:  # S4D-Lin, perturbed
            w[p + "A_log"] = math.log(0.5) + 0.3 * torch.randn(di, N, generator=gen, dtype=F64)
            w[p + "A_imag"] = math.pi * torch.arange(N, dtype=F64).repeat(di, 1) + 0.3 * torch.randn(di, N, generator=gen, dtype=F64)
        else:  # S4D-Real, perturbed
            w[p + "A_log"] = torch.log(torch.arange(1, N + 1, dtype=F64)).repeat(di, 1) + 0.2 * torch.randn(di, N, generator=gen, dtype=F64)
        w[p + "D"] = 1 + 0.5 * torch.randn(di, generator=gen, dtype=F64)
        w[p + "in_proj.weight"] = uniform(gen, (2 * di, c.d_model), 1 / math.sqrt(c.d_model))
        if c.bias:
            w[p + "in_proj.bias"] = 0.1 * torch.randn(2 * di, generator=gen, dtype=F64)
        w[p + "conv1d.weight"] = uniform(gen, (di, 1, c.d_conv), 1 / math.sqrt(c.d_conv))
        if c.conv_bias:
            w[p + "conv1d.bias"] = 0.1 * torch.randn(di, generator=gen, dtype=F64)
        w[p + "x_proj.weight"] = uniform(gen, (R + 2 * c.bw, di), 1 / math.sqrt(di))
        w[p + "dt_proj.weight"] = uniform(gen, (di, R), 1 / math.sqrt(R))
        # dt log-uniform in [1e-3, 1e-1] as its softplus inverse; a few channels far larger (the
        # softplus's linear branch above 20 is hit through dt_proj's product).
        dt = torch.exp(torch.rand(di, generator=gen, dtype=F64) * (math.log(1e-1) - math.log(1e-3)) + math.log(1e-3))
        bias = dt + torch.log(-torch.expm1(-dt))
        bias[::29] = 21.0
        w[p + "dt_proj.bias"] = bias
        w[p + "out_proj.weight"] = uniform(gen, (c.d_model, di), 1 / math.sqrt(di)) / math.sqrt(c.n_layer)
        if c.bias:
            w[p + "out_proj.bias"] = 0.1 * torch.randn(c.d_model, generator=gen, dtype=F64)
        w[f"backbone.layers.{i}.norm.weight"] = 1 + 0.1 * torch.randn(c.d_model, generator=gen, dtype=F64)
    w["backbone.norm_f.weight"] = 1 + 0.1 * torch.randn(c.d_model, generator=gen, dtype=F64)
    if not c.tie:
        w["lm_head.weight"] = torch.randn(c.vocab_rows, c.d_model, generator=gen, dtype=F64) * 0.1
    return w


# ---------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------

def official_config(c):
    if c.name == "m1_official_fp32":
        ssm_cfg = {}  # mamba_ssm's default layer
    else:
        ssm_cfg = {"layer": "Mamba1", "d_state": c.d_state, "d_conv": c.d_conv, "expand": c.expand,
                   "dt_rank": c.dt_rank, "bias": c.bias, "conv_bias": c.conv_bias}
        if c.complex:
            ssm_cfg["complex"] = True
    return {"d_model": c.d_model, "n_layer": c.n_layer, "vocab_size": c.vocab_size, "ssm_cfg": ssm_cfg,
            "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 16,
            "tie_embeddings": c.tie}


def hf_config(c):
    falcon = c.layout == "falcon"
    j = {"architectures": ["FalconMambaForCausalLM" if falcon else "MambaForCausalLM"],
         "model_type": "falcon_mamba" if falcon else "mamba",
         "hidden_size": c.d_model, "intermediate_size": c.d_inner, "state_size": c.d_state,
         "num_hidden_layers": c.n_layer, "vocab_size": c.vocab_rows, "conv_kernel": c.d_conv,
         "expand": c.expand, "time_step_rank": c.R, "use_bias": c.bias, "use_conv_bias": c.conv_bias,
         "layer_norm_epsilon": EPS, "residual_in_fp32": True, "hidden_act": "silu",
         "tie_word_embeddings": c.tie, "use_mambapy": False,
         "torch_dtype": {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[c.dtype]}
    if falcon:
        j["mixer_rms_eps"] = c.mixer_rms_eps
    return j


def write_official(c, stored, out):
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(official_config(c), indent=2) + "\n")
    sd = OrderedDict(stored)
    if c.tie:
        sd["lm_head.weight"] = sd["backbone.embedding.weight"]  # one storage, as a tied state_dict
    torch.save(sd, out / "pytorch_model.bin")


def hf_names(stored):
    return OrderedDict((k.replace("backbone.embedding.", "backbone.embeddings."), v) for k, v in stored.items())


def write_hf(c, stored, out):
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf_config(c), indent=2) + "\n")
    tensors = hf_names(stored)
    meta = {"format": "pt"}
    if c.shards == 1:
        save_file(tensors, str(out / "model.safetensors"), metadata=meta)
        return
    names = list(tensors)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    groups, acc = [[] for _ in range(c.shards)], 0
    for n in names:
        groups[min(c.shards - 1, acc * c.shards // total)].append(n)
        acc += tensors[n].numel() * tensors[n].element_size()
    weight_map = {}
    for s, group in enumerate(groups):
        fname = f"model-{s + 1:05d}-of-{c.shards:05d}.safetensors"
        save_file({n: tensors[n] for n in group}, str(out / fname), metadata=meta)
        weight_map.update({n: fname for n in group})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


# ---------------------------------------------------------------------------
# Oracle A: per-token recurrence in float64
# ---------------------------------------------------------------------------

def rmsnorm(x, weight, eps=EPS):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def silu(x):
    return x * torch.sigmoid(x)


def softplus(v):
    return torch.where(v > 20, v, torch.log1p(torch.exp(torch.clamp(v, max=20))))


def mixer_forward(c, w, p, u, scans):
    """One Mamba-1 mixer over a sequence u (L, d_model), token by token. Appends the scan's inputs
    and outputs to `scans` for oracle C."""
    L, di, N, R = u.shape[0], c.d_inner, c.d_state, c.R
    xz = u @ w[p + "in_proj.weight"].T
    if c.bias:
        xz = xz + w[p + "in_proj.bias"]
    x, z = xz[:, :di], xz[:, di:]
    K = c.d_conv
    cw = w[p + "conv1d.weight"][:, 0, :]
    padded = torch.cat([torch.zeros(K - 1, di, dtype=F64), x], dim=0)
    conv = torch.stack([(padded[t:t + K].T * cw).sum(-1) for t in range(L)])
    if c.conv_bias:
        conv = conv + w[p + "conv1d.bias"]
    x = silu(conv)
    dbl = x @ w[p + "x_proj.weight"].T
    dt_low, B, C = dbl[:, :R], dbl[:, R:R + c.bw], dbl[:, R + c.bw:]
    if c.layout == "falcon":
        dt_low, B, C = (rmsnorm(t, 1.0, c.mixer_rms_eps) for t in (dt_low, B, C))
    dt_raw = dt_low @ w[p + "dt_proj.weight"].T           # the bias goes with the scan
    delta = softplus(dt_raw + w[p + "dt_proj.bias"])
    A = -torch.exp(w[p + "A_log"])
    if c.complex:
        A = torch.complex(A, w[p + "A_imag"])
        Bc = torch.complex(B[:, 0::2], B[:, 1::2])
        Cc = torch.complex(C[:, 0::2], C[:, 1::2])
        h = torch.zeros(di, N, dtype=torch.complex128)
    else:
        Bc, Cc = B, C
        h = torch.zeros(di, N, dtype=F64)
    y = torch.empty(L, di, dtype=F64)
    for t in range(L):
        h = torch.exp(delta[t][:, None] * A) * h + (delta[t] * x[t])[:, None] * Bc[t][None, :]
        s = (h * Cc[t][None, :]).sum(-1)
        y[t] = (2 * s.real if c.complex else s) + w[p + "D"] * x[t]
    y = y * silu(z)
    scans.append(dict(u=x, delta=dt_raw, A=A, B=B, C=C, D=w[p + "D"], z=z, delta_bias=w[p + "dt_proj.bias"],
                      y=y, complex=c.complex))
    out = y @ w[p + "out_proj.weight"].T
    if c.bias:
        out = out + w[p + "out_proj.bias"]
    return out


def oracle_a(c, w, ids, scans):
    h = w["backbone.embedding.weight"][ids]
    residual = None
    for i in range(c.n_layer):
        residual = h if residual is None else residual + h
        u = rmsnorm(residual, w[f"backbone.layers.{i}.norm.weight"])
        h = mixer_forward(c, w, f"backbone.layers.{i}.mixer.", u, scans)
    head = w["backbone.embedding.weight"] if c.tie else w["lm_head.weight"]
    return rmsnorm(residual + h, w["backbone.norm_f.weight"]) @ head.T


# ---------------------------------------------------------------------------
# Oracle B: transformers in float64
# ---------------------------------------------------------------------------

def hf_model(c, stored):
    """transformers' MambaForCausalLM / FalconMambaForCausalLM in float64 from an HF copy of the
    weights, and transformers' version."""
    import transformers
    from transformers import FalconMambaForCausalLM, MambaForCausalLM
    transformers.logging.set_verbosity_error()
    cls = FalconMambaForCausalLM if c.layout == "falcon" else MambaForCausalLM
    with tempfile.TemporaryDirectory() as tmp:
        # An official model's embedding is padded: the HF copy's vocabulary is its row count.
        hf = Case(**{**c.__dict__, "layout": "falcon" if c.layout == "falcon" else "hf", "shards": 1,
                     "vocab_size": c.vocab_rows})
        write_hf(hf, stored, Path(tmp))
        model, info = cls.from_pretrained(tmp, dtype=F64, output_loading_info=True)
    missing = [k for k in (info.get("missing_keys") or []) if k != "lm_head.weight" or not c.tie]
    assert not missing and not info.get("unexpected_keys"), f"HF load: {info}"
    return model, transformers.__version__


def hf_logits(c, model, seqs):
    with keep_float64():
        return [model(torch.tensor([s])).logits[0].to(F64)[:, :c.vocab_rows] for s in seqs]


def oracle_b_logits(c, stored, seqs):
    model, version = hf_model(c, stored)
    model.eval()
    with torch.no_grad():
        return hf_logits(c, model, seqs), version


# ---------------------------------------------------------------------------
# Oracle C: official selective_scan_ref, in float64
# ---------------------------------------------------------------------------

def load_selective_scan_ref(mamba_src):
    """selective_scan_ref from the official source, its fp32 casts made fp64 (it otherwise
    rounds its inputs to float32 first)."""
    path = Path(mamba_src) / "mamba_ssm" / "ops" / "selective_scan_interface.py"
    tree = ast.parse(path.read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "selective_scan_ref")
    src = ast.get_source_segment(path.read_text(), fn).replace(".float()", ".double()")
    from einops import rearrange, repeat
    ns = {"torch": torch, "F": F, "rearrange": rearrange, "repeat": repeat}
    exec(compile(src, str(path), "exec"), ns)
    return ns["selective_scan_ref"]


def oracle_c(ref, s):
    u = s["u"].T[None]             # (1, D, L)
    delta = s["delta"].T[None]
    B = s["B"].T[None]             # (1, N or 2N, L): complex as (N, 2L) pairs, as the official layout
    C = s["C"].T[None]
    if s["complex"]:
        L = s["u"].shape[0]
        N = B.shape[1] // 2
        # mamba_inner_ref: "(b l) (dstate two) -> b dstate (l two)"
        B = s["B"].reshape(L, N, 2).permute(1, 0, 2).reshape(1, N, 2 * L)
        C = s["C"].reshape(L, N, 2).permute(1, 0, 2).reshape(1, N, 2 * L)
    y = ref(u, delta, s["A"], B, C, D=s["D"], z=s["z"].T[None], delta_bias=s["delta_bias"], delta_softplus=True)
    return y[0].T


def setup_case(c, out_root):
    """The case's weights (stored in its dtype) and token sequences, its model written into
    out_root/<name>/model (the folder emptied first)."""
    gen = torch.Generator().manual_seed(c.seed)
    stored = OrderedDict((k, v.to(c.dtype).contiguous()) for k, v in make_weights(c, gen).items())
    id_gen = torch.Generator().manual_seed(c.seed + 1)
    seqs = [torch.randint(0, c.vocab_size, (n,), generator=id_gen).tolist() for n in c.lengths]
    case_dir = out_root / c.name
    if case_dir.exists():
        shutil.rmtree(case_dir)
    if c.layout == "official":
        write_official(c, stored, case_dir / "model")
    else:
        write_hf(c, stored, case_dir / "model")
    return stored, seqs, case_dir


def make_case(c, out_root, ref):
    stored, seqs, case_dir = setup_case(c, out_root)
    w64 = OrderedDict((k, v.to(F64)) for k, v in stored.items())
    scans = []
    with torch.no_grad():
        logits = [oracle_a(c, w64, torch.tensor(s), scans) for s in seqs]
    print(f"{c.name}: {c.description}; lengths {c.lengths}")

    worst_c = max(rel_l2(s["y"], oracle_c(ref, s)) for s in scans)
    print(f"  oracle C (official selective_scan_ref, fp64) vs A, every layer's scan: worst {worst_c:.2e}")
    assert worst_c < TOL, c.name

    if not c.complex:
        got, version = oracle_b_logits(c, stored, seqs)
        diffs = [rel_l2(a, b) for a, b in zip(logits, got)]
        print(f"  oracle B (transformers {version}, fp64) vs A per sequence: " + ", ".join(f"{d:.2e}" for d in diffs))
        assert max(diffs) < TOL, c.name

    all_logits = torch.cat(logits)
    assert all_logits.shape == (sum(c.lengths), c.vocab_rows)
    np.save(case_dir / "logits.npy", all_logits.numpy().astype(np.float32))
    meta = {"ids": [t for s in seqs for t in s], "lengths": c.lengths, "description": c.description}
    (case_dir / "case.json").write_text(json.dumps(meta) + "\n")
    print(f"  max|logit| {all_logits.abs().max().item():.4f}")


def make_grad_case(c, out_root):
    stored, seqs, case_dir = setup_case(c, out_root)
    w = OrderedDict((k, v.to(F64).requires_grad_(True)) for k, v in stored.items())
    loss = mean_loss([oracle_a(c, w, torch.tensor(s), []) for s in seqs], seqs)
    loss.backward()
    print(f"{c.name} (gradients): {c.description}; lengths {c.lengths}; loss {loss.item():.10f}")
    grads = OrderedDict((k, v.grad) for k, v in w.items())

    if not c.complex:
        model, _ = hf_model(c, stored)
        loss_b = mean_loss(hf_logits(c, model, seqs), seqs)
        loss_b.backward()
        grads_b = OrderedDict((n.replace("backbone.embeddings.", "backbone.embedding."), p.grad)
                              for n, p in model.named_parameters())
        worst = abs(loss.item() - loss_b.item()) / abs(loss.item())
        for k, g in grads.items():
            if k == "lm_head.weight" and c.tie:
                continue
            worst = max(worst, rel_l2(g, grads_b[k]))
        print(f"  oracle B (transformers autograd, fp64): worst rel L2 over loss and gradients {worst:.2e}")
        assert worst < TOL, c.name

    out = OrderedDict()
    out["loss"] = torch.tensor(loss.item(), dtype=torch.float32)
    for k, g in grads.items():
        if k == "lm_head.weight" and c.tie:
            continue  # the tied head is the embedding: its gradient is in the embedding's
        assert g is not None and g.abs().max() > 0, f"{c.name}: {k} has no gradient"
        name = k if c.layout == "official" else k.replace("backbone.embedding.", "backbone.embeddings.")
        out["grad." + name] = g.to(torch.float32).contiguous()
    save_file(out, str(case_dir / "grads.safetensors"))
    meta = {"ids": [t for s in seqs for t in s], "lengths": c.lengths, "loss": loss.item(),
            "description": c.description}
    (case_dir / "case.json").write_text(json.dumps(meta) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "golden"))
    ap.add_argument("--grads", default=None, help="also write the gradient fixtures into this folder")
    ap.add_argument("--mamba-src", default=str(Path(__file__).resolve().parent.parent / ".anchors" / "mamba"))
    args = ap.parse_args()
    torch.manual_seed(0)
    ref = load_selective_scan_ref(args.mamba_src)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for c in CASES:
        make_case(c, out, ref)
    if args.grads:
        torch.set_grad_enabled(True)
        Path(args.grads).mkdir(parents=True, exist_ok=True)
        for c in GRAD_CASES:
            make_grad_case(c, Path(args.grads))


if __name__ == "__main__":
    main()
