"""Seeded qa1-qa20 sample pools with disjoint train and test splits.

Split rule: a story goes to the test split iff the SHA-256 of its first two facts falls in the lowest
:data:`TEST_FRACTION` of the hash range. Every sample of a story starts with the story's first two facts,
so two equal samples always share their split: train and test are disjoint for any seeds, and no test
story shares a single sample with any train story. Generation itself is rejection sampling from one seeded
stream of stories, so the same (task, split, seed) always gives the same samples.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from typing import Literal

from babilong_fast.data.babi.more_stories import (
    counting,
    indefinite_knowledge,
    lists_sets,
    simple_negation,
    yes_no_location,
)
from babilong_fast.data.babi.reasoning_stories import path_finding, positional_reasoning, size_reasoning
from babilong_fast.data.babi.relations import two_arg_relations
from babilong_fast.data.babi.rest_stories import (
    agent_motivations,
    basic_coreference,
    basic_deduction,
    basic_induction,
    compound_coreference,
    conjunction,
    time_reasoning,
)
from babilong_fast.data.babi.sample import BabiSample
from babilong_fast.data.babi.stories import where_is_actor, where_is_object, where_was_object, who_what_gave

Split = Literal["train", "test"]

STORY_GENERATORS: dict[str, Callable[[random.Random], list[BabiSample]]] = {
    "qa1": where_is_actor,
    "qa2": where_is_object,
    "qa3": where_was_object,
    "qa4": two_arg_relations,
    "qa5": who_what_gave,
}

# qa6-qa10 live in their own table so code iterating STORY_GENERATORS (qa1-qa5) keeps its meaning.
MORE_STORY_GENERATORS: dict[str, Callable[[random.Random], list[BabiSample]]] = {
    "qa6": yes_no_location,
    "qa7": counting,
    "qa8": lists_sets,
    "qa9": simple_negation,
    "qa10": indefinite_knowledge,
}

# qa11-qa16 and qa20 in a third table, for the same reason.
REST_STORY_GENERATORS: dict[str, Callable[[random.Random], list[BabiSample]]] = {
    "qa11": basic_coreference,
    "qa12": conjunction,
    "qa13": compound_coreference,
    "qa14": time_reasoning,
    "qa15": basic_deduction,
    "qa16": basic_induction,
    "qa20": agent_motivations,
}

# qa17-qa19 (positional reasoning, size reasoning, path finding) in a fourth.
REASONING_STORY_GENERATORS: dict[str, Callable[[random.Random], list[BabiSample]]] = {
    "qa17": positional_reasoning,
    "qa18": size_reasoning,
    "qa19": path_finding,
}

# Every task, in task-number order (qa1 .. qa20).
ALL_STORY_GENERATORS = dict(sorted(
    {**STORY_GENERATORS, **MORE_STORY_GENERATORS, **REST_STORY_GENERATORS, **REASONING_STORY_GENERATORS}.items(),
    key=lambda kv: int(kv[0][2:]),
))

# Documented facts per sample (BABILong README / paper Table 1); samples outside are dropped.
FACT_RANGE: dict[str, tuple[int, int]] = {
    "qa1": (2, 10),
    "qa2": (2, 68),
    "qa3": (4, 320),
    "qa4": (2, 2),
    "qa5": (2, 126),
    "qa6": (2, 26),
    "qa7": (2, 52),
    "qa8": (2, 50),
    "qa9": (2, 10),
    "qa10": (2, 10),
    # qa11-qa20: not in the BABILong table; bAbI-like ranges fixed by how these generators build stories.
    "qa11": (2, 10),  # 5 questions, one after every 2 moves (as qa1)
    "qa12": (2, 10),  # same
    "qa13": (2, 10),  # same
    "qa14": (2, 16),  # 2-4 people x 2-4 timed moves, questions from the 2nd fact on
    "qa15": (8, 8),  # 4 fear rules + 4 memberships, then 3 questions
    "qa16": (9, 9),  # 4 species+colour pairs + 1 species fact, then 1 question
    "qa17": (2, 2),  # 2 steps between 3 shapes, then 8 questions (as bAbI)
    "qa18": (4, 9),  # a chain of 2 comparisons + 2-7 more (as bAbI), then up to 5 questions
    "qa19": (5, 5),  # 2 path facts + 3 decoys (all six rooms), then 1 question
    "qa20": (2, 12),  # 2-4 people x (need, go, get), a question after every fact from the 2nd on
}

TEST_FRACTION = 0.1


def split_of(facts: list[str]) -> Split:
    """The split a story (or any of its samples) belongs to, from its first two facts."""
    digest = hashlib.sha256("\n".join(facts[:2]).encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") < TEST_FRACTION * 2**64 else "train"


def iter_samples(task: str, split: Split = "train", seed: int = 0) -> Iterator[BabiSample]:
    """Endless deterministic stream of ``task`` samples from ``split``, story by story.

    Args:
        task: any key of :data:`ALL_STORY_GENERATORS` (qa1-qa20).
        split: ``"train"`` or ``"test"``; the pools never share a sample.
        seed: stream seed; any seed gives samples from the same split pool.
    """
    _check_task_split(task, split)
    rng = random.Random(f"babilong_fast/{task}/{split}/{seed}")
    while True:
        yield from _story_samples(task, split, rng)


def draw_story(task: str, split: Split, key: str) -> list[BabiSample]:
    """The samples (one per question, as :func:`iter_samples` yields them) of one ``task`` story from ``split``, a
    pure function of ``key``: random access, unlike :func:`iter_samples`.

    Examples::

        >>> story = draw_story("qa1", "train", "run0/17")
        >>> story == draw_story("qa1", "train", "run0/17"), len(story[0]["facts"]) < len(story[-1]["facts"])
        (True, True)
    """
    _check_task_split(task, split)
    rng = random.Random(f"babilong_fast/{task}/{split}/draw/{key}")
    while not (samples := _story_samples(task, split, rng)):
        pass
    return samples


def _check_task_split(task: str, split: str) -> None:
    if task not in ALL_STORY_GENERATORS:
        raise ValueError(f"unknown task {task!r}; expected one of {list(ALL_STORY_GENERATORS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def _story_samples(task: str, split: str, rng: random.Random) -> list[BabiSample]:
    """The samples of the next story ``rng`` makes, in the task's fact range; none when it is of the other split."""
    story = ALL_STORY_GENERATORS[task](rng)
    if split_of(story[0]["facts"]) != split:
        return []
    lo, hi = FACT_RANGE[task]
    return [s for s in story if lo <= len(s["facts"]) <= hi]


def generate(task: str, n: int, split: Split = "train", seed: int = 0) -> list[BabiSample]:
    """The first ``n`` samples of :func:`iter_samples` (``task``, ``split``, ``seed``).

    Examples::

        >>> s = generate("qa1", 1, "test", seed=0)[0]
        >>> sorted(s)
        ['answer', 'facts', 'question', 'supporting']
    """
    stream = iter_samples(task, split, seed)
    return [next(stream) for _ in range(n)]
