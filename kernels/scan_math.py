"""Triton helpers shared by the selective-scan kernels: softplus as torch computes it, the scan's combine, and
the per-program setup of a block of channels."""
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


@triton.jit
def channel_block(A, D, delta_bias, h0, DIM, N, BD: tl.constexpr, BN: tl.constexpr,
                  HAS_D: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr, HAS_H0: tl.constexpr):
    """This program's block of BD channels (program ids: channel block, batch row): offsets, masks, A ``[BD, BN]``,
    the initial state ``[BD, BN]`` (zeros without h0), D and delta_bias ``[BD]`` (0.0 when absent).
    Returns ``(i_d, i_b, o_d, o_n, m_d, m_n, m_dn, o_bdn, b_A, b_h, b_D, b_db)``; offsets are int64."""
    i_d, i_b = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    o_d = i_d * BD + tl.arange(0, BD)
    o_n = tl.arange(0, BN).to(tl.int64)  # n * stride_n exceeds 2^31 for grouped B at 10M tokens
    m_d, m_n = o_d < DIM, o_n < N
    m_dn = m_d[:, None] & m_n[None, :]
    o_dn = o_d[:, None] * N + o_n[None, :]  # [BD, BN] into (dim, N)
    o_bdn = i_b * DIM * N + o_dn  # [BD, BN] into (batch, dim, N)
    b_A = tl.load(A + o_dn, mask=m_dn, other=0.0).to(tl.float32)
    if HAS_H0:
        b_h = tl.load(h0 + o_bdn, mask=m_dn, other=0.0)
    else:
        b_h = tl.zeros([BD, BN], dtype=tl.float32)
    b_D = 0.0
    if HAS_D:
        b_D = tl.load(D + o_d, mask=m_d, other=0.0).to(tl.float32)
    b_db = 0.0
    if HAS_DELTA_BIAS:
        b_db = tl.load(delta_bias + o_d, mask=m_d, other=0.0).to(tl.float32)
    return i_d, i_b, o_d, o_n, m_d, m_n, m_dn, o_bdn, b_A, b_h, b_D, b_db
