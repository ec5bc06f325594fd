"""GPT-2's pre-tokenizer (the split before BPE), written without the third-party ``regex`` module.

GPT-2 splits text with the pattern
``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``.
The standard ``re`` module has no ``\\p{L}``/``\\p{N}``, so :func:`split_gpt2` scans the text with the same
leftmost-first alternation semantics, classifying characters by their Unicode general category.
"""
from __future__ import annotations

import unicodedata
from functools import lru_cache

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")

# The Unicode White_Space property, which is what ``\s`` means in the regex engines GPT-2 tokenizers use.
WHITESPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)

LETTER, NUMBER, SPACE, OTHER = 0, 1, 2, 3


@lru_cache(maxsize=65536)
def char_class(ch: str) -> int:
    """Return LETTER (``\\p{L}``), NUMBER (``\\p{N}``), SPACE (``\\s``) or OTHER for one character."""
    if ch in WHITESPACE:
        return SPACE
    major = unicodedata.category(ch)[0]
    if major == "L":
        return LETTER
    if major == "N":
        return NUMBER
    return OTHER


def _run_end(text: str, start: int, cls: int) -> int:
    """Index just past the run of characters of class ``cls`` that begins at ``start``."""
    end, n = start, len(text)
    while end < n and char_class(text[end]) == cls:
        end += 1
    return end


def split_gpt2(text: str) -> list[str]:
    """Split ``text`` into GPT-2 pre-tokens; the pieces concatenate back to ``text``.

    Args:
        text: any string.

    Returns:
        The matches of :data:`GPT2_PATTERN`, in order.

    Examples::

        >>> split_gpt2("I'll  go 42x!\\n")
        ['I', "'ll", ' ', ' go', ' 42', 'x', '!', '\\n']
    """
    pieces: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "'":
            suffix = next((c for c in CONTRACTIONS if text.startswith(c, i + 1)), None)
            if suffix is not None:
                pieces.append(text[i : i + 1 + len(suffix)])
                i += 1 + len(suffix)
                continue
        cls = char_class(ch)
        start = i
        if ch == " " and i + 1 < n and char_class(text[i + 1]) != SPACE:
            cls, start = char_class(text[i + 1]), i + 1
        if cls != SPACE:
            end = _run_end(text, start, cls)
        else:
            end = _run_end(text, i, SPACE)
            # \s+(?!\S): leave the last whitespace character to prefix the next word, unless it is alone.
            if end < n and end - i > 1:
                end -= 1
        pieces.append(text[i:end])
        i = end
    return pieces
