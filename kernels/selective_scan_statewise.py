"""The ``statewise`` Triton selective-scan kernel: tiles of BT steps by BD channels, scanned once per state index.

Same recurrence, arguments and results as the ``chunked`` kernel (``babilong_fast.kernels.selective_scan``), but
where that one scans the whole ``[BT, BD, N]`` tile at once, this one loops over the N state indices and scans
``[BT, BD]`` pairs ``(exp(dt A[:, n]), dt B[:, n] u)`` for each, accumulating ``C[:, n] * state`` into the
output (the way mamba_ssm's CUDA scan orders its work). Its scans are N times smaller, so a tile holds N times
fewer live values per thread: more steps or channels per program, or more programs per SM, for N dependent scans
per tile instead of one. Which order is faster is for the tuner to measure.

The state ``[BD, BN]`` stays in registers; column n is read and written with a masked reduction (``BD * BN``
work per n: small beside the scan's ``BT * BD`` for Mamba's N = 16, not for N = 256). Time-varying B and C are
loaded per state: one ``[BT]`` row (contiguous in time) where the program's channels share a group, else
``[BT, BD]``; state n + 1's are loaded before state n's scan. (Loading a ``[BT, BN]`` tile at once instead
costs ``2 BT BN / threads`` registers: 255 with spills at BT = 256 on one warp.)
"""
from __future__ import annotations

from typing import NamedTuple

import triton
import triton.language as tl

from babilong_fast.kernels.scan_math import channel_block, scan_combine, softplus


@triton.jit
def _column(x, o_n, n):
    """Column n of a ``[R, BN]`` tile as ``[R]``."""
    return tl.sum(tl.where(o_n[None, :] == n, x, 0.0), axis=1)


@triton.jit
def _bc_column(tile, p, n, N, stride_n, o_tt, m_t, m_td, o_n, VARYING: tl.constexpr, SHARED: tl.constexpr):
    """B or C at state n (0 for n >= N) for this tile's steps, broadcastable to ``[BT, BD]``: the column of the
    invariant ``[BD, BN]`` tile, or loaded: one ``[BT]`` row of the group all channels share (contiguous in
    time), or ``[BT, BD]`` per channel (``p`` is ``[1, BD]``); steps past L load 0."""
    if VARYING:
        off = tl.cast(n, tl.int64) * stride_n  # exceeds 2^31 for N = 256 at 8.4M steps; n and stride are i32
        if SHARED:
            col = tl.load(p + off + o_tt, mask=m_t & (n < N), other=0.0).to(tl.float32)[:, None]
        else:
            col = tl.load(p + off + o_tt[:, None], mask=m_td & (n < N), other=0.0).to(tl.float32)
    else:
        col = _column(tile, o_n, n)[None, :]  # [1, BD]
    return col  # one return: Triton checks every return's type, even in branches a constexpr prunes


@triton.jit
def _bc_source(X, i_b, i_d, o_d, o_dn, m_dn, stride_b, stride_g, dpg, BD: tl.constexpr,
               VARYING: tl.constexpr, SHARED: tl.constexpr):
    """Where B or C comes from: ``(pointer, tile)``. Time-varying: the group's base pointer (one group for the
    block) or ``[1, BD]`` channel pointers, tile 0.0; time-invariant: the ``[BD, BN]`` tile, pointer unused."""
    tile = 0.0
    if VARYING:
        if SHARED:
            p = X + i_b * stride_b + ((i_d * BD) // dpg) * stride_g
        else:
            p = X + i_b * stride_b + ((o_d // dpg) * stride_g)[None, :]
    else:
        p = X  # unused
        tile = tl.load(X + o_dn, mask=m_dn, other=0.0).to(tl.float32)
    return p, tile


@triton.jit(do_not_specialize=["L", "N"])
def statewise_scan_fwd_kernel(
    u, delta, A, B, C, D, z, delta_bias, h0, out, hT,
    L, DIM, N, B_DPG, C_DPG,
    stride_u_b, stride_u_d, stride_dt_b, stride_dt_d, stride_z_b, stride_z_d,
    stride_B_b, stride_B_g, stride_B_n, stride_C_b, stride_C_g, stride_C_n,
    BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
    B_VARYING: tl.constexpr, C_VARYING: tl.constexpr, B_SHARED: tl.constexpr, C_SHARED: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
):
    i_d, i_b, o_d, o_n, m_d, m_n, m_dn, o_bdn, b_A, b_h, b_D, b_db = channel_block(
        A, D, delta_bias, h0, DIM, N, BD, BN, HAS_D, HAS_DELTA_BIAS, HAS_H0)
    o_dn = o_d[:, None] * N + o_n[None, :]  # [BD, BN] into (dim, N)
    o_t = tl.arange(0, BT)
    p_B, b_B = _bc_source(B, i_b, i_d, o_d, o_dn, m_dn, stride_B_b, stride_B_g, B_DPG, BD, B_VARYING, B_SHARED)
    p_C, b_C = _bc_source(C, i_b, i_d, o_d, o_dn, m_dn, stride_C_b, stride_C_g, C_DPG, BD, C_VARYING, C_SHARED)
    p_u = u + i_b * stride_u_b + (o_d * stride_u_d)[None, :]  # [1, BD]; + t along the rows
    p_dt = delta + i_b * stride_dt_b + (o_d * stride_dt_d)[None, :]
    p_o = out + ((i_b * DIM + o_d) * L)[None, :]
    p_z = z + i_b * stride_z_b + (o_d * stride_z_d)[None, :]  # unused without z

    for t0 in range(0, L, BT):
        o_tt = t0 + o_t
        m_t = o_tt < L
        m_td = m_t[:, None] & m_d[None, :]  # [BT, BD]
        b_u = tl.load(p_u + o_tt[:, None], mask=m_td, other=0.0).to(tl.float32)
        b_dt = tl.load(p_dt + o_tt[:, None], mask=m_td, other=0.0).to(tl.float32)
        if HAS_DELTA_BIAS:
            b_dt += b_db[None, :]
        if DELTA_SOFTPLUS:
            b_dt = softplus(b_dt)
        b_du = b_dt * b_u
        b_y = tl.zeros([BT, BD], dtype=tl.float32)
        # B and C of state n + 1 are loaded before state n's scan, so their latency overlaps it.
        c_B = _bc_column(b_B, p_B, 0, N, stride_B_n, o_tt, m_t, m_td, o_n, B_VARYING, B_SHARED)
        c_C = _bc_column(b_C, p_C, 0, N, stride_C_n, o_tt, m_t, m_td, o_n, C_VARYING, C_SHARED)
        for n in range(0, N):
            n_B = _bc_column(b_B, p_B, n + 1, N, stride_B_n, o_tt, m_t, m_td, o_n, B_VARYING, B_SHARED)
            n_C = _bc_column(b_C, p_C, n + 1, N, stride_C_n, o_tt, m_t, m_td, o_n, C_VARYING, C_SHARED)
            # Steps past L: decay 1, no input, so the last row is the state at L (set, not from dt = 0: 0 * A
            # and 0 * B are NaN where A or B is infinite).
            b_a = tl.where(m_td, tl.exp(b_dt * _column(b_A, o_n, n)[None, :]), 1.0)  # [BT, BD]
            b_b = tl.where(m_td, b_du * c_B, 0.0)
            b_a, b_b = tl.associative_scan((b_a, b_b), 0, scan_combine)
            b_hs = b_a * _column(b_h, o_n, n)[None, :] + b_b  # [BT, BD]: every step's state n
            b_y += b_hs * c_C
            h_n = tl.sum(tl.where((o_t == BT - 1)[:, None], b_hs, 0.0), axis=0)  # [BD]: the last row
            b_h = tl.where(o_n[None, :] == n, h_n[:, None], b_h)
            c_B, c_C = n_B, n_C
        if HAS_D:
            b_y += b_D[None, :] * b_u
        if HAS_Z:
            b_z = tl.load(p_z + o_tt[:, None], mask=m_td, other=0.0).to(tl.float32)
            b_y *= b_z * tl.sigmoid(b_z)
        tl.store(p_o + o_tt[:, None], b_y.to(out.dtype.element_ty), mask=m_td)

    if STORE_HT:
        tl.store(hT + o_bdn, b_h, mask=m_dn)


class StatewiseScanConfig(NamedTuple):
    """Launch configuration of the ``statewise`` kernel: channels per program, steps per tile, warps, and a tag
    that keeps it from comparing equal to a :class:`ChunkedScanConfig` of the same numbers."""

    BD: int
    BT: int
    num_warps: int
    kernel: str = "statewise"


def default_statewise_config(batch: int, dim: int, N: int, interpreter: bool = False) -> StatewiseScanConfig:
    """Untimed defaults: on a GPU one channel per program (Mamba-130m at batch 1: 1536 programs), 256 steps on two
    warps (4 pairs per thread: about 80 registers at sm_90, no spills); in the interpreter, which scans element
    by element, wide channel blocks and 16 steps."""
    if interpreter:
        return StatewiseScanConfig(max(1, min(64, triton.next_power_of_2(dim))), 16, 1)
    return StatewiseScanConfig(1, 256, 2)


def statewise_candidates(batch: int, dim: int, N: int) -> list[StatewiseScanConfig]:
    """The statewise configs the tuner times on a GPU: tiles of 256 and 512 ``[BT, BD]`` pairs with 1, 2 or 4
    channels per program, 4 pairs per thread (the default first). At 8 per thread ptxas gives 100-150 registers
    and some tiles spill."""
    out = [default_statewise_config(batch, dim, N)]
    max_bd = triton.next_power_of_2(dim)
    for elements in (256, 512):
        for BD in (1, 2, 4):
            if BD <= max_bd:
                out.append(StatewiseScanConfig(BD, elements // BD, elements // 128))
    return list(dict.fromkeys(out))
