"""qa4 (two-argument relations): two facts place three locations on a line; one question about the middle."""
from __future__ import annotations

import random

from babilong_fast.data.babi import vocab
from babilong_fast.data.babi.sample import BabiSample, make_sample

AXES = (("north", "south"), ("west", "east"))


def two_arg_relations(rng: random.Random) -> list[BabiSample]:
    """One story = one sample: facts linking the middle location B to each end, then a question naming B.

    With the line ``A - B - C`` ordered along ``first`` (e.g. A north of B north of C), each fact is phrased
    from either side ("A is north of B" or "B is south of A") and the two facts come in random order.
    """
    first, second = rng.choice(AXES)
    a, b, c = rng.sample(vocab.LOCATIONS, 3)
    facts, idx_of_end = [], {}
    for x, y, end in rng.sample([(a, b, a), (b, c, c)], 2):
        sentence = vocab.relation_sentence(x, first, y) if rng.random() < 0.5 else vocab.relation_sentence(y, second, x)
        idx_of_end[end] = len(facts)
        facts.append(sentence)
    # (question, answer): "what is D of B" names the end lying D of B; "what is B D of" the end B lies D of.
    question, answer = rng.choice((
        (f"What is {first} of the {b}?", a),
        (f"What is {second} of the {b}?", c),
        (f"What is the {b} {first} of?", c),
        (f"What is the {b} {second} of?", a),
    ))
    return [make_sample(facts, question, answer, {idx_of_end[answer]})]
