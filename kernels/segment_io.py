"""Triton kernels for the segment memory read/write (see ``babilong_fast.ops.segment_io``).

* ``_segment_embed_fwd_kernel``: one program per (row t, sample b) writes
  ``out[b, t] = src + wpe[t]``, where ``src`` is ``front[b or 0, t]`` (``t < Mf``), ``wte[ids[b, t - Mf]]``
  (``t < Mf + L``) or ``back[b or 0, t - Mf - L]``; summed in float32, rounded once to ``out``'s dtype.
  An id outside ``[0, V)`` writes NaN (nothing is read for it).
* ``_rows_layer_norm_fwd_kernel``: one program per (row, sample) of the band ``start..start+count-1``:
  mean, then the biased variance around it, then ``(x - mean) * rstd * w + b`` in float32.

Rows are walked in ``BD`` chunks of ``d``; row offsets are int64.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from babilong_fast.kernels.launch_limits import check_batch


@triton.jit(do_not_specialize=["L", "V"])
def _segment_embed_fwd_kernel(
    ids, wte, wpe, front, back, out, L, V, D, MF, MB, stride_fb, stride_bb,
    BD: tl.constexpr,
):
    i_t, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    T = MF + L + MB
    o_t = i_t.to(tl.int64)
    p_out = out + (i_b * T + o_t) * D
    is_tok = (i_t >= MF) & (i_t < MF + L)
    b_id = tl.load(ids + i_b * L + (i_t - MF), mask=is_tok, other=0)
    ok = (b_id >= 0) & (b_id < V)
    p_tok = wte + tl.where(ok, b_id, 0) * D
    p_front = front + i_b * stride_fb + o_t * D
    p_back = back + i_b * stride_bb + (o_t - MF - L) * D
    for d0 in range(0, D, BD):
        o_d = d0 + tl.arange(0, BD)
        m_d = o_d < D
        b_p = tl.load(wpe + o_t * D + o_d, mask=m_d, other=0.0).to(tl.float32)
        if i_t < MF:
            b_x = tl.load(p_front + o_d, mask=m_d, other=0.0).to(tl.float32)
        elif i_t < MF + L:
            b_x = tl.load(p_tok + o_d, mask=m_d & ok, other=float("nan")).to(tl.float32)
        else:
            b_x = tl.load(p_back + o_d, mask=m_d, other=0.0).to(tl.float32)
        tl.store(p_out + o_d, (b_x + b_p).to(out.dtype.element_ty), mask=m_d)


@triton.jit(do_not_specialize=["T", "START", "COUNT"])
def _rows_layer_norm_fwd_kernel(
    x, w, b, out, T, START, COUNT, D, eps,
    BD: tl.constexpr,
):
    i_r, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    p_x = x + (i_b * T + START + i_r) * D
    p_o = out + (i_b * COUNT + i_r) * D
    b_sum = tl.zeros([BD], dtype=tl.float32)
    for d0 in range(0, D, BD):
        o_d = d0 + tl.arange(0, BD)
        b_sum += tl.load(p_x + o_d, mask=o_d < D, other=0.0).to(tl.float32)
    mean = tl.sum(b_sum, axis=0) / D
    b_var = tl.zeros([BD], dtype=tl.float32)
    for d0 in range(0, D, BD):
        o_d = d0 + tl.arange(0, BD)
        m_d = o_d < D
        b_c = tl.where(m_d, tl.load(p_x + o_d, mask=m_d, other=0.0).to(tl.float32) - mean, 0.0)
        b_var += b_c * b_c
    rstd = 1.0 / tl.sqrt(tl.sum(b_var, axis=0) / D + eps)
    for d0 in range(0, D, BD):
        o_d = d0 + tl.arange(0, BD)
        m_d = o_d < D
        b_x = tl.load(p_x + o_d, mask=m_d, other=0.0).to(tl.float32)
        b_w = tl.load(w + o_d, mask=m_d, other=0.0).to(tl.float32)
        b_bb = tl.load(b + o_d, mask=m_d, other=0.0).to(tl.float32)
        tl.store(p_o + o_d, (b_x - mean) * rstd * b_w + b_bb, mask=m_d)


def _block_d(d: int) -> int:
    return min(triton.next_power_of_2(max(d, 16)), 1024)


def segment_embed_fwd(
    input_ids: torch.Tensor,
    wte: torch.Tensor,
    wpe: torch.Tensor,
    out: torch.Tensor,
    front: torch.Tensor | None,
    back: torch.Tensor | None,
) -> None:
    """Launch on checked inputs (``segment_embed``'s checks): fills ``out [B, T, d]``."""
    B, L = input_ids.shape
    check_batch("segment_embed", B)
    T, d = out.shape[1], out.shape[2]
    Mf = 0 if front is None else front.shape[1]
    Mb = 0 if back is None else back.shape[1]
    # An absent side is never read (its rows do not exist); any tensor of the right device stands in.
    f = out if front is None else front
    k = out if back is None else back
    stride_f = 0 if front is None or front.shape[0] == 1 else Mf * d
    stride_k = 0 if back is None or back.shape[0] == 1 else Mb * d
    _segment_embed_fwd_kernel[(T, B)](
        input_ids, wte, wpe, f, k, out, L, wte.shape[0], d, Mf, Mb, stride_f, stride_k, BD=_block_d(d),
    )


def rows_layer_norm_fwd(
    x: torch.Tensor, start: int, count: int, weight: torch.Tensor, bias: torch.Tensor, eps: float, out: torch.Tensor
) -> None:
    """Launch on checked inputs (``rows_layer_norm``'s checks): fills ``out [B, count, d]`` float32."""
    B, T, d = x.shape
    check_batch("rows_layer_norm", B)
    _rows_layer_norm_fwd_kernel[(count, B)](x, weight, bias, out, T, start, count, d, eps, BD=_block_d(d))
