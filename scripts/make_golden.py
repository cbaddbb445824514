#!/usr/bin/env python3
"""Golden-logit fixtures for the C++ Mamba2 engine, computed in float64 on the CPU.

For each case this script builds a tiny random Mamba2 language model, writes it in
one of the two checkpoint layouts a user brings (DESIGN.md §2), and writes the
logits that the model must produce:

  tests/fixtures/golden/<case>/model/      config.json + weights (the checkpoint)
  tests/fixtures/golden/<case>/case.json   {"ids", "lengths", "description"}
  tests/fixtures/golden/<case>/logits.npy  float32 (sum(lengths), V_pad)

Every sequence is evaluated on its own from a zero state; rows are in input order.

Oracle A is a per-token recurrence written directly from DESIGN.md §1 in float64.
Oracle B is transformers' Mamba2ForCausalLM loaded from an HF-layout copy of the
same weights; it uses the chunked SSD algorithm, so agreement to ~1e-15
cross-validates both the recurrence and the chunked math. The agreement is asserted
only for ngroups == 1: transformers 5.17's PyTorch Mamba2 is wrong for ngroups > 1
(DESIGN.md §3), so for those cases the figure is printed for information only
(transformers 5.24 does agree there).

Usage: python3 scripts/make_golden.py   (deterministic; rewrites tests/fixtures/golden/)
"""

import contextlib
import json
import math
import os
import shutil
import tempfile
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

REPO_ROOT = Path(__file__).resolve().parent.parent
GOLDEN_DIR = REPO_ROOT / "tests" / "fixtures" / "golden"

EPS = 1e-5                 # every RMSNorm in Mamba2 (DESIGN.md §1)
CROSS_CHECK_TOL = 1e-10    # oracle A vs oracle B, relative L2 per sequence
F64 = torch.float64


# ---------------------------------------------------------------------------
# Case definitions
# ---------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    layout: str                    # "official" or "hf"
    dtype: torch.dtype             # dtype the weights are stored in
    ngroups: int
    lengths: list
    seed: int
    description: str
    chunk_size: int = 16
    dt_limit: tuple = (0.0, math.inf)
    shards: int = 1                # HF layout only
    # Tiny model shared by all cases: d_inner 128, nheads 8.
    vocab_size: int = 100
    pad_vocab_size_multiple: int = 16
    d_model: int = 64
    n_layer: int = 2
    d_state: int = 16
    headdim: int = 16
    d_conv: int = 4
    expand: int = 2

    @property
    def vocab_pad(self):
        m = self.pad_vocab_size_multiple
        return (self.vocab_size + m - 1) // m * m

    @property
    def d_inner(self):
        return self.expand * self.d_model

    @property
    def nheads(self):
        return self.d_inner // self.headdim

    @property
    def conv_dim(self):
        return self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def d_in_proj(self):
        return 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.nheads

    @property
    def has_dt_limit(self):
        return self.dt_limit != (0.0, math.inf)


CASES = [
    Case(name="official_fp32", layout="official", dtype=torch.float32, ngroups=1,
         lengths=[1, 15, 17, 40, 64], seed=1001,
         description="official layout (pytorch_model.bin, tied lm_head), fp32, ngroups 1, "
                     "chunk_size 16; lengths 1, chunk-1, chunk+1, non-multiple, multiple"),
    Case(name="hf_fp32_g2_dtlimit", layout="hf", dtype=torch.float32, ngroups=2,
         lengths=[16, 33], seed=2002, dt_limit=(0.005, 0.05),
         description="HF layout (single model.safetensors), fp32, ngroups 2, "
                     "time_step_limit (0.005, 0.05) binding on both sides"),
    Case(name="hf_bf16_sharded", layout="hf", dtype=torch.bfloat16, ngroups=1,
         lengths=[20, 7], seed=3003, shards=2,
         description="HF layout, bf16 weights in 2 safetensors shards + index, ngroups 1; "
                     "logits are for the bf16 weights upcast to float64"),
    Case(name="official_fp16_g4", layout="official", dtype=torch.float16, ngroups=4,
         lengths=[9, 31], seed=4004, chunk_size=8, dt_limit=(0.0, 0.08),
         description="official layout, fp16 tensors, ngroups 4, chunk_size 8, "
                     "dt_limit (0.0, 0.08); logits are for the fp16 weights upcast to float64"),
]


# ---------------------------------------------------------------------------
# Random, well-conditioned weights
# ---------------------------------------------------------------------------

def uniform(gen, shape, bound):
    return (torch.rand(shape, generator=gen, dtype=F64) * 2 - 1) * bound


def make_weights(case, gen):
    """Official init (DESIGN.md §1 end), then perturbations so that every parameter
    influences the logits (a norm weight of exactly 1 or D of exactly 1 would let a
    loader that drops it pass the tests). Names are the official ones."""
    c = case
    w = OrderedDict()
    w["backbone.embedding.weight"] = torch.randn(c.vocab_pad, c.d_model, generator=gen, dtype=F64) * 0.02
    for i in range(c.n_layer):
        p = f"backbone.layers.{i}."
        # dt log-uniform in [1e-3, 1e-1], floored, stored as its softplus inverse.
        dt = torch.exp(torch.rand(c.nheads, generator=gen, dtype=F64)
                       * (math.log(1e-1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        # Module parameters before submodule parameters, as Mamba2.state_dict() orders them.
        w[p + "mixer.dt_bias"] = dt + torch.log(-torch.expm1(-dt))
        w[p + "mixer.A_log"] = torch.log(torch.empty(c.nheads, dtype=F64).uniform_(1, 16, generator=gen))
        w[p + "mixer.D"] = 1 + 0.5 * torch.randn(c.nheads, generator=gen, dtype=F64)
        # nn.Linear / nn.Conv1d default (kaiming_uniform a=sqrt(5)) is U(±1/sqrt(fan_in)).
        w[p + "mixer.in_proj.weight"] = uniform(gen, (c.d_in_proj, c.d_model), 1 / math.sqrt(c.d_model))
        w[p + "mixer.conv1d.weight"] = uniform(gen, (c.conv_dim, 1, c.d_conv), 1 / math.sqrt(c.d_conv))
        w[p + "mixer.conv1d.bias"] = 0.1 * torch.randn(c.conv_dim, generator=gen, dtype=F64)
        w[p + "mixer.norm.weight"] = 1 + 0.1 * torch.randn(c.d_inner, generator=gen, dtype=F64)
        w[p + "mixer.out_proj.weight"] = (uniform(gen, (c.d_model, c.d_inner), 1 / math.sqrt(c.d_inner))
                                          / math.sqrt(c.n_layer))
        w[p + "norm.weight"] = 1 + 0.1 * torch.randn(c.d_model, generator=gen, dtype=F64)
    w["backbone.norm_f.weight"] = 1 + 0.1 * torch.randn(c.d_model, generator=gen, dtype=F64)
    return w


def quantize(weights, dtype):
    """The stored tensors. The oracles see exactly these values, upcast to float64."""
    return OrderedDict((k, v.to(dtype).contiguous()) for k, v in weights.items())


# ---------------------------------------------------------------------------
# Checkpoint writers
# ---------------------------------------------------------------------------

def official_config(c):
    ssm_cfg = {"layer": "Mamba2", "d_state": c.d_state, "d_conv": c.d_conv, "expand": c.expand,
               "headdim": c.headdim, "ngroups": c.ngroups, "chunk_size": c.chunk_size}
    if c.has_dt_limit:
        ssm_cfg["dt_limit"] = list(c.dt_limit)
    return {"d_model": c.d_model, "d_intermediate": 0, "n_layer": c.n_layer,
            "vocab_size": c.vocab_size, "ssm_cfg": ssm_cfg, "attn_layer_idx": [], "attn_cfg": {},
            "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
            "pad_vocab_size_multiple": c.pad_vocab_size_multiple, "tie_embeddings": True}


def hf_config(c):
    dtype_name = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[c.dtype]
    # JSON has no inf; HF writes the default limit as [0.0, Infinity], which Python's json emits.
    return {"architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2",
            "hidden_size": c.d_model, "num_hidden_layers": c.n_layer, "state_size": c.d_state,
            "head_dim": c.headdim, "num_heads": c.nheads, "n_groups": c.ngroups,
            "expand": c.expand, "conv_kernel": c.d_conv, "chunk_size": c.chunk_size,
            "time_step_limit": list(c.dt_limit),
            "vocab_size": c.vocab_pad,  # HF has no padding multiple: the file is already padded
            "layer_norm_epsilon": EPS, "tie_word_embeddings": True, "use_bias": False,
            "use_conv_bias": True, "residual_in_fp32": True, "rms_norm": True,
            "hidden_act": "silu", "torch_dtype": dtype_name}


def write_official(case, stored, out_dir):
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(official_config(case), indent=2) + "\n")
    sd = OrderedDict(stored)
    # Same tensor object: torch.save stores one storage referenced twice, as
    # model.state_dict() of a tied official model does.
    sd["lm_head.weight"] = sd["backbone.embedding.weight"]
    torch.save(sd, out_dir / "pytorch_model.bin")


def hf_names(stored):
    return OrderedDict((k.replace("backbone.embedding.", "backbone.embeddings."), v) for k, v in stored.items())


def write_hf(case, stored, out_dir, shards):
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(hf_config(case), indent=2) + "\n")
    tensors = hf_names(stored)  # no lm_head.weight: tie_word_embeddings
    meta = {"format": "pt"}
    if shards == 1:
        save_file(tensors, str(out_dir / "model.safetensors"), metadata=meta)
        return
    # Split by bytes in key order, so each shard holds a contiguous run of layers.
    names = list(tensors)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    groups, acc = [[] for _ in range(shards)], 0
    for n in names:
        idx = min(shards - 1, acc * shards // total)
        groups[idx].append(n)
        acc += tensors[n].numel() * tensors[n].element_size()
    assert all(groups), "every shard must hold at least one tensor"
    weight_map = {}
    for s, group in enumerate(groups):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in group}, str(out_dir / fname), metadata=meta)
        weight_map.update({n: fname for n in group})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


# ---------------------------------------------------------------------------
# Oracle A: per-token recurrence, float64, straight from DESIGN.md §1
# ---------------------------------------------------------------------------

def rmsnorm(x, weight):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * weight


def silu(x):
    return x * torch.sigmoid(x)


def softplus(v):
    # Same threshold as torch / the CUDA kernels: linear above 20.
    return torch.where(v > 20, v, torch.log1p(torch.exp(torch.clamp(v, max=20))))


def keep(name, t):
    return t


def mixer_forward(c, w, p, u, dt_log, rnd=keep):
    """One Mamba2 mixer over a whole sequence u (L, D), token by token. rnd(name, t) may replace
    the named intermediates (scripts/mixed_precision_grads.py rounds them)."""
    L = u.shape[0]
    H, P, N, G = c.nheads, c.headdim, c.d_state, c.ngroups
    zxbcdt = rnd("u", u) @ w[p + "in_proj.weight"].T
    z, xBC, dt = torch.split(zxbcdt, [c.d_inner, c.conv_dim, H], dim=-1)
    z, xBC, dt = rnd("z", z), rnd("xBC_in", xBC), rnd("dt", dt)

    # Causal depthwise conv: out[t,c] = sum_k w[c,k] * x[t-K+1+k, c], zeros before t=0.
    K = c.d_conv
    cw = w[p + "conv1d.weight"][:, 0, :]                       # (conv_dim, K)
    padded = torch.cat([torch.zeros(K - 1, c.conv_dim, dtype=F64), xBC], dim=0)
    conv = torch.stack([(padded[t:t + K].T * cw).sum(-1) for t in range(L)])
    xBC = rnd("xBC", silu(conv + w[p + "conv1d.bias"]))

    x, B, C = torch.split(xBC, [c.d_inner, G * N, G * N], dim=-1)
    x = x.reshape(L, H, P)
    B = B.reshape(L, G, N)
    C = C.reshape(L, G, N)

    dt = softplus(dt + w[p + "dt_bias"])                       # (L, H)
    dt_log.append(dt.clone())
    if c.has_dt_limit:
        dt = dt.clamp(min=c.dt_limit[0], max=c.dt_limit[1])
    A = -torch.exp(w[p + "A_log"])
    Dskip = w[p + "D"]
    group_of_head = torch.arange(H) // (H // G)                # contiguous groups, not h % G

    state = torch.zeros(H, P, N, dtype=F64)
    y = torch.empty(L, H, P, dtype=F64)
    for t in range(L):
        Bt = B[t, group_of_head]                               # (H, N)
        Ct = C[t, group_of_head]
        decay = torch.exp(dt[t] * A)                           # (H)
        state = decay[:, None, None] * state + (dt[t][:, None] * x[t])[:, :, None] * Bt[:, None, :]
        y[t] = (state * Ct[:, None, :]).sum(-1) + Dskip[:, None] * x[t]

    y = rnd("y", y.reshape(L, c.d_inner)) * silu(z)
    # Gated RMSNorm: normalise each group of d_inner/G channels separately.
    yg = y.reshape(L, G, c.d_inner // G)
    yg = yg * torch.rsqrt(yg.pow(2).mean(-1, keepdim=True) + EPS)
    y = yg.reshape(L, c.d_inner) * w[p + "norm.weight"]
    return rnd("gated", y) @ w[p + "out_proj.weight"].T


def oracle_a(c, w, ids, dt_log):
    """Logits (L, V_pad) for one sequence; w holds float64 tensors with official names."""
    E = w["backbone.embedding.weight"]
    h = E[ids]
    residual = None
    for i in range(c.n_layer):
        p = f"backbone.layers.{i}."
        residual = h if residual is None else residual + h
        u = rmsnorm(residual, w[p + "norm.weight"])
        h = mixer_forward(c, w, p + "mixer.", u, dt_log)
    return rmsnorm(residual + h, w["backbone.norm_f.weight"]) @ E.T


# ---------------------------------------------------------------------------
# Oracle B: transformers' Mamba2ForCausalLM in float64
# ---------------------------------------------------------------------------

@contextlib.contextmanager
def keep_float64():
    """transformers' Mamba2 casts to float32 internally (.float(), .to(torch.float32) in
    the norms, the residual and the chunk scan), which caps agreement at ~1e-7.
    Inside this context a float64 tensor asked to become float32 stays float64,
    so the comparison measures the algorithm, not those casts."""
    orig_float, orig_to = torch.Tensor.float, torch.Tensor.to

    def float_(self, *args, **kwargs):
        return self if self.dtype == F64 else orig_float(self, *args, **kwargs)

    def to_(self, *args, **kwargs):
        if self.dtype == F64:
            args = tuple(F64 if a is torch.float32 else a for a in args)
            if kwargs.get("dtype") is torch.float32:
                kwargs["dtype"] = F64
        return orig_to(self, *args, **kwargs)

    torch.Tensor.float, torch.Tensor.to = float_, to_
    try:
        yield
    finally:
        torch.Tensor.float, torch.Tensor.to = orig_float, orig_to


def load_hf_model(hf_dir):
    """Mamba2ForCausalLM from an HF-layout directory, in float64, or None with a warning."""
    try:
        import transformers
        from transformers import Mamba2ForCausalLM
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        model, info = Mamba2ForCausalLM.from_pretrained(str(hf_dir), dtype=F64, output_loading_info=True)
    except Exception as e:  # missing package or changed API: oracle A alone still stands
        warnings.warn(f"oracle B skipped: transformers Mamba2ForCausalLM unavailable ({e!r})")
        return None
    unexpected = info.get("unexpected_keys") or []
    missing = [k for k in (info.get("missing_keys") or []) if k != "lm_head.weight"]
    assert not missing and not unexpected, f"HF load: missing {missing}, unexpected {unexpected}"
    model.eval()
    return model


def oracle_b(model, ids):
    with torch.no_grad(), keep_float64():
        return model(torch.tensor([ids])).logits[0].to(F64)


def rel_l2(a, b):
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(a)).item()


# ---------------------------------------------------------------------------
# One case end to end
# ---------------------------------------------------------------------------

def make_case(c):
    gen = torch.Generator().manual_seed(c.seed)
    stored = quantize(make_weights(c, gen), c.dtype)
    w64 = OrderedDict((k, v.to(F64)) for k, v in stored.items())

    id_gen = torch.Generator().manual_seed(c.seed + 1)
    seqs = [torch.randint(0, c.vocab_size, (n,), generator=id_gen).tolist() for n in c.lengths]

    case_dir = GOLDEN_DIR / c.name
    if case_dir.exists():
        shutil.rmtree(case_dir)
    model_dir = case_dir / "model"
    if c.layout == "official":
        write_official(c, stored, model_dir)
    else:
        write_hf(c, stored, model_dir, c.shards)

    print(f"{c.name}: layout {c.layout}, {str(c.dtype).replace('torch.', '')}, G {c.ngroups}, "
          f"Q {c.chunk_size}, dt_limit {c.dt_limit}, lengths {c.lengths}")
    dt_log = []
    with torch.no_grad():
        logits_a = [oracle_a(c, w64, torch.tensor(s), dt_log) for s in seqs]
    check_dt_limit(c, torch.cat([d.flatten() for d in dt_log]))

    diffs = cross_check(c, stored, model_dir, seqs, logits_a)

    all_logits = torch.cat(logits_a)
    assert all_logits.shape == (sum(c.lengths), c.vocab_pad)
    np.save(case_dir / "logits.npy", all_logits.numpy().astype(np.float32))
    meta = {"ids": [t for s in seqs for t in s], "lengths": c.lengths, "description": c.description}
    (case_dir / "case.json").write_text(json.dumps(meta) + "\n")

    print(f"  max|logit| {all_logits.abs().max().item():.4f}")
    if diffs is None:
        print("  oracle B: not run (transformers unavailable)")
    else:
        status = "asserted" if c.ngroups == 1 else "information only: ngroups > 1"
        print(f"  oracle A vs B rel L2 per sequence (fp64 kept, {status}): "
              + ", ".join(f"{d:.2e}" for d in diffs["fp64"]))
        print("  (as shipped, with transformers' internal fp32 casts: "
              + ", ".join(f"{d:.2e}" for d in diffs["shipped"]) + ")")


def check_dt_limit(c, dt):
    """The dt_limit fixtures are worthless unless the clamp changes some values."""
    if not c.has_dt_limit:
        return
    lo, hi = c.dt_limit
    below, above = (dt < lo).sum().item(), (dt > hi).sum().item()
    print(f"  dt before clamp: min {dt.min().item():.2e} max {dt.max().item():.2e}; "
          f"{below} below {lo}, {above} above {hi} of {dt.numel()}")
    if lo > 0:
        assert below > 0, f"{c.name}: lower dt_limit never binds"
    assert above > 0, f"{c.name}: upper dt_limit never binds"


def cross_check(c, stored, model_dir, seqs, logits_a):
    """Oracle B. Loads the fixture itself when it is in HF layout, otherwise an
    HF-layout copy of the same stored tensors in a temporary directory."""
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = model_dir
        if c.layout != "hf":
            hf_dir = Path(tmp)
            write_hf(c, stored, hf_dir, shards=1)
        model = load_hf_model(hf_dir)
        if model is None:
            return None
        diffs = {"fp64": [], "shipped": []}
        for s, la in zip(seqs, logits_a):
            diffs["fp64"].append(rel_l2(la, oracle_b(model, s)))
            with torch.no_grad():
                diffs["shipped"].append(rel_l2(la, model(torch.tensor([s])).logits[0].to(F64)))
    worst = max(diffs["fp64"])
    if c.ngroups == 1:
        assert worst < CROSS_CHECK_TOL, f"{c.name}: oracle A vs B rel L2 {worst:.3e} >= {CROSS_CHECK_TOL}"
    return diffs


def main():
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    for c in CASES:
        make_case(c)


if __name__ == "__main__":
    main()
