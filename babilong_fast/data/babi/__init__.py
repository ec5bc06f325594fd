"""Seeded bAbI generators for BABILong tasks qa1-qa20 (samples: facts, question, answer, supporting)."""
from __future__ import annotations

from babilong_fast.data.babi.generate import (
    ALL_STORY_GENERATORS,
    FACT_RANGE,
    MORE_STORY_GENERATORS,
    REASONING_STORY_GENERATORS,
    REST_STORY_GENERATORS,
    STORY_GENERATORS,
    draw_story,
    generate,
    iter_samples,
    split_of,
)
from babilong_fast.data.babi.sample import BabiSample

TASKS = tuple(STORY_GENERATORS)  # qa1-qa5
MORE_TASKS = tuple(MORE_STORY_GENERATORS)  # qa6-qa10
REST_TASKS = tuple(REST_STORY_GENERATORS)  # qa11-qa16, qa20
REASONING_TASKS = tuple(REASONING_STORY_GENERATORS)  # qa17-qa19
ALL_TASKS = tuple(ALL_STORY_GENERATORS)  # qa1-qa20, in order

__all__ = ["ALL_STORY_GENERATORS", "ALL_TASKS", "FACT_RANGE", "MORE_STORY_GENERATORS", "MORE_TASKS",
           "REASONING_STORY_GENERATORS", "REASONING_TASKS", "REST_STORY_GENERATORS", "REST_TASKS", "STORY_GENERATORS",
           "TASKS", "BabiSample", "draw_story", "generate", "iter_samples", "split_of"]
