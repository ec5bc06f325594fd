"""Triton kernel for the Mamba-1 selective scan with an initial state (see ``babilong_fast.ops.selective_scan``).

Recurrence per channel d and state index n (Gu & Dao 2023, https://arxiv.org/abs/2312.00752)::

    dt_t = softplus?(delta_t + delta_bias)
    x_t  = exp(dt_t A) x_{t-1} + dt_t B_t u_t,     x_{-1} = initial_state
    y_t  = (C_t . x_t + D u_t) * silu(z_t)

One program owns a ``[BD, N]`` tile of the state (one batch row, BD channels) in registers and
walks the sequence one step at a time, so any length runs in constant memory and the last state
is simply the register tile at the end. Offsets are int64 (10M+ token sequences).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl


@triton.jit
def _softplus(x):
    # log1p(exp(x)) for x <= 20, x above (torch's threshold); log1p(e) = log(w) * e / (w - 1), w = 1 + e, is exact
    # to a few ulps where log(1 + e) would round e away.
    e = tl.exp(tl.minimum(x, 20.0))
    w = 1.0 + e
    lp = tl.where(w == 1.0, e, tl.log(w) * (e / tl.where(w == 1.0, 1.0, w - 1.0)))
    return tl.where(x <= 20.0, lp, x)


@triton.jit(do_not_specialize=["L"])
def _selective_scan_fwd_kernel(
    u, delta, A, B, C, D, z, delta_bias, h0, out, hT,
    L, DIM, N, B_DPG, C_DPG,
    stride_u_b, stride_u_d, stride_dt_b, stride_dt_d, stride_z_b, stride_z_d,
    stride_B_b, stride_B_g, stride_B_n, stride_C_b, stride_C_g, stride_C_n,
    BD: tl.constexpr, BN: tl.constexpr,
    B_VARYING: tl.constexpr, C_VARYING: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
):
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
    if HAS_D:
        b_D = tl.load(D + o_d, mask=m_d, other=0.0).to(tl.float32)
    if HAS_DELTA_BIAS:
        b_db = tl.load(delta_bias + o_d, mask=m_d, other=0.0).to(tl.float32)
    # Time-invariant B, C: one [BD, BN] tile for the whole sequence. Time-varying (batch, G, N, L):
    # per-channel row pointers into the channel's group (G = 1 for the (batch, N, L) layout).
    if B_VARYING:
        p_B = B + i_b * stride_B_b + (o_d // B_DPG)[:, None] * stride_B_g + o_n[None, :] * stride_B_n
    else:
        b_B = tl.load(B + o_dn, mask=m_dn, other=0.0).to(tl.float32)
    if C_VARYING:
        p_C = C + i_b * stride_C_b + (o_d // C_DPG)[:, None] * stride_C_g + o_n[None, :] * stride_C_n
    else:
        b_C = tl.load(C + o_dn, mask=m_dn, other=0.0).to(tl.float32)
    p_u = u + i_b * stride_u_b + o_d * stride_u_d
    p_dt = delta + i_b * stride_dt_b + o_d * stride_dt_d
    p_o = out + (i_b * DIM + o_d) * L
    if HAS_Z:
        p_z = z + i_b * stride_z_b + o_d * stride_z_d

    for t in range(0, L):
        b_u = tl.load(p_u + t, mask=m_d, other=0.0).to(tl.float32)  # [BD]
        b_dt = tl.load(p_dt + t, mask=m_d, other=0.0).to(tl.float32)
        if HAS_DELTA_BIAS:
            b_dt += b_db
        if DELTA_SOFTPLUS:
            b_dt = _softplus(b_dt)
        if B_VARYING:
            b_B = tl.load(p_B + t, mask=m_dn, other=0.0).to(tl.float32)  # [BD, BN]
        if C_VARYING:
            b_C = tl.load(p_C + t, mask=m_dn, other=0.0).to(tl.float32)
        b_h = tl.exp(b_dt[:, None] * b_A) * b_h + (b_dt * b_u)[:, None] * b_B  # [BD, BN]
        b_y = tl.sum(b_h * b_C, axis=1)  # [BD]
        if HAS_D:
            b_y += b_D * b_u
        if HAS_Z:
            b_z = tl.load(p_z + t, mask=m_d, other=0.0).to(tl.float32)
            b_y *= b_z * tl.sigmoid(b_z)
        tl.store(p_o + t, b_y.to(out.dtype.element_ty), mask=m_d)

    if STORE_HT:
        tl.store(hT + o_bdn, b_h, mask=m_dn)


class SelectiveScanConfig(NamedTuple):
    """Launch configuration of :func:`_selective_scan_fwd_kernel`: channels per program and warps."""

    BD: int
    num_warps: int


def default_config(batch: int, dim: int, N: int, interpreter: bool = False) -> SelectiveScanConfig:
    """Small channel blocks on a GPU (the loop over L is latency-bound, so more programs help; untuned);
    wide blocks in the interpreter, where programs run one after another."""
    BN = triton.next_power_of_2(N)
    BD = max(1, min(64 if interpreter else 32, 2048 // BN, triton.next_power_of_2(dim)))
    if not interpreter and batch * triton.cdiv(dim, BD) < 128 and BD > 8:
        BD = max(8, BD // 2)
    return SelectiveScanConfig(BD, 4 if BD * BN >= 1024 else (2 if BD * BN >= 256 else 1))


def _b_strides(X: torch.Tensor, dim: int) -> tuple[int, int, int, int]:
    """(channels per group, batch, group, n strides) of a time-varying B or C; unused for (dim, N)."""
    if X.dim() == 2:
        return 1, 0, 0, 0
    if X.dim() == 3:  # (batch, N, L): one group
        return dim, X.stride(0), 0, X.stride(1)
    return dim // X.shape[1], X.stride(0), X.stride(1), X.stride(2)


def selective_scan_fwd(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = True,
    config: SelectiveScanConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the scan. u, delta, z ``[batch, dim, L]`` (last stride 1, any other strides); A ``[dim, N]`` fp32;
    B, C ``[dim, N]``, ``[batch, N, L]`` or ``[batch, G, N, L]``; D, delta_bias ``[dim]``; initial_state
    ``[batch, dim, N]`` fp32 contiguous. Checked by the caller.

    Returns ``(out [batch, dim, L] in u's dtype, last_state [batch, dim, N] fp32 or None)``.
    """
    batch, dim, L = u.shape
    N = A.shape[1]
    c = config or default_config(batch, dim, N, interpreter=u.device.type == "cpu")
    out = torch.empty(batch, dim, L, device=u.device, dtype=u.dtype)
    hT = torch.empty(batch, dim, N, device=u.device, dtype=torch.float32) if return_last_state else None
    B_dpg, *B_strides = _b_strides(B, dim)
    C_dpg, *C_strides = _b_strides(C, dim)
    dummy = u  # stands in for absent optional tensors; never read
    grid = (triton.cdiv(dim, c.BD), batch)
    _selective_scan_fwd_kernel[grid](
        u, delta, A, B, C,
        dummy if D is None else D, dummy if z is None else z, dummy if delta_bias is None else delta_bias,
        dummy if initial_state is None else initial_state, out, out if hT is None else hT,
        L, dim, N, B_dpg, C_dpg,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1),
        0 if z is None else z.stride(0), 0 if z is None else z.stride(1),
        *B_strides, *C_strides,
        BD=c.BD, BN=triton.next_power_of_2(N),
        B_VARYING=B.dim() > 2, C_VARYING=C.dim() > 2,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_DELTA_BIAS=delta_bias is not None,
        DELTA_SOFTPLUS=bool(delta_softplus), HAS_H0=initial_state is not None, STORE_HT=hT is not None,
        num_warps=c.num_warps,
    )
    return out, hT
