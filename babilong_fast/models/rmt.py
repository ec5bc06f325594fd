"""RMT (recurrent memory transformer) on a GPT-2 backbone as used for BABILong (RMT-BL, docs/math.md §1.1).

Every segment is ``[mem; wte(x); mem] + wpe(0..T-1)`` under causal attention with memory rows always
visible; the next memory is the ``ln_f`` output at the trailing (write) rows and the logits come from the
token rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from babilong_fast.models._common import (
    check_backbone,
    check_backbone_unhooked,
    check_input_ids,
    check_mask,
    check_positive,
    check_state_device,
    check_token_range,
)
from babilong_fast.models.recurrent import RecurrentLM
from babilong_fast.models.state import RMTState

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel


class RMT(RecurrentLM):
    """Recurrent memory transformer around a ``GPT2LMHeadModel``; the state is a ``[B, M, d]`` float32 memory.

    Args:
        backbone: a ``transformers.GPT2LMHeadModel``, used unchanged.
        num_mem_tokens: ``M`` (default 16); the learned initial memory is ``N(0, 1) * std(wte)``.
        segment_size: tokens per segment (default 512); ``2 M + segment_size <= n_positions``.

    Examples::
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=100))
        >>> model = RMT(gpt2, num_mem_tokens=4, segment_size=16)
        >>> ids = torch.randint(0, 100, (2, 40))
        >>> model(ids)["logits"].shape
        torch.Size([2, 40, 100])
    """

    def __init__(self, backbone: GPT2LMHeadModel, num_mem_tokens: int = 16, segment_size: int = 512):
        super().__init__()
        self.backbone = check_backbone(backbone)
        self.num_mem_tokens = check_positive("num_mem_tokens", num_mem_tokens)
        self._decode_prefix = self.num_mem_tokens  # read memory rows precede the final segment when decoding
        self.segment_size = check_positive("segment_size", segment_size)
        wte = backbone.transformer.wte.weight
        self.d_model = wte.shape[1]
        self.n_positions = backbone.transformer.wpe.weight.shape[0]
        if segment_size + 2 * num_mem_tokens > self.n_positions:
            raise ValueError(
                f"segment_size + 2 * num_mem_tokens = {segment_size + 2 * num_mem_tokens} exceeds the backbone's "
                f"{self.n_positions} positions"
            )
        self.memory = nn.Parameter(
            torch.randn(num_mem_tokens, self.d_model, device=wte.device, dtype=wte.dtype) * wte.detach().float().std()
        )

    @classmethod
    def from_reference(cls, reference: nn.Module, *, segment_size: int | None = None, copy: bool = False) -> RMT:
        """Our RMT on the weights of a public RMT (``RecurrentWrapper``, ``RecurrentWrapperLight``, ``MemoryCell``).

        The backbone is the reference cell's GPT-2 LM itself and ``memory`` its memory parameter (shared, not
        copied); ``num_mem_tokens`` and ``segment_size`` (``rmt_config['segment_size']``) are read from it.

        Args:
            reference: the wrapper or the cell.
            segment_size: required for a cell; for a wrapper it must be None or equal the wrapper's.
            copy: deep-copy the weights instead of sharing them.

        Raises:
            ReferenceModelError (a ValueError): wrap_pos on, segmentation not left-aligned, a backbone other than
                GPT-2, no memory tokens.
            TypeError: not an RMT reference object.
        """
        from babilong_fast.models.reference import rmt_from_reference

        return rmt_from_reference(cls, reference, segment_size=segment_size, copy=copy)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> RMTState:
        """The learned memory broadcast over the batch, float32 (differentiable w.r.t. ``self.memory``)."""
        check_positive("batch_size", batch_size)
        mem = self.memory.float().unsqueeze(0).expand(batch_size, -1, -1)
        return RMTState(mem if device is None else mem.to(device), 0)

    def _check_state(self, state: object, batch_size: int, device: torch.device) -> RMTState:
        if not isinstance(state, RMTState):
            raise TypeError(f"state must be an RMTState (see init_state), got {type(state).__name__}")
        check_state_device(state.memory.device, device)
        check_backbone_unhooked("RMT", self.backbone)
        M, d = self.num_mem_tokens, self.d_model
        if state.memory.shape[1:] != (M, d) or state.batch_size not in (1, batch_size):
            raise ValueError(f"state memory must be [{batch_size} or 1, {M}, {d}], got {tuple(state.memory.shape)}")
        return state

    def segment_forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        state: RMTState,
        *,
        write: bool = True,
        return_logits: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor, RMTState]:
        """Run one segment ``[mem; tokens; mem]`` (``[mem; tokens]`` with ``write=False``).

        Args:
            input_ids: ``[B, L]`` token ids.
            attention_mask: ``[B, L]`` padding mask or None; memory rows are always visible.
            state: the memory (:meth:`init_state` for the first segment).
            write: append the write rows and return the next memory; otherwise ``state`` is returned as is.
            return_logits: compute ``lm_head`` on the token rows.

        Returns:
            ``(logits [B, L, V] or None, hidden [B, L, d] (after ln_f), new_state)``.

        Raises:
            ValueError: ids outside the vocabulary (checked here for CPU tensors; on a GPU :meth:`forward` and
                :meth:`generate` check once per call), a state of another shape or batch, or on another device.
        """
        input_ids = check_input_ids(input_ids)
        if input_ids.device.type == "cpu":  # on a GPU forward / generate check once per call (a sync)
            check_token_range(input_ids, self.vocab_size)
        attention_mask = check_mask(attention_mask, input_ids, "attention_mask")
        B, L = input_ids.shape
        state = self._check_state(state, B, input_ids.device)
        M = self.num_mem_tokens
        tr = self.backbone.transformer
        tok = tr.wte(input_ids)
        mem = state.memory.to(tok.dtype).expand(B, -1, -1)
        parts = [mem, tok, mem] if write else [mem, tok]
        emb = torch.cat(parts, 1)
        T = emb.shape[1]
        if T > self.n_positions:
            raise ValueError(
                f"segment of {L} tokens with memory ({T} rows) exceeds the backbone's {self.n_positions} positions"
            )
        if attention_mask is not None:
            ones = attention_mask.new_ones(B, M)
            attention_mask = torch.cat([ones, attention_mask, ones] if write else [ones, attention_mask], 1)
        positions = torch.arange(T, device=emb.device).unsqueeze(0)
        H = tr(inputs_embeds=emb, attention_mask=attention_mask, position_ids=positions, use_cache=False)[0]
        hidden = H[:, M : M + L]
        logits = self.backbone.lm_head(hidden) if return_logits else None
        new_state = RMTState(H[:, M + L :].float(), state.segments_seen + 1) if write else state
        return logits, hidden, new_state

    def extra_repr(self) -> str:
        return f"num_mem_tokens={self.num_mem_tokens}, segment_size={self.segment_size}"
