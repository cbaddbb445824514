#!/usr/bin/env python3
"""The coefficients of log1p_unit (src/cuda/common.cuh): log(1 + w) = w·Q(w) on w ∈ [0, 1], Q of
degree 8 fitted to log1p(w)/w by relative-error minimax (Lawson's iteration on Chebyshev nodes,
mpmath's log1p as the reference). Prints the fit's error, the error of the fp32 coefficients
evaluated in fp32 by Horner's rule, and the coefficients (Q's constant term first).

  python3 scripts/fit_log1p.py [degree]
"""
import sys

import mpmath as mp
import numpy as np

mp.mp.dps = 40
deg = int(sys.argv[1]) if len(sys.argv) > 1 else 8


def target(w):
    return float(mp.log1p(mp.mpf(w)) / mp.mpf(w))


xs = (np.cos(np.pi * (np.arange(4000) + 0.5) / 4000) + 1) / 2
ys = np.array([target(x) for x in xs])
V = np.vander(xs, deg + 1, increasing=True)
weights = np.ones_like(xs)
for _ in range(200):
    root = np.sqrt(weights)
    coef, *_ = np.linalg.lstsq(V * root[:, None], ys * root, rcond=None)
    err = np.abs(V @ coef - ys) / ys
    weights = weights * err
    weights /= weights.sum()

c32 = coef.astype(np.float32)
w = np.linspace(0, 1, 2000001)[1:].astype(np.float32)
q = np.full_like(w, c32[-1])
for k in range(deg - 1, -1, -1):
    q = (q.astype(np.float64) * w + c32[k]).astype(np.float32)  # one rounding a step, as fmaf
got = (w * q).astype(np.float32).astype(np.float64)
ref = np.log1p(w.astype(np.float64))
print(f"degree {deg}: fit relative error {err.max():.2e}, fp32 evaluation {np.max(np.abs(got - ref) / ref):.2e}")
print(", ".join(f"{x:.9e}f" for x in c32))
