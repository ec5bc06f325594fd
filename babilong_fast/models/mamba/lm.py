"""``MambaLM``: a Hugging Face or mamba_ssm Mamba-1 LM run chunk by chunk with an explicit state."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from babilong_fast.backends import Backend, check_backend
from babilong_fast.models._common import check_input_ids, check_positive, check_token_range, greedy_loop
from babilong_fast.models.mamba.layers import forward_chunk, forward_chunked
from babilong_fast.models.mamba.parts import MambaParts, custom_forward, mamba_parts, wrapped_mixers
from babilong_fast.models.mamba.state import MambaState
from babilong_fast.models.plain_modules import hooked_or_replaced

DEFAULT_CHUNK_SIZE = 2048
Logits = Literal["none", "last", "all"]
_KEEP = {"none": None, "last": slice(-1, None), "all": slice(None)}
_KEEP_LAST = {"none": None, "last": 1, "all": 0}


class MambaLM(nn.Module):
    """A Mamba-1 language model over inputs of any length: chunks of ``chunk_size`` tokens, state carried.

    The backbone is used unchanged (its weights, its norms); the mixers run on
    :func:`~babilong_fast.ops.causal_conv1d` and :func:`~babilong_fast.ops.selective_scan` with the conv and
    SSM state of every layer carried from chunk to chunk in a :class:`MambaState`, so a long input costs
    memory for one chunk only, and logits are computed only where asked.

    Args:
        model: transformers ``MambaForCausalLM`` or mamba_ssm ``MambaLMHeadModel`` (an LM head is needed).
        chunk_size: tokens per chunk in :meth:`forward` and :meth:`generate` (default 2048); any value gives
            the same outputs up to rounding.
        backend: backend of the fused ops (``"auto"``, ``"cuda"``, ``"triton"``, ``"torch"``).

    Examples::
        >>> from transformers import MambaConfig, MambaForCausalLM
        >>> hf = MambaForCausalLM(MambaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, state_size=8))
        >>> lm = MambaLM(hf.eval(), chunk_size=16)
        >>> ids = torch.randint(0, 100, (1, 50))
        >>> logits, state = lm(ids[:, :40], logits="last")
        >>> lm.generate(ids[:, 40:], max_new_tokens=3, eos_token_id=99, state=state).shape  # continues from state
        torch.Size([1, 3])
    """

    def __init__(self, model: nn.Module, *, chunk_size: int = DEFAULT_CHUNK_SIZE, backend: Backend = "auto") -> None:
        super().__init__()
        self.model = model
        self.parts: MambaParts = _checked_parts(model)  # self.model's modules (a plain value: registered under model)
        self.chunk_size = check_positive("chunk_size", chunk_size)
        self.backend = check_backend(backend)

    def refresh(self) -> None:
        """Re-read the model's modules (some may have been replaced) and refuse what the chunked forward would skip
        (hooks, adapters, subclass forwards) added since; :meth:`forward` and :meth:`generate` call it once per call,
        the streaming engine once per stream (:meth:`step`, run per chunk, does not)."""
        self.parts = _checked_parts(self.model)

    @property
    def vocab_size(self) -> int:
        """Rows of the embedding (the ids ``forward`` accepts)."""
        return self.parts.vocab_size

    @property
    def segment_size(self) -> int:
        """Alias of ``chunk_size`` (the streaming engine's name)."""
        return self.chunk_size

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> MambaState:
        """Zeros for ``batch_size`` rows, on ``device`` (default: the model's)."""
        check_positive("batch_size", batch_size)
        w = self.parts.mixers[0].in_proj.weight
        d = self.parts.dims
        device = w.device if device is None else device
        return MambaState.zeros(self.parts.num_layers, batch_size, d.d_inner, d.d_state, d.d_conv, w.dtype, device)

    def check_state(self, state: object, batch_size: int | None = None) -> MambaState:
        """``state`` if it fits this model (layers, shapes, dtypes, device, batch), else a TypeError/ValueError."""
        if not isinstance(state, MambaState):
            raise TypeError(f"state must be a MambaState (from init_state or forward), got {type(state).__name__}")
        d, w = self.parts.dims, self.parts.mixers[0].in_proj.weight
        if state.num_layers != self.parts.num_layers:
            raise ValueError(f"state has {state.num_layers} layers, the model {self.parts.num_layers}")
        B = state.batch_size if batch_size is None else batch_size
        for i, (c, s) in enumerate(zip(state.conv, state.ssm, strict=True)):
            if c.shape != (B, d.d_inner, d.d_conv - 1) or s.shape != (B, d.d_inner, d.d_state):
                raise ValueError(
                    f"state layer {i}: conv must be [{B}, {d.d_inner}, {d.d_conv - 1}] and ssm [{B}, {d.d_inner}, "
                    f"{d.d_state}] (batch {B}); got {tuple(c.shape)} and {tuple(s.shape)}"
                )
            if c.dtype != w.dtype:
                raise TypeError(f"state layer {i}: conv must have the model's dtype {w.dtype}, got {c.dtype}")
            if c.device != w.device or s.device != w.device:
                raise ValueError(
                    f"state layer {i} is on {c.device}/{s.device}, the model on {w.device}; use state.to(device)"
                )
        return state

    def step(
        self, input_ids: torch.Tensor, state: MambaState, *, logits: Logits = "none"
    ) -> tuple[torch.Tensor | None, MambaState]:
        """One chunk ``input_ids [B, T]`` (any T >= 1, not split further) from ``state``.

        Returns:
            ``(logits [B, T or 1, V] float32 or None, new state)``; ``state`` is not modified.
        """
        hidden, state = forward_chunk(self.parts, state, input_ids, keep=_logits_arg(logits), backend=self.backend)
        return self._head(hidden), state

    def _head(self, hidden: torch.Tensor | None) -> torch.Tensor | None:
        return None if hidden is None else self.parts.lm_head(hidden.to(self.parts.lm_head.weight.dtype)).float()

    def forward(
        self, input_ids: torch.Tensor, state: MambaState | None = None, *, logits: Logits = "all"
    ) -> tuple[torch.Tensor | None, MambaState]:
        """``input_ids [B, N]`` in chunks of ``chunk_size``, from ``state`` (default zeros).

        Args:
            input_ids: ``[B, N]`` token ids, ``N >= 1``.
            state: the state after earlier tokens (a :class:`MambaState` of batch B), or None.
            logits: ``"all"`` (``[B, N, V]``), ``"last"`` (``[B, 1, V]``) or ``"none"``.

        Returns:
            ``(logits float32 or None, state after the last token)``.
        """
        self.refresh()
        return self._forward(input_ids, state, logits)

    def _forward(
        self, input_ids: torch.Tensor, state: MambaState | None, logits: Logits
    ) -> tuple[torch.Tensor | None, MambaState]:
        """:meth:`forward` without :meth:`refresh`."""
        input_ids = check_input_ids(input_ids)
        _logits_arg(logits)
        B = input_ids.shape[0]
        self._check_ids(input_ids)
        state = self.init_state(B, input_ids.device) if state is None else self.check_state(state, B)
        hidden, state = forward_chunked(
            self.parts, state, input_ids, chunk_size=self.chunk_size, keep_last=_KEEP_LAST[logits], backend=self.backend
        )
        return self._head(hidden), state

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int = 10,
        eos_token_id: int | None = 0,
        state: MambaState | None = None,
    ) -> torch.Tensor:
        """Greedy decoding after ``input_ids`` (continuing from ``state``), one token per step from the state.

        Equals transformers' ``generate(input_ids, do_sample=False, max_new_tokens, eos_token_id,
        pad_token_id=eos_token_id)`` on the whole prompt (the context behind ``state`` included).

        Args:
            input_ids: ``[B, N]`` the prompt (or its tail after ``state``), ``N >= 1``.
            max_new_tokens: at most this many tokens.
            eos_token_id: a row stops at it and is padded with it; decoding stops when every row has. None: no
                end token.
            state: the state before ``input_ids``; None for the start of a sequence.

        Returns:
            ``[B, <= max_new_tokens]`` int64, the new tokens only.
        """
        self.refresh()
        return self._generate(input_ids, max_new_tokens, eos_token_id, state)

    def _generate(
        self, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id: int | None, state: MambaState | None
    ) -> torch.Tensor:
        """:meth:`generate` without :meth:`refresh` (the streaming engine refreshes once per call of its own)."""
        check_positive("max_new_tokens", max_new_tokens)
        logits, st = self._forward(input_ids, state, "last")
        box = {"logits": logits[:, -1], "state": st}

        def next_logits(generated: torch.Tensor) -> torch.Tensor:
            if generated.shape[1]:
                out, box["state"] = self.step(generated[:, -1:], box["state"], logits="last")
                box["logits"] = out[:, -1]
            return box["logits"]

        return greedy_loop(next_logits, input_ids.shape[0], input_ids.device, max_new_tokens, eos_token_id)

    def _check_ids(self, input_ids: torch.Tensor) -> None:
        if input_ids.device.type == "cpu":
            check_token_range(input_ids, self.vocab_size, "token ids")

    def extra_repr(self) -> str:
        d = self.parts.dims
        return (
            f"{self.parts.library}, layers={self.parts.num_layers}, d_model={d.d_model}, d_inner={d.d_inner}, "
            f"d_state={d.d_state}, d_conv={d.d_conv}, chunk_size={self.chunk_size}, backend={self.backend!r}"
        )


def _checked_parts(model: nn.Module) -> MambaParts:
    """:func:`mamba_parts` of ``model``; TypeError without an LM head, ValueError where the chunked forward would
    skip a hook, an adapter or a subclass's own forward."""
    parts = mamba_parts(model)
    if parts.lm_head is None:
        raise TypeError(f"MambaLM needs a model with an LM head (MambaForCausalLM), got {type(model).__name__}")
    why = (_skipped_wrapper(model, "the model") or _skipped_wrapper(model.backbone, "the backbone")
           or wrapped_mixers(parts))
    if why:
        raise ValueError(
            f"MambaLM reads the mixers' weights directly, so it would skip this: {why}; merge adapters into the "
            "weights first (peft: merge_and_unload()), remove the hooks, or load the weights into the stock classes"
        )
    return parts


def _skipped_wrapper(module: nn.Module, name: str) -> str | None:
    """Why ``module`` (the LM or its backbone, never called: MambaLM runs their parts) would lose something: a
    subclass's own forward, hooks, or a replaced instance forward; None if nothing."""
    return custom_forward(module, name) or hooked_or_replaced(module, name)


def _logits_arg(logits: object) -> slice | None:
    if logits not in _KEEP:
        raise ValueError(f"logits must be 'none', 'last' or 'all', got {logits!r}")
    return _KEEP[logits]
