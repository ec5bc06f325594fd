"""BABILong sample builder: bAbI facts hidden at random sentence boundaries of a background stream.

Token accounting (BABILong §1.3-1.4), in GPT-2 tokens:

- ``budget = length - margin`` (``margin`` 300 for the LLM prompt, 20 for fine-tuning);
- each fact is encoded with one leading space; question and answer separately with none; the question keeps
  one trailing space, as in the bAbI files and the released data (``"Where is Mary? "``);
- ``background budget = budget - fact tokens``; the input is facts plus background, exactly ``budget``
  tokens, the last background sentence cut to fit. Length 0 (``"0k"``) gives the facts alone.

Lazy insertion. The reference draws one gap per fact uniformly (with replacement) among the n+1 gaps of the
n background sentences, sorts the gaps and keeps the facts in order. n is only known once the background
is complete, which a streamed 10M-token sample never is in memory. Instead each fact j gets a target
offset ``u_j`` drawn uniformly from the integers ``[0, background budget]`` (seeded, sorted), and is
inserted at the first sentence boundary whose background offset is ``>= u_j``. Facts still keep their
order, several may share a gap, and a fact's depth in background tokens is uniform up to the length of one
sentence (it lands on average about half a sentence, ~15 tokens, after ``u_j``). The deviation: the chance
of a given gap is proportional to the length of the sentence before it instead of ``1/(n+1)``, and the
gap before the first sentence is only chosen when ``u_j = 0``. The depth distribution over the context,
which is what BABILong measures, is the same in both schemes.

The sample stores only its plan (seeds, fact ids, offsets); every read replays the seeded background, so
:meth:`BabilongSample.iter_chunks` runs in memory independent of the length.
"""
from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import numpy as np

from babilong_fast.data.background import MIN_SENTENCE_TOKENS, background_rounds
from babilong_fast.data.corpora import BundledNovels, TextSource
from babilong_fast.data.lengths import PROMPT_MARGIN, check_margin, parse_length
from babilong_fast.data.tokenizer import GPT2Tokenizer, get_tokenizer

MAX_FACT_LINE_FRACTION = 8
MATERIALISE_LIMIT = 2_000_000
MIN_CHUNK_CHARS = 10_000


class FactsTooLongError(ValueError):
    """The story has more lines than the reference generator allows for the length (``budget // 8``), or more
    fact tokens than the length's budget."""


class BabilongSample:
    """One BABILong sample: background plus hidden facts, a question and a target.

    Build it with :func:`build_sample`. The input is produced on demand from the stored plan.

    Attributes:
        task: task name (``"qa1"``..), may be empty.
        length: nominal length in tokens (``"4k"`` -> 4000).
        margin: tokens left for the prompt (300) or question (20).
        num_tokens: exact length of the input in GPT-2 tokens: ``length - margin``, or the fact tokens at 0k.
        facts: the bAbI facts, in order.
        question: the question text with one trailing space, as the released data has it (``"Where is Mary? "``).
        target: the answer text.
        supporting: indices into ``facts`` of the supporting facts.
        seed: the sample seed; the same seed and arguments give the same input.
    """

    def __init__(
        self,
        *,
        task: str,
        length: int,
        margin: int,
        facts: Sequence[str],
        question: str,
        target: str,
        supporting: Sequence[int],
        seed: int | str,
        fact_ids: Sequence[Sequence[int]],
        offsets: Sequence[int],
        background_budget: int,
        background: TextSource,
        min_sentence_tokens: int,
        tokenizer: GPT2Tokenizer,
    ) -> None:
        self.task, self.length, self.margin, self.seed = task, length, margin, seed
        self.facts, self.question, self.target = tuple(facts), question, target
        self.supporting = tuple(supporting)
        self.background_budget = background_budget
        self.background = background
        self._fact_ids = tuple(tuple(f) for f in fact_ids)
        self._offsets = tuple(offsets)
        self._min_sentence_tokens = min_sentence_tokens
        self._tok = tokenizer
        self.num_tokens: int = background_budget + sum(len(f) for f in self._fact_ids)
        self._fact_positions: tuple[int, ...] | None = None

    def __repr__(self) -> str:
        return (f"BabilongSample(task={self.task!r}, length={self.length}, num_tokens={self.num_tokens}, "
                f"facts={len(self.facts)}, seed={self.seed!r})")

    def _pieces(self) -> Iterator[np.ndarray]:
        """The input as consecutive int32 token pieces (facts and runs of background); records fact positions.

        Works a background round at a time (:func:`~babilong_fast.data.background.background_rounds`): fact
        ``j`` goes before the first sentence whose background offset is ``>= offsets[j]``, found by a binary
        search over the round's sentence starts, so a round costs a few array slices whatever its length.
        """
        positions: list[int] = []
        pos = done = j = 0
        budget, offsets = self.background_budget, self._offsets
        facts = [np.asarray(f, dtype=np.int32) for f in self._fact_ids]
        if budget > 0:
            rounds = background_rounds(
                self.background, self.seed, chunk_chars=max(10 * budget, MIN_CHUNK_CHARS),
                min_tokens=self._min_sentence_tokens, tokenizer=self._tok,
            )
            for ids, lengths in rounds:
                if not len(lengths):
                    continue
                starts = np.zeros(len(lengths), dtype=np.int64)  # sentence starts, relative to the round
                np.cumsum(lengths[:-1], out=starts[1:])
                take = min(len(ids), budget - done)
                n_sent = int(np.searchsorted(starts, take, side="left"))  # sentences that start inside ``take``
                cut = 0
                while j < len(facts):
                    k = int(np.searchsorted(starts[:n_sent] + done, offsets[j], side="left"))
                    if k == n_sent:
                        break
                    at = int(starts[k])
                    if at > cut:
                        yield ids[cut:at]
                        pos += at - cut
                        cut = at
                    positions.append(pos)
                    pos += len(facts[j])
                    yield facts[j]
                    j += 1
                if take > cut:
                    yield ids[cut:take]
                    pos += take - cut
                done += take
                if done == budget:
                    break
        for f in facts[j:]:
            positions.append(pos)
            pos += len(f)
            yield f
        self._fact_positions = tuple(positions)

    def iter_chunks(self, chunk_tokens: int = 4096) -> Iterator[list[int]]:
        """Lazily yield the input ids in chunks; memory does not grow with the length.

        Args:
            chunk_tokens: tokens per chunk; the last chunk may be shorter.

        Yields:
            ``list[int]`` chunks whose concatenation is the whole input (``num_tokens`` ids), the same for
            every ``chunk_tokens``.
        """
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
        parts: list[np.ndarray] = []
        held = 0
        for piece in self._pieces():
            parts.append(piece)
            held += len(piece)
            if held >= chunk_tokens:
                buf = np.concatenate(parts)
                n_full = held - held % chunk_tokens
                for k in range(0, n_full, chunk_tokens):
                    yield buf[k:k + chunk_tokens].tolist()
                parts, held = [buf[n_full:]], held - n_full
        if held:
            yield np.concatenate(parts).tolist()

    def input_ids(self, limit: int = MATERIALISE_LIMIT) -> list[int]:
        """The whole input as one id list; refuses inputs over ``limit`` tokens (use :meth:`iter_chunks`)."""
        if self.num_tokens > limit:
            raise ValueError(
                f"sample has {self.num_tokens} tokens, over limit={limit}; stream it with iter_chunks() instead"
            )
        return np.concatenate([np.zeros(0, np.int32), *self._pieces()]).tolist()

    def text(self, limit: int = MATERIALISE_LIMIT) -> str:
        """The input as text, decoded and stripped as in the released BABILong data (the ``input`` field)."""
        return self._tok.decode(self.input_ids(limit)).strip()

    @property
    def fact_positions(self) -> tuple[int, ...]:
        """Token offset in :meth:`input_ids` where each fact starts (increasing). The first read of a sample
        that was never streamed replays the background once (bounded memory)."""
        if self._fact_positions is None:
            for _ in self._pieces():
                pass
        assert self._fact_positions is not None
        return self._fact_positions

    def fact_token_ids(self) -> list[list[int]]:
        """Ids of each fact as inserted (leading space)."""
        return [list(f) for f in self._fact_ids]

    def question_ids(self) -> list[int]:
        """Ids of the question, encoded alone with no leading space (the trailing space is the last id, 220)."""
        return self._tok.encode(self.question)

    def target_ids(self) -> list[int]:
        """Ids of the answer, encoded alone with no leading space."""
        return self._tok.encode(self.target)


def build_sample(
    facts: Sequence[str],
    question: str,
    answer: str,
    length: str | int,
    *,
    seed: int | str = 0,
    margin: int = PROMPT_MARGIN,
    background: TextSource | None = None,
    task: str = "",
    supporting: Sequence[int] = (),
    drop_long_stories: bool = True,
    min_sentence_tokens: int = MIN_SENTENCE_TOKENS,
    tokenizer: GPT2Tokenizer | None = None,
) -> BabilongSample:
    """Plan a BABILong sample; nothing is tokenized beyond the facts until the input is read.

    Args:
        facts: the story's facts in order (at least one).
        question: question text; stored with one trailing space (as the released data) whether or not it ends
            in one. answer: the target text.
        length: nominal length, e.g. ``"4k"``, ``"1M"``, ``3333``
            (see :func:`~babilong_fast.data.lengths.parse_length`).
        seed: sample seed for the background stream and the fact positions.
        margin: tokens kept free: 300 (LLM prompt, default) or 20 (fine-tuning).
        background: background source; default ``BundledNovels("test")``.
        task, supporting: carried into the sample.
        drop_long_stories: as the reference generator, reject stories with more than ``budget // 8`` lines
            (facts plus the question) at non-zero lengths.
        min_sentence_tokens: shortest background sentence kept.
        tokenizer: defaults to the shared GPT-2 tokenizer.

    Returns:
        a :class:`BabilongSample` of exactly ``length - margin`` input tokens, or the facts alone at length 0.

    Raises:
        FactsTooLongError: the story is too long for the length (only with ``drop_long_stories``).
        ValueError: an unknown or negative length, a negative margin, no facts, or a budget smaller than the facts.

    Examples::

        >>> s = build_sample(["Mary went to the garden."], "Where is Mary?", "garden", "1k", seed=3)
        >>> s.num_tokens, len(s.input_ids())
        (700, 700)
    """
    n_tokens = parse_length(length)
    check_margin(margin)
    if not facts:
        raise ValueError("a sample needs at least one fact")
    tok = tokenizer or get_tokenizer()
    fact_ids = [tok.encode(" " + f) for f in facts]
    fact_tokens = sum(len(f) for f in fact_ids)
    budget = n_tokens - margin
    if n_tokens == 0:
        background_budget = 0
    else:
        if budget <= 0:
            raise ValueError(f"length {length!r} leaves no tokens after the margin of {margin}")
        if drop_long_stories and len(facts) + 1 > budget // MAX_FACT_LINE_FRACTION:
            raise FactsTooLongError(
                f"{len(facts)} facts plus the question exceed budget // {MAX_FACT_LINE_FRACTION} = "
                f"{budget // MAX_FACT_LINE_FRACTION} lines for length {length!r}"
            )
        if fact_tokens > budget:  # a story to skip, as too many lines are, when long stories are dropped
            raise (FactsTooLongError if drop_long_stories else ValueError)(
                f"length {length!r} is too small for the facts: {fact_tokens} fact tokens > budget {budget}"
            )
        background_budget = budget - fact_tokens
    rng = random.Random(f"babilong_fast/fact_offsets/{seed}")
    offsets = sorted(rng.randint(0, background_budget) for _ in fact_ids)
    return BabilongSample(
        task=task, length=n_tokens, margin=margin, facts=facts, question=question.rstrip() + " ", target=answer,
        supporting=supporting, seed=seed, fact_ids=fact_ids, offsets=offsets,
        background_budget=background_budget, background=BundledNovels("test") if background is None else background,
        min_sentence_tokens=min_sentence_tokens, tokenizer=tok,
    )
