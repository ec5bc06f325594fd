"""ARMT (associative recurrent memory transformer) on a GPT-2 backbone, with an explicit state.

The math is ARMT-HEAD's as specified in docs/math.md §2: every segment is ``[wte(x); P]`` with the
default positions; before block ``l`` every row reads ``h += (q A_l) / (q z_l + eps)`` (skipped while the
memory is empty); after block ``l`` the ``M`` memory rows write ``(A_l, z_l)`` with
:func:`babilong_fast.ops.assoc_write`. The backbone is used unchanged: the read and write run in forward
hooks that exist only for the duration of one :meth:`ARMT.segment_forward` call (under the backbone's gradient
checkpointing, outside the checkpointed part: :mod:`babilong_fast.models.checkpointing`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from babilong_fast.backends import Backend, check_backend
from babilong_fast.models._common import (
    check_backbone,
    check_backbone_unhooked,
    check_input_ids,
    check_mask,
    check_positive,
    check_state_device,
    check_token_range,
)
from babilong_fast.models.checkpointing import hooks_outside_checkpoints
from babilong_fast.models.recurrent import RecurrentLM
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

    def __init__(
        self, d_model: int, d_mem: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.W_q = nn.Linear(d_model, d_mem, bias=False, **kw)
        self.W_k = nn.Linear(d_model, d_mem, bias=False, **kw)
        self.W_v = nn.Linear(d_model, d_model, bias=False, **kw)
        self.W_b = nn.Linear(d_model, 1, bias=True, **kw)
        nn.init.zeros_(self.W_v.weight)


class ARMT(RecurrentLM):
    """Associative recurrent memory transformer around a ``GPT2LMHeadModel``.

    Args:
        backbone: a ``transformers.GPT2LMHeadModel``; used unchanged (its parameters are trained with the rest).
        num_mem_tokens: ``M``, the memory tokens appended to every segment (default 10).
        d_mem: query/key projection width (default 64); the feature size is ``F = 2 * nu * d_mem``.
        nu: DPFP order (default 3).
        correction: the ``gamma`` correction of the ``z`` update (default True, as ARMT-HEAD).
        segment_size: tokens per segment in :meth:`forward` and :meth:`generate` (default 512).
        backend: backend of the associative read and write (:func:`babilong_fast.ops.assoc_read`, ``assoc_write``).

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

    @classmethod
    def from_reference(
        cls, reference: nn.Module, *, segment_size: int | None = None, copy: bool = False, backend: Backend = "auto"
    ) -> ARMT:
        """Our ARMT on the weights of a public ARMT (``AssociativeRecurrentWrapper`` or ``AssociativeMemoryCell``).

        The GPT-2 embeddings, blocks (the ``.layer`` inside each ``AssociativeLayerWrapper``), ``ln_f``,
        ``lm_head``, the memory tokens and ``W_mq, W_mk, W_mv, W_mb`` (as ``layers[l].W_q, W_k, W_v, W_b``) are
        the reference's own ``nn.Parameter`` objects; the reference model is not modified.
        ``num_mem_tokens``, ``d_mem``, ``nu``, ``correction`` and ``segment_size`` are read from it.

        Args:
            reference: the wrapper (``rmt_config['segment_size']`` gives the segment size) or the cell.
            segment_size: required for a cell; for a wrapper it must be None or equal the wrapper's.
            copy: deep-copy the weights instead of sharing them.
            backend: backend of the associative read and write (:func:`babilong_fast.ops.assoc_read`, ``assoc_write``).

        Raises:
            ReferenceModelError (a ValueError): wrap_pos on, segmentation not left-aligned, a feature map other
                than DPFP (d_key != 2 nu d_mem), the experimental multi-head ARMT, a backbone other than GPT-2.
            TypeError: not an ARMT reference object.
        """
        from babilong_fast.models.reference import armt_from_reference

        return armt_from_reference(cls, reference, segment_size=segment_size, copy=copy, backend=backend)

    @property
    def num_features(self) -> int:
        """``F = 2 * nu * d_mem``, the DPFP features: the rows of each layer's ``A`` and ``z``."""
        return 2 * self.nu * self.d_mem

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> ARMTState:
        """Empty memory (zeros, float32) for ``batch_size`` samples on ``device`` (default: the model's)."""
        check_positive("batch_size", batch_size)
        device = self.memory.device if device is None else device
        return ARMTState.zeros(len(self.layers), batch_size, self.num_features, self.d_model, device)

    def _check_state(self, state: object, batch_size: int, device: torch.device) -> ARMTState:
        if not isinstance(state, ARMTState):
            raise TypeError(f"state must be an ARMTState (see init_state), got {type(state).__name__}")
        check_state_device(state.A[0].device, device)
        check_backbone_unhooked("ARMT", self.backbone)
        if state.num_layers != len(self.layers):
            raise ValueError(f"state has {state.num_layers} layers, the model {len(self.layers)}")
        want = (self.num_features, self.d_model)
        if state.A[0].shape[1:] != want or state.batch_size not in (1, batch_size):
            raise ValueError(
                f"state A must be [{batch_size} or 1, {want[0]}, {want[1]}], got {tuple(state.A[0].shape)}"
            )
        return state

    def read_layer(self, i: int, h: torch.Tensor, state: ARMTState) -> torch.Tensor:
        """Layer ``i``'s associative read before its block: ``[B, T, d] -> [B, T, d]``."""
        W_q = self.layers[i].W_q.weight
        return assoc_read(h.contiguous(), W_q, state.A[i], state.z[i], nu=self.nu, eps=EPS, backend=self.backend)

    def write_layer(
        self, i: int, mem_rows: torch.Tensor, state: ARMTState, first: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``i``'s write from its block's output at the memory rows ``[B, M, d]``: the new ``(A, z)``."""
        p = self.layers[i]
        return assoc_write(
            mem_rows.contiguous(), p.W_k.weight, p.W_v.weight, p.W_b.weight, p.W_b.bias, state.A[i], state.z[i],
            nu=self.nu, eps=EPS, correction=self.correction, first_segment=first, backend=self.backend,
        )

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
            def hook(module, args, kwargs):
                h = self.read_layer(i, args[0] if args else kwargs["hidden_states"], state)
                if args:
                    return (h, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": h}

            return hook

        def post_hook(i):
            def hook(module, args, kwargs, output):
                h = output[0] if isinstance(output, tuple) else output
                new_A[i], new_z[i] = self.write_layer(i, h[:, L : L + M], state, first)

            return hook

        handles = []
        try:
            for i, block in enumerate(tr.h):
                if read:
                    handles.append(block.register_forward_pre_hook(pre_hook(i), with_kwargs=True))
                if write:
                    handles.append(block.register_forward_hook(post_hook(i), with_kwargs=True))
            positions = torch.arange(T, device=emb.device).unsqueeze(0)
            with hooks_outside_checkpoints(tr):
                out = tr(inputs_embeds=emb, attention_mask=attention_mask, position_ids=positions, use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        hidden = out[0][:, :L]
        logits = self.backbone.lm_head(hidden) if return_logits else None
        new_state = ARMTState(new_A, new_z, state.segments_seen + 1) if write else state
        return logits, hidden, new_state

    @property
    def backend(self) -> Backend:
        """Backend of the memory ops (``"auto"``, ``"cuda"``, ``"triton"`` or ``"torch"``); checked when set."""
        return self._backend

    @backend.setter
    def backend(self, value: Backend) -> None:
        self._backend = check_backend(value)

    def extra_repr(self) -> str:
        return (
            f"num_mem_tokens={self.num_mem_tokens}, d_mem={self.d_mem}, nu={self.nu}, correction={self.correction}, "
            f"segment_size={self.segment_size}, backend={self.backend!r}"
        )
