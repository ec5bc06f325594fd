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

from babilong_fast.data.babi import iter_samples
from babilong_fast.data.builder import FactsTooLongError, build_sample
from babilong_fast.data.corpora import BundledNovels, TextSource
from babilong_fast.data.lengths import FINETUNE_MARGIN, length_name, parse_length
from babilong_fast.data.tokenizer import get_tokenizer
from babilong_fast.train.format import Example, format_example

MAX_TRIES = 1000


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

    Args:
        task: bAbI task.
        segment_size: tokens per segment.
        seed: data seed.
        pool_size: if set, sample ``k`` reuses bAbI story ``k % pool_size`` and its built example is cached
            (per segment count), so a long run cycles over a fixed pool; None draws a new story every time.
        background: background books (default: the bundled novels of the train split).
        max_facts: only stories with at most this many facts (None: all).
    """

    def __init__(
        self, task: str, segment_size: int, seed: int = 0, pool_size: int | None = None,
        background: TextSource | None = None, max_facts: int | None = None,
    ) -> None:
        self.task, self.segment_size, self.seed, self.pool_size = task, segment_size, seed, pool_size
        self.max_facts = max_facts
        self.background = background or BundledNovels("train")
        self._stories = iter_samples(task, "train", seed)
        self._story_list: list = []
        self._cache: dict[tuple[int, int], Example] = {}
        self._tok = get_tokenizer()

    def _story(self, j: int):
        skipped = 0
        while len(self._story_list) <= j:
            story = next(self._stories)
            if self.max_facts is None or len(story["facts"]) <= self.max_facts:
                self._story_list.append(story)
                skipped = 0
            elif (skipped := skipped + 1) >= MAX_TRIES:  # in a row
                raise NoSamplesError(f"task {self.task} has no story with at most {self.max_facts} facts "
                                     f"in {MAX_TRIES} draws; raise max_facts")
        return self._story_list[j]

    def example(self, story: int, segments: int) -> Example:
        """The example built from bAbI story ``story`` (or the next ones that fit) at ``segments`` segments
        (0: the facts alone, no background)."""
        key = (story, segments)
        if key in self._cache:
            return self._cache[key]
        length = segments * self.segment_size
        for j in range(story, story + MAX_TRIES):
            b = self._story(j)
            try:
                s = build_sample(
                    b["facts"], b["question"], b["answer"], length, seed=f"train/{self.seed}/{j}/{segments}",
                    margin=FINETUNE_MARGIN, background=self.background, task=self.task, tokenizer=self._tok,
                )
            except FactsTooLongError:
                continue
            ex = format_example(s.input_ids(), s.question_ids(), s.target_ids(), segments)
            if len(ex.input_ids) > max(length, self.segment_size):
                continue
            if self.pool_size is not None:
                self._cache[key] = ex
            return ex
        raise NoSamplesError(
            f"task {self.task} has no sample that fits {segments} segment(s) of {self.segment_size} tokens "
            f"(length {length_name(length)} with the margin of {FINETUNE_MARGIN}) in {MAX_TRIES} stories; "
            "use a larger segment_size or another task"
        )

    def get(self, stage: int, index: int) -> Example:
        """Sample ``index`` of the stage whose maximum is ``stage`` segments."""
        story = index % self.pool_size if self.pool_size is not None else index
        return self.example(story, draw_segments(self.seed, stage, index))

    def check(self, segment_counts: Iterable[int]) -> None:
        """NoSamplesError now for a segment count that no sample fits (not at its first draw, hours into a run)."""
        for n in segment_counts:
            self.example(0, n)

    def batch(self, stage: int, indices: Sequence[int]) -> list[Example]:
        return [self.get(stage, k) for k in indices]


class OfficialData:
    """Training examples from official BABILong files (``data/qaN/<len>.json`` or the parquet layout).

    A draw of ``n`` segments reads the file of nominal length ``n * segment_size`` when the folder has one (e.g.
    ``"1k"`` for 1 x 1000, or files written with :func:`~babilong_fast.data.official.write_official` at those
    lengths), else the longest length below it: with 512-token segments, 2 segments read ``1k``, 32 read
    ``16k`` and 1 reads ``0k`` (the facts alone). Stage 0 reads ``0k``. Records whose
    ``context ‖ question ‖ GEN ‖ answer ‖ EOS`` does not fit ``max(n, 1)`` segments are passed over for the
    next one (contexts are never cut: a cut could drop a fact).
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
        self._cache: dict[tuple[int, int], Example] = {}

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

    def _fitting(self, segments: int, start: int) -> Example:
        """The example of the first record from ``start`` on (cyclically) that fits ``segments`` segments."""
        recs = self._records_for(segments)
        room = max(segments, 1) * self.segment_size
        for j in range(len(recs)):
            r = recs[(start + j) % len(recs)]
            ex = format_example(self._tok.encode(r.input), self._tok.encode(r.question),
                                self._tok.encode(r.target), segments)
            if len(ex.input_ids) <= room:
                return ex
        raise NoSamplesError(
            f"no {self.task} record at length {self.length_for(segments) or self.path} fits "
            f"{max(segments, 1)} segment(s) of {self.segment_size} tokens with its question and answer"
        )

    def _example(self, segments: int, start: int) -> Example:
        key = (start, segments)
        if key not in self._cache:
            self._cache[key] = self._fitting(segments, start)
        return self._cache[key]

    def get(self, stage: int, index: int) -> Example:
        segments = draw_segments(self.seed, stage, index)
        return self._example(segments, index % len(self._records_for(segments)))

    def check(self, segment_counts: Iterable[int]) -> None:
        """NoSamplesError now for a segment count that no record serves (not at its first draw, hours into a run);
        the examples found are kept for the draws that want them."""
        for n in segment_counts:
            self._example(n, 0)

    def batch(self, stage: int, indices: Sequence[int]) -> list[Example]:
        return [self.get(stage, k) for k in indices]
