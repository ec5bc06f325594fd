"""Triton kernel for the depthwise causal conv1d with state carry (see ``babilong_fast.ops.causal_conv1d``).

``out[b, d, t] = act(bias[d] + sum_k w[d, k] * xp[b, d, t + k])`` where ``xp`` is x with the carried
state (the previous W-1 inputs, zeros without one) prepended. One program computes a ``[BD, BL]``
output tile from W shifted loads of x, taken from the state where the shift reaches before t = 0;
the first L-block's program also writes the final state, the last W-1 columns of ``xp``.
Offsets are int64 (10M+ token sequences).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from babilong_fast.kernels.launch_limits import check_batch


@triton.jit(do_not_specialize=["L"])
def _causal_conv1d_fwd_kernel(
    x, w, bias, h0, out, hT,
    L, DIM, stride_x_b, stride_x_d,
    W: tl.constexpr, BD: tl.constexpr, BL: tl.constexpr, BS: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, SILU: tl.constexpr,
):
    i_l, i_d, i_b = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    o_d = i_d * BD + tl.arange(0, BD)
    o_l = i_l * BL + tl.arange(0, BL)
    m_d, m_l = o_d < DIM, o_l < L
    p_x = x + i_b * stride_x_b + o_d[:, None] * stride_x_d  # [BD, 1]
    p_h = h0 + (i_b * DIM + o_d)[:, None] * (W - 1)  # [BD, 1] into (batch, dim, W-1)

    if HAS_BIAS:
        b_o = tl.zeros([BD, BL], dtype=tl.float32) + tl.load(bias + o_d, mask=m_d, other=0.0).to(tl.float32)[:, None]
    else:
        b_o = tl.zeros([BD, BL], dtype=tl.float32)
    for k in tl.static_range(W):
        o_s = o_l - (W - 1 - k)  # source time in x; below 0 it is state column W-1+o_s
        m = m_d[:, None] & (m_l & (o_s >= 0))[None, :]
        b_x = tl.load(p_x + o_s[None, :], mask=m, other=0.0).to(tl.float32)  # [BD, BL]
        if HAS_H0:
            m_h = m_d[:, None] & (m_l & (o_s < 0))[None, :]
            b_x += tl.load(p_h + (W - 1 + o_s)[None, :], mask=m_h, other=0.0).to(tl.float32)
        b_w = tl.load(w + o_d * W + k, mask=m_d, other=0.0).to(tl.float32)  # [BD]
        b_o += b_w[:, None] * b_x
    if SILU:
        b_o = b_o * tl.sigmoid(b_o)
    p_o = out + (i_b * DIM + o_d)[:, None] * L + o_l[None, :]
    tl.store(p_o, b_o.to(out.dtype.element_ty), mask=m_d[:, None] & m_l[None, :])

    if STORE_HT:
        if i_l == 0:  # fresh names: a runtime branch may not retype the tile variables above
            o_j = tl.arange(0, BS)
            m_j = o_j < W - 1
            o_fs = L - (W - 1) + o_j  # final state column j holds xp's column L + j, i.e. x's time L - (W-1) + j
            m_fx = m_d[:, None] & (m_j & (o_fs >= 0))[None, :]
            b_f = tl.load(p_x + o_fs[None, :], mask=m_fx, other=0.0)
            if HAS_H0:
                m_fh = m_d[:, None] & (m_j & (o_fs < 0))[None, :]
                b_f += tl.load(p_h + (W - 1 + o_fs)[None, :], mask=m_fh, other=0.0)
            p_f = hT + (i_b * DIM + o_d)[:, None] * (W - 1) + o_j[None, :]
            tl.store(p_f, b_f.to(hT.dtype.element_ty), mask=m_d[:, None] & m_j[None, :])


class CausalConv1dConfig(NamedTuple):
    """Launch configuration of :func:`_causal_conv1d_fwd_kernel`: tile sizes and warps."""

    BD: int
    BL: int
    num_warps: int


def default_config(dim: int, L: int, interpreter: bool = False) -> CausalConv1dConfig:
    """Tiles long along L (the contiguous axis), untuned on a GPU; wide in the interpreter, where programs
    run one after another."""
    BL = min(256, max(16, triton.next_power_of_2(max(L, 1))))
    BD = min(64 if interpreter else 16, triton.next_power_of_2(max(dim, 1)))
    return CausalConv1dConfig(BD, BL, 4 if BD * BL >= 2048 else 2)


def causal_conv1d_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = True,
    silu: bool = False,
    config: CausalConv1dConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x ``[batch, dim, L]`` (stride 1 along L), weight ``[dim, W]`` and bias ``[dim]`` contiguous,
    initial_state ``[batch, dim, W-1]`` contiguous in x's dtype. Checked by the caller.

    Returns ``(out [batch, dim, L] in x's dtype, final_state [batch, dim, W-1] in x's dtype or None)``.
    """
    batch, dim, L = x.shape
    check_batch("causal_conv1d", batch)
    W = weight.shape[1]
    c = config or default_config(dim, L, interpreter=x.device.type == "cpu")
    out = torch.empty(batch, dim, L, device=x.device, dtype=x.dtype)
    hT = torch.empty(batch, dim, W - 1, device=x.device, dtype=x.dtype) if return_final_state else None
    store_ht = hT is not None and W > 1
    has_h0 = initial_state is not None and W > 1
    grid = (max(1, triton.cdiv(L, c.BL)), triton.cdiv(dim, c.BD), batch)
    _causal_conv1d_fwd_kernel[grid](
        x, weight, x if bias is None else bias, initial_state if has_h0 else x, out, hT if store_ht else out,
        L, dim, x.stride(0), x.stride(1),
        W=W, BD=c.BD, BL=c.BL, BS=triton.next_power_of_2(max(W - 1, 1)),
        HAS_BIAS=bias is not None, HAS_H0=has_h0, STORE_HT=store_ht, SILU=silu,
        num_warps=c.num_warps,
    )
    return out, hT
