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

import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch

from babilong_fast.models.armt import ARMT, EPS
from babilong_fast.models.gpt2_block import attention_scale, gpt2_block_infer, lean_block_unsupported
from babilong_fast.models.rmt import RMT
from babilong_fast.models.state import ARMTState, RMTState
from babilong_fast.models.stream_step import SegmentWorkspace, fast_step_unsupported, stream_step
from babilong_fast.ops.assoc_read import assoc_read_ref
from babilong_fast.ops.assoc_write import assoc_write_ref
from babilong_fast.ops.segment_io import rows_layer_norm_ref, segment_embed_rows


def lean_block(block: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
    """One GPT-2 block ``[B, T, d] -> [B, T, d]`` by :func:`gpt2_block_infer` (the caller checked it applies)."""
    return gpt2_block_infer(block, h, check=False)


def lean_last_block(block: torch.nn.Module, h: torch.Tensor, rows: int) -> torch.Tensor:
    """The last block, for the last ``rows`` rows only: ``[B, T, d] -> [B, rows, d]``. A function of its own
    (not ``lean_block`` with an argument), so that dynamo keeps its graph apart from the other layers' and the
    two do not share one recompile limit."""
    return gpt2_block_infer(block, h, check=False, last=rows)


def _armt_write(
    layer: torch.nn.Module, rows: torch.Tensor, A: torch.Tensor, z: torch.Tensor, nu: int, correction: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    return assoc_write_ref(
        rows, layer.W_k.weight, layer.W_v.weight, layer.W_b.weight, layer.W_b.bias, A, z,
        nu=nu, eps=EPS, correction=correction, first_segment=False,
    )


def armt_layer_math(
    block: torch.nn.Module, layer: torch.nn.Module, h: torch.Tensor, A: torch.Tensor, z: torch.Tensor,
    *, nu: int, correction: bool, L: int, M: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One ARMT layer after the first segment: the read, the block, the write from rows ``[L, L + M)``.

    ``h`` ``[B, L + M, d]``, ``A`` ``[B, F, d]`` and ``z`` ``[B, F]`` float32; returns ``(h, A, z)`` new.
    """
    h = lean_block(block, assoc_read_ref(h, layer.W_q.weight, A, z, nu, EPS))
    return (h, *_armt_write(layer, h[:, L : L + M], A, z, nu, correction))


def armt_last_layer_math(
    block: torch.nn.Module, layer: torch.nn.Module, h: torch.Tensor, A: torch.Tensor, z: torch.Tensor,
    *, nu: int, correction: bool, L: int, M: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ARMT layer: the read, the block for the ``M`` memory rows only (nothing after it reads the
    others), the write; returns ``(A, z)`` new."""
    rows = lean_last_block(block, assoc_read_ref(h, layer.W_q.weight, A, z, nu, EPS), M)
    return _armt_write(layer, rows, A, z, nu, correction)


class StepParts(NamedTuple):
    """The step math's pieces: :class:`CompiledStep` hands in compiled ones (each traced on its own, the layer
    function's graph then serving every layer but the last), the defaults run them as written."""

    embed: Callable = segment_embed_rows
    block: Callable = lean_block
    last_block: Callable = lean_last_block
    armt_layer: Callable = armt_layer_math
    armt_last_layer: Callable = armt_last_layer_math
    rows_norm: Callable = rows_layer_norm_ref


EAGER_PARTS = StepParts()  # the pieces as written (a NamedTuple: immutable, so one shared default is safe)


def rmt_step_math(model: RMT, ids: torch.Tensor, memory: torch.Tensor, parts: StepParts = EAGER_PARTS) -> torch.Tensor:
    """RMT's next memory ``[B, M, d]`` float32 from ``ids [B, L]`` and the memory ``[B, M, d]``."""
    tr, M, L = model.backbone.transformer, model.num_mem_tokens, ids.shape[1]
    h = parts.embed(ids, tr.wte.weight, tr.wpe.weight, memory, memory)
    for block in tr.h[:-1]:
        h = parts.block(block, h)
    if len(tr.h):
        h = parts.last_block(tr.h[-1], h, M)  # the write rows only
    start = 0 if len(tr.h) else M + L  # with no block, h is still the whole input
    return parts.rows_norm(h, start, M, tr.ln_f.weight, tr.ln_f.bias, tr.ln_f.eps)


def armt_step_math(
    model: ARMT, ids: torch.Tensor, A: list[torch.Tensor], z: list[torch.Tensor], parts: StepParts = EAGER_PARTS
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """ARMT after its first segment: per layer the read, the block, the write; the new ``(A, z)`` per layer."""
    tr, M, L = model.backbone.transformer, model.num_mem_tokens, ids.shape[1]
    h = parts.embed(ids, tr.wte.weight, tr.wpe.weight, None, model.memory.unsqueeze(0))
    new_A, new_z = [], []
    n, kw = len(tr.h), dict(nu=model.nu, correction=model.correction, L=L, M=M)
    for i, (block, layer) in enumerate(zip(tr.h, model.layers, strict=True)):
        if i < n - 1:
            h, a, b = parts.armt_layer(block, layer, h, A[i], z[i], **kw)
        else:
            a, b = parts.armt_last_layer(block, layer, h, A[i], z[i], **kw)
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


# dynamo's error when a function's compiled graphs pass its recompile limit under fullgraph=True (both names
# across torch versions): the step then runs eagerly rather than fail the stream.
_RECOMPILE_LIMIT_ERRORS = ("FailOnRecompileLimitHit", "FailOnCacheLimitHit")


class CompiledStep:
    """``stream_step`` with full segments after the first one run by the ``torch.compile``-d step math.

    Args:
        model: an :class:`~babilong_fast.models.ARMT` or :class:`~babilong_fast.models.RMT`.
        workspace: the buffers of the eager steps.
        compile_fn: the compiler (default ``torch.compile(fn, dynamic=False, fullgraph=True)``).
        regional: compile each of :class:`StepParts` on its own (default): the layer function is traced once and
            its graph serves every layer but the last (which has its own), so compiling costs about two layers'
            work instead of the whole depth's (12-layer tiny GPT-2 on a 2-core CPU, cold: RMT 40 s -> 15 s, ARMT
            73 s -> 22 s). The calls between the parts cost Python time on each step (about 0.5 ms on that CPU),
            nothing when a CUDA graph replays the step. ``regional=False`` compiles the whole step as one graph:
            the fastest eager steps. Blocks whose attention scales differ by layer
            (``scale_attn_by_inverse_layer_idx``) would need a graph per layer: the whole step is compiled then.

    Compiling happens on the first full segment after the first one; a new batch size or dtype compiles again
    (dynamo keeps 8 graphs a function: past that, a warning and the eager step from then on).
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
        self.eager_reason: str | None = None  # set when compiling gave up (the recompile limit)
        self.compiled_calls = 0

    def _math(
        self, ids: torch.Tensor, *tensors: torch.Tensor, parts: StepParts = EAGER_PARTS
    ) -> tuple[torch.Tensor, ...]:
        """The step math on flat tensors: RMT ``(memory,) -> (memory,)``, ARMT ``(*A, *z) -> (*A, *z)``."""
        if isinstance(self.model, RMT):
            return (rmt_step_math(self.model, ids, tensors[0], parts),)
        n = len(tensors) // 2
        A, z = armt_step_math(self.model, ids, list(tensors[:n]), list(tensors[n:]), parts)
        return (*A, *z)

    def _make(self) -> Callable:
        if self.regional and len({attention_scale(b) for b in self.model.backbone.transformer.h}) > 1:
            self.regional = False  # one graph per layer otherwise (dynamo specialises on the scale)
        if not self.regional:
            return self._compile(self._math)
        parts = StepParts(*(self._compile(fn) for fn in StepParts()))
        return lambda ids, *tensors: self._math(ids, *tensors, parts=parts)

    def __call__(self, ids: torch.Tensor, state: ARMTState | RMTState) -> ARMTState | RMTState:
        model = self.model
        if (
            self.eager_reason is not None
            or state.segments_seen == 0
            or ids.dim() != 2
            or ids.shape[1] != model.segment_size
            or ids.dtype != torch.int64
            or compiled_step_unsupported(model) is not None
        ):
            return stream_step(model, ids, state, self.workspace)
        state = model._check_state(state, ids.shape[0], ids.device)
        if self._fn is None:
            self._fn = self._make()
        ids = ids.contiguous()
        try:
            if isinstance(state, RMTState):
                memory = state.memory.expand(ids.shape[0], -1, -1).contiguous()
                new: ARMTState | RMTState = RMTState(self._fn(ids, memory)[0], state.segments_seen + 1)
            else:
                out, n = self._fn(ids, *state.A, *state.z), len(state.A)
                new = ARMTState(list(out[:n]), list(out[n:]), state.segments_seen + 1)
        except Exception as e:  # noqa: BLE001 - only the recompile limit is handled; anything else re-raises
            if type(e).__name__ not in _RECOMPILE_LIMIT_ERRORS:
                raise
            self.eager_reason = f"torch.compile gave up: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            warnings.warn(f"CompiledStep: {self.eager_reason}; the eager step runs from now on", stacklevel=2)
            return stream_step(model, ids, state, self.workspace)
        self.compiled_calls += 1
        return new
