"""Seeded bAbI generators for BABILong tasks qa1-qa5 (samples: facts, question, answer, supporting)."""
from __future__ import annotations

from babilong_fast.data.babi.generate import FACT_RANGE, STORY_GENERATORS, generate, iter_samples, split_of
from babilong_fast.data.babi.sample import BabiSample

TASKS = tuple(STORY_GENERATORS)

__all__ = ["FACT_RANGE", "STORY_GENERATORS", "TASKS", "BabiSample", "generate", "iter_samples", "split_of"]
