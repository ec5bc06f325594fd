"""Triton helpers shared by the selective-scan kernels: softplus as torch computes it, the scan's combine."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def softplus(x):
    # log1p(exp(x)) for x <= 20, x above (torch's threshold); log1p(e) = log(w) * e / (w - 1), w = 1 + e, is exact
    # to a few ulps where log(1 + e) would round e away.
    e = tl.exp(tl.minimum(x, 20.0))
    w = 1.0 + e
    lp = tl.where(w == 1.0, e, tl.log(w) * (e / tl.where(w == 1.0, 1.0, w - 1.0)))
    return tl.where(x <= 20.0, lp, x)


@triton.jit
def scan_combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2): x -> a2 (a1 x + b1) + b2
    return a1 * a2, a2 * b1 + b2
