"""What ARMT and RMT share above :meth:`segment_forward`: the segment loop, the loss and greedy decoding."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from babilong_fast.models._common import (
    check_input_ids,
    check_mask,
    check_positive,
    check_token_range,
    greedy_loop,
    lm_loss,
    scored_lm_loss,
    segment_bounds,
)

PRETRAINED_FILE = "babilong_fast_model.pt"
"""File name used by :meth:`RecurrentLM.save_pretrained` inside its folder."""


class RecurrentLM(nn.Module):
    """Base of the segment-recurrent wrappers.

    Subclasses provide ``backbone``, ``segment_size``, ``n_positions``, ``init_state(batch, device)``,
    ``segment_forward(ids, mask, state, *, write, return_logits) -> (logits, hidden, state)``,
    ``_check_state(state, batch, device)`` and ``_decode_prefix`` (rows placed before the final segment while
    decoding: RMT's read memory; 0 for ARMT).
    """

    _decode_prefix: int = 0

    @property
    def vocab_size(self) -> int:
        """Rows of the backbone's token embedding: valid ids are ``[0, vocab_size)``."""
        return self.backbone.get_input_embeddings().weight.shape[0]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels_mask: torch.Tensor | None = None,
        *,
        detach_every: int | None = None,
        sparse_logits: bool = False,
    ) -> dict[str, Any]:
        """Teacher-forced pass over left-aligned segments with full BPTT (the references' ``K2=-1``).

        Args:
            input_ids: ``[B, N]`` token ids (samples of equal length; pad them and pass ``attention_mask``).
            attention_mask: ``[B, N]`` or None.
            labels_mask: ``[B, N]`` bool or None: the loss scores ``logits[:, t]`` against ``input_ids[:, t+1]``
                where ``labels_mask[:, t]`` (all positions when None), as in BABILong fine-tuning.
            detach_every: truncated BPTT: the state is detached after every ``detach_every`` segments
                (None: full BPTT).
            sparse_logits: apply ``lm_head`` only at the scored positions (``labels_mask[:, t]``, ``t < N-1``);
                the loss is the same, ``"logits"`` is then ``[K, V]`` for those positions in row-major order.
                Needs ``labels_mask``.

        Returns:
            ``{"loss": scalar, "logits": [B, N, V] (or [K, V]), "state": the memory after the last segment}``.
        """
        input_ids = check_input_ids(input_ids)
        check_token_range(input_ids, self.vocab_size)
        attention_mask = check_mask(attention_mask, input_ids, "attention_mask")
        labels_mask = check_mask(labels_mask, input_ids, "labels_mask")
        if detach_every is not None:
            check_positive("detach_every", detach_every)
        if sparse_logits and labels_mask is None:
            raise ValueError("sparse_logits=True needs labels_mask (the positions to score)")
        state = self.init_state(input_ids.shape[0], input_ids.device)
        outs = []
        for i, (a, b) in enumerate(segment_bounds(input_ids.shape[1], self.segment_size)):
            seg_mask = None if attention_mask is None else attention_mask[:, a:b]
            seg_logits, hidden, state = self.segment_forward(
                input_ids[:, a:b], seg_mask, state, return_logits=not sparse_logits
            )
            outs.append(hidden if sparse_logits else seg_logits)
            if detach_every is not None and (i + 1) % detach_every == 0:
                state = state.detach()
        if sparse_logits:
            loss, logits = scored_lm_loss(torch.cat(outs, 1), self.backbone.lm_head, input_ids, labels_mask)
            return {"loss": loss, "logits": logits, "state": state}
        logits = torch.cat(outs, 1)
        return {"loss": lm_loss(logits, input_ids, labels_mask), "logits": logits, "state": state}

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, max_new_tokens: int = 10, eos_token_id: int | None = 50256
    ) -> torch.Tensor:
        """Greedy decoding as the reference wrappers' ``generate`` (docs/math.md §1.3 for RMT, §2.6 for ARMT).

        All segments but the last write the memory; the last one, followed by the tokens generated so far,
        runs without writing (RMT: ``[mem; tokens]`` without write rows; ARMT: without memory tokens,
        reading the memory at every row). Each step re-runs that suffix (no KV cache).

        Args:
            input_ids: ``[B, N]`` prompt ids (equal lengths, no padding).
            max_new_tokens: at most this many tokens are generated.
            eos_token_id: a row stops at this token and is padded with it; decoding stops when all rows have it.
                None: no end token (always ``max_new_tokens``).

        Returns:
            ``[B, <= max_new_tokens]`` the new tokens only.
        """
        input_ids = check_input_ids(input_ids)
        check_token_range(input_ids, self.vocab_size)
        bounds = segment_bounds(input_ids.shape[1], self.segment_size)
        a, b = bounds[-1]
        self.check_decode_fits(b - a, max_new_tokens)
        state = self.init_state(input_ids.shape[0], input_ids.device)
        for s, e in bounds[:-1]:
            _, _, state = self.segment_forward(input_ids[:, s:e], None, state, return_logits=False)
        return self.generate_from_state(input_ids[:, a:b], state, max_new_tokens, eos_token_id)

    def check_decode_fits(self, last_len: int, max_new_tokens: int) -> None:
        """Raise ValueError unless a final segment of ``last_len`` tokens and ``max_new_tokens`` greedy tokens
        fit the backbone's positions (with the memory rows); callers check before streaming a long input."""
        check_positive("max_new_tokens", max_new_tokens)
        if self._decode_prefix + last_len + max_new_tokens - 1 > self.n_positions:
            raise ValueError(
                f"{self._decode_prefix} memory rows + the last segment ({last_len} tokens) + {max_new_tokens - 1} "
                f"generated tokens exceed the backbone's {self.n_positions} positions"
            )

    @torch.no_grad()
    def generate_from_state(
        self, last_ids: torch.Tensor, state: Any, max_new_tokens: int = 10, eos_token_id: int | None = 50256
    ) -> torch.Tensor:
        """The decoding half of :meth:`generate`: greedy tokens after the final segment ``last_ids``.

        ``state`` is the memory after every earlier segment. Used by streaming inference
        (:class:`babilong_fast.engine.StreamRunner`), which builds ``state`` without the whole input.

        Args:
            last_ids: ``[B, L]`` the final segment, ``1 <= L <= segment_size``.
            state: the memory before it.
            max_new_tokens, eos_token_id: as in :meth:`generate`.

        Returns:
            ``[B, <= max_new_tokens]`` the new tokens only.
        """
        last = check_input_ids(last_ids, "last_ids")
        check_token_range(last, self.vocab_size, "last_ids")
        if last.shape[1] > self.segment_size:
            raise ValueError(
                f"last_ids has {last.shape[1]} tokens, more than one segment ({self.segment_size}): pass the final "
                "segment only, the earlier ones go into state"
            )
        self.check_decode_fits(last.shape[1], max_new_tokens)
        state = self._check_state(state, last.shape[0], last.device)

        def step(generated: torch.Tensor) -> torch.Tensor:
            ids = torch.cat([last, generated], 1)
            _, hidden, _ = self.segment_forward(ids, None, state, write=False, return_logits=False)
            return self.backbone.lm_head(hidden[:, -1])

        return greedy_loop(step, last.shape[0], last.device, max_new_tokens, eos_token_id)

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write the model to ``save_directory/babilong_fast_model.pt`` (see :func:`~babilong_fast.models.save_model`).

        Returns:
            the path of the file written (the folder is created if needed).
        """
        from babilong_fast.models.checkpoint import save_model

        return save_model(self, Path(save_directory) / PRETRAINED_FILE)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, map_location: Any = "cpu") -> RecurrentLM:
        """Load a model written by :meth:`save_pretrained` (a folder) or by ``save_model`` (a file), in eval mode.

        ``ARMT.from_pretrained`` / ``RMT.from_pretrained`` insist on that kind (CheckpointError otherwise);
        ``RecurrentLM.from_pretrained`` accepts either.
        """
        from babilong_fast.models.checkpoint import load_model

        path = Path(path)
        kind = next((c.__name__.lower() for c in cls.__mro__ if c.__name__ in ("ARMT", "RMT")), None)
        model = load_model(path / PRETRAINED_FILE if path.is_dir() else path, map_location, kind=kind)
        if not isinstance(model, cls):
            raise TypeError(f"{path} holds a {type(model).__name__}, which is not a {cls.__name__}")
        return model
