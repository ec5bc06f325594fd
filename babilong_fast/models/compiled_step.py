"""The steady-state streaming step of RMT and ARMT as one pure tensor function, for ``torch.compile``.

:func:`rmt_step_math` and :func:`armt_step_math` compute what :func:`~babilong_fast.models.stream_step.stream_step`
computes after the first segment, written without ``out=`` buffers, host syncs or backend dispatch: the block
input by :func:`~babilong_fast.ops.segment_io.segment_embed_rows` (the segment_embed reference's sums, NaN
rows for bad ids included), GPT-2 blocks by :func:`~babilong_fast.models.gpt2_block.gpt2_block_infer`, RMT's
``ln_f`` on the write rows by ``rows_layer_norm_ref``, and the associative read and write by their torch
references. ``torch.compile`` then traces it whole (no graph break) and fuses the
elementwise chains around the GEMMs: the bias, GELU, residual and layer-norm kernels of each block and the
dozens of small kernels of ARMT's read and write. :class:`CompiledStep` calls it for full segments and runs
``stream_step`` for the rest (the first segment, a short last one, training, unsupported blocks).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from babilong_fast.models.armt import EPS, ARMT
from babilong_fast.models.gpt2_block import gpt2_block_infer, lean_block_unsupported
from babilong_fast.models.rmt import RMT
from babilong_fast.models.state import ARMTState, RMTState
from babilong_fast.models.stream_step import SegmentWorkspace, fast_step_unsupported, stream_step
from babilong_fast.ops.assoc_read import assoc_read_ref
from babilong_fast.ops.assoc_write import assoc_write_ref
from babilong_fast.ops.segment_io import rows_layer_norm_ref, segment_embed_rows


def rmt_step_math(model: RMT, ids: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """RMT's next memory ``[B, M, d]`` float32 from ``ids [B, L]`` and the memory ``[B, M, d]``."""
    tr, M, L = model.backbone.transformer, model.num_mem_tokens, ids.shape[1]
    h = segment_embed_rows(ids, tr.wte.weight, tr.wpe.weight, memory, memory)
    for block in tr.h:
        h = gpt2_block_infer(block, h)
    ln = tr.ln_f
    return rows_layer_norm_ref(h, M + L, M, ln.weight, ln.bias, ln.eps)


def armt_step_math(
    model: ARMT, ids: torch.Tensor, A: list[torch.Tensor], z: list[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """ARMT after its first segment: per block the read, the block, the write; the new ``(A, z)`` per layer."""
    tr, M, L = model.backbone.transformer, model.num_mem_tokens, ids.shape[1]
    h = segment_embed_rows(ids, tr.wte.weight, tr.wpe.weight, None, model.memory.unsqueeze(0))
    new_A, new_z = [], []
    for i, (block, p) in enumerate(zip(tr.h, model.layers, strict=True)):
        h = assoc_read_ref(h, p.W_q.weight, A[i], z[i], model.nu, EPS)
        h = gpt2_block_infer(block, h)
        a, b = assoc_write_ref(
            h[:, L : L + M], p.W_k.weight, p.W_v.weight, p.W_b.weight, p.W_b.bias, A[i], z[i],
            nu=model.nu, eps=EPS, correction=model.correction, first_segment=False,
        )
        new_A.append(a)
        new_z.append(b)
    return new_A, new_z


def compiled_step_unsupported(model: ARMT | RMT) -> str | None:
    """Why :class:`CompiledStep` runs ``stream_step`` instead for ``model`` now (None: it need not)."""
    why = fast_step_unsupported(model)
    if why is None:
        blocks = [lean_block_unsupported(b) for b in model.backbone.transformer.h]
        why = next((f"GPT-2 block: {w}" for w in blocks if w is not None), None)
    return why


class CompiledStep:
    """``stream_step`` with full segments after the first one run by a ``torch.compile``-d step math.

    Args:
        model: an :class:`~babilong_fast.models.ARMT` or :class:`~babilong_fast.models.RMT`.
        workspace: the buffers of the eager steps.
        compile_fn: the compiler (default ``torch.compile(fn, dynamic=False, fullgraph=True)``).

    The compiled function is made on the first full segment after the first one (compiling takes tens of
    seconds) and recompiles for a new batch size. ``compiled_calls`` counts the segments it ran.
    """

    def __init__(
        self, model: ARMT | RMT, workspace: SegmentWorkspace, compile_fn: Callable[[Callable], Callable] | None = None
    ) -> None:
        if not isinstance(model, (ARMT, RMT)):
            raise TypeError(f"CompiledStep runs ARMT or RMT, got {type(model).__name__}")
        self.model = model
        self.workspace = workspace
        self._compile = compile_fn or (lambda fn: torch.compile(fn, dynamic=False, fullgraph=True))
        self._fn: Callable | None = None
        self.compiled_calls = 0

    def _math(self, ids: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if isinstance(self.model, RMT):
            return (rmt_step_math(self.model, ids, tensors[0]),)
        n = len(tensors) // 2
        A, z = armt_step_math(self.model, ids, list(tensors[:n]), list(tensors[n:]))
        return (*A, *z)

    def __call__(self, ids: torch.Tensor, state: ARMTState | RMTState) -> ARMTState | RMTState:
        model = self.model
        if (
            state.segments_seen == 0
            or ids.dim() != 2
            or ids.shape[1] != model.segment_size
            or ids.dtype != torch.int64
            or compiled_step_unsupported(model) is not None
        ):
            return stream_step(model, ids, state, self.workspace)
        state = model._check_state(state, ids.shape[0])
        if self._fn is None:
            self._fn = self._compile(self._math)
        self.compiled_calls += 1
        if isinstance(state, RMTState):
            memory = state.memory.expand(ids.shape[0], -1, -1).contiguous()
            return RMTState(self._fn(ids.contiguous(), memory)[0], state.segments_seen + 1)
        out = self._fn(ids.contiguous(), *state.A, *state.z)
        n = len(state.A)
        return ARMTState(list(out[:n]), list(out[n:]), state.segments_seen + 1)
