"""Endless, seeded stream of GPT-2-tokenized background sentences (BABILong's PG19 sentence sampler).

Each round follows the reference sampler: pick a random book of the source, start at a uniformly random
character offset, cut ``chunk_chars`` characters, split them into sentences
(:func:`~babilong_fast.data.sentences.split_sentences`), drop the chunk's first and last sentence (they are
usually partial), and yield the rest in order, each encoded with one leading space and no special tokens,
skipping those shorter than ``min_tokens``. When the chunk runs out, the next round draws a new book.

Only the current book and chunk are held, so memory does not grow with how much is drawn.
"""
from __future__ import annotations

import random
from collections.abc import Iterator

from babilong_fast.data.corpora import BundledNovels, TextSource
from babilong_fast.data.sentences import split_sentences
from babilong_fast.data.tokenizer import GPT2Tokenizer, get_tokenizer

MIN_SENTENCE_TOKENS = 10
DEFAULT_CHUNK_CHARS = 200_000
MAX_EMPTY_ROUNDS = 200


def _inner_sentences(chunk: str) -> Iterator[str]:
    """Sentences of ``chunk`` without its first and last one."""
    sentences = split_sentences(chunk)
    if next(sentences, None) is None:
        return
    prev = next(sentences, None)
    if prev is None:
        return
    for s in sentences:
        yield prev
        prev = s


def background_sentences(
    source: TextSource | None = None,
    seed: int | str = 0,
    *,
    chunk_chars: int = DEFAULT_CHUNK_CHARS,
    min_tokens: int = MIN_SENTENCE_TOKENS,
    tokenizer: GPT2Tokenizer | None = None,
) -> Iterator[list[int]]:
    """Endless stream of background sentences as GPT-2 token ids.

    Args:
        source: a :class:`~babilong_fast.data.corpora.TextSource`; default ``BundledNovels("test")``.
        seed: the same (source, seed, chunk_chars, min_tokens) always gives the same stream.
        chunk_chars: characters cut per round (the reference uses about 10x the token budget).
        min_tokens: sentences with fewer tokens (counted with the leading space) are skipped.
        tokenizer: defaults to the shared GPT-2 tokenizer.

    Yields:
        one ``list[int]`` per sentence, the ids of ``" " + sentence``.

    Raises:
        RuntimeError: if :data:`MAX_EMPTY_ROUNDS` rounds in a row give no usable sentence.

    Examples::

        >>> stream = background_sentences(seed=0)
        >>> len(next(stream)) >= 10
        True
    """
    if chunk_chars < 1:
        raise ValueError(f"chunk_chars must be positive, got {chunk_chars}")
    source = BundledNovels("test") if source is None else source
    if len(source) == 0:
        raise ValueError(f"background source {source.name!r} holds no texts")
    tok = tokenizer or get_tokenizer()
    rng = random.Random(f"babilong_fast/background/{seed}")
    empty_rounds = 0
    while True:
        text = source.text(rng.randrange(len(source)))
        offset = rng.randrange(len(text)) if text else 0
        empty_rounds += 1
        for sentence in _inner_sentences(text[offset:offset + chunk_chars]):
            ids = tok.encode(" " + sentence)
            if len(ids) >= min_tokens:
                empty_rounds = 0
                yield ids
        if empty_rounds >= MAX_EMPTY_ROUNDS:
            raise RuntimeError(
                f"background source {source.name!r} gave no sentence of >= {min_tokens} tokens in "
                f"{MAX_EMPTY_ROUNDS} rounds; it is empty or too short"
            )
