"""The steady-state streaming step of RMT and ARMT as pure tensor functions, for ``torch.compile``.

:func:`rmt_step_math` and :func:`armt_step_math` compute what :func:`~babilong_fast.models.stream_step.stream_step`
computes after the first segment, written without ``out=`` buffers, host syncs or backend dispatch, from the
pieces in :class:`StepParts`: the block input by :func:`~babilong_fast.ops.segment_io.segment_embed_rows` (the
segment_embed reference's sums, NaN rows for bad ids included), GPT-2 blocks by
:func:`~babilong_fast.models.gpt2_block.gpt2_block_infer`, ARMT's layer (associative read, block, write by the
torch references) by :func:`armt_layer_math`, RMT's ``ln_f`` on the write rows by ``rows_layer_norm_ref``.
``torch.compile`` traces each piece whole (no graph break) and fuses the elementwise chains around the GEMMs:
the bias, GELU, residual and layer-norm kernels of each block and the dozens of small kernels of ARMT's read
and write. :class:`CompiledStep` runs them for full segments and ``stream_step`` for the rest (the first
segment, a short last one, training, unsupported blocks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from babilong_fast.models.armt import EPS, ARMT
from babilong_fast.models.gpt2_block import gpt2_block_infer, lean_block_unsupported
from babilong_fast.models.rmt import RMT
from babilong_fast.models.state import ARMTState, RMTState
from babilong_fast.models.stream_step import SegmentWorkspace, fast_step_unsupported, stream_step
from babilong_fast.ops.assoc_read import assoc_read_ref
from babilong_fast.ops.assoc_write import assoc_write_ref
from babilong_fast.ops.segment_io import rows_layer_norm_ref, segment_embed_rows


def lean_block(block: torch.nn.Module, h: torch.Tensor, last: int | None = None) -> torch.Tensor:
    """One GPT-2 block ``[B, T, d] -> [B, T or last, d]`` by :func:`gpt2_block_infer` (the caller checked it
    applies); ``last``: only the output's last rows."""
    return gpt2_block_infer(block, h, check=False, last=last)


def armt_layer_math(
    block: torch.nn.Module, layer: torch.nn.Module, h: torch.Tensor, A: torch.Tensor, z: torch.Tensor,
    *, nu: int, correction: bool, L: int, M: int, last_layer: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One ARMT layer after the first segment: the read, the block, the write from rows ``[L, L + M)``.

    ``h`` ``[B, L + M, d]``, ``A`` ``[B, F, d]`` and ``z`` ``[B, F]`` float32; returns ``(h, A, z)`` new.
    ``last_layer``: the block computes the memory rows only (nothing after it reads the others); ``h`` is then
    those ``[B, M, d]``.
    """
    h = assoc_read_ref(h, layer.W_q.weight, A, z, nu, EPS)
    h = lean_block(block, h, M if last_layer else None)
    A, z = assoc_write_ref(
        h if last_layer else h[:, L : L + M], layer.W_k.weight, layer.W_v.weight, layer.W_b.weight, layer.W_b.bias,
        A, z, nu=nu, eps=EPS, correction=correction, first_segment=False,
    )
    return h, A, z


class StepParts(NamedTuple):
    """The step math's pieces: :class:`CompiledStep` hands in compiled ones (each traced once, the layer
    function's graph then serving every layer), the defaults run them as written."""

    embed: Callable = segment_embed_rows
    block: Callable = lean_block
    armt_layer: Callable = armt_layer_math
    rows_norm: Callable = rows_layer_norm_ref


def rmt_step_math(model: RMT, ids: torch.Tensor, memory: torch.Tensor, parts: StepParts = StepParts()) -> torch.Tensor:
    """RMT's next memory ``[B, M, d]`` float32 from ``ids [B, L]`` and the memory ``[B, M, d]``."""
    tr, M, L = model.backbone.transformer, model.num_mem_tokens, ids.shape[1]
    h = parts.embed(ids, tr.wte.weight, tr.wpe.weight, memory, memory)
    n = len(tr.h)
    for i, block in enumerate(tr.h):
        h = parts.block(block, h, M if i == n - 1 else None)  # the last block: the write rows only
    ln = tr.ln_f
    return parts.rows_norm(h, M + L if n == 0 else 0, M, ln.weight, ln.bias, ln.eps)


def armt_step_math(
    model: ARMT, ids: torch.Tensor, A: list[torch.Tensor], z: list[torch.Tensor], parts: StepParts = StepParts()
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """ARMT after its first segment: per layer the read, the block, the write; the new ``(A, z)`` per layer."""
    tr, M, L = model.backbone.transformer, model.num_mem_tokens, ids.shape[1]
    h = parts.embed(ids, tr.wte.weight, tr.wpe.weight, None, model.memory.unsqueeze(0))
    new_A, new_z = [], []
    n = len(tr.h)
    for i, (block, layer) in enumerate(zip(tr.h, model.layers, strict=True)):
        h, a, b = parts.armt_layer(
            block, layer, h, A[i], z[i], nu=model.nu, correction=model.correction, L=L, M=M, last_layer=i == n - 1
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
    """``stream_step`` with full segments after the first one run by the ``torch.compile``-d step math.

    Args:
        model: an :class:`~babilong_fast.models.ARMT` or :class:`~babilong_fast.models.RMT`.
        workspace: the buffers of the eager steps.
        compile_fn: the compiler (default ``torch.compile(fn, dynamic=False, fullgraph=True)``).
        regional: compile each of :class:`StepParts` on its own (default): the layer function is traced once and
            its graph serves every layer, so compiling costs about one layer's work instead of the whole depth's
            (12-layer tiny GPT-2 on a 2-core CPU, cold: RMT 40 s -> 21 s, ARMT 73 s -> 22 s). The calls between
            the parts cost Python time on each step (about 0.5 ms on that CPU), nothing when a CUDA graph replays
            the step. ``regional=False`` compiles the whole step as one graph: the fastest eager steps.

    Compiling happens on the first full segment after the first one; a new batch size recompiles.
    ``compiled_calls`` counts the segments run by the compiled math.
    """

    def __init__(
        self, model: ARMT | RMT, workspace: SegmentWorkspace, compile_fn: Callable[[Callable], Callable] | None = None,
        *, regional: bool = True,
    ) -> None:
        if not isinstance(model, (ARMT, RMT)):
            raise TypeError(f"CompiledStep runs ARMT or RMT, got {type(model).__name__}")
        self.model = model
        self.workspace = workspace
        self.regional = regional
        self._compile = compile_fn or (lambda fn: torch.compile(fn, dynamic=False, fullgraph=True))
        self._fn: Callable | None = None
        self.compiled_calls = 0

    def _math(
        self, ids: torch.Tensor, *tensors: torch.Tensor, parts: StepParts = StepParts()
    ) -> tuple[torch.Tensor, ...]:
        """The step math on flat tensors: RMT ``(memory,) -> (memory,)``, ARMT ``(*A, *z) -> (*A, *z)``."""
        if isinstance(self.model, RMT):
            return (rmt_step_math(self.model, ids, tensors[0], parts),)
        n = len(tensors) // 2
        A, z = armt_step_math(self.model, ids, list(tensors[:n]), list(tensors[n:]), parts)
        return (*A, *z)

    def _make(self) -> Callable:
        if not self.regional:
            return self._compile(self._math)
        parts = StepParts(*(self._compile(fn) for fn in StepParts()))
        return lambda ids, *tensors: self._math(ids, *tensors, parts=parts)

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
            self._fn = self._make()
        self.compiled_calls += 1
        if isinstance(state, RMTState):
            memory = state.memory.expand(ids.shape[0], -1, -1).contiguous()
            return RMTState(self._fn(ids.contiguous(), memory)[0], state.segments_seen + 1)
        out = self._fn(ids.contiguous(), *state.A, *state.z)
        n = len(state.A)
        return ARMTState(list(out[:n]), list(out[n:]), state.segments_seen + 1)
