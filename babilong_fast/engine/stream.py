"""Streaming inference for recurrent-memory models: a token stream of any length in constant memory.

:class:`StreamRunner` reads token chunks of any sizes, re-blocks them into segments of exactly
``segment_size`` tokens in one preallocated ``[B, segment_size]`` buffer and runs each full segment with
memory writes on and no LM head (docs/math.md §3). The newest 1..``segment_size`` tokens are
always held back: whether they are the final segment is only known once the question arrives.
:meth:`StreamRunner.answer` appends ``question ‖ GEN``, runs the segments that spill over, and decodes
greedily from the final segment with the model's own generation rule, so the tokens equal
``model.generate(context ‖ question ‖ GEN)`` while the context is never held whole: exactly in float32; with
bfloat16 / float16 weights the fused steps round differently (one GELU kernel, sums rounded once), so a
near-tie between two tokens can go the other way.
"""

from __future__ import annotations

import itertools
import numbers
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from babilong_fast.data.builder import BabilongSample
from babilong_fast.data.tokenizer import EOS_ID
from babilong_fast.engine.adapters import MambaAdapter, RMTAdapter, SegmentAdapter, make_adapter
from babilong_fast.engine.graphs import StepRunner, clone_state
from babilong_fast.engine.progress import Progress
from babilong_fast.models._common import check_token_id, check_token_range

GEN_ID = 35353
"""GPT-2 id of ``"GEN"``, the separator between question and answer in BABILong fine-tuning."""

DEFAULT_CHUNK_TOKENS = 4096

Chunk = Sequence[int] | Sequence[Sequence[int]] | torch.Tensor


@dataclass(frozen=True)
class StreamState:
    """Where a stream stands: the model's memory plus the tokens not yet run.

    Args:
        model_state: the model's state after ``num_segments`` segments (``ARMTState``, ``RMTState``).
        pending: ``[B, p]`` int64, ``0 <= p <= segment_size``: the newest tokens, held back because they may
            belong to the final segment. ``p`` is 0 only for a stream that has seen no token.
        num_tokens: tokens consumed so far (run and pending).
        num_segments: segments run with memory writes.
    """

    model_state: Any
    pending: torch.Tensor
    num_tokens: int = 0
    num_segments: int = 0

    @property
    def batch_size(self) -> int:
        """``B``, the rows of the stream."""
        return self.pending.shape[0]


_WIDE_UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)  # token files' dtypes torch cannot range-check


def is_array(x: object) -> bool:
    """A torch tensor or a numpy array: one chunk as a whole, never iterated row by row."""
    np = sys.modules.get("numpy")  # never imported here: an array exists only if numpy is loaded
    return isinstance(x, torch.Tensor) or (np is not None and isinstance(x, np.ndarray))


def as_chunk(chunk: object, vocab_size: int | None = None, name: str = "chunk") -> torch.Tensor | None:
    """One chunk as a ``[B, n]`` integer tensor (``None`` for an empty 1-D chunk).

    A 1-D tensor / numpy array or a sequence of ints is one row (``B = 1``); a 2-D one or a sequence of
    equal-length rows is a batch. Ids are range-checked against ``vocab_size`` when the chunk is on the CPU.
    ``name`` is the argument named in errors.
    """
    if chunk is None or isinstance(chunk, (numbers.Integral, str, bytes)) or (is_array(chunk) and chunk.ndim == 0):
        hint = "; to stream one list of ids pass [ids]" if name == "chunk" else ""
        raise TypeError(
            f"{name} must be a sequence of token ids or a [B, n] tensor, got {type(chunk).__name__}{hint}"
        )
    if isinstance(chunk, torch.Tensor):
        t = chunk
    else:
        try:
            t = torch.as_tensor(chunk)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{name} is not a sequence of integer token ids of equal-length rows: {e}") from None
        if t.numel() == 0 and not is_array(chunk):
            t = t.long()  # [] and [[]] hold no id, and torch reads them as float32
    if t.dim() == 1 and t.numel() == 0:
        return None
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name}: token ids must be integers, got dtype {t.dtype}")
    if t.dtype in _WIDE_UNSIGNED:
        t = t.long()
    if t.dim() == 1:
        t = t.unsqueeze(0)
    elif t.dim() != 2:
        raise ValueError(f"{name} must be [n] or [B, n], got shape {tuple(t.shape)}")
    if vocab_size is not None and t.device.type == "cpu":
        check_token_range(t, vocab_size, f"{name}: token ids")
    return t


class StreamRunner:
    """Prefill a stream of token chunks into a recurrent memory, then answer a question greedily.

    One interface for every supported model: ARMT, RMT and Mamba-1 (transformers ``MambaForCausalLM``,
    mamba_ssm ``MambaLMHeadModel``, :class:`~babilong_fast.models.mamba.MambaLM`), each through its adapter in
    :mod:`babilong_fast.engine.adapters`. Everything runs under ``torch.inference_mode()``; states are
    plain values, so one prefilled :class:`StreamState` can answer several questions.

    Args:
        model: an :class:`~babilong_fast.models.ARMT`, :class:`~babilong_fast.models.RMT` or a Mamba-1 LM; put in
            eval mode.
        segment_size: ARMT/RMT: must equal the model's (the default). Mamba: the chunk length (default 2048, or
            the ``MambaLM``'s ``chunk_size``); any value gives the same answers.
        device: moves the model there (in place); default: where its parameters are.
        dtype: casts the model's floating parameters (in place); the ARMT/RMT state stays float32.
        progress: show a tqdm bar (tokens/s in the postfix) or, without tqdm, a line every 10 s on stderr.
        cuda_graphs: replay the segment step from a CUDA graph after the first ``graph_warmup`` segments
            (:mod:`babilong_fast.engine.graphs`); None (default) = on for a CUDA device. A capture that fails
            warns once and the stream goes on eagerly.
        graph_warmup: eager segments before recording (default 2).
        compile: ARMT/RMT only: run full segments after the first through ``torch.compile``
            (:mod:`babilong_fast.models.compiled_step`: elementwise kernels fused; the associative ops by their
            torch references, whatever ``model.backend``). With CUDA graphs one graph serves every layer but
            the last and the CUDA graph records the compiled step; without, the whole step is one graph
            (compiling takes longer, steps run faster). Compiling takes tens of seconds on the first such segment.

    Examples::
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> from babilong_fast.models import ARMT
        >>> gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=100))
        >>> runner = StreamRunner(ARMT(gpt2, num_mem_tokens=4, d_mem=8, segment_size=16), progress=False)
        >>> state = runner.prefill([[1, 2, 3], list(range(40))])
        >>> state.num_tokens, state.num_segments, tuple(state.pending.shape)
        (43, 2, (1, 11))
        >>> runner.answer([5, 6], max_new_tokens=3, eos_token_id=99, gen_token_id=7).shape
        torch.Size([1, 3])
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        segment_size: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        progress: bool = True,
        cuda_graphs: bool | None = None,
        graph_warmup: int = 2,
        compile: bool = False,
    ) -> None:
        if segment_size is not None and (
            not isinstance(segment_size, int) or isinstance(segment_size, bool) or segment_size < 1
        ):
            raise ValueError(f"segment_size must be an integer >= 1, got {segment_size!r}")
        self.adapter: SegmentAdapter = make_adapter(model, segment_size)
        if segment_size is not None:
            if segment_size != self.adapter.segment_size:
                raise ValueError(
                    f"segment_size={segment_size} does not match the model's segment_size="
                    f"{self.adapter.segment_size}; streaming must segment as the model was trained and generates"
                )
        if compile and not hasattr(self.adapter, "enable_compile"):
            raise ValueError(f"compile=True runs ARMT and RMT steps; {type(model).__name__} has no compiled step")
        if (dtype or next(model.parameters()).dtype) == torch.float64 and not isinstance(self.adapter, RMTAdapter):
            raise ValueError(  # before the model is moved: a refused runner leaves it as it was
                f"{type(model).__name__} streams float32, bfloat16 or float16 weights (its kernels have no float64); "
                "got float64: pass dtype=torch.float32"
            )
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
        self.model = model.eval()
        self.device = next(model.parameters()).device
        if cuda_graphs is None:
            cuda_graphs = self.device.type == "cuda"
        elif cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs the model on a CUDA device, it is on {self.device}")
        if not isinstance(graph_warmup, int) or isinstance(graph_warmup, bool) or graph_warmup < 1:
            raise ValueError(f"graph_warmup must be an integer >= 1, got {graph_warmup!r}")
        if compile:  # per-layer graphs where a CUDA graph replays the step (cheap compiles), else one graph
            self.adapter.enable_compile(regional=bool(cuda_graphs))
        self._steps = StepRunner(lambda ids, st: self.adapter.step(ids, st), enabled=bool(cuda_graphs),
                                 warmup=graph_warmup)
        self.progress = progress
        self.state: StreamState | None = None
        self._bufs: dict[int, torch.Tensor] = {}

    @property
    def segment_size(self) -> int:
        """Tokens a step consumes (the model's segment, or Mamba's chunk)."""
        return self.adapter.segment_size

    def _workspace(self, batch_size: int) -> torch.Tensor:
        """The static ``[B, segment_size]`` input buffer of this batch size (one each, kept: a CUDA graph recorded
        for a batch size reads its buffer, so alternating batch sizes reuse their graphs instead of recording more)."""
        buf = self._bufs.get(batch_size)
        if buf is None:
            buf = self._bufs[batch_size] = torch.zeros(batch_size, self.segment_size, dtype=torch.long,
                                                       device=self.device)
        return buf

    def init_state(self, batch_size: int = 1) -> StreamState:
        """An empty stream of ``batch_size`` rows (the model's initial memory, nothing pending)."""
        with torch.inference_mode():
            model_state = self.adapter.init_state(batch_size, self.device)
        return StreamState(model_state, torch.zeros(batch_size, 0, dtype=torch.long, device=self.device))

    def prefill(
        self,
        chunks: Iterable[Chunk] | torch.Tensor,
        state: StreamState | None = None,
        *,
        total_tokens: int | None = None,
    ) -> StreamState:
        """Consume ``chunks`` segment by segment; memory does not grow with the stream's length.

        Every full segment is run (writes on, no logits) as soon as a later token shows that it is not the
        last; the newest ``1..segment_size`` tokens stay pending for :meth:`answer`.

        Args:
            chunks: an iterable of chunks of any sizes: ``list[int]``, 1-D tensors or numpy arrays (one row),
                or ``[B, n]`` tensors / arrays (a batch; ``B`` fixed for the whole stream). A tensor or array
                alone is one chunk.
            state: continue this stream instead of starting a new one.
            total_tokens: the whole stream's expected length (with what ``state`` has consumed), for the
                progress bar only.

        Returns:
            the new :class:`StreamState`; also kept as ``self.state`` (None while streaming, and after a
            failure, so a later :meth:`answer` never answers an older stream).

        Raises:
            ValueError: empty stream, batch size changing mid-stream, ids out of the vocabulary.
            TypeError: a chunk that is not integer token ids.
        """
        self.state = None
        if state is None:  # a new stream (a continued one was checked at its start)
            self._check_model()
        st = self._prefill(chunks, state, self.progress, total_tokens)
        self.state = st
        return st

    def _prefill(
        self,
        chunks: Iterable[Chunk] | torch.Tensor,
        state: StreamState | None,
        progress: bool,
        total_tokens: int | None = None,
        rows: int | None = None,
    ) -> StreamState:
        """:meth:`prefill`; ``rows``: the batch size the stream must have (checked at its first chunk)."""
        if is_array(chunks):
            chunks = (chunks,)
        elif not isinstance(chunks, Iterable) or isinstance(chunks, (str, bytes)):
            raise TypeError(f"chunks must be an iterable of token chunks or a tensor, got {type(chunks).__name__}")
        S, adapter = self.segment_size, self.adapter
        B = buf = model_state = None
        fill = tokens = segments = first = 0  # first: the number of the first chunk (-1: a re-blocked pending)
        if state is not None:
            if not isinstance(state, StreamState):
                raise TypeError(f"state must be a StreamState (from prefill or init_state), got {type(state).__name__}")
            B, model_state = state.batch_size, adapter.check_state(state.model_state)
            fill, tokens, segments = state.pending.shape[1], state.num_tokens, state.num_segments
            if fill > S:
                if not isinstance(adapter, MambaAdapter):  # ARMT/RMT segment as trained: never re-segmented
                    raise ValueError(f"state.pending holds {fill} tokens, more than segment_size={S}: a state of "
                                     "another model")
                # pending from a Mamba runner of longer segments (Mamba's are free): re-blocked as a chunk
                chunks, first = itertools.chain((state.pending,), chunks), -1
                tokens -= fill
                fill = 0
        bar = Progress(progress, total_tokens, initial=tokens, initial_segments=segments)
        try:
            with torch.inference_mode():
                if state is not None:
                    buf = self._workspace(B)
                    buf[:, :fill].copy_(state.pending[:, :fill])  # nothing when re-blocked
                for k, chunk in enumerate(chunks, start=first):  # the caller's chunks from 0
                    c = as_chunk(chunk, adapter.vocab_size)
                    if c is None:
                        continue
                    if B is None:
                        if c.shape[1] == 0:
                            continue
                        B = c.shape[0]
                        if rows is not None and B != rows:
                            raise ValueError(f"question_ids has {rows} rows, the stream {B}")
                        buf = self._workspace(B)
                        model_state = adapter.init_state(B, self.device)
                    elif c.shape[0] != B:
                        raise ValueError(
                            f"chunk {k} has batch size {c.shape[0]}, but the stream has {B} rows; "
                            "every chunk of a stream must have the same batch size"
                        )
                    if buf.is_cuda and not c.is_cuda:
                        # Staged in pinned memory of our own, so the copies below do not block; never the caller's
                        # pinned buffer, which it may refill before the copy has run.
                        c = torch.empty(c.shape, dtype=c.dtype, pin_memory=True).copy_(c)
                    n, pos = c.shape[1], 0
                    while pos < n:
                        if fill == S:
                            model_state = self._steps(buf, model_state, segments)
                            segments += 1
                            fill = 0
                            bar.update(0, 1)
                        take = min(S - fill, n - pos)
                        buf[:, fill : fill + take].copy_(c[:, pos : pos + take], non_blocking=True)
                        fill += take
                        pos += take
                        tokens += take
                        bar.update(take)
                if B is None:
                    raise ValueError("empty stream: the chunks held no tokens")
                pending = buf[:, :fill].clone()
                if self._steps.graphs:  # the state may alias a graph's outputs, which the next replay overwrites
                    model_state = clone_state(model_state)
        finally:
            bar.close()
        return StreamState(model_state, pending, tokens, segments)

    def _question(self, question_ids: object, gen_token_id: int | None) -> torch.Tensor:
        """``question ‖ GEN`` checked, ``[1 or B, q]`` int64 on the CPU."""
        if isinstance(question_ids, torch.Tensor):  # a few ids: checked on the CPU wherever they live
            question_ids = question_ids.cpu()
        q = as_chunk(question_ids, self.adapter.vocab_size, "question_ids")
        q = torch.zeros(1, 0, dtype=torch.long) if q is None else q.to(torch.long)
        if gen_token_id is not None:
            check_token_id("gen_token_id", gen_token_id)
            gen = as_chunk([int(gen_token_id)], self.adapter.vocab_size, "gen_token_id")
            q = torch.cat([q, gen.expand(q.shape[0], 1)], 1)
        return q

    def _suffix(self, question_ids: object, batch_size: int, gen_token_id: int | None) -> torch.Tensor:
        q = self._question(question_ids, gen_token_id)
        if q.shape[0] == 1 and batch_size > 1:
            q = q.expand(batch_size, -1)
        elif q.shape[0] != batch_size:
            raise ValueError(f"question_ids has {q.shape[0]} rows, the stream {batch_size}")
        return q

    def finish(
        self, question_ids: object, state: StreamState | None = None, *, gen_token_id: int | None = GEN_ID
    ) -> StreamState:
        """Append ``question ‖ GEN`` and run the segments that spill over; the final segment stays pending.

        Args:
            question_ids: ``list[int]`` / 1-D tensor (the same question for every row) or ``[B, q]``.
            state: default ``self.state`` (the last :meth:`prefill`); it is not modified.
            gen_token_id: appended after the question (default the id of ``"GEN"``); None appends nothing.

        Returns:
            the :class:`StreamState` whose ``pending`` is the final segment of ``context ‖ question ‖ GEN``.
        """
        self._check_model()
        return self._finish(question_ids, state, gen_token_id)

    def _finish(self, question_ids: object, state: StreamState | None, gen_token_id: int | None) -> StreamState:
        state = self._current(state)
        suffix = self._suffix(question_ids, state.batch_size, gen_token_id)
        return self._prefill((suffix,), state, progress=False)

    def decode(self, state: StreamState, *, max_new_tokens: int = 10, eos_token_id: int = EOS_ID) -> torch.Tensor:
        """Greedy decoding from ``state.pending`` as the final segment, with the model's ``generate`` rule.

        Returns ``[B, <= max_new_tokens]`` int64, an ordinary tensor (not an inference tensor)."""
        self._check_model()
        return self._decode(state, max_new_tokens, eos_token_id)

    def _decode(self, state: StreamState | None, max_new_tokens: int, eos_token_id: int) -> torch.Tensor:
        state = self._current(state)
        check_token_id("eos_token_id", eos_token_id)
        if state.pending.shape[1] == 0:
            raise ValueError("nothing to answer: the stream is empty and no question was given")
        with torch.inference_mode():
            out = self.adapter.decode(state.pending, state.model_state, max_new_tokens, eos_token_id)
        return out.clone()  # outside inference mode: the caller may edit it in place, as generate's output

    def answer(
        self,
        question_ids: object,
        *,
        state: StreamState | None = None,
        max_new_tokens: int = 10,
        eos_token_id: int = EOS_ID,
        gen_token_id: int | None = GEN_ID,
    ) -> torch.Tensor:
        """Greedy answer to ``question_ids`` after the prefilled context.

        The result equals ``model.generate(context ‖ question ‖ GEN, max_new_tokens, eos_token_id)``.

        Args:
            question_ids: ``list[int]`` / 1-D tensor (shared by all rows) or ``[B, q]``.
            state: default ``self.state``; not modified, so the same context can answer several questions.
            max_new_tokens: at most this many tokens.
            eos_token_id: a row stops at it and is padded with it (GPT-2's end-of-text by default).
            gen_token_id: the separator appended after the question (``"GEN"``); None for none.

        Returns:
            ``[B, <= max_new_tokens]`` int64, the new tokens only.
        """
        check_token_id("eos_token_id", eos_token_id)  # before the question's segments run
        self._check_model()
        return self._answer(question_ids, state, max_new_tokens, eos_token_id, gen_token_id)

    def _answer(self, question_ids: object, state: StreamState | None, max_new_tokens: int, eos_token_id: int,
                gen_token_id: int | None) -> torch.Tensor:
        return self._decode(self._finish(question_ids, state, gen_token_id), max_new_tokens, eos_token_id)

    def run(
        self,
        sample_or_chunks: BabilongSample | Iterable[Chunk] | torch.Tensor,
        question_ids: object = None,
        *,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        max_new_tokens: int = 10,
        eos_token_id: int = EOS_ID,
        gen_token_id: int | None = GEN_ID,
        total_tokens: int | None = None,
    ) -> torch.Tensor:
        """:meth:`prefill` then :meth:`answer`.

        Args:
            sample_or_chunks: a :class:`~babilong_fast.data.BabilongSample` (streamed with
                ``iter_chunks(chunk_tokens)``; its question is the default ``question_ids``), or chunks, or one
                tensor / array.
            question_ids: required for chunks.
            chunk_tokens, max_new_tokens, eos_token_id, gen_token_id: as in :meth:`answer`.
            total_tokens: the chunks' length if known (a sample's and a tensor's are): the progress bar's
                total, and the answer is checked to fit after the exact final segment before streaming.

        Returns:
            ``[B, <= max_new_tokens]`` the generated tokens.
        """
        total = total_tokens
        if isinstance(sample_or_chunks, BabilongSample):
            sample = sample_or_chunks
            total = sample.num_tokens
            chunks = sample.iter_chunks(chunk_tokens)
            if question_ids is None:
                question_ids = sample.question_ids()
        else:
            chunks = sample_or_chunks
            if is_array(chunks) and chunks.ndim in (1, 2):
                total = chunks.shape[-1]
        if question_ids is None:
            raise ValueError("question_ids is required unless a BabilongSample is given")
        # What would fail after the stream, checked before it: the question's ids and rows, the end token, and
        # the answer's fit.
        q = self._question(question_ids, gen_token_id)
        check_token_id("eos_token_id", eos_token_id)
        if total is None:
            self.adapter.check_decode(1, max_new_tokens)
        else:  # the final segment of context ‖ question ‖ GEN is known
            n = total + q.shape[1]
            self.adapter.check_decode(n - self.segment_size * ((n - 1) // self.segment_size), max_new_tokens)
        self.state = None
        self._check_model()
        state = self.state = self._prefill(chunks, None, self.progress, total, rows=q.shape[0] if q.shape[0] > 1
                                           else None)
        if isinstance(sample_or_chunks, BabilongSample) and state.num_tokens != total:
            raise RuntimeError(f"the sample streamed {state.num_tokens} tokens, but num_tokens is {total}")
        if total is not None and state.num_tokens != total:
            raise ValueError(f"total_tokens={total}, but the chunks held {state.num_tokens} tokens (the answer's fit "
                             "was checked for the length given)")
        return self._answer(question_ids, state, max_new_tokens, eos_token_id, gen_token_id)

    def _check_model(self) -> None:
        """Once per public call that starts a stream or answers (not per segment, nor per continued chunk): the
        model still in eval mode, its modules re-read where the adapter holds them (Mamba: hooks or adapters added
        since are refused), and graphs recorded before the model changed dropped."""
        if any(m.training for m in self.model.modules()):
            raise ValueError(
                f"the {type(self.model).__name__} (or a module in it) is in training mode (dropout on), put there "
                "after this runner set eval mode; call model.eval() before streaming"
            )
        refresh = getattr(self.adapter, "refresh", None)  # adapters registered by users may have none
        if refresh is not None:
            refresh()
        self._steps.follow(self.model)

    def _current(self, state: StreamState | None) -> StreamState:
        if state is None:
            state = self.state
        if state is None:
            raise ValueError("no stream to answer: call prefill() first or pass state=")
        if not isinstance(state, StreamState):
            raise TypeError(f"state must be a StreamState, got {type(state).__name__}")
        return state

    def __repr__(self) -> str:
        return (
            f"StreamRunner({type(self.model).__name__}, segment_size={self.segment_size}, device={self.device}, "
            f"progress={self.progress})"
        )

