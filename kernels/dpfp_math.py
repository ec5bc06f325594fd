"""Triton helpers shared by the associative read and write: storing ``s = [relu(x), relu(-x)]`` (the projections'
epilogue) and a block of rows' DPFP features, built on the fly from ``s``, times the associative state.

DPFP (Schlag et al. 2021, https://arxiv.org/abs/2102.11174): ``phi[j*2n + i] = s[i] * s[(i-j-1) % 2n]``,
``j < nu``. The loop runs over chunks of ``i`` and then over ``j``, so ``s[i]`` is loaded once for all ``nu``
features that use it and the partner index ``i - j - 1`` wraps once; no integer ``%`` or ``//`` per element
(``benchmarks/kernel_sass.py`` counts what that saves).
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def store_s(s, b_x, o_r, o_n, m_r, m_n, N):
    """Store ``[relu(x), relu(-x)]`` of the ``[BR, BN]`` tile ``b_x`` (rows ``o_r``, columns ``o_n`` of ``x``) into
    ``s``, whose rows hold 2 * N values."""
    p_s = s + o_r[:, None] * (2 * N) + o_n[None, :]
    m = m_r[:, None] & m_n[None, :]
    # NaN stays NaN, as in torch.relu (tl.maximum's default returns the other operand)
    tl.store(p_s, tl.maximum(b_x, 0.0, propagate_nan=tl.PropagateNan.ALL), mask=m)
    tl.store(p_s + N, tl.maximum(-b_x, 0.0, propagate_nan=tl.PropagateNan.ALL), mask=m)


@triton.jit
def phi_times_state(p_s, m_r, p_a, p_z, o_d, m_d, D, N2, NU,
                    BR: tl.constexpr, BD: tl.constexpr, BI: tl.constexpr, PRECISION: tl.constexpr,
                    NORM: tl.constexpr):
    """For the ``BR`` rows whose ``s`` rows start at ``p_s`` (``[BR]`` pointers, ``m_r`` their mask), the state
    ``A`` at ``p_a`` (``[F, D]``, F = NU * N2) columns ``o_d``, and ``z`` at ``p_z``: returns ``phi A``
    ``[BR, BD]``, ``phi z`` ``[BR]`` and, when ``NORM``, ``|phi|^2`` ``[BR]`` (else zeros), in float32."""
    b_num = tl.zeros([BR, BD], dtype=tl.float32)
    b_den = tl.zeros([BR], dtype=tl.float32)
    b_kk = tl.zeros([BR], dtype=tl.float32)
    for i0 in range(0, N2, BI):
        o_i = i0 + tl.arange(0, BI)
        m_i = o_i < N2
        m_ri = m_r[:, None] & m_i[None, :]
        b_s = tl.load(p_s[:, None] + o_i[None, :], mask=m_ri, other=0.0)  # [BR, BI]
        for j in range(0, NU):
            o_p = o_i - (j + 1) % N2
            o_p = tl.where(o_p < 0, o_p + N2, o_p)
            b_phi = b_s * tl.load(p_s[:, None] + o_p[None, :], mask=m_ri, other=0.0)  # [BR, BI]
            o_f = (j * N2 + o_i).to(tl.int64)  # f * D passes 2^31 for an A of 2^31 elements a batch entry
            b_a = tl.load(p_a + o_f[:, None] * D + o_d[None, :], mask=m_i[:, None] & m_d[None, :], other=0.0)
            b_z = tl.load(p_z + o_f, mask=m_i, other=0.0)
            b_num += tl.dot(b_phi, b_a, input_precision=PRECISION)  # [BR, BD]
            b_den += tl.sum(b_phi * b_z[None, :], axis=1)
            if NORM:
                b_kk += tl.sum(b_phi * b_phi, axis=1)
    return b_num, b_den, b_kk
