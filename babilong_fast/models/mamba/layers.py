"""One chunk of tokens through a Mamba-1 LM with the state carried in and out, on our fused ops."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from babilong_fast.backends import Backend
from babilong_fast.models.mamba.parts import MambaParts
from babilong_fast.models.mamba.state import MambaState
from babilong_fast.models.plain_modules import has_hooks
from babilong_fast.ops.causal_conv1d import causal_conv1d
from babilong_fast.ops.selective_scan import selective_scan


def mixer_forward(
    mixer: nn.Module,
    h: torch.Tensor,
    conv_state: torch.Tensor | None,
    ssm_state: torch.Tensor | None,
    backend: Backend = "auto",
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A Mamba-1 mixer over ``h`` continuing from ``(conv_state, ssm_state)``, as HF's ``MambaMixer`` computes it.

    ``xz = in_proj h``; ``x = silu(conv1d(x))``; ``dt, B, C = x_proj x``;
    ``y = selective_scan(x, dt_proj dt, -exp(A_log), B, C, D, z, dt_proj.bias, softplus)``; ``out = out_proj y``.

    Args:
        mixer: HF ``MambaMixer`` or mamba_ssm ``Mamba`` (any module with their weights).
        h: ``[B, T, d_model]`` the normed input.
        conv_state: ``[B, d_inner, d_conv - 1]``, or None for zeros; cast to the conv input's dtype (the model's,
            or autocast's).
        ssm_state: ``[B, d_inner, d_state]`` float32, or None for zeros.
        backend: for :func:`~babilong_fast.ops.causal_conv1d` and :func:`~babilong_fast.ops.selective_scan`.
        mask: ``[B, T]`` padding mask (1 keep, 0 pad) or None: as transformers does, the mixer's input and the
            conv's output are zeroed at padded positions.

    Returns:
        ``(out [B, T, d_model], conv_state, ssm_state)``: the new states are new tensors (inputs are not modified),
        ``conv_state`` in the projections' dtype (also under autocast), ``ssm_state`` float32.
    """
    d_inner, d_state = mixer.A_log.shape
    dt_rank = mixer.dt_proj.weight.shape[1]
    if mask is not None:
        h = (h * mask[:, :, None]).to(h.dtype)
    # Channel-first projections, so every [B, C, T] operand below has stride 1 along T.
    xz = torch.matmul(mixer.in_proj.weight, h.transpose(1, 2))  # [B, 2 d_inner, T]
    if mixer.in_proj.bias is not None:
        xz = xz + mixer.in_proj.bias[:, None].to(xz.dtype)
    x, z = xz[:, :d_inner], xz[:, d_inner:]
    if conv_state is not None and conv_state.dtype != x.dtype:  # under autocast x is bf16 in an fp32 model
        conv_state = conv_state.to(x.dtype)
    x, conv_state = causal_conv1d(
        x,
        mixer.conv1d.weight[:, 0],
        mixer.conv1d.bias,
        initial_state=conv_state,
        return_final_state=True,
        activation="silu",
        backend=backend,
    )
    if mask is not None:
        x = (x * mask[:, None, :]).to(x.dtype)
    x_dbl = torch.matmul(mixer.x_proj.weight, x)  # [B, dt_rank + 2 d_state, T]
    dt = torch.matmul(mixer.dt_proj.weight, x_dbl[:, :dt_rank])  # [B, d_inner, T]
    y, ssm_state = selective_scan(
        x,
        dt,
        -torch.exp(mixer.A_log.float()),
        x_dbl[:, dt_rank : dt_rank + d_state],
        x_dbl[:, dt_rank + d_state :],
        D=mixer.D.float(),
        z=z,
        delta_bias=mixer.dt_proj.bias.float(),
        delta_softplus=True,
        initial_state=ssm_state,
        return_last_state=True,
        backend=backend,
    )
    out = F.linear(y.transpose(1, 2).to(h.dtype), mixer.out_proj.weight, mixer.out_proj.bias)
    # back to the weights' dtype, which the state checks and the caches expect (bf16 -> fp32 under autocast: exact)
    return out, conv_state.to(mixer.in_proj.weight.dtype), ssm_state


def forward_chunk(
    parts: MambaParts,
    state: MambaState,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    keep: slice | torch.Tensor | None = slice(None),
    backend: Backend = "auto",
    mask: torch.Tensor | None = None,
    checkpoint: Sequence[Callable | None] | None = None,
) -> tuple[torch.Tensor | None, MambaState]:
    """Every layer over one chunk; the final norm only at the positions in ``keep``.

    Args:
        parts: from :func:`~babilong_fast.models.mamba.mamba_parts`.
        state: the state before the chunk (checked by the caller).
        input_ids: ``[B, T]`` token ids, or
        inputs_embeds: ``[B, T, d_model]`` instead.
        keep: positions of the chunk whose final hidden states are wanted (a slice or an index tensor); None: none.
        backend: for the fused ops.
        mask: ``[B, T]`` padding mask or None (see :func:`mixer_forward`).
        checkpoint: per layer, None or a function that runs it as ``checkpoint[i](layer_fn, h, conv, ssm)``
            (gradient checkpointing, e.g. ``torch.utils.checkpoint.checkpoint``: the layer's activations are
            recomputed in the backward pass instead of stored).

    Returns:
        ``(hidden [B, k, d_model] after norm_f, or None, new state)``.
    """
    h = parts.embedding(input_ids) if inputs_embeds is None else inputs_embeds
    T = h.shape[1]
    conv, ssm = [], []
    for i, (norm, mixer, c, s) in enumerate(zip(parts.norms, parts.mixers, state.conv, state.ssm, strict=True)):
        layer = functools.partial(_layer, parts.residual_in_fp32, norm, mixer, backend=backend, mask=mask)
        ckpt = None if checkpoint is None else checkpoint[i]
        h, c, s = layer(h, c, s) if ckpt is None else ckpt(layer, h, c, s)
        conv.append(c)
        ssm.append(s)
    new_state = MambaState(conv, ssm, state.num_tokens + T)
    if keep is None:
        return None, new_state
    h = h[:, keep]
    if parts.library == "mamba_ssm":
        h = h.to(parts.norm_f.weight.dtype)
    return parts.norm_f(h), new_state


def _layer(residual_in_fp32: bool, norm: nn.Module, mixer: nn.Module, h: torch.Tensor, conv: torch.Tensor,
           ssm: torch.Tensor, backend: Backend, mask: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """One block: ``h + mixer(norm(h))`` and the mixer's new states."""
    residual = h.float() if residual_in_fp32 else h
    out, conv, ssm = mixer_forward(mixer, norm(h.to(norm.weight.dtype)), conv, ssm, backend, mask)
    return residual + out, conv, ssm


def forward_chunked(
    parts: MambaParts,
    state: MambaState,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    *,
    chunk_size: int,
    keep_last: int | None = 0,
    backend: Backend = "auto",
    mask: torch.Tensor | None = None,
    checkpoint: Sequence[Callable | None] | None = None,
) -> tuple[torch.Tensor | None, MambaState]:
    """:func:`forward_chunk` over ``[B, T]`` ids (or ``[B, T, d]`` embeddings) in chunks of ``chunk_size``.

    Args:
        keep_last: final hidden states of the last ``keep_last`` positions (0: all, None: none); only the
            chunks holding them run ``norm_f``.
        mask: ``[B, T]`` padding mask or None (see :func:`mixer_forward`).
        checkpoint: gradient checkpointing of each layer (see :func:`forward_chunk`).

    Returns:
        ``(hidden [B, k, d_model] or None, state after the last position)``.
    """
    if inputs_embeds is None and has_hooks(parts.embedding):  # a hook sees the whole input, as in the model's forward
        input_ids, inputs_embeds = None, parts.embedding(input_ids)
    x = input_ids if inputs_embeds is None else inputs_embeds
    T = x.shape[1]
    first = T if keep_last is None else (T - keep_last if 0 < keep_last < T else 0)
    kept = []
    for s in range(0, T, chunk_size):
        e = min(T, s + chunk_size)
        keep = slice(max(first - s, 0), None) if e > first else None
        ids, emb = (x[:, s:e], None) if inputs_embeds is None else (None, x[:, s:e])
        m = None if mask is None else mask[:, s:e]
        h, state = forward_chunk(parts, state, ids, emb, keep=keep, backend=backend, mask=m, checkpoint=checkpoint)
        if h is not None:
            kept.append(h)
    return (torch.cat(kept, 1) if kept else None), state
