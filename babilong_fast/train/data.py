"""Curriculum training data: the k-th sample of a stage is a pure function of ``(seed, stage, k)``.

Stage ``n`` draws each sample's segment count uniformly from ``1..n`` (the reference's ``--vary_n_segments``,
docs/math.md §5.2) and builds a BABILong sample of ``segments * segment_size`` nominal tokens with the
fine-tuning margin (20), so ``context ‖ question ‖ GEN ‖ answer ‖ EOS`` fits the segments; stage 0 gives the
facts alone (BABILong's ``0k``), a warm-up without background. Because every
draw is addressed by its index, the data position of a run is one integer: resuming, or splitting a global
batch over processes, needs no sampler state.
"""
from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path

from babilong_fast.data.babi import BabiSample, draw_story
from babilong_fast.data.builder import FactsTooLongError, build_sample
from babilong_fast.data.corpora import BundledNovels, TextSource
from babilong_fast.data.lengths import FINETUNE_MARGIN, length_name, parse_length
from babilong_fast.data.tokenizer import get_tokenizer
from babilong_fast.train.format import Example, format_example

DRAW_TRIES = 20_000  # stories one training draw may try for a sample that fits
CHECK_DRAWS, CHECK_TRIES = 8, DRAW_TRIES // 30  # GeneratedData.check: draws that must each succeed within CHECK_TRIES


class NoSamplesError(ValueError):
    """The task has no sample that fits the requested length."""


def draw_segments(seed: int, stage: int, index: int) -> int:
    """Segment count of sample ``index`` of the stage with maximum ``stage``: uniform on ``1..stage``
    (0 for stage 0: the facts alone)."""
    if stage == 0:
        return 0
    return random.Random(f"babilong_fast/train/{seed}/{stage}/{index}").randint(1, stage)


class GeneratedData:
    """Training examples from the seeded bAbI generator (train split) and background books.

    Draw ``index`` of stage ``stage`` builds its example from a bAbI story addressed by ``(seed, stage, index)``
    (:func:`~babilong_fast.data.babi.draw_story`): one of the story's samples (questions), uniformly among those
    that fit the drawn segment count (and ``max_facts``); a story with none is replaced by the draw's next story,
    never by another draw's sample. Draws are independent, so a stage does not replay an earlier stage's stories;
    on a task with few distinct samples two draws can still coincide by chance.

    Args:
        task: bAbI task.
        segment_size: tokens per segment.
        seed: data seed.
        pool_size: if set, draw ``k`` of any stage takes pool entry ``k % pool_size`` (the same bAbI story at
            every segment count) and its built example is cached per segment count, so a long run cycles over a
            fixed pool; None draws a new story every time.
        background: background books (default: the bundled novels of the train split).
        max_facts: only bAbI samples with at most this many facts (None: all).
    """

    def __init__(
        self, task: str, segment_size: int, seed: int = 0, pool_size: int | None = None,
        background: TextSource | None = None, max_facts: int | None = None,
    ) -> None:
        self.task, self.segment_size, self.seed, self.pool_size = task, segment_size, seed, pool_size
        self.max_facts = max_facts
        self.background = background or BundledNovels("train")
        self._cache: dict[tuple[str, int], Example] = {}
        self._tok = get_tokenizer()

    def samples(self, key: str, attempt: int = 0) -> list[BabiSample]:
        """The samples of draw ``key``'s story number ``attempt`` with at most ``max_facts`` facts, in the order the
        draw tries them (shuffled: the first that fits is uniform among those that fit)."""
        found = [b for b in draw_story(self.task, "train", f"{self.seed}/{key}/{attempt}")
                 if self.max_facts is None or len(b["facts"]) <= self.max_facts]
        random.Random(f"babilong_fast/train/order/{self.seed}/{key}/{attempt}").shuffle(found)
        return found

    def example(self, key: str, segments: int, tries: int = DRAW_TRIES) -> Example:
        """The example of draw ``key`` at ``segments`` segments (0: the facts alone, no background), from the first
        of the draw's stories (at most ``tries``) with a sample that fits."""
        cache_key = (key, segments)
        if cache_key in self._cache:
            return self._cache[cache_key]
        length, short_enough = segments * self.segment_size, 0
        for attempt in range(tries):
            for j, b in enumerate(self.samples(key, attempt)):
                short_enough += 1
                try:
                    s = build_sample(
                        b["facts"], b["question"], b["answer"], length, margin=FINETUNE_MARGIN,
                        seed=f"train/{self.seed}/{key}/{attempt}/{j}/{segments}", background=self.background,
                        task=self.task, tokenizer=self._tok,
                    )
                except FactsTooLongError:
                    continue
                ex = format_example(s.input_ids(), s.question_ids(), s.target_ids(), segments)
                if len(ex.input_ids) > max(length, self.segment_size):
                    continue
                if self.pool_size is not None:
                    self._cache[cache_key] = ex
                return ex
        if not short_enough:
            raise NoSamplesError(f"task {self.task} has no sample with at most {self.max_facts} facts in {tries} "
                                 "stories; raise max_facts")
        raise NoSamplesError(
            f"task {self.task} has no sample that fits {segments} segment(s) of {self.segment_size} tokens "
            f"(length {length_name(length)} with the margin of {FINETUNE_MARGIN}) in {tries} stories; "
            "use a larger segment_size or another task"
        )

    @staticmethod
    def draw_key(stage: int, index: int, pool_size: int | None) -> str:
        """The key of draw ``index`` of stage ``stage``: the pool entry, or the (stage, index) pair."""
        return f"pool/{index % pool_size}" if pool_size is not None else f"{stage}/{index}"

    def get(self, stage: int, index: int) -> Example:
        """Sample ``index`` of the stage whose maximum is ``stage`` segments."""
        return self.example(self.draw_key(stage, index, self.pool_size), draw_segments(self.seed, stage, index))

    def check(self, segment_counts: Iterable[int]) -> None:
        """NoSamplesError now, not hours into a run, for a segment count whose stories rarely have a sample that
        fits: ``CHECK_DRAWS`` draws must each find one within ``CHECK_TRIES`` stories. A rate of fitting stories that
        passes (1 in 666 passes 2.5 % of the time, 1 in 300 almost always) leaves a training draw, with 30 times
        as many stories, a chance of failing below e^-30."""
        for n in segment_counts:
            for k in range(CHECK_DRAWS):
                self.example(f"check/{k}", n, CHECK_TRIES)

    def batch(self, stage: int, indices: Sequence[int]) -> list[Example]:
        return [self.get(stage, k) for k in indices]


class OfficialData:
    """Training examples from official BABILong files (``data/qaN/<len>.json`` or the parquet layout).

    A draw of ``n`` segments reads the file of nominal length ``n * segment_size`` when the folder has one (e.g.
    ``"1k"`` for 1 x 1000, or files written with :func:`~babilong_fast.data.official.write_official` at those
    lengths), else the longest length below it: with 512-token segments, 2 segments read ``1k``, 32 read
    ``16k`` and 1 reads ``0k`` (the facts alone). Stage 0 reads ``0k``. Records whose
    ``context ‖ question ‖ GEN ‖ answer ‖ EOS`` does not fit ``max(n, 1)`` segments are passed over for the
    next one (contexts are never cut: a cut could drop a fact). Draw ``k`` of a stage reads position
    ``k % count`` of an order of the file's ``count`` records shuffled per (seed, stage, ``k // count``), so a
    stage does not replay an earlier stage's order; a record that does not fit gives way to the next one in
    that order.
    """

    def __init__(self, path: str, task: str, segment_size: int, seed: int = 0) -> None:
        from babilong_fast.data.official import load_official, scan_folder

        self.path, self.task, self.segment_size, self.seed = path, task, segment_size, seed
        self._load = lambda length: load_official(path, length=length, task=task)
        folder = Path(path)
        self._lengths = (sorted({n for t, n in scan_folder(folder) if t == task}, key=parse_length)
                         if folder.is_dir() else None)  # None: a single file, read for every segment count
        self._records: dict[str, list] = {}
        self._tok = get_tokenizer()
        self._cache: dict[tuple[int, int], Example | None] = {}  # (record, segments): None where it does not fit
        self._orders: dict[tuple[int, int, int], list[int]] = {}

    def length_for(self, segments: int) -> str | None:
        """The length name a draw of ``segments`` reads (None for a single file)."""
        if self._lengths is None:
            return None
        want = segments * self.segment_size
        if length_name(want) in self._lengths:
            return length_name(want)
        below = [n for n in self._lengths if parse_length(n) <= want]
        if not below:
            raise NoSamplesError(
                f"{self.path!r} has no {self.task} file at length {length_name(want)} or below "
                f"(needed for {segments} segment(s) of {self.segment_size} tokens); it has "
                f"{', '.join(self._lengths) or 'none'}"
            )
        return below[-1]

    def _records_for(self, segments: int) -> list:
        name = self.length_for(segments)
        if name not in self._records:
            try:
                recs = self._load(name)
            except FileNotFoundError as e:
                raise NoSamplesError(f"{e} (needed for {segments} segment(s) of {self.segment_size} tokens)") from None
            if not recs:
                raise NoSamplesError(f"{self.path!r} has no {self.task} samples at length {name}")
            self._records[name] = recs
        return self._records[name]

    def _example(self, segments: int, record: int) -> Example | None:
        """The example of record number ``record`` at ``segments`` segments; None if it does not fit them."""
        key = (record, segments)
        if key not in self._cache:
            r = self._records_for(segments)[record]
            ex = format_example(self._tok.encode(r.input), self._tok.encode(r.question),
                                self._tok.encode(r.target), segments)
            self._cache[key] = ex if len(ex.input_ids) <= max(segments, 1) * self.segment_size else None
        return self._cache[key]

    def _fitting(self, segments: int, order: Sequence[int], start: int) -> Example:
        """The example of the first record of ``order`` from position ``start`` on (cyclically) that fits."""
        for j in range(len(order)):
            ex = self._example(segments, order[(start + j) % len(order)])
            if ex is not None:
                return ex
        raise NoSamplesError(
            f"no {self.task} record at length {self.length_for(segments) or self.path} fits "
            f"{max(segments, 1)} segment(s) of {self.segment_size} tokens with its question and answer"
        )

    def _order(self, stage: int, count: int, round_: int) -> list[int]:
        """``range(count)`` shuffled per (seed, stage, round)."""
        key = (stage, count, round_)
        if key not in self._orders:
            order = list(range(count))
            random.Random(f"babilong_fast/train/official/{self.seed}/{stage}/{round_}").shuffle(order)
            if len(self._orders) >= 64:  # a few files' current rounds
                self._orders.pop(next(iter(self._orders)))
            self._orders[key] = order
        return self._orders[key]

    def get(self, stage: int, index: int) -> Example:
        """Sample ``index`` of the stage whose maximum is ``stage`` segments."""
        segments = draw_segments(self.seed, stage, index)
        count = len(self._records_for(segments))
        return self._fitting(segments, self._order(stage, count, index // count), index % count)

    def check(self, segment_counts: Iterable[int]) -> None:
        """NoSamplesError now for a segment count that no record serves (not at its first draw, hours into a run);
        the examples found are kept for the draws that want them."""
        for n in segment_counts:
            self._fitting(n, range(len(self._records_for(n))), 0)

    def batch(self, stage: int, indices: Sequence[int]) -> list[Example]:
        return [self.get(stage, k) for k in indices]
