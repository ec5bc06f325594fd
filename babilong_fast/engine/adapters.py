"""What :class:`~babilong_fast.engine.StreamRunner` needs from a model, one adapter per model type.

An adapter exposes a fixed segment length, an empty state, one *write* step over exactly ``segment_size``
tokens (no logits) and the decoding tail of the model's own ``generate``. A Mamba adapter will fill the
same slots with a chunked scan (its ``segment_size`` a chunk length) and its own decoding.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from babilong_fast.models import ARMT, RMT, ARMTState, RMTState


class SegmentAdapter(Protocol):
    """The model side of streaming inference."""

    model: nn.Module
    segment_size: int
    vocab_size: int

    def init_state(self, batch_size: int, device: torch.device) -> Any: ...

    def check_state(self, state: object) -> Any:
        """``state`` if it is this model's state type, else TypeError."""

    def step(self, ids: torch.Tensor, state: Any) -> Any:
        """Consume one segment ``ids [B, segment_size]`` with memory writes on; return the new state."""

    def decode(self, last_ids: torch.Tensor, state: Any, max_new_tokens: int, eos_token_id: int) -> torch.Tensor:
        """Greedy tokens after the final segment ``last_ids [B, L]`` (``1 <= L <= segment_size``)."""


class _RecurrentAdapter:
    """ARMT and RMT: ``segment_forward(..., write=True, return_logits=False)`` and ``generate_from_state``."""

    state_type: type

    def __init__(self, model: ARMT | RMT) -> None:
        self.model = model
        self.segment_size = model.segment_size
        self.vocab_size = model.backbone.transformer.wte.weight.shape[0]

    def init_state(self, batch_size: int, device: torch.device) -> Any:
        return self.model.init_state(batch_size, device)

    def check_state(self, state: object) -> Any:
        if not isinstance(state, self.state_type):
            raise TypeError(
                f"{type(self.model).__name__} needs a {self.state_type.__name__} as its state, "
                f"got {type(state).__name__}"
            )
        return state

    def step(self, ids: torch.Tensor, state: Any) -> Any:
        return self.model.segment_forward(ids, None, state, write=True, return_logits=False)[2]

    def decode(self, last_ids: torch.Tensor, state: Any, max_new_tokens: int, eos_token_id: int) -> torch.Tensor:
        return self.model.generate_from_state(last_ids, state, max_new_tokens, eos_token_id)


class ARMTAdapter(_RecurrentAdapter):
    state_type = ARMTState


class RMTAdapter(_RecurrentAdapter):
    state_type = RMTState


ADAPTERS: dict[type, type] = {ARMT: ARMTAdapter, RMT: RMTAdapter}


def make_adapter(model: object) -> SegmentAdapter:
    """The adapter registered for ``type(model)`` (or a base class of it)."""
    for cls in type(model).__mro__:
        if cls in ADAPTERS:
            return ADAPTERS[cls](model)
    supported = ", ".join(c.__name__ for c in ADAPTERS)
    raise TypeError(f"StreamRunner supports {supported} models, got {type(model).__name__}")
