"""A small rule-based English sentence splitter, deterministic and dependency-free.

BABILong splits background text with NLTK's untrained ``PunktSentenceTokenizer()``, which is in effect a
punctuation rule. This module applies a similar rule of its own:

1. A sentence ends after a run of ``.``, ``!``, ``?`` or ``…``, plus any closing quotes, brackets or ``_``,
   when whitespace follows and the next visible character is not a lower-case letter (so ``"Oh!" said
   she`` stays one sentence).
2. A single ``.`` does not end a sentence after a title abbreviation in :data:`ABBREVIATIONS`
   (``Mr. Darcy``) or after a lone capital initial (``J. Smith``). Untrained Punkt does split there; the
   difference only moves a few boundaries.
3. A blank line (paragraph break) always ends a sentence, so headings such as ``CHAPTER I`` stand alone.

Line breaks inside a sentence are kept, as PG19 text keeps them. Sentences are returned stripped.
"""
from __future__ import annotations

import re
from collections.abc import Iterator

ABBREVIATIONS = frozenset(
    "mr mrs ms messrs dr st sr jr capt col gen lt sgt rev prof hon esq mme mlle mons no vol ch".split()
)

_CANDIDATE = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]_]*(?=\s)|\n[ \t]*\n")
_LAST_WORD = re.compile(r"(\w+)$")
_NEXT_VISIBLE = re.compile(r"\s*(\S)")


def _is_boundary(text: str, m: re.Match[str]) -> bool:
    """Whether candidate ``m`` (end punctuation or a blank line) ends a sentence."""
    mark = m.group()
    if mark[0] == "\n":
        return True
    nxt = _NEXT_VISIBLE.match(text, m.end())
    if nxt is not None and nxt.group(1).islower():
        return False
    if mark.rstrip("\"'\u201d\u2019)]_") == ".":
        word = _LAST_WORD.search(text, max(0, m.start() - 12), m.start())
        if word is not None:
            w = word.group(1)
            if w.lower() in ABBREVIATIONS or (len(w) == 1 and w.isupper()):
                return False
    return True


def sentence_spans(text: str) -> Iterator[tuple[int, int]]:
    """Lazily yield ``(start, end)`` of each sentence of ``text``: ``text[start:end]`` is the stripped, non-empty
    sentence that :func:`split_sentences` yields."""
    start = 0
    for m in _CANDIDATE.finditer(text):
        if not _is_boundary(text, m):
            continue
        end = m.start() if m.group()[0] == "\n" else m.end()
        span = _strip_span(text, start, end)
        if span is not None:
            yield span
        start = m.end()
    span = _strip_span(text, start, len(text))
    if span is not None:
        yield span


def _strip_span(text: str, start: int, end: int) -> tuple[int, int] | None:
    piece = text[start:end]
    stripped = piece.lstrip()
    if not stripped.strip():
        return None
    a = start + len(piece) - len(stripped)
    return a, a + len(stripped.rstrip())


def split_sentences(text: str) -> Iterator[str]:
    """Lazily split ``text`` into stripped, non-empty sentences (rules in the module docstring).

    Args:
        text: any string; memory beyond ``text`` itself stays constant.

    Yields:
        sentences in order; their concatenation, ignoring whitespace, is ``text``.

    Examples::

        >>> list(split_sentences('Mr. Knightley came. "Oh!" said she. Yes.\\n\\nCHAPTER II\\nIt was'))
        ['Mr. Knightley came.', '"Oh!" said she.', 'Yes.', 'CHAPTER II\\nIt was']
    """
    for a, b in sentence_spans(text):
        yield text[a:b]
