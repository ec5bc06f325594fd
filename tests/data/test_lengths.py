"""Length names, budgets and their errors."""
from __future__ import annotations

import pytest

from babilong_fast.data.lengths import NAMED_LENGTHS, input_budget, length_name, parse_length


@pytest.mark.parametrize(
    "name, tokens",
    [("0k", 0), ("1k", 1000), ("4k", 4000), ("128k", 128_000), ("512k", 512_000), ("1M", 1_000_000),
     ("10M", 10_000_000), ("50M", 50_000_000), ("3333", 3333), (3333, 3333), (0, 0), (" 2K ", 2000)],
)
def test_parse_length(name: str | int, tokens: int) -> None:
    assert parse_length(name) == tokens


def test_named_lengths_round_trip() -> None:
    for name in NAMED_LENGTHS:
        assert length_name(parse_length(name)) == name


def test_numpy_ints() -> None:
    np = pytest.importorskip("numpy")
    assert parse_length(np.int64(4000)) == 4000 and type(parse_length(np.int32(7))) is int


@pytest.mark.parametrize("bad", ["abc", "1.5k", "4G", "1m", "k", "", "-1k", -5, True, 4.0, None, "\u0664k", "\uff14k"])
def test_parse_length_errors(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_length(bad)


def test_input_budget() -> None:
    assert input_budget("4k") == 3700
    assert input_budget("128k") == 127_700
    assert input_budget("16k", margin=20) == 15_980
    assert input_budget("0k") == -300
    for bad in (-1, 2.5, True, "20"):
        with pytest.raises(ValueError, match="margin must be a non-negative int"):
            input_budget("1k", margin=bad)
