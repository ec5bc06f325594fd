"""Rule-based sentence splitter: punctuation, quotes, abbreviations, initials and paragraph breaks."""
from __future__ import annotations

import pytest

from babilong_fast.data.sentences import split_sentences


@pytest.mark.parametrize(
    "text, expected",
    [
        ("It rained. We stayed in! Did you? Yes.", ["It rained.", "We stayed in!", "Did you?", "Yes."]),
        ("Mr. Darcy bowed. Mrs. Bennet smiled.", ["Mr. Darcy bowed.", "Mrs. Bennet smiled."]),
        ("Ask J. Smith now. Then go.", ["Ask J. Smith now.", "Then go."]),
        ('"Oh!" said she. "Come in."  He came.', ['"Oh!" said she.', '"Come in."', "He came."]),
        ("CHAPTER I\n\n\nEmma was\nhandsome. End", ["CHAPTER I", "Emma was\nhandsome.", "End"]),
        ("Wait... what? No", ["Wait... what?", "No"]),
        ("Wait... What? No", ["Wait...", "What?", "No"]),
        ("(It was late.) She slept.", ["(It was late.)", "She slept."]),
        ("", []),
        ("   \n\n  ", []),
    ],
    ids=["basic", "abbrev", "initial", "quotes", "paragraphs", "lowercase-next", "ellipsis", "bracket", "empty",
         "blank"],
)
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert list(split_sentences(text)) == expected


def test_split_keeps_all_text() -> None:
    text = 'He said, "No." Then:\n\nShe left!  Mr. and Mrs. X. came... later? yes.\nEnd'
    assert "".join(split_sentences(text)).replace(" ", "") == "".join(text.split())
