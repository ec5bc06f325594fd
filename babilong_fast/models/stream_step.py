"""The streaming write step of RMT and ARMT: the new memory state only, with no concatenation and no ``ln_f``.

:func:`stream_step` equals ``model.segment_forward(ids, None, state, write=True, return_logits=False)[2]`` (the
same state, float32 round-off aside) but builds the block input with :func:`~babilong_fast.ops.segment_embed`
in a buffer reused across calls of one shape (:class:`SegmentWorkspace`), calls the GPT-2 blocks of
``backbone.transformer.h`` directly, runs the last block for the memory rows the state is made from only
(their queries, attention and MLP; keys and values of all rows), and, for RMT, applies ``ln_f`` to those
write rows (:func:`~babilong_fast.ops.rows_layer_norm`); ARMT needs no ``ln_f`` at all. ARMT reads before and
writes after every block exactly as the hooks of ``ARMT.segment_forward`` do. No logits, no hidden states are kept.

The step has static shapes, no host sync and no branch on tensor values, so
:class:`~babilong_fast.engine.StreamRunner` can record it in a CUDA graph. It runs only for inference (eval
mode, gradients off); otherwise, for attention implementations other than ``eager`` / ``sdpa``, and when the
embeddings or ``ln_f`` are wrapped (a LoRA adapter) or hooked, it falls back to ``segment_forward``. A wrapped
or hooked block is called as a module rather than by :func:`~babilong_fast.models.gpt2_block.gpt2_block_infer`.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn

from babilong_fast.backends import Backend
from babilong_fast.models._common import check_input_ids
from babilong_fast.models.armt import ARMT
from babilong_fast.models.gpt2_block import gpt2_block_infer, lean_block_unsupported
from babilong_fast.models.plain_modules import first_not_plain
from babilong_fast.models.rmt import RMT
from babilong_fast.models.state import ARMTState, RMTState
from babilong_fast.ops.segment_io import rows_layer_norm, segment_embed

State = TypeVar("State", ARMTState, RMTState)

SUPPORTED_ATTENTION = ("eager", "sdpa")


class SegmentWorkspace:
    """Buffers reused by :func:`stream_step`: one ``[B, T, d]`` block input and one causal mask per shape.

    A buffer is allocated on the first call of its ``(B, T, dtype, device)`` (and inference-mode flag, since
    inference tensors cannot be written outside inference mode) and then reused, so a recorded CUDA graph
    always sees the same addresses.

    Args:
        lean_blocks: run GPT-2 blocks with :func:`~babilong_fast.models.gpt2_block.gpt2_block_infer` (fewer
            kernels, the same function) where it supports them; False calls each block's own forward (for
            comparisons).
    """

    def __init__(self, lean_blocks: bool = True) -> None:
        self.lean_blocks = lean_blocks
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._masks: dict[tuple, torch.Tensor] = {}

    def buffer(self, B: int, T: int, d: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The ``[B, T, d]`` block-input buffer (contents undefined until written)."""
        key = (B, T, d, dtype, device, torch.is_inference_mode_enabled())
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty(B, T, d, dtype=dtype, device=device)
        return buf

    def causal_mask(self, T: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``[1, 1, T, T]`` additive mask: 0 on and below the diagonal, ``finfo(dtype).min`` above (HF's eager mask)."""
        key = (T, dtype, device, torch.is_inference_mode_enabled())
        mask = self._masks.get(key)
        if mask is None:
            mask = torch.full((T, T), torch.finfo(dtype).min, dtype=dtype, device=device).triu(1)
            mask = self._masks[key] = mask.view(1, 1, T, T)
        return mask

    def clear(self) -> None:
        self._buffers.clear()
        self._masks.clear()


def fast_step_unsupported(model: nn.Module) -> str | None:
    """Why :func:`stream_step` must fall back to ``segment_forward`` for ``model`` now (None: it need not)."""
    if not isinstance(model, (ARMT, RMT)):
        return f"{type(model).__name__} is neither ARMT nor RMT"
    if model.training or model.backbone.training:
        return "the model is in training mode (dropout)"
    if torch.is_grad_enabled():
        return "gradients are enabled (the fast step is inference-only)"
    impl = getattr(model.backbone.config, "_attn_implementation", None) or "eager"
    if impl not in SUPPORTED_ATTENTION:
        return f"attention implementation {impl!r} (the fast step handles {', '.join(SUPPORTED_ATTENTION)})"
    tr = model.backbone.transformer  # the fused segment I/O reads these weights directly
    return first_not_plain({
        "transformer.wte": (tr.wte, (nn.Embedding,)), "transformer.wpe": (tr.wpe, (nn.Embedding,)),
        "transformer.ln_f": (tr.ln_f, (nn.LayerNorm,)),
    })


def _attention_mask(model: ARMT | RMT, T: int, dtype: torch.dtype, ws: SegmentWorkspace) -> torch.Tensor | None:
    """The mask that makes a direct block call causal, as the HF model's own forward does without padding.

    ``sdpa`` takes None (``is_causal``). ``eager`` attention applies a causal mask of its own in transformers 4.x
    (a boolean ``bias`` buffer) but not in 5.x, which needs the additive mask.
    """
    tr = model.backbone.transformer
    if (getattr(model.backbone.config, "_attn_implementation", None) or "eager") == "sdpa":
        return None
    own = getattr(tr.h[0].attn, "bias", None) if len(tr.h) else None
    if isinstance(own, torch.Tensor) and own.dtype == torch.bool:
        return None
    return ws.causal_mask(T, dtype, tr.wte.weight.device)


def _block(
    block: nn.Module, h: torch.Tensor, mask: torch.Tensor | None, ws: SegmentWorkspace, last: int | None = None
) -> torch.Tensor:
    """``block(h)``, or its last ``last`` rows only (all the last block's output that the state uses)."""
    if ws.lean_blocks and lean_block_unsupported(block) is None:
        return gpt2_block_infer(block, h, check=False, last=last)
    out = block(h, attention_mask=mask)
    out = out[0] if isinstance(out, tuple) else out
    return out if last is None else out[:, out.shape[1] - last :]


def _as_broadcast(memory: torch.Tensor) -> torch.Tensor:
    """``[B or 1, M, d]`` contiguous; a batch expanded with stride 0 (``init_state``) becomes batch 1, copy-free."""
    if memory.shape[0] > 1 and memory.stride(0) == 0:
        memory = memory[:1]
    return memory.contiguous()


def _segment_rows(model: ARMT | RMT, ids: torch.Tensor, extra: int) -> tuple[torch.Tensor, int, int, int]:
    """``(ids as contiguous int64, B, L, T = L + extra)``, checked against the backbone's positions."""
    ids = check_input_ids(ids)  # int64
    B, L = ids.shape
    T = L + extra
    if T > model.n_positions:
        raise ValueError(
            f"segment of {L} tokens with memory ({T} rows) exceeds the backbone's {model.n_positions} positions"
        )
    return ids.contiguous(), B, L, T


def rmt_stream_step(
    model: RMT, ids: torch.Tensor, state: RMTState, ws: SegmentWorkspace, backend: Backend = "auto"
) -> RMTState:
    """RMT: ``[mem; wte(ids); mem] + wpe`` in ``ws``'s buffer, the blocks (the last for the ``M`` write rows
    only), then ``ln_f`` on those rows."""
    ids, B, L, T = _segment_rows(model, ids, 2 * model.num_mem_tokens)
    state = model._check_state(state, B, ids.device)
    M, tr = model.num_mem_tokens, model.backbone.transformer
    wte = tr.wte.weight
    h = ws.buffer(B, T, wte.shape[1], wte.dtype, wte.device)
    mem = _as_broadcast(state.memory)
    segment_embed(ids, wte, tr.wpe.weight, h, front=mem, back=mem, backend=backend)
    mask = _attention_mask(model, T, h.dtype, ws)
    n = len(tr.h)
    for i, block in enumerate(tr.h):
        h = _block(block, h, mask, ws, last=M if i == n - 1 else None)  # the last block: the write rows only
    ln = tr.ln_f
    start = M + L if n == 0 else 0  # with no block, h is still the whole input
    new = rows_layer_norm(h.contiguous(), start, M, ln.weight, ln.bias, ln.eps, backend=backend)
    return RMTState(new.float(), state.segments_seen + 1)  # float32 whatever the weights (float64 too)


def armt_stream_step(
    model: ARMT, ids: torch.Tensor, state: ARMTState, ws: SegmentWorkspace, backend: Backend = "auto"
) -> ARMTState:
    """ARMT: ``[wte(ids); P] + wpe`` in ``ws``'s buffer; per block read (after the first segment), block, write.

    ``backend`` is that of the segment ops; the associative read and write keep ``model.backend``, as in
    ``segment_forward``.
    """
    ids, B, L, T = _segment_rows(model, ids, model.num_mem_tokens)
    state = model._check_state(state, B, ids.device)
    M, tr = model.num_mem_tokens, model.backbone.transformer
    wte = tr.wte.weight
    h = ws.buffer(B, T, wte.shape[1], wte.dtype, wte.device)
    segment_embed(ids, wte, tr.wpe.weight, h, back=model.memory.unsqueeze(0), backend=backend)
    mask = _attention_mask(model, T, h.dtype, ws)
    first = state.segments_seen == 0
    new_A, new_z = [], []
    n = len(tr.h)
    for i, block in enumerate(tr.h):
        if not first:
            h = model.read_layer(i, h, state)
        if i < n - 1:
            h = _block(block, h, mask, ws)
            rows = h[:, L : L + M]
        else:  # the last block: only the memory rows, which its write reads (the rows [L, L + M) are the last M)
            rows = _block(block, h, mask, ws, last=M)
        A, z = model.write_layer(i, rows, state, first)
        new_A.append(A)
        new_z.append(z)
    return ARMTState(new_A, new_z, state.segments_seen + 1)


def stream_step(
    model: ARMT | RMT,
    ids: torch.Tensor,
    state: State,
    ws: SegmentWorkspace | None = None,
    *,
    backend: Backend | None = None,
) -> State:
    """One write step of a stream: the state after segment ``ids``, without logits or hidden states.

    Equals ``model.segment_forward(ids, None, state, write=True, return_logits=False)[2]``; that is what runs
    when :func:`fast_step_unsupported` names a reason (training mode, gradients on, another attention kernel).

    Args:
        model: an :class:`~babilong_fast.models.ARMT` or :class:`~babilong_fast.models.RMT` in eval mode.
        ids: ``[B, L]`` token ids of one segment (``L`` tokens plus the memory rows fit the positions).
        state: the state before it (``model.init_state(B)`` for the first segment).
        ws: the buffers to reuse (a new :class:`SegmentWorkspace` when None: nothing is then reused).
        backend: backend of :func:`~babilong_fast.ops.segment_embed` and :func:`~babilong_fast.ops.rows_layer_norm`
            (None: ARMT's ``backend``, ``"auto"`` for RMT).

    Returns:
        the new state (``segments_seen + 1``); float32 tensors that own their memory.

    Examples::
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> backbone = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2))
        >>> model, ids = ARMT(backbone, d_mem=8, segment_size=16).eval(), torch.randint(0, 100, (2, 40))
        >>> ws = SegmentWorkspace()  # buffers reused from one segment to the next
        >>> with torch.inference_mode():
        ...     state = model.init_state(2)
        ...     for seg in ids.split(model.segment_size, 1):  # the last segment is short, as a stream's may be
        ...         state = stream_step(model, seg, state, ws)
        >>> state.segments_seen
        3
    """
    if fast_step_unsupported(model) is not None:
        return model.segment_forward(ids, None, state, write=True, return_logits=False)[2]
    ws = SegmentWorkspace() if ws is None else ws
    backend = getattr(model, "backend", "auto") if backend is None else backend
    if isinstance(model, ARMT):
        return armt_stream_step(model, ids, state, ws, backend)
    return rmt_stream_step(model, ids, state, ws, backend)
