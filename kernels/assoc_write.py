"""Triton kernels for the ARMT associative write (see ``babilong_fast.ops.assoc_write``).

Three launches (two on the first segment), all accumulating in float32:

1. ``_assoc_write_proj_kernel``: the projections of the ``R = B*M`` memory rows. Programs on the
   first ``cdiv(n, BN)`` column blocks write ``s = [relu(k), relu(-k)]``, ``k = mem w_k^T``, ``[R, 2n]``;
   the others write ``U = beta * (mem w_v^T)`` ``[R, d]``, with ``beta = sigmoid(mem w_b^T + b_b)``
   reduced in the same loop over ``d`` (and stored once, ``[R]``). The weights are read once per row block.
2. ``_assoc_write_recall_kernel`` (later segments only): per (row block, d block, batch) a loop over
   chunks of ``i``, then over ``j``, builds ``phi(k)`` from ``s`` on the fly and reduces ``phi A``, ``phi z``
   and ``|phi|^2`` over all ``F`` features; then ``U -= beta * (phi A) / (phi z + eps)`` in place and,
   with the correction, ``gamma = clip(1 - delta / (|phi|^2 + eps), 0, 1)`` ``[R]``.
3. ``_assoc_write_update_kernel``: per (F block, d block, batch) ``A_new = A + phi^T U`` and
   ``z_new = z + phi^T gamma`` (``gamma = 1`` on the first segment or without the correction),
   written out of place, so the recall always sees the pre-update state.

Only ``s`` ``[R, 2n]``, ``U`` ``[R, d]``, ``beta`` and ``gamma`` ``[R]`` reach global memory;
``phi(k)`` ``[R, F]`` never does. The recall needs a full reduction over ``F`` before any update,
hence two passes over ``A`` (read; read + write). All products use exact float32
(``input_precision="ieee"``): the operands are float32 after the load, ``A`` is a long-running
float32 sum, and M = 10 rows make this op memory-bound, so TF32 would buy nothing.
DPFP (Schlag et al. 2021, https://arxiv.org/abs/2102.11174): ``phi[j*2n + i] = s[i] * s[(i-j-1) % 2n]``,
``s = [relu(k), relu(-k)]``.
ARMT: https://github.com/RodkinIvan/associative-recurrent-memory-transformer (``modeling_amt``).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from babilong_fast.kernels.dpfp_math import phi_times_state, store_s
from babilong_fast.kernels.launch_limits import check_batch, check_weight_fits_int32


@triton.jit(do_not_specialize=["R"])
def _assoc_write_proj_kernel(
    mem, w_k, w_v, w_b, b_b, s, u, beta, R, D, N, NBK,
    BR: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    i_r, i_n = tl.program_id(0).to(tl.int64), tl.program_id(1)
    o_r = i_r * BR + tl.arange(0, BR)
    m_r = o_r < R
    p_m = mem + o_r * D  # row starts, [BR]
    if i_n < NBK:
        o_n = i_n * BN + tl.arange(0, BN)
        m_n = o_n < N
        b_k = tl.zeros([BR, BN], dtype=tl.float32)
        for k0 in range(0, D, BK):
            o_k = k0 + tl.arange(0, BK)
            m_k = o_k < D
            b_m = tl.load(p_m[:, None] + o_k[None, :], mask=m_r[:, None] & m_k[None, :], other=0.0).to(tl.float32)
            b_w = tl.load(w_k + o_n[:, None] * D + o_k[None, :], mask=m_n[:, None] & m_k[None, :], other=0.0)
            b_k += tl.dot(b_m, tl.trans(b_w.to(tl.float32)), input_precision="ieee")  # [BR, BN]
        store_s(s, b_k, o_r, o_n, m_r, m_n, N)
    else:
        i_v = i_n - NBK
        o_n = i_v * BN + tl.arange(0, BN)
        m_n = o_n < D
        b_v = tl.zeros([BR, BN], dtype=tl.float32)
        b_g = tl.zeros([BR], dtype=tl.float32)
        for k0 in range(0, D, BK):
            o_k = k0 + tl.arange(0, BK)
            m_k = o_k < D
            b_m = tl.load(p_m[:, None] + o_k[None, :], mask=m_r[:, None] & m_k[None, :], other=0.0).to(tl.float32)
            b_w = tl.load(w_v + o_n[:, None] * D + o_k[None, :], mask=m_n[:, None] & m_k[None, :], other=0.0)
            b_wb = tl.load(w_b + o_k, mask=m_k, other=0.0).to(tl.float32)
            b_v += tl.dot(b_m, tl.trans(b_w.to(tl.float32)), input_precision="ieee")  # [BR, BN]
            b_g += tl.sum(b_m * b_wb[None, :], axis=1)
        b_beta = tl.sigmoid(b_g + tl.load(b_b).to(tl.float32))  # [BR]
        tl.store(u + o_r[:, None] * D + o_n[None, :], b_v * b_beta[:, None], mask=m_r[:, None] & m_n[None, :])
        if i_v == 0:
            tl.store(beta + o_r, b_beta, mask=m_r)


@triton.jit
def _assoc_write_recall_kernel(
    s, A, z, u, beta, gamma, M, D, N2, NU, stride_ab, stride_zb, eps,
    BM: tl.constexpr, BD: tl.constexpr, BI: tl.constexpr, CORRECTION: tl.constexpr,
):
    i_m, i_d, i_b = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    o_m = i_m * BM + tl.arange(0, BM)
    o_d = i_d * BD + tl.arange(0, BD)
    m_m, m_d = o_m < M, o_d < D
    o_r = i_b * M + o_m  # global rows, [BM]
    p_s = s + o_r * N2  # row starts, [BM]
    p_a = A + i_b * stride_ab
    p_z = z + i_b * stride_zb
    b_num, b_den, b_kk = phi_times_state(p_s, m_m, p_a, p_z, o_d, m_d, D, N2, NU, BM, BD, BI, "ieee", CORRECTION)
    b_delta = b_den + eps  # [BM]
    b_beta = tl.load(beta + o_r, mask=m_m, other=0.0)
    o_u = o_r[:, None] * D + o_d[None, :]
    m_u = m_m[:, None] & m_d[None, :]
    b_u = tl.load(u + o_u, mask=m_u, other=0.0)
    tl.store(u + o_u, b_u - b_num * (b_beta / b_delta)[:, None], mask=m_u)
    if CORRECTION:
        if i_d == 0:
            b_gamma = 1.0 - b_delta / (b_kk + eps)  # clamped to [0, 1], NaN kept as torch.clamp does
            b_gamma = tl.minimum(tl.maximum(b_gamma, 0.0, propagate_nan=tl.PropagateNan.ALL), 1.0,
                                 propagate_nan=tl.PropagateNan.ALL)
            tl.store(gamma + o_r, b_gamma, mask=m_m)


@triton.jit
def _assoc_write_update_kernel(
    s, u, gamma, A, z, A_new, z_new, M, D, N2, F, stride_ab, stride_zb,
    BF: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr, GAMMA_ONE: tl.constexpr,
):
    i_f, i_d, i_b = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    o_f = i_f * BF + tl.arange(0, BF)
    o_d = i_d * BD + tl.arange(0, BD)
    m_f, m_d = o_f < F, o_d < D
    o_i = o_f % N2  # feature f = j*2n + i pairs s[i] with s[(i - j - 1) % 2n]; [BF], once per program
    o_p = (o_i + N2 - (o_f // N2 + 1) % N2) % N2
    m_fd = m_f[:, None] & m_d[None, :]
    b_acc = tl.load(A + i_b * stride_ab + o_f[:, None] * D + o_d[None, :], mask=m_fd, other=0.0)  # [BF, BD]
    b_dz = tl.zeros([BF], dtype=tl.float32)
    for m0 in range(0, M, BM):
        o_m = m0 + tl.arange(0, BM)
        m_m = o_m < M
        o_r = i_b * M + o_m  # global rows, [BM]
        m_fm = m_f[:, None] & m_m[None, :]
        # phi^T: feature f of row r, [BF, BM]
        p_r = s + o_r[None, :] * N2
        b_phi = tl.load(p_r + o_i[:, None], mask=m_fm, other=0.0) * tl.load(p_r + o_p[:, None], mask=m_fm, other=0.0)
        b_u = tl.load(u + o_r[:, None] * D + o_d[None, :], mask=m_m[:, None] & m_d[None, :], other=0.0)  # [BM, BD]
        b_acc += tl.dot(b_phi, b_u, input_precision="ieee")  # [BF, BD]
        if GAMMA_ONE:
            b_dz += tl.sum(b_phi, axis=1)
        else:
            b_g = tl.load(gamma + o_r, mask=m_m, other=0.0)
            b_dz += tl.sum(b_phi * b_g[None, :], axis=1)
    tl.store(A_new + (i_b * F + o_f)[:, None] * D + o_d[None, :], b_acc, mask=m_fd)
    if i_d == 0:
        b_z = tl.load(z + i_b * stride_zb + o_f, mask=m_f, other=0.0)
        tl.store(z_new + i_b * F + o_f, b_z + b_dz, mask=m_f)


class AssocWriteConfig(NamedTuple):
    """Launch configuration of the three write kernels (tile sizes and warps)."""

    BR: int  # projection: memory rows per program
    BN: int  # projection: output columns per program
    BK: int  # projection: reduction chunk over d
    BM: int  # recall and update: memory rows per tile
    BD_RECALL: int  # recall: d columns per program
    BI: int  # recall: chunk of i (of the 2n values of s; each chunk serves all nu features built from it)
    BF: int  # update: features per program
    BD_UPDATE: int  # update: d columns per program
    num_warps: int


def _pow2_at_least(x: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(x))


def default_config(B: int, M: int, D: int, N: int) -> AssocWriteConfig:
    """Tiles of at most [64, 64] float32 for the projection and the update and [BM, 128] / [128, BD_RECALL] for the
    recall (bounded shared memory on Hopper); narrow projection tiles for few rows.
    The projection reduces over d in chunks of 32: with 64, Triton 3.8 spills 240 bytes a thread at GPT-2's shape
    in bf16 (ptxas for sm_90; 3.6 does not), and 32 needs fewer registers under both (96 against 128-166)."""
    R = B * M
    BR = 16 if R <= 16 else 32
    BN = 32 if R <= 64 else 64
    BM = min(32, _pow2_at_least(M))
    BI = min(128, _pow2_at_least(2 * N))  # all 2n values of s at once for n <= 64 (64 spills under Triton 3.8)
    return AssocWriteConfig(BR, BN, 32, BM, 32, BI, 64, 64, 4)


def assoc_write_fwd(
    mem: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor, w_b: torch.Tensor, b_b: torch.Tensor,
    A: torch.Tensor, z: torch.Tensor, nu: int, eps: float, correction: bool, first_segment: bool,
    config: AssocWriteConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused write. mem ``[B, M, d]``, w_k ``[n, d]``, w_v ``[d, d]``, w_b ``[1, d]``, b_b ``[1]``,
    A ``[B|1, 2*nu*n, d]`` fp32, z ``[B|1, 2*nu*n]`` fp32.

    Returns new ``(A [B, F, d], z [B, F])`` in float32. Inputs must be contiguous and non-empty
    (checked by the caller). ``config`` overrides :func:`default_config` (benchmark sweeps).
    """
    B, M, D = mem.shape
    check_batch("assoc_write", B)
    N = w_k.shape[0]
    check_weight_fits_int32("w_k", w_k)
    check_weight_fits_int32("w_v", w_v)
    F = 2 * nu * N
    R = B * M
    c = config or default_config(B, M, D, N)
    dev, f32 = mem.device, torch.float32
    s = torch.empty(B, M, 2 * N, device=dev, dtype=f32)  # [relu(k), relu(-k)]
    u = torch.empty(B, M, D, device=dev, dtype=f32)
    beta = torch.empty(B, M, device=dev, dtype=f32)
    use_gamma = correction and not first_segment
    gamma = torch.empty(B, M, device=dev, dtype=f32) if use_gamma else beta  # beta: an unread placeholder
    A_new = torch.empty(B, F, D, device=dev, dtype=f32)
    z_new = torch.empty(B, F, device=dev, dtype=f32)
    stride_ab = 0 if A.shape[0] == 1 else A.stride(0)
    stride_zb = 0 if z.shape[0] == 1 else z.stride(0)

    nbk = triton.cdiv(N, c.BN)
    grid = (triton.cdiv(R, c.BR), nbk + triton.cdiv(D, c.BN))
    _assoc_write_proj_kernel[grid](
        mem, w_k, w_v, w_b, b_b, s, u, beta, R, D, N, nbk, BR=c.BR, BN=c.BN, BK=c.BK, num_warps=c.num_warps
    )
    if not first_segment:
        grid = (triton.cdiv(M, c.BM), triton.cdiv(D, c.BD_RECALL), B)
        _assoc_write_recall_kernel[grid](
            s, A, z, u, beta, gamma, M, D, 2 * N, nu, stride_ab, stride_zb, eps,
            BM=c.BM, BD=c.BD_RECALL, BI=c.BI, CORRECTION=use_gamma, num_warps=c.num_warps,
        )
    grid = (triton.cdiv(F, c.BF), triton.cdiv(D, c.BD_UPDATE), B)
    _assoc_write_update_kernel[grid](
        s, u, gamma, A, z, A_new, z_new, M, D, 2 * N, F, stride_ab, stride_zb,
        BF=c.BF, BD=c.BD_UPDATE, BM=c.BM, GAMMA_ONE=not use_gamma, num_warps=c.num_warps,
    )
    return A_new, z_new
