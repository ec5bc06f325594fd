"""Endless, seeded stream of GPT-2-tokenized background sentences (BABILong's PG19 sentence sampler).

Each round follows the reference sampler: pick a random book of the source, start at a uniformly random
character offset, cut ``chunk_chars`` characters, split them into sentences
(:func:`~babilong_fast.data.sentences.split_sentences`), drop the chunk's first and last sentence (they are
usually partial), and yield the rest in order, each encoded with one leading space and no special tokens,
skipping those shorter than ``min_tokens``. When the chunk runs out, the next round draws a new book.

Two ways to cut a round, chosen by the window's size (both seeded; the choice depends only on the
arguments, so a stream always replays the same):

- a window of at least a quarter of the book (long samples) is served from a per-book index, built once per
  process and kept in a small LRU: the book split into sentences once, every sentence tokenized once, all
  ids in one flat array. A round is then an array slice (the sentences lying wholly between the one that
  holds the offset and the one that holds the window's end, exclusive), which is what makes 10M-token
  samples stream at millions of tokens per second;
- a smaller window is split and tokenized on its own, holding only that chunk. The two can differ only at
  a window's edges, where a sentence split of the chunk alone may differ from the whole book's.

Memory: the index of the books in use (ids as int32, about 4 bytes per token; the bundled test split is
about 0.2M tokens) plus one round; it does not grow with how much is drawn.
"""
from __future__ import annotations

import random
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from babilong_fast.data.corpora import BundledNovels, TextSource
from babilong_fast.data.sentences import sentence_spans, split_sentences
from babilong_fast.data.tokenizer import GPT2Tokenizer, get_tokenizer

MIN_SENTENCE_TOKENS = 10
DEFAULT_CHUNK_CHARS = 200_000
MAX_EMPTY_ROUNDS = 200
INDEX_MIN_WINDOW_FRACTION = 0.25
INDEX_CACHE_BOOKS = 8


@dataclass(frozen=True)
class BookIndex:
    """One book split into sentences and tokenized once.

    Attributes:
        text_len: characters in the book.
        starts, ends: ``[S]`` char span of every sentence (stripped), in order.
        kept: ``[K]`` indices of the sentences with at least ``min_tokens`` tokens.
        offsets: ``[K + 1]`` token offsets of the kept sentences in ``ids``.
        ids: ``[offsets[-1]]`` int32, the kept sentences' ids (``" " + sentence``), concatenated.
    """

    text_len: int
    starts: np.ndarray
    ends: np.ndarray
    kept: np.ndarray
    offsets: np.ndarray
    ids: np.ndarray

    @classmethod
    def build(cls, text: str, tokenizer: GPT2Tokenizer, min_tokens: int) -> BookIndex:
        spans = np.array(list(sentence_spans(text)), dtype=np.int64).reshape(-1, 2)
        encoded = [tokenizer.encode(" " + text[a:b]) for a, b in spans]
        lengths = np.array([len(e) for e in encoded], dtype=np.int64)
        kept = np.flatnonzero(lengths >= min_tokens)
        offsets = np.zeros(len(kept) + 1, dtype=np.int64)
        np.cumsum(lengths[kept], out=offsets[1:])
        flat = np.fromiter((i for k in kept for i in encoded[k]), dtype=np.int32, count=int(offsets[-1]))
        return cls(len(text), spans[:, 0].copy(), spans[:, 1].copy(), kept, offsets, flat)

    def window(self, offset: int, chunk_chars: int) -> tuple[np.ndarray, np.ndarray]:
        """Kept sentences of the chunk ``[offset, offset + chunk_chars)`` less its first and last sentence:
        ``(ids, lengths)`` (a view into :attr:`ids` and each sentence's token count)."""
        first = int(np.searchsorted(self.ends, offset, side="right"))  # the sentence holding (or after) offset
        end = min(offset + chunk_chars, self.text_len)
        last = int(np.searchsorted(self.starts, end, side="left")) - 1  # the last sentence starting inside
        a = int(np.searchsorted(self.kept, first + 1, side="left"))
        b = int(np.searchsorted(self.kept, last, side="left"))
        if b <= a:
            return self.ids[:0], self.offsets[:0]
        return self.ids[self.offsets[a]:self.offsets[b]], np.diff(self.offsets[a:b + 1])


_INDEXES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def book_index(source: TextSource, book: int, tokenizer: GPT2Tokenizer, min_tokens: int) -> BookIndex:
    """The :class:`BookIndex` of ``source.text(book)``, cached per source (the last few books used)."""
    try:
        cache = _INDEXES.setdefault(source, OrderedDict())
    except TypeError:  # a source that cannot be weakly referenced: no cache
        return BookIndex.build(source.text(book), tokenizer, min_tokens)
    key = (book, id(tokenizer), min_tokens)
    index = cache.get(key)
    if index is None:
        index = cache[key] = BookIndex.build(source.text(book), tokenizer, min_tokens)
        while len(cache) > INDEX_CACHE_BOOKS:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return index


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


def background_rounds(
    source: TextSource | None = None,
    seed: int | str = 0,
    *,
    chunk_chars: int = DEFAULT_CHUNK_CHARS,
    min_tokens: int = MIN_SENTENCE_TOKENS,
    tokenizer: GPT2Tokenizer | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless stream of background rounds, each ``(ids [n] int32, lengths [s])``: ``s`` consecutive sentences
    whose ids are concatenated in ``ids`` (``lengths.sum() == n``). Rounds may be empty.

    Arguments as :func:`background_sentences`, which yields the same sentences one by one.

    Raises:
        ValueError: if :data:`MAX_EMPTY_ROUNDS` rounds in a row give no usable sentence (an empty or too short
            source).
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
        book = rng.randrange(len(source))
        text = source.text(book)
        offset = rng.randrange(len(text)) if text else 0
        if chunk_chars >= INDEX_MIN_WINDOW_FRACTION * len(text):
            ids, lengths = book_index(source, book, tok, min_tokens).window(offset, chunk_chars)
        else:
            encoded = [tok.encode(" " + s) for s in _inner_sentences(text[offset:offset + chunk_chars])]
            encoded = [e for e in encoded if len(e) >= min_tokens]
            lengths = np.array([len(e) for e in encoded], dtype=np.int64)
            ids = np.fromiter((i for e in encoded for i in e), dtype=np.int32, count=int(lengths.sum()))
        empty_rounds = 0 if len(lengths) else empty_rounds + 1
        if empty_rounds >= MAX_EMPTY_ROUNDS:
            raise ValueError(
                f"background source {source.name!r} gave no sentence of >= {min_tokens} tokens in "
                f"{MAX_EMPTY_ROUNDS} rounds; it is empty or too short"
            )
        yield ids, lengths


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
        ValueError: if :data:`MAX_EMPTY_ROUNDS` rounds in a row give no usable sentence (an empty or too short
            source).

    Examples::

        >>> stream = background_sentences(seed=0)
        >>> len(next(stream)) >= 10
        True
    """
    rounds = background_rounds(source, seed, chunk_chars=chunk_chars, min_tokens=min_tokens, tokenizer=tokenizer)
    for ids, lengths in rounds:
        pos = 0
        for n in lengths.tolist():
            yield ids[pos:pos + n].tolist()
            pos += n
