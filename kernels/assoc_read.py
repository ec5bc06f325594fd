"""Triton kernels for the ARMT associative read (see ``babilong_fast.ops.assoc_read``).

Two launches: ``q = h w_q^T`` written as ``s = [relu(q), relu(-q)]`` (float32, ``[B*T, 2n]``), then one
pass that builds the DPFP features from ``s`` on the fly, multiplies them with ``A`` and ``z`` together
(numerator and denominator) and writes ``h + num / (den + eps)``. The features never reach global memory.
DPFP (Schlag et al. 2021, https://arxiv.org/abs/2102.11174): ``phi[j*2n + i] = s[i] * s[(i-j-1) % 2n]``,
``s = [relu(q), relu(-q)]``.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from babilong_fast.kernels.dpfp_math import phi_times_state, store_s
from babilong_fast.kernels.launch_limits import check_batch, check_weight_fits_int32


@triton.jit(do_not_specialize=["R"])
def _assoc_query_fwd_kernel(
    h, w, s, R, D, N,
    BR: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, HALF_DOT: tl.constexpr,
):
    i_r, i_n = tl.program_id(0).to(tl.int64), tl.program_id(1)
    o_r = i_r * BR + tl.arange(0, BR)
    o_n = i_n * BN + tl.arange(0, BN)
    m_r, m_n = o_r < R, o_n < N
    b_q = tl.zeros([BR, BN], dtype=tl.float32)
    for k0 in range(0, D, BK):
        o_k = k0 + tl.arange(0, BK)
        m_k = o_k < D
        b_h = tl.load(h + o_r[:, None] * D + o_k[None, :], mask=m_r[:, None] & m_k[None, :], other=0.0)
        b_w = tl.load(w + o_n[:, None] * D + o_k[None, :], mask=m_n[:, None] & m_k[None, :], other=0.0)
        if HALF_DOT:  # bf16 x bf16 and fp16 x fp16 products are exact in float32: tensor cores lose nothing
            b_q += tl.dot(b_h, tl.trans(b_w), out_dtype=tl.float32)  # [BR, BN]
        else:
            b_q += tl.dot(b_h.to(tl.float32), tl.trans(b_w.to(tl.float32)), input_precision="ieee")
    store_s(s, b_q, o_r, o_n, m_r, m_n, N)


@triton.jit(do_not_specialize=["T"])
def _assoc_read_fwd_kernel(
    h, s, A, z, o, T, D, N2, NU, stride_ab, stride_zb, eps,
    BT: tl.constexpr, BD: tl.constexpr, BI: tl.constexpr, PRECISION: tl.constexpr,
):
    i_t, i_d, i_b = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    o_t = i_t * BT + tl.arange(0, BT)
    o_d = i_d * BD + tl.arange(0, BD)
    m_t, m_d = o_t < T, o_d < D
    p_s = s + (i_b * T + o_t) * N2  # row starts, [BT]
    p_a = A + i_b * stride_ab
    p_z = z + i_b * stride_zb
    b_num, b_den, _ = phi_times_state(p_s, m_t, p_a, p_z, o_d, m_d, D, N2, NU, BT, BD, BI, PRECISION, False)
    o_hd = (i_b * T + o_t)[:, None] * D + o_d[None, :]
    m_hd = m_t[:, None] & m_d[None, :]
    b_h = tl.load(h + o_hd, mask=m_hd, other=0.0).to(tl.float32)
    b_o = b_h + b_num / (b_den + eps)[:, None]
    tl.store(o + o_hd, b_o.to(o.dtype.element_ty), mask=m_hd)


def _pow2_at_least(x: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(x))


@functools.cache
def _cuda_caps(device: torch.device) -> tuple[int, tuple[int, int]]:
    """(SM count, compute capability) of a CUDA device, read once per device (the wrappers run every layer)."""
    props = torch.cuda.get_device_properties(device)
    return props.multi_processor_count, (props.major, props.minor)


def _sm_count(device: torch.device) -> int | None:
    """Streaming multiprocessors of a CUDA device (None elsewhere: the interpreter runs programs one by one)."""
    return _cuda_caps(device)[0] if device.type == "cuda" else None


def _fill_gpu(tiles: list[tuple[int, ...]], programs, sms: int | None) -> tuple[int, ...]:
    """The first of ``tiles`` (in order of preference, largest grid last) whose grid, ``programs(*tile)``, has a
    program for (about) every SM, else the last; the first when ``sms`` is None. Small problems (batch 1)
    otherwise leave most SMs idle: one wave whose programs each walk the whole reduction. Not tuned by timing
    (no GPU has run it yet)."""
    if sms is None:
        return tiles[0]
    return next((t for t in tiles if programs(*t) >= 0.9 * sms), tiles[-1])


def assoc_query_fwd(h: torch.Tensor, w_q: torch.Tensor) -> torch.Tensor:
    """``s = [relu(q), relu(-q)]``, ``q = h w_q^T``, in float32. h: ``[B, T, d]``, w_q: ``[n, d]``; returns
    ``[B, T, 2n]``."""
    B, T, D = h.shape
    N = w_q.shape[0]
    check_weight_fits_int32("w_q", w_q)
    R = B * T
    s = torch.empty(B, T, 2 * N, device=h.device, dtype=torch.float32)
    # Few rows (decoding): narrow output tiles so more programs share the reduction over d.
    tiles = [(16 if R <= 64 else 32, 16 if R <= 64 else 64), (32, 32), (16, 32), (16, 16)]
    tiles = [(br, min(bn, _pow2_at_least(N))) for br, bn in tiles]
    BR, BN = _fill_gpu(tiles, lambda br, bn: triton.cdiv(R, br) * triton.cdiv(N, bn), _sm_count(h.device))
    grid = (triton.cdiv(R, BR), triton.cdiv(N, BN))
    # Triton's interpreter multiplies the bit patterns of bf16 dot operands (triton-lang/triton#11584): there bf16
    # takes the float32 dot (same result; fp16 keeps its half dot, so the interpreter still checks that path).
    # Tensor-core half dots need sm_80 or later here (bf16 has none before; keep older GPUs on the float32 dot).
    compiled = isinstance(_assoc_query_fwd_kernel, JITFunction)
    ampere = h.device.type != "cuda" or _cuda_caps(h.device)[1] >= (8, 0)
    half = h.dtype == torch.float16 or (h.dtype == torch.bfloat16 and compiled)
    half_dot = ampere and h.dtype == w_q.dtype and half
    BK = 128 if half_dot else 64  # tensor-core tiles: fewer, longer steps over d (Triton 3.8 spills at 64)
    _assoc_query_fwd_kernel[grid](h, w_q, s, R, D, N, BR=BR, BN=BN, BK=BK, HALF_DOT=half_dot, num_warps=4)
    return s


class AssocReadConfig(NamedTuple):
    """Launch configuration of :func:`_assoc_read_fwd_kernel` (tile sizes, warps, pipeline depth, dot precision)."""

    BT: int
    BD: int
    BI: int
    num_warps: int
    num_stages: int
    precision: str


def default_config(T: int, D: int, N: int, dtype: torch.dtype, B: int = 1, sms: int | None = None) -> AssocReadConfig:
    """Tiles that fit the sizes, smaller ones when the grid would leave some of ``sms`` SMs idle; exact float32
    products for float32 inputs, TF32 for half inputs."""
    BT = 64 if T > 32 else (32 if T > 16 else 16)
    BD = 128 if D > 64 else (64 if D > 32 else (32 if D > 16 else 16))
    if T <= 16:  # decoding: few token tiles, so spread d over more programs
        BD = min(BD, 32)
    # Smaller tiles (and warps) for small grids: those that ptxas keeps in registers under Triton 3.6 and 3.8.
    smaller = ((32, 32, 4),) if dtype == torch.float32 else ((64, 64, 8), (64, 32, 8), (32, 32, 4))
    tiles = [(BT, BD, 8 if BD * BT >= 8192 else 4)] + [t for t in smaller if t[0] <= BT and t[1] <= BD]
    BT, BD, warps = _fill_gpu(tiles, lambda bt, bd, _: triton.cdiv(T, bt) * triton.cdiv(D, bd) * B, sms)
    BI = min(64, _pow2_at_least(2 * N))
    precision = "ieee" if dtype == torch.float32 else "tf32"
    return AssocReadConfig(BT, BD, BI, warps, 2, precision)


def assoc_read_fwd(
    h: torch.Tensor, w_q: torch.Tensor, A: torch.Tensor, z: torch.Tensor, nu: int, eps: float,
    config: AssocReadConfig | None = None,
) -> torch.Tensor:
    """Fused read. h ``[B, T, d]``, w_q ``[n, d]``, A ``[B|1, 2*nu*n, d]`` fp32, z ``[B|1, 2*nu*n]`` fp32.

    Returns ``h + (phi A) / (phi z + eps)`` as ``[B, T, d]`` in h's dtype. Inputs must be contiguous
    (checked by the caller). ``config`` overrides :func:`default_config` (benchmark sweeps).
    """
    check_batch("assoc_read", h.shape[0])  # the fused pass's grid z; checked before the query pass runs
    return assoc_read_main_fwd(h, assoc_query_fwd(h, w_q), A, z, nu, eps, config)


def assoc_read_main_fwd(
    h: torch.Tensor, s: torch.Tensor, A: torch.Tensor, z: torch.Tensor, nu: int, eps: float,
    config: AssocReadConfig | None = None,
) -> torch.Tensor:
    """The fused pass alone, from ``s`` ``[B, T, 2n]`` float32 (:func:`assoc_query_fwd`); returns ``[B, T, d]``.
    B is checked by the caller (:func:`assoc_read_fwd`, before the query pass)."""
    B, T, D = h.shape
    N = s.shape[-1] // 2
    c = config or default_config(T, D, N, h.dtype, B, _sm_count(h.device))
    out = torch.empty_like(h)
    grid = (triton.cdiv(T, c.BT), triton.cdiv(D, c.BD), B)
    _assoc_read_fwd_kernel[grid](
        h, s, A, z, out, T, D, 2 * N, nu,
        0 if A.shape[0] == 1 else A.stride(0), 0 if z.shape[0] == 1 else z.stride(0), eps,
        BT=c.BT, BD=c.BD, BI=c.BI, PRECISION=c.precision, num_warps=c.num_warps, num_stages=c.num_stages,
    )
    return out
