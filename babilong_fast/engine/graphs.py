"""CUDA-graph replay of the streaming step: capture ``adapter.step`` once, replay it for every later segment.

A segment step has static shapes (``[B, segment_size]`` ids in one reused buffer, a state of fixed shapes),
so its hundreds of kernel launches can be recorded once and replayed with one launch. The state is a
frozen dataclass of tensors (or tuples of tensors) and int counters; :class:`GraphedStep` keeps static
input copies of its tensors, copies each new state into them, replays, and returns a state whose tensors
are the graph's static outputs and whose counters advance by what the captured step added. The first
segments run eagerly (``warmup``), so that a model's first-segment rule (ARMT: no read, no correction) is
never what gets recorded.

Returned states alias the graph's outputs until the next replay; :class:`~babilong_fast.engine.StreamRunner`
clones the state it hands back.
"""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import torch

Step = Callable[[torch.Tensor, Any], Any]


def state_tensors(state: Any) -> list[torch.Tensor]:
    """The tensor leaves of a state dataclass, in field order (tuples/lists of tensors flattened)."""
    out: list[torch.Tensor] = []
    for f in dataclasses.fields(state):
        v = getattr(state, f.name)
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, (tuple, list)) and v and all(isinstance(t, torch.Tensor) for t in v):
            out.extend(v)
    return out


def state_counters(state: Any) -> dict[str, int]:
    """The int fields of a state dataclass (``segments_seen``, ``num_tokens``)."""
    return {
        f.name: getattr(state, f.name)
        for f in dataclasses.fields(state)
        if isinstance(getattr(state, f.name), int) and not isinstance(getattr(state, f.name), bool)
    }


def rebuild_state(template: Any, tensors: list[torch.Tensor], counters: dict[str, int]) -> Any:
    """A state like ``template`` with its tensor leaves replaced by ``tensors`` and its ints by ``counters``."""
    it = iter(tensors)
    values = {}
    for f in dataclasses.fields(template):
        v = getattr(template, f.name)
        if isinstance(v, torch.Tensor):
            values[f.name] = next(it)
        elif isinstance(v, (tuple, list)) and v and all(isinstance(t, torch.Tensor) for t in v):
            values[f.name] = type(v)(next(it) for _ in v)
        elif f.name in counters:
            values[f.name] = counters[f.name]
        else:
            values[f.name] = v
    return dataclasses.replace(template, **values)


def clone_state(state: Any) -> Any:
    """A copy of ``state`` whose tensors own their memory (safe across later replays)."""
    return rebuild_state(state, [t.clone() for t in state_tensors(state)], state_counters(state))


def model_signature(model: torch.nn.Module) -> tuple:
    """What a recorded step reads besides its inputs: every module (identity, hooks, an instance-level ``forward``)
    and every parameter and buffer (storage, dtype, shape), and the global module hooks. A CUDA graph runs no Python
    and reads the storages it was recorded with: once any of these changed, its replay would run the old model."""
    from torch.nn.modules import module as nn_module

    modules = tuple(
        (id(m), tuple(m._forward_pre_hooks), tuple(m._forward_hooks), id(vars(m).get("forward")))
        for m in model.modules()
    )
    tensors = tuple((t.data_ptr(), t.dtype, tuple(t.shape)) for t in (*model.parameters(), *model.buffers()))
    hooks = (tuple(nn_module._global_forward_pre_hooks), tuple(nn_module._global_forward_hooks))
    return modules, tensors, hooks


class CudaGraphBackend:
    """The real recorder: ``torch.cuda.CUDAGraph`` with a warm-up on a side stream (as the PyTorch docs show)."""

    def capture(self, fn: Callable[[], Any]) -> tuple[Any, Callable[[], None]]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # other threads' CUDA calls are theirs
            out = fn()
        return out, graph.replay


class GraphedStep:
    """``step(buf, state)`` replayed from one recording.

    Args:
        step: the eager step, e.g. ``adapter.step``; called with the static ``buf`` and a state whose tensors
            are static buffers.
        buf: the static ``[B, segment_size]`` input buffer the caller fills before each call.
        template: a state in the steady regime (after the warm-up segments) to shape the static buffers.
        backend: the recorder (default :class:`CudaGraphBackend`; tests pass an eager stand-in on CPU).
    """

    def __init__(self, step: Step, buf: torch.Tensor, template: Any, backend: Any = None) -> None:
        self.buf = buf
        self.static_in = [t.clone() for t in state_tensors(template)]
        self.template = template
        in_state = rebuild_state(template, self.static_in, state_counters(template))
        out, self._replay = (backend or CudaGraphBackend()).capture(lambda: step(buf, in_state))
        self.static_out = state_tensors(out)
        self.out_template = out
        before, after = state_counters(template), state_counters(out)
        self.delta = {k: after[k] - before.get(k, 0) for k in after}

    def __call__(self, buf: torch.Tensor, state: Any) -> Any:
        if buf is not self.buf:
            raise ValueError("a graphed step reads the static buffer it was recorded with")
        for dst, src in zip(self.static_in, state_tensors(state), strict=True):
            if dst is not src:
                dst.copy_(src)
        self._replay()
        counters = {k: v + self.delta.get(k, 0) for k, v in state_counters(state).items()}
        return rebuild_state(self.out_template, self.static_out, counters)


class StepRunner:
    """Runs a streaming step eagerly for ``warmup`` segments, then from a CUDA graph (one per batch size).

    Any failure to record falls back to eager steps for good, with one warning that says why.

    Args:
        step: ``adapter.step``.
        enabled: record graphs at all (the runner passes True only for CUDA devices).
        warmup: eager segments before recording (>= 1 so ARMT's first-segment rule is not recorded).
        backend: the recorder (tests only).
    """

    def __init__(self, step: Step, enabled: bool, warmup: int = 2, backend: Any = None) -> None:
        self.step = step
        self.enabled = enabled
        self.warmup = warmup
        self.backend = backend
        self.graphs: dict[tuple, GraphedStep] = {}
        self.graphed_steps = 0
        self.model: torch.nn.Module | None = None
        self.signature: tuple | None = None  # the model's when the graphs were recorded

    def follow(self, model: torch.nn.Module) -> None:
        """Before each stream of ``model``: drop the recorded graphs if it changed (:func:`model_signature`) since
        they were recorded, so the next segments record new ones (no cost while none is recorded)."""
        self.model = model
        if self.graphs and model_signature(model) != self.signature:
            self.graphs.clear()

    def __call__(self, buf: torch.Tensor, state: Any, index: int) -> Any:
        """The state after segment number ``index`` (0-based, counted over the stream) of ``buf``."""
        if not self.enabled or index < self.warmup:
            return self.step(buf, state)
        key = (buf.data_ptr(), tuple(buf.shape))  # the state's shapes follow from the model and the batch size
        graph = self.graphs.get(key)
        if graph is None:
            if not self.graphs and self.model is not None:
                self.signature = model_signature(self.model)
            try:
                graph = self.graphs[key] = GraphedStep(self.step, buf, state, self.backend)
            except Exception as e:  # noqa: BLE001 - any capture failure: keep streaming eagerly
                self.enabled = False
                warnings.warn(
                    f"CUDA graph capture of the segment step failed ({_failure(e)}); "
                    "continuing without graphs (StreamRunner(cuda_graphs=False) silences this)",
                    RuntimeWarning,
                    stacklevel=3,
                )
                return self.step(buf, state)
        self.graphed_steps += 1
        return graph(buf, state)


def _failure(e: BaseException) -> str:
    """``e`` after the errors it was raised while handling, first error first: an error inside
    ``torch.cuda.graph`` is followed by capture_end's "operation failed due to a previous error during capture",
    which alone says nothing."""
    parts, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        parts.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    return "; then ".join(reversed(parts))
