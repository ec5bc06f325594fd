"""BABILong sample streams: seeded bAbI qa1-qa20 samples hidden in background text of a given length."""
from __future__ import annotations

import itertools
from collections.abc import Iterator

from babilong_fast.data.babi import iter_samples
from babilong_fast.data.background import MIN_SENTENCE_TOKENS
from babilong_fast.data.builder import BabilongSample, FactsTooLongError, build_sample
from babilong_fast.data.corpora import BundledNovels, Split, TextSource
from babilong_fast.data.lengths import PROMPT_MARGIN, check_margin, parse_length
from babilong_fast.data.tokenizer import GPT2Tokenizer, get_tokenizer

MAX_SKIPPED_IN_A_ROW = 1000


class BabilongGenerator:
    """Endless, deterministic stream of :class:`~babilong_fast.data.builder.BabilongSample` for one task and length.

    The i-th bAbI sample of ``iter_samples(task, split, seed)`` becomes a sample with seed
    ``"{task}/{split}/{seed}/{i}"``, so every sample has its own replayable background and fact offsets.
    Stories longer than ``budget // 8`` lines are skipped (``drop_long_stories``), as in the reference
    generator; :attr:`skipped` counts them.

    Args:
        task: ``"qa1"`` .. ``"qa20"``.
        length: nominal length (``"0k"``, ``"4k"``, ``"1M"``, an int, ...).
        split: ``"train"`` or ``"test"``: selects the bAbI pool and the default background books.
        seed: stream seed.
        margin: 300 (LLM prompt, default) or 20 (fine-tuning).
        background: background source; default ``BundledNovels(split)``.
        drop_long_stories: skip stories over the reference limit instead of building them.
        min_sentence_tokens: shortest background sentence kept.
        tokenizer: defaults to the shared GPT-2 tokenizer.

    Examples::

        >>> gen = BabilongGenerator("qa1", "1k", split="test", seed=0)
        >>> s = gen.take(1)[0]
        >>> s.num_tokens, s.target in s.text()
        (700, True)
    """

    def __init__(
        self,
        task: str,
        length: str | int,
        split: Split = "test",
        seed: int = 0,
        margin: int = PROMPT_MARGIN,
        background: TextSource | None = None,
        *,
        drop_long_stories: bool = True,
        min_sentence_tokens: int = MIN_SENTENCE_TOKENS,
        tokenizer: GPT2Tokenizer | None = None,
    ) -> None:
        self.length = parse_length(length)
        check_margin(margin)
        if self.length > 0 and self.length <= margin:
            raise ValueError(f"length {length!r} leaves no tokens after the margin of {margin}")
        next(iter_samples(task, split, seed))
        self.task, self.split, self.seed, self.margin = task, split, seed, margin
        self.background = BundledNovels(split) if background is None else background
        self.drop_long_stories = drop_long_stories
        self.min_sentence_tokens = min_sentence_tokens
        self.tokenizer = tokenizer or get_tokenizer()
        self.skipped = 0

    def __iter__(self) -> Iterator[BabilongSample]:
        in_a_row = 0
        for i, babi in enumerate(iter_samples(self.task, self.split, self.seed)):
            try:
                sample = build_sample(
                    babi["facts"], babi["question"], babi["answer"], self.length,
                    seed=f"{self.task}/{self.split}/{self.seed}/{i}", margin=self.margin,
                    background=self.background, task=self.task, supporting=babi["supporting"],
                    drop_long_stories=self.drop_long_stories, min_sentence_tokens=self.min_sentence_tokens,
                    tokenizer=self.tokenizer,
                )
            except FactsTooLongError:
                self.skipped += 1
                in_a_row += 1
                if in_a_row >= MAX_SKIPPED_IN_A_ROW:
                    raise ValueError(
                        f"{MAX_SKIPPED_IN_A_ROW} {self.task} stories in a row are too long for length "
                        f"{self.length} (margin {self.margin}); use a longer length"
                    ) from None
                continue
            in_a_row = 0
            yield sample

    def take(self, n: int) -> list[BabilongSample]:
        """The first ``n`` samples of the stream."""
        return list(itertools.islice(iter(self), n))
