"""The official mamba_ssm in bf16 (and fp32) on our golden fixtures: its relative L2 to the float64
logits, worst sequence, the figure `mamba2 logits --device cuda --dtype bf16` must not exceed
(tests/test_cuda_model.cpp). Runs on the GPU machine with mamba_ssm's source in MAMBA_SSM_SRC
(default .anchors/mamba; shared/anchors/README.md). usage: python3 bench/mamba_ssm_golden.py
"""
import json, os, sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.environ.get("MAMBA_SSM_SRC", ".anchors/mamba"))
from mamba_ssm.models.config_mamba import MambaConfig
from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "golden"


def load_tensors(model_dir):
    if (model_dir / "pytorch_model.bin").exists():
        return torch.load(model_dir / "pytorch_model.bin", map_location="cpu")
    from safetensors.torch import load_file
    files = sorted(model_dir.glob("*.safetensors"))
    out = {}
    for f in files:
        out.update(load_file(f))
    return out


def official_config(model_dir):
    c = json.loads((model_dir / "config.json").read_text())
    if "d_model" in c:
        c["ssm_cfg"]["use_mem_eff_path"] = False
        return MambaConfig(**{k: c[k] for k in ("d_model", "d_intermediate", "n_layer", "vocab_size", "ssm_cfg",
                                                 "rms_norm", "residual_in_fp32", "fused_add_norm",
                                                 "pad_vocab_size_multiple", "tie_embeddings") if k in c})
    ssm = {"layer": "Mamba2", "d_state": c["state_size"], "d_conv": c["conv_kernel"], "expand": c["expand"],
           "headdim": c["head_dim"], "ngroups": c["n_groups"], "chunk_size": c["chunk_size"],
           "use_mem_eff_path": False}
    lim = c.get("time_step_limit")
    if lim and (lim[0] != 0.0 or lim[1] != float("inf")):
        ssm["dt_limit"] = tuple(lim)
    return MambaConfig(d_model=c["hidden_size"], n_layer=c["num_hidden_layers"], vocab_size=c["vocab_size"],
                       ssm_cfg=ssm, rms_norm=True, residual_in_fp32=True, fused_add_norm=True,
                       pad_vocab_size_multiple=16, tie_embeddings=c.get("tie_word_embeddings", True))


def main():
    print(torch.__version__, torch.cuda.get_device_name(0), flush=True)
    for case_dir in sorted(GOLDEN.iterdir()):
        case = json.loads((case_dir / "case.json").read_text())
        ref = np.load(case_dir / "logits.npy")
        model_dir = case_dir / "model"
        sd = {k.replace("backbone.embeddings.", "backbone.embedding."): v.float() for k, v in load_tensors(model_dir).items()}
        for dtype in (torch.float32, torch.bfloat16):
            m = MambaLMHeadModel(official_config(model_dir), device="cuda", dtype=torch.float32)
            missing, unexpected = m.load_state_dict(sd, strict=False)
            assert not [k for k in missing if k != "lm_head.weight"] and not unexpected, (missing, unexpected)
            m = m.to(dtype).eval()
            worst, t0 = 0.0, 0
            for L in case["lengths"]:
                ids = torch.tensor(case["ids"][t0:t0 + L], device="cuda")[None]
                with torch.no_grad():
                    got = m(ids).logits[0].double().cpu().numpy()
                want = ref[t0:t0 + L, :got.shape[1]]
                worst = max(worst, float(np.linalg.norm(got - want) / np.linalg.norm(want)))
                t0 += L
            print(f"mamba_ssm golden {case_dir.name} {str(dtype)[6:]}: {worst:.3g} (relative L2 to float64, worst sequence)",
                  flush=True)


if __name__ == "__main__":
    main()
