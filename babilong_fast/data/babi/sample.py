"""The bAbI sample record shared by the generators."""
from __future__ import annotations

from typing import TypedDict


class BabiSample(TypedDict):
    """One question with its story so far.

    Keys:
        facts: the story's statements up to the question, in order (earlier questions removed).
        question: e.g. ``"Where is Mary?"`` (no trailing space; :func:`~babilong_fast.data.builder.build_sample` adds
            the one the bAbI files and the released data keep).
        answer: one word with bAbI casing (places and objects lower-case, names capitalised).
        supporting: 0-based indices into ``facts`` of the supporting facts, ascending.
    """

    facts: list[str]
    question: str
    answer: str
    supporting: list[int]


def make_sample(facts: list[str], question: str, answer: str, supporting: set[int] | list[int]) -> BabiSample:
    """Snapshot ``facts`` (copied) into a :class:`BabiSample`."""
    return BabiSample(facts=list(facts), question=question, answer=answer, supporting=sorted(set(supporting)))
