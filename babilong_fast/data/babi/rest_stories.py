"""Story generators for qa11-qa16 and qa20: each returns the samples of one story (one per question).

Answers and supporting facts are read off a simulated state (who is where, which species fears which, which
colour each species has, each person's timed schedule, each person's need), never off the rendered text.
Every question comes after at least two facts, so a story's split (hash of its first two facts) is the split of
each of its samples.
"""
from __future__ import annotations

import random

from babilong_fast.data.babi import vocab
from babilong_fast.data.babi.sample import BabiSample, make_sample
from babilong_fast.data.babi.stories import QUESTIONS_PER_STORY

GENDER = {"John": "he", "Daniel": "he", "Mary": "she", "Sandra": "she"}
THEN = ("Then", "After that", "Following that", "Afterwards")


def _new_place(rng: random.Random, here: str | None) -> str:
    return rng.choice([x for x in vocab.LOCATIONS if x != here])


def basic_coreference(rng: random.Random) -> list[BabiSample]:
    """qa11: rounds of two moves, named ("P went to the L.") or, right after a named move, by pronoun
    ("Then he went to the L.", the pronoun referring to the previous sentence's subject); "Where is P?".

    Support: the person's last move, plus the named sentence before it when that move was by pronoun.
    """
    where: dict[str, str] = {}
    support: dict[str, set[int]] = {}
    facts: list[str] = []
    samples: list[BabiSample] = []
    prev_named: str | None = None
    for _ in range(QUESTIONS_PER_STORY):
        for _ in range(2):
            i = len(facts)
            if prev_named is not None and rng.random() < 0.5:
                person = prev_named
                place = _new_place(rng, where.get(person))
                verb = rng.choice(vocab.MOVE_VERBS)
                facts.append(f"{rng.choice(THEN)} {GENDER[person]} {verb} the {place}.")
                support[person] = {i - 1, i}
                prev_named = None
            else:
                person = rng.choice(vocab.PEOPLE)
                place = _new_place(rng, where.get(person))
                facts.append(vocab.move_sentence(rng, person, place))
                support[person] = {i}
                prev_named = person
            where[person] = place
        person = rng.choice(sorted(where))
        samples.append(make_sample(facts, f"Where is {person}?", where[person], support[person]))
    return samples


def _pair_sentence(rng: random.Random, a: str, b: str, place: str) -> str:
    return f"{a} and {b} {rng.choice(vocab.MOVE_VERBS)} the {place}."


def conjunction(rng: random.Random) -> list[BabiSample]:
    """qa12: rounds of two pair moves ("P and Q went to the L."); "Where is P?", supported by P's last move."""
    where: dict[str, str] = {}
    support: dict[str, int] = {}
    facts: list[str] = []
    samples: list[BabiSample] = []
    for _ in range(QUESTIONS_PER_STORY):
        for _ in range(2):
            a, b = rng.sample(vocab.PEOPLE, 2)
            place = rng.choice(vocab.LOCATIONS)
            facts.append(_pair_sentence(rng, a, b, place))
            for p in (a, b):
                where[p], support[p] = place, len(facts) - 1
        person = rng.choice(sorted(where))
        samples.append(make_sample(facts, f"Where is {person}?", where[person], {support[person]}))
    return samples


def compound_coreference(rng: random.Random) -> list[BabiSample]:
    """qa13: rounds of two pair moves, named ("P and Q went to the L.") or, right after a named pair move,
    "Then they went to the L." (they = the previous sentence's pair); "Where is P?".

    Support: P's last move, plus the named pair sentence before it when that move was by "they".
    """
    where: dict[str, str] = {}
    support: dict[str, set[int]] = {}
    facts: list[str] = []
    samples: list[BabiSample] = []
    prev_pair: tuple[str, str] | None = None
    for _ in range(QUESTIONS_PER_STORY):
        for _ in range(2):
            i = len(facts)
            if prev_pair is not None and rng.random() < 0.5:
                pair = prev_pair
                place = rng.choice([x for x in vocab.LOCATIONS if x != where[pair[0]]])
                facts.append(f"{rng.choice(THEN)} they {rng.choice(vocab.MOVE_VERBS)} the {place}.")
                sup = {i - 1, i}
                prev_pair = None
            else:
                pair = tuple(rng.sample(vocab.PEOPLE, 2))
                place = rng.choice(vocab.LOCATIONS)
                facts.append(_pair_sentence(rng, pair[0], pair[1], place))
                sup = {i}
                prev_pair = pair
            for p in pair:
                where[p], support[p] = place, sup
        person = rng.choice(sorted(where))
        samples.append(make_sample(facts, f"Where is {person}?", where[person], support[person]))
    return samples


# qa14 (time reasoning): qa10's cast and places, four ordered times of day.
TIMES = ("yesterday", "this morning", "this afternoon", "this evening")


def time_reasoning(rng: random.Random) -> list[BabiSample]:
    """qa14: see :func:`_time_story`; stories that happen to ask nothing are redrawn."""
    while True:
        samples = _time_story(rng)
        if samples:
            return samples


def _time_story(rng: random.Random) -> list[BabiSample]:
    """qa14: 2-4 people each get 2-4 moves at increasing times to distinct places; all moves are told in a
    shuffled order ("Julie went to the school this morning." / "Yesterday Julie went to the office.").

    After a fact (from the second on) a question "Where was P before the L?" may be asked about two consecutive
    moves of P that are both told already; answer: the earlier place; support: both moves. Up to 5 questions.
    """
    events: list[tuple[str, int, str]] = []  # (person, time index, place)
    for person in rng.sample(vocab.PEOPLE10, rng.randint(2, 4)):
        times = sorted(rng.sample(range(len(TIMES)), rng.randint(2, 4)))
        places = rng.sample(vocab.LOCATIONS10, len(times))
        events += [(person, t, pl) for t, pl in zip(times, places, strict=True)]
    rng.shuffle(events)
    facts: list[str] = []
    told: dict[tuple[str, int], tuple[int, str]] = {}  # (person, time) -> (fact index, place)
    asked: set[tuple[str, int]] = set()
    samples: list[BabiSample] = []
    for person, t, place in events:
        time = TIMES[t]
        verb = rng.choice(("went to", "journeyed to", "travelled to", "went back to", "moved to"))
        facts.append(f"{person} {verb} the {place} {time}." if rng.random() < 0.5
                     else f"{time[0].upper()}{time[1:]} {person} {verb} the {place}.")
        told[(person, t)] = (len(facts) - 1, place)
        if len(facts) < 2 or len(samples) >= QUESTIONS_PER_STORY or rng.random() < 0.4:
            continue
        pairs = []
        for p, t2 in told:
            earlier = [t1 for (q, t1) in told if q == p and t1 < t2]
            every = [t1 for (q, t1, _) in events if q == p and t1 < t2]
            if earlier and max(every) == max(earlier):
                pairs.append(((p, t2), (p, max(earlier))))
        fresh = [x for x in pairs if x[0] not in asked]
        if not (fresh or pairs):
            continue
        late, early = rng.choice(sorted(fresh or pairs))
        asked.add(late)
        (i2, pl2), (i1, pl1) = told[late], told[early]
        samples.append(make_sample(facts, f"Where was {late[0]} before the {pl2}?", pl1, {i1, i2}))
    return samples


# qa15 (basic deduction)
SPECIES15 = ("cat", "mouse", "sheep", "wolf")
PLURAL15 = {"cat": "Cats", "mouse": "Mice", "sheep": "Sheep", "wolf": "Wolves"}
PLURAL_OBJ15 = {"cat": "cats", "mouse": "mice", "sheep": "sheep", "wolf": "wolves"}
NAMES15 = ("Emily", "Gertrude", "Jessica", "Winona")


def basic_deduction(rng: random.Random) -> list[BabiSample]:
    """qa15: each species fears another ("Sheep are afraid of wolves."), each of four names is of some species
    ("Gertrude is a sheep."); the 8 facts are shuffled, then 3 questions "What is N afraid of?" about
    different names. Answer: the feared species; support: the name's fact and its species' rule.
    """
    fears = {s: rng.choice([x for x in SPECIES15 if x != s]) for s in SPECIES15}
    kind = {n: rng.choice(SPECIES15) for n in NAMES15}
    items = [("rule", s) for s in SPECIES15] + [("is", n) for n in NAMES15]
    rng.shuffle(items)
    facts, index = [], {}
    for what, x in items:
        index[(what, x)] = len(facts)
        if what == "rule":
            facts.append(f"{PLURAL15[x]} are afraid of {PLURAL_OBJ15[fears[x]]}.")
        else:
            facts.append(f"{x} is a {kind[x]}.")
    return [make_sample(facts, f"What is {n} afraid of?", fears[kind[n]], {index[("is", n)], index[("rule", kind[n])]})
            for n in rng.sample(NAMES15, 3)]


# qa16 (basic induction)
SPECIES16 = ("frog", "lion", "rhino", "swan")
COLORS16 = ("gray", "green", "white", "yellow")
NAMES16 = ("Bernhard", "Brian", "Greg", "Julius", "Lily")


def basic_induction(rng: random.Random) -> list[BabiSample]:
    """qa16: each species has one colour in a story; four names are told species then colour ("Lily is a
    swan." "Lily is white."), the fifth only its species, one already seen; "What color is N?" about the fifth.

    Answer: the colour of the species; support: N's species fact plus the last same-species pair before it.
    """
    color = {s: rng.choice(COLORS16) for s in SPECIES16}
    names = rng.sample(NAMES16, 5)
    facts: list[str] = []
    last_pair: dict[str, tuple[int, int]] = {}
    for n in names[:4]:
        s = rng.choice(SPECIES16)
        facts += [f"{n} is a {s}.", f"{n} is {color[s]}."]
        last_pair[s] = (len(facts) - 2, len(facts) - 1)
    s = rng.choice(sorted(last_pair))
    target = names[4]
    facts.append(f"{target} is a {s}.")
    return [make_sample(facts, f"What color is {target}?", color[s], {len(facts) - 1, *last_pair[s]})]


# qa20 (agent motivations)
PEOPLE20 = ("Antoine", "Jason", "Sumit", "Yann")
NEED_PLACE = {"bored": "garden", "hungry": "kitchen", "thirsty": "kitchen", "tired": "bedroom"}
NEED_OBJECT = {"bored": "football", "hungry": "apple", "thirsty": "milk", "tired": "pajamas"}


def agent_motivations(rng: random.Random) -> list[BabiSample]:
    """qa20: 2-4 people each go through "P is <need>." -> "P went to the <place>." -> "P got the <object>
    there.", interleaved at random. After each fact from the second on, a question about the person just
    mentioned: "Where will P go?" (-> place of the need; support: need fact), "Why did P go to the L?" or
    "Why did P get the O?" (-> the need; support: need fact and that fact).
    """
    people = rng.sample(PEOPLE20, rng.randint(2, 4))
    need = {p: rng.choice(sorted(NEED_PLACE)) for p in people}
    steps = [p for p in people for _ in range(3)]
    rng.shuffle(steps)
    stage = dict.fromkeys(people, 0)
    need_fact: dict[str, int] = {}
    facts: list[str] = []
    samples: list[BabiSample] = []
    for p in steps:
        i, st = len(facts), stage[p]
        stage[p] += 1
        if st == 0:
            facts.append(f"{p} is {need[p]}.")
            need_fact[p] = i
            q, a, sup = f"Where will {p} go?", NEED_PLACE[need[p]], {i}
        elif st == 1:
            place = NEED_PLACE[need[p]]
            facts.append(f"{p} {rng.choice(('went to', 'went back to', 'journeyed to', 'travelled to'))} the {place}.")
            q, a, sup = f"Why did {p} go to the {place}?", need[p], {need_fact[p], i}
        else:
            obj = NEED_OBJECT[need[p]]
            facts.append(vocab.get_sentence(rng, p, obj))
            q, a, sup = f"Why did {p} get the {obj}?", need[p], {need_fact[p], i}
        if len(facts) >= 2:
            samples.append(make_sample(facts, q, a, sup))
    return samples
