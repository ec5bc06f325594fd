"""BABILong length names ("0k", "4k", "128k", "1M", "10M", ...) and the token budgets they imply."""
from __future__ import annotations

import numbers
import re

PROMPT_MARGIN = 300
FINETUNE_MARGIN = 20

NAMED_LENGTHS = (
    "0k", "1k", "2k", "4k", "8k", "16k", "32k", "64k", "128k", "256k", "512k", "1M", "10M", "50M",
)

_LENGTH = re.compile(r"([0-9]+)([kKM]?)")  # ASCII digits: \d matches any script's
_SCALE = {"": 1, "k": 1000, "K": 1000, "M": 1_000_000}


def parse_length(length: str | int) -> int:
    """Nominal sample length in GPT-2 tokens (``k`` = 1000, ``M`` = 1,000,000, as in BABILong).

    Args:
        length: a name such as ``"0k"``, ``"4k"``, ``"128k"``, ``"1M"``, ``"10M"``, a digit string, or an int.

    Returns:
        the length as a non-negative int.

    Raises:
        ValueError: for negative lengths or strings that are not ``<digits>[k|K|M]``.

    Examples::

        >>> parse_length("128k"), parse_length("1M"), parse_length(3333)
        (128000, 1000000, 3333)
    """
    if isinstance(length, bool) or not isinstance(length, (numbers.Integral, str)):
        raise ValueError(f"length must be an int or a name like '4k' or '1M', got {length!r}")
    if isinstance(length, numbers.Integral):  # numpy ints too
        if length < 0:
            raise ValueError(f"length must be non-negative, got {length}")
        return int(length)
    if length.strip().startswith("-"):
        raise ValueError(f"length must be non-negative, got {length!r}")
    m = _LENGTH.fullmatch(length.strip())
    if m is None:
        raise ValueError(
            f"unknown length {length!r}: expected an int or <digits>k / <digits>M, e.g. one of {NAMED_LENGTHS}"
        )
    return int(m.group(1)) * _SCALE[m.group(2)]


def length_name(tokens: int) -> str:
    """The BABILong name of a nominal length (``128000 -> "128k"``, ``10**6 -> "1M"``), else the digits."""
    if tokens >= 1_000_000 and tokens % 1_000_000 == 0:
        return f"{tokens // 1_000_000}M"
    if tokens % 1000 == 0:
        return f"{tokens // 1000}k"
    return str(tokens)


def check_margin(margin: object) -> int:
    """``margin`` (tokens kept free after the input) if it is a non-negative int, else a ValueError."""
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
        raise ValueError(f"margin must be a non-negative int, got {margin!r}")
    return margin


def input_budget(length: str | int, margin: int = PROMPT_MARGIN) -> int:
    """Tokens for facts plus background: the nominal length minus ``margin`` (300 for the LLM prompt, 20 for
    fine-tuning). Can be zero or negative for short lengths (``"0k"``)."""
    return parse_length(length) - check_margin(margin)
