"""What :class:`~babilong_fast.engine.StreamRunner` needs from a model, one adapter per model type.

An adapter exposes a fixed segment length, an empty state, one *write* step over exactly ``segment_size``
tokens (no logits) and the decoding tail of the model's own ``generate``. :class:`MambaAdapter` fills the
same slots with one chunk of the state-carrying Mamba forward (its ``segment_size`` a free chunk length)
and greedy decoding from the state.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from babilong_fast.backends import Backend
from babilong_fast.models import ARMT, RMT, ARMTState, RMTState
from babilong_fast.models._common import check_positive
from babilong_fast.models.compiled_step import CompiledStep
from babilong_fast.models.mamba import DEFAULT_CHUNK_SIZE, MambaLM, MambaState
from babilong_fast.models.mamba.parts import HF_LM, SSM_LM
from babilong_fast.models.stream_step import SegmentWorkspace, stream_step


class SegmentAdapter(Protocol):
    """The model side of streaming inference."""

    model: nn.Module
    segment_size: int
    vocab_size: int

    def init_state(self, batch_size: int, device: torch.device) -> Any:
        """The model's empty state for ``batch_size`` rows on ``device``."""

    def check_state(self, state: object) -> Any:
        """``state`` if it is this model's state type, else TypeError."""

    def refresh(self) -> None:
        """Before each stream: take in changes made to the model since the last (or refuse them)."""

    def step(self, ids: torch.Tensor, state: Any) -> Any:
        """Consume one segment ``ids [B, segment_size]`` with memory writes on; return the new state."""

    def decode(self, last_ids: torch.Tensor, state: Any, max_new_tokens: int, eos_token_id: int) -> torch.Tensor:
        """Greedy tokens after the final segment ``last_ids [B, L]`` (``1 <= L <= segment_size``)."""

    def check_decode(self, last_len: int, max_new_tokens: int) -> None:
        """ValueError unless :meth:`decode` can run on a final segment of ``last_len`` tokens."""


class _RecurrentAdapter:
    """ARMT and RMT: the fast write step (:func:`~babilong_fast.models.stream_step.stream_step`, the state of
    ``segment_forward(..., write=True, return_logits=False)`` in buffers reused per shape) and ``generate_from_state``.
    """

    state_type: type

    def __init__(self, model: ARMT | RMT, segment_size: int | None = None) -> None:
        # segment_size is fixed by the model: StreamRunner rejects any other value.
        self.model = model
        self.segment_size = model.segment_size
        self.vocab_size = model.backbone.transformer.wte.weight.shape[0]
        self.workspace = SegmentWorkspace()
        self.compiled: CompiledStep | None = None

    def init_state(self, batch_size: int, device: torch.device) -> Any:
        return self.model.init_state(batch_size, device)

    def check_state(self, state: object) -> Any:
        if not isinstance(state, self.state_type):
            raise TypeError(
                f"{type(self.model).__name__} needs a {self.state_type.__name__} as its state, "
                f"got {type(state).__name__}"
            )
        return state

    def refresh(self) -> None:
        """Nothing: ARMT and RMT check their modules at every segment."""

    def step(self, ids: torch.Tensor, state: Any) -> Any:
        if self.compiled is not None:
            return self.compiled(ids, state)
        return stream_step(self.model, ids, state, self.workspace)

    def enable_compile(self, regional: bool = True) -> None:
        """Full segments after the first through ``torch.compile`` (see ``models.compiled_step.CompiledStep``)."""
        self.compiled = CompiledStep(self.model, self.workspace, regional=regional)

    def decode(self, last_ids: torch.Tensor, state: Any, max_new_tokens: int, eos_token_id: int) -> torch.Tensor:
        return self.model.generate_from_state(last_ids, state, max_new_tokens, eos_token_id)

    def check_decode(self, last_len: int, max_new_tokens: int) -> None:
        self.model.check_decode_fits(last_len, max_new_tokens)


class ARMTAdapter(_RecurrentAdapter):
    state_type = ARMTState


class RMTAdapter(_RecurrentAdapter):
    state_type = RMTState


class MambaAdapter:
    """Mamba-1 (transformers ``MambaForCausalLM``, mamba_ssm ``MambaLMHeadModel`` or a :class:`MambaLM`).

    A segment is a chunk of the stream: ``step`` runs it through every layer with the state carried and no
    LM head. Mamba has no final segment of its own, so ``decode`` runs the held-back tokens from the state
    and decodes greedily one token per step, which equals the model's ``generate`` on the whole input.

    Args:
        model: the model; a ``MambaLM`` keeps its own ``backend``.
        segment_size: chunk length (default the ``MambaLM``'s ``chunk_size``, else ``DEFAULT_CHUNK_SIZE``).
        backend: backend of the fused ops when ``model`` is not a ``MambaLM``.
    """

    def __init__(self, model: nn.Module, segment_size: int | None = None, backend: Backend = "auto") -> None:
        self.model = model
        if not isinstance(model, MambaLM):
            model = MambaLM(model, chunk_size=segment_size or DEFAULT_CHUNK_SIZE, backend=backend)
        self.lm = model
        self.segment_size = self.lm.chunk_size if segment_size is None else segment_size
        self.vocab_size = self.lm.vocab_size

    def init_state(self, batch_size: int, device: torch.device) -> MambaState:
        return self.lm.init_state(batch_size, device)

    def check_state(self, state: object) -> MambaState:
        return self.lm.check_state(state)

    def refresh(self) -> None:
        self.lm.refresh()

    def step(self, ids: torch.Tensor, state: MambaState) -> MambaState:
        return self.lm.step(ids, state, logits="none")[1]

    def decode(self, last_ids: torch.Tensor, state: MambaState, max_new_tokens: int, eos_token_id: int) -> torch.Tensor:
        return self.lm._generate(last_ids, max_new_tokens, eos_token_id, state)  # the runner refreshed the model

    def check_decode(self, last_len: int, max_new_tokens: int) -> None:
        check_positive("max_new_tokens", max_new_tokens)  # no positions to run out of


ADAPTERS: dict[type, type] = {ARMT: ARMTAdapter, RMT: RMTAdapter, MambaLM: MambaAdapter}
LAZY_ADAPTERS: dict[str, type] = {HF_LM: MambaAdapter, SSM_LM: MambaAdapter}
"""Adapters for other libraries' classes, keyed by ``module.qualname`` so that nothing is imported to match them."""


def make_adapter(model: object, segment_size: int | None = None) -> SegmentAdapter:
    """The adapter registered for ``type(model)`` (or a base class of it).

    Args:
        model: the model to stream.
        segment_size: passed to the adapter; models with a fixed segment length ignore it (the caller checks it).
    """
    for cls in type(model).__mro__:
        adapter = ADAPTERS.get(cls) or LAZY_ADAPTERS.get(f"{cls.__module__}.{cls.__qualname__}")
        if adapter is not None:
            return adapter(model, segment_size)
    supported = ", ".join([c.__name__ for c in ADAPTERS] + sorted({p.rsplit(".", 1)[1] for p in LAZY_ADAPTERS}))
    raise TypeError(f"StreamRunner supports {supported} models, got {type(model).__name__}")
