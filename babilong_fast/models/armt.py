"""ARMT (associative recurrent memory transformer) on a GPT-2 backbone, with an explicit state.

The math is ARMT-HEAD's as specified in armt_rmt.md 2.3-2.10: every segment is ``[wte(x); P]`` with the
default positions; before block ``l`` every row reads ``h += (q A_l) / (q z_l + eps)`` (skipped while the
memory is empty); after block ``l`` the ``M`` memory rows write ``(A_l, z_l)`` with
:func:`babilong_fast.ops.assoc_write`. The backbone is used unchanged: the read and write run in forward
hooks that exist only for the duration of one :meth:`ARMT.segment_forward` call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from babilong_fast.backends import Backend
from babilong_fast.models._common import (
    check_backbone,
    check_input_ids,
    check_mask,
    check_positive,
    greedy_loop,
    lm_loss,
    segment_bounds,
)
from babilong_fast.models.state import ARMTState
from babilong_fast.ops.assoc_read import assoc_read
from babilong_fast.ops.assoc_write import assoc_write

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel

EPS = 1e-5


class ARMTLayerMemory(nn.Module):
    """One layer's associative-memory projections: ``W_q``, ``W_k`` (``d -> d_mem``), ``W_v`` (``d -> d``), ``W_b``.

    ``W_q``, ``W_k`` and ``W_b`` keep ``nn.Linear``'s default initialisation; ``W_v`` starts at zero (ARMT-HEAD).
    """

    def __init__(self, d_model: int, d_mem: int, *, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.W_q = nn.Linear(d_model, d_mem, bias=False, **kw)
        self.W_k = nn.Linear(d_model, d_mem, bias=False, **kw)
        self.W_v = nn.Linear(d_model, d_model, bias=False, **kw)
        self.W_b = nn.Linear(d_model, 1, bias=True, **kw)
        nn.init.zeros_(self.W_v.weight)


class ARMT(nn.Module):
    """Associative recurrent memory transformer around a ``GPT2LMHeadModel``.

    Args:
        backbone: a ``transformers.GPT2LMHeadModel``; used unchanged (its parameters are trained with the rest).
        num_mem_tokens: ``M``, the memory tokens appended to every segment (default 10).
        d_mem: query/key projection width (default 64); the feature size is ``F = 2 * nu * d_mem``.
        nu: DPFP order (default 3).
        correction: the ``gamma`` correction of the ``z`` update (default True, as ARMT-HEAD).
        segment_size: tokens per segment in :meth:`forward` and :meth:`generate` (default 512).
        backend: backend of the associative read (see :func:`babilong_fast.ops.assoc_read`).

    Examples::
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=100))
        >>> model = ARMT(gpt2, num_mem_tokens=4, d_mem=8, segment_size=16)
        >>> ids = torch.randint(0, 100, (2, 40))
        >>> out = model(ids, labels_mask=torch.ones_like(ids, dtype=torch.bool))
        >>> out["logits"].shape, model.generate(ids, max_new_tokens=3, eos_token_id=99).shape[0]
        (torch.Size([2, 40, 100]), 2)
    """

    def __init__(
        self,
        backbone: GPT2LMHeadModel,
        num_mem_tokens: int = 10,
        d_mem: int = 64,
        nu: int = 3,
        correction: bool = True,
        segment_size: int = 512,
        backend: Backend = "auto",
    ):
        super().__init__()
        self.backbone = check_backbone(backbone)
        self.num_mem_tokens = check_positive("num_mem_tokens", num_mem_tokens)
        self.d_mem = check_positive("d_mem", d_mem)
        self.nu = check_positive("nu", nu)
        self.segment_size = check_positive("segment_size", segment_size)
        self.correction = bool(correction)
        self.backend = backend
        wte = backbone.transformer.wte.weight
        self.d_model = wte.shape[1]
        self.n_positions = backbone.transformer.wpe.weight.shape[0]
        if segment_size + num_mem_tokens > self.n_positions:
            raise ValueError(
                f"segment_size + num_mem_tokens = {segment_size + num_mem_tokens} exceeds the backbone's "
                f"{self.n_positions} positions"
            )
        kw = {"device": wte.device, "dtype": wte.dtype}
        self.memory = nn.Parameter(torch.randn(num_mem_tokens, self.d_model, **kw) * wte.detach().float().std())
        self.layers = nn.ModuleList(
            ARMTLayerMemory(self.d_model, d_mem, **kw) for _ in range(len(backbone.transformer.h))
        )

    @property
    def num_features(self) -> int:
        return 2 * self.nu * self.d_mem

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> ARMTState:
        """Empty memory (zeros, float32) for ``batch_size`` samples on ``device`` (default: the model's)."""
        check_positive("batch_size", batch_size)
        device = self.memory.device if device is None else device
        return ARMTState.zeros(len(self.layers), batch_size, self.num_features, self.d_model, device)

    def _check_state(self, state: object, batch_size: int) -> ARMTState:
        if not isinstance(state, ARMTState):
            raise TypeError(f"state must be an ARMTState (see init_state), got {type(state).__name__}")
        if state.num_layers != len(self.layers):
            raise ValueError(f"state has {state.num_layers} layers, the model {len(self.layers)}")
        want = (self.num_features, self.d_model)
        if state.A[0].shape[1:] != want or state.batch_size not in (1, batch_size):
            raise ValueError(
                f"state A must be [{batch_size} or 1, {want[0]}, {want[1]}], got {tuple(state.A[0].shape)}"
            )
        return state

    def segment_forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        state: ARMTState,
        *,
        write: bool = True,
        return_logits: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor, ARMTState]:
        """Run one segment: read from ``state`` before every block, write the memory rows after it.

        With ``write=False`` the memory tokens are left out (they come last, so causal attention makes
        them invisible to the segment's tokens) and ``state`` is returned as is: ARMT's generation mode.

        Args:
            input_ids: ``[B, L]`` token ids, ``L + M <= n_positions``.
            attention_mask: ``[B, L]`` padding mask or None; memory rows are always visible.
            state: the memory after the previous segments (:meth:`init_state` for the first).
            write: append the memory tokens and update the state.
            return_logits: compute ``lm_head`` on the segment's rows.

        Returns:
            ``(logits [B, L, V] or None, hidden [B, L, d] (after ln_f), new_state)``.
        """
        input_ids = check_input_ids(input_ids)
        attention_mask = check_mask(attention_mask, input_ids, "attention_mask")
        B, L = input_ids.shape
        state = self._check_state(state, B)
        M = self.num_mem_tokens
        tr = self.backbone.transformer
        emb = tr.wte(input_ids)
        if write:
            emb = torch.cat([emb, self.memory.to(emb.dtype).unsqueeze(0).expand(B, -1, -1)], 1)
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, M)], 1)
        T = emb.shape[1]
        if T > self.n_positions:
            raise ValueError(
                f"segment of {L} tokens{f' + {M} memory tokens' if write else ''} exceeds the "
                f"backbone's {self.n_positions} positions"
            )
        read = state.segments_seen > 0
        first = state.segments_seen == 0
        new_A, new_z = list(state.A), list(state.z)

        def pre_hook(i):
            mem = self.layers[i]

            def hook(module, args, kwargs):
                h = args[0] if args else kwargs["hidden_states"]
                h = assoc_read(
                    h.contiguous(), mem.W_q.weight, state.A[i], state.z[i], nu=self.nu, eps=EPS, backend=self.backend
                )
                if args:
                    return (h, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": h}

            return hook

        def post_hook(i):
            mem = self.layers[i]

            def hook(module, args, kwargs, output):
                h = output[0] if isinstance(output, tuple) else output
                new_A[i], new_z[i] = assoc_write(
                    h[:, L : L + M].contiguous(),
                    mem.W_k.weight,
                    mem.W_v.weight,
                    mem.W_b.weight,
                    mem.W_b.bias,
                    state.A[i],
                    state.z[i],
                    nu=self.nu,
                    eps=EPS,
                    correction=self.correction,
                    first_segment=first,
                )

            return hook

        handles = []
        try:
            for i, block in enumerate(tr.h):
                if read:
                    handles.append(block.register_forward_pre_hook(pre_hook(i), with_kwargs=True))
                if write:
                    handles.append(block.register_forward_hook(post_hook(i), with_kwargs=True))
            positions = torch.arange(T, device=emb.device).unsqueeze(0)
            out = tr(inputs_embeds=emb, attention_mask=attention_mask, position_ids=positions, use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        hidden = out[0][:, :L]
        logits = self.backbone.lm_head(hidden) if return_logits else None
        new_state = ARMTState(new_A, new_z, state.segments_seen + 1) if write else state
        return logits, hidden, new_state

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | ARMTState]:
        """Teacher-forced pass over left-aligned segments with full BPTT (nothing detached but ``gamma``).

        Args:
            input_ids: ``[B, N]`` token ids (samples of equal length; pad them and pass ``attention_mask``).
            attention_mask: ``[B, N]`` or None.
            labels_mask: ``[B, N]`` bool or None: the loss scores ``logits[:, t]`` against ``input_ids[:, t+1]``
                where ``labels_mask[:, t]`` (all positions when None), as in BABILong fine-tuning.

        Returns:
            ``{"loss": scalar, "logits": [B, N, V], "state": ARMTState}`` (the memory after the last segment).
        """
        input_ids = check_input_ids(input_ids)
        attention_mask = check_mask(attention_mask, input_ids, "attention_mask")
        labels_mask = check_mask(labels_mask, input_ids, "labels_mask")
        state = self.init_state(input_ids.shape[0], input_ids.device)
        logits = []
        for a, b in segment_bounds(input_ids.shape[1], self.segment_size):
            seg_mask = None if attention_mask is None else attention_mask[:, a:b]
            seg_logits, _, state = self.segment_forward(input_ids[:, a:b], seg_mask, state)
            logits.append(seg_logits)
        logits = torch.cat(logits, 1)
        return {"loss": lm_loss(logits, input_ids, labels_mask), "logits": logits, "state": state}

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 10, eos_token_id: int = 50256) -> torch.Tensor:
        """Greedy decoding as ARMT's ``generate`` (armt_rmt.md 2.8).

        All segments but the last are written to memory; the last one, followed by the tokens generated so
        far, runs without memory tokens and without writes, reading the memory at every row (no reads if the
        whole input is one segment). Each step re-runs that suffix (no KV cache).

        Args:
            input_ids: ``[B, N]`` prompt ids (equal lengths, no padding).
            max_new_tokens: at most this many tokens are generated.
            eos_token_id: a row stops at this token and is padded with it; decoding stops when all rows have it.

        Returns:
            ``[B, <= max_new_tokens]`` the new tokens only.
        """
        input_ids = check_input_ids(input_ids)
        bounds = segment_bounds(input_ids.shape[1], self.segment_size)
        a, b = bounds[-1]
        self._check_decode_fits(b - a, max_new_tokens)
        state = self.init_state(input_ids.shape[0], input_ids.device)
        for s, e in bounds[:-1]:
            _, _, state = self.segment_forward(input_ids[:, s:e], None, state, return_logits=False)
        return self.generate_from_state(input_ids[:, a:b], state, max_new_tokens, eos_token_id)

    def _check_decode_fits(self, last_len: int, max_new_tokens: int) -> None:
        check_positive("max_new_tokens", max_new_tokens)
        if last_len + max_new_tokens - 1 > self.n_positions:
            raise ValueError(
                f"the last segment ({last_len} tokens) plus {max_new_tokens - 1} generated tokens exceeds the "
                f"backbone's {self.n_positions} positions"
            )

    @torch.no_grad()
    def generate_from_state(
        self, last_ids: torch.Tensor, state: ARMTState, max_new_tokens: int = 10, eos_token_id: int = 50256
    ) -> torch.Tensor:
        """The decoding half of :meth:`generate`: greedy tokens after the final segment ``last_ids``.

        ``state`` is the memory after every earlier segment (written with :meth:`segment_forward`); the
        last segment and the tokens generated so far run with ``write=False``. Used by streaming inference
        (:class:`babilong_fast.engine.StreamRunner`), which builds ``state`` without the whole input.

        Args:
            last_ids: ``[B, L]`` the final segment, ``1 <= L <= segment_size``.
            state: the memory before it.
            max_new_tokens, eos_token_id: as in :meth:`generate`.

        Returns:
            ``[B, <= max_new_tokens]`` the new tokens only.
        """
        last = check_input_ids(last_ids, "last_ids")
        self._check_decode_fits(last.shape[1], max_new_tokens)
        state = self._check_state(state, last.shape[0])

        def step(generated: torch.Tensor) -> torch.Tensor:
            ids = torch.cat([last, generated], 1)
            _, hidden, _ = self.segment_forward(ids, None, state, write=False, return_logits=False)
            return self.backbone.lm_head(hidden[:, -1])

        return greedy_loop(step, last.shape[0], last.device, max_new_tokens, eos_token_id)

    def extra_repr(self) -> str:
        return (
            f"num_mem_tokens={self.num_mem_tokens}, d_mem={self.d_mem}, nu={self.nu}, correction={self.correction}, "
            f"segment_size={self.segment_size}, backend={self.backend!r}"
        )
