#!/usr/bin/env python3
"""How far bf16 rounding alone moves the Mamba2 gradient fixtures from float64.

make_grad_fixtures.py's float64 oracle rerun with bf16 rounding (through fp32, nearest even) where
the GPU's mixed-precision training pass rounds, values in the forward and gradients in the
backward, everything else float64. Three placements:

  main    the projections' operands (the bf16 weight copies, their inputs), the conv output (the
          scan's x, B, C), and the gradients d_zxbcdt, d_y and d_logits;
  y       also the scan output y (forward) and out_proj's d_gated;
  narrow  also in_proj's z | xBC (forward) besides.

The scan's own bf16 products inside a chunk are not emulated, so the GPU's figures sit somewhat
above these. Prints, per case and placement, the loss's relative error and the worst relative L2
over the per-head scalars (dt_bias, A_log, D) and over the rest: the basis of the bf16 bounds in
tests/test_grad_model.cpp.

Usage: python3 scripts/mixed_precision_grads.py   (needs torch; CPU, seconds)
"""
import sys
from collections import OrderedDict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_golden as mg  # noqa: E402
import make_grad_fixtures as mgf  # noqa: E402

F64 = torch.float64
# name: (round the value, round its gradient)
PLACEMENTS = {
    "main": {"u": (True, False), "z": (False, True), "xBC_in": (False, True), "dt": (False, True),
             "xBC": (True, False), "y": (False, True), "gated": (True, False), "normed_f": (True, False),
             "logits": (False, True)},
}
PLACEMENTS["y"] = dict(PLACEMENTS["main"], y=(True, True), gated=(True, True))
PLACEMENTS["narrow"] = dict(PLACEMENTS["main"], z=(True, True), xBC_in=(True, True), y=(True, True),
                            gated=(True, True))
MATRICES = ("in_proj.weight", "out_proj.weight", "embedding.weight", "lm_head.weight")
SCALARS = ("dt_bias", "A_log", ".D")


def bf16(t):
    return t.to(torch.float32).to(torch.bfloat16).to(F64)


class Round(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, value, grad):
        ctx.grad = grad
        return bf16(t) if value else t.clone()

    @staticmethod
    def backward(ctx, g):
        return (bf16(g) if ctx.grad else g), None, None


def loss_and_grads(c, stored, seqs, placement):
    w = OrderedDict((k, v.to(F64).requires_grad_(True)) for k, v in stored.items())
    used = OrderedDict((k, Round.apply(v, placement is not None and k.endswith(MATRICES), False))
                       for k, v in w.items())
    rnd = mg.keep if placement is None else (lambda name, t: Round.apply(t, *placement.get(name, (False, False))))
    loss = mgf.mean_loss([mgf.logits_a(c, used, torch.tensor(s), [], rnd) for s in seqs], seqs)
    loss.backward()
    return loss.item(), OrderedDict((k, v.grad) for k, v in w.items())


def main():
    torch.set_num_threads(1)
    for c in mgf.CASES:
        stored, seqs = mgf.case_inputs(c)
        loss, grads = loss_and_grads(c, stored, seqs, None)
        for name, placement in PLACEMENTS.items():
            l2, g2 = loss_and_grads(c, stored, seqs, placement)
            err = {k: mg.rel_l2(grads[k], g2[k]) for k in grads}
            scal = max((e, k) for k, e in err.items() if k.endswith(SCALARS))
            rest = max((e, k) for k, e in err.items() if not k.endswith(SCALARS))
            print(f"{c.name:17s} {name:6s} loss rel {abs(l2 - loss) / abs(loss):.1e}; per-head scalars "
                  f"{scal[0]:.2e} ({scal[1]}); the rest {rest[0]:.2e} ({rest[1]})", flush=True)


if __name__ == "__main__":
    main()
