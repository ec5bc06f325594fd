"""Story generators for qa6-qa10: each returns the samples of one story (one per question).

qa6-qa8 reuse the qa2-style people-and-objects world; qa9 adds negated statements and qa10 indefinite
("either ... or ...") statements. Answers are read off the simulated state, never off the text.
"""
from __future__ import annotations

import random

from babilong_fast.data.babi import vocab
from babilong_fast.data.babi.sample import BabiSample, make_sample
from babilong_fast.data.babi.stories import QUESTIONS_PER_STORY, _random_statement
from babilong_fast.data.babi.world import World

MAX_SUPPORT = {"qa7": 10, "qa8": 8}


def yes_no_location(rng: random.Random) -> list[BabiSample]:
    """qa6: moves, gets and drops; "Is P in the L?" about a person whose last move is stated (yes ~1/2)."""
    world = World(rng, vocab.PEOPLE)
    samples: list[BabiSample] = []
    since_question = 0
    while len(samples) < QUESTIONS_PER_STORY:
        _random_statement(world, ("move", "move", "get_drop"))
        since_question += 1
        if since_question < 2 or rng.random() < 0.5 or not world.last_move:
            continue
        person = rng.choice(sorted(world.last_move))
        here = world.location[person]
        place = here if rng.random() < 0.5 else rng.choice([x for x in vocab.LOCATIONS if x != here])
        samples.append(make_sample(world.facts, f"Is {person} in the {place}?", "yes" if place == here else "no",
                                   {world.last_move[person]}))
        since_question = 0
    return samples


def _carrying_story(rng: random.Random, task: str) -> list[BabiSample]:
    """qa7/qa8: moves, gets, drops and gives; a question about what a person holds.

    Support is every get, drop or give involving the person (as actor or receiver); only people with 1 to
    ``MAX_SUPPORT[task]`` such facts are asked about.
    """
    world = World(rng, vocab.PEOPLE)
    events: dict[str, list[int]] = {p: [] for p in vocab.PEOPLE}
    order: dict[str, list[str]] = {p: [] for p in vocab.PEOPLE}  # held objects, in acquisition order
    samples: list[BabiSample] = []
    since_question = 0
    while len(samples) < QUESTIONS_PER_STORY:
        action, args, idx = _random_statement(world, ("move", "get_drop", "get_drop", "give"))
        since_question += 1
        if action == "get":
            events[args[0]].append(idx)
            order[args[0]].append(args[1])
        elif action == "drop":
            events[args[0]].append(idx)
            order[args[0]].remove(args[1])
        elif action == "give":
            giver, obj, receiver = args
            events[giver].append(idx)
            events[receiver].append(idx)
            order[giver].remove(obj)
            order[receiver].append(obj)
        if since_question < 2 or rng.random() < 0.5:
            continue
        askable = [p for p in vocab.PEOPLE if 1 <= len(events[p]) <= MAX_SUPPORT[task]]
        if not askable:
            continue
        person = rng.choice(askable)
        held = order[person]
        assert sorted(held) == sorted(world.held_by(person))
        if task == "qa7":
            question, answer = f"How many objects is {person} carrying?", vocab.COUNT_WORDS[len(held)]
        else:
            question, answer = f"What is {person} carrying?", ",".join(held) or "nothing"
        samples.append(make_sample(world.facts, question, answer, set(events[person])))
        since_question = 0
    return samples


def counting(rng: random.Random) -> list[BabiSample]:
    """qa7: "How many objects is P carrying?" -> none/one/two/three."""
    return _carrying_story(rng, "qa7")


def lists_sets(rng: random.Random) -> list[BabiSample]:
    """qa8: "What is P carrying?" -> objects in acquisition order, comma-joined, or "nothing"."""
    return _carrying_story(rng, "qa8")


def simple_negation(rng: random.Random) -> list[BabiSample]:
    """qa9: rounds of two statements (move, "is in", "is no longer in", "is not in") and a yes/no question.

    A person's latest statement is the only support. After a positive one (at L), "Is P in the X?" is yes iff
    X == L; after a negative one about L, only "Is P in the L?" is asked (no); yes about half the time. True
    state: "no longer in L" is said only of a person at L, who then is at an unstated other place; "not in L"
    only when not at L.
    """
    people = vocab.PEOPLE
    where = {p: vocab.PERSON_START[p] for p in people}
    last: dict[str, tuple[int, str, str]] = {}  # person -> (fact index, "pos"/"neg", location)
    facts: list[str] = []
    samples: list[BabiSample] = []
    for _ in range(QUESTIONS_PER_STORY):
        for _ in range(2):
            person = rng.choice(people)
            kind = rng.choice(("move", "is_in", "no_longer", "not_in"))
            others = [x for x in vocab.LOCATIONS if x != where[person]]
            if kind in ("move", "is_in"):
                place = rng.choice(others)
                facts.append(vocab.move_sentence(rng, person, place) if kind == "move"
                             else vocab.be_in_sentence(person, place))
                where[person] = place
                last[person] = (len(facts) - 1, "pos", place)
            elif kind == "no_longer":
                place = where[person]
                facts.append(vocab.no_longer_sentence(person, place))
                where[person] = rng.choice(others)
                last[person] = (len(facts) - 1, "neg", place)
            else:
                place = rng.choice(others)
                facts.append(vocab.not_in_sentence(person, place))
                last[person] = (len(facts) - 1, "neg", place)
        positive = sorted(p for p in last if last[p][1] == "pos")
        want_yes = bool(positive) and rng.random() < 0.5
        person = rng.choice(positive if want_yes else sorted(last))
        idx, polarity, place = last[person]
        if polarity == "pos" and not want_yes:
            place = rng.choice([x for x in vocab.LOCATIONS if x != place])
        answer = "yes" if polarity == "pos" and place == where[person] else "no"
        samples.append(make_sample(facts, f"Is {person} in the {place}?", answer, {idx}))
    return samples


def indefinite_knowledge(rng: random.Random) -> list[BabiSample]:
    """qa10: rounds of two statements (move or "either in A or B") and "Is P in the X?" -> yes/no/maybe.

    The latest statement about the person is the only support: after a move to L, yes iff X == L; after
    "either A or B", maybe iff X in {A, B}, else no. Questions are drawn evenly among the possible answers.
    """
    people, places = vocab.PEOPLE10, vocab.LOCATIONS10
    last: dict[str, tuple[int, tuple[str, ...]]] = {}
    facts: list[str] = []
    samples: list[BabiSample] = []
    for _ in range(QUESTIONS_PER_STORY):
        for _ in range(2):
            person = rng.choice(people)
            if rng.random() < 0.5:
                place = rng.choice(places)
                facts.append(vocab.move_sentence(rng, person, place))
                last[person] = (len(facts) - 1, (place,))
            else:
                a, b = rng.sample(places, 2)
                facts.append(vocab.either_sentence(person, a, b))
                last[person] = (len(facts) - 1, (a, b))
        person = rng.choice(sorted(last))
        idx, options = last[person]
        if rng.random() < 0.5:
            place = rng.choice(options)
        else:
            place = rng.choice([x for x in places if x not in options])
        answer = "no" if place not in options else ("yes" if len(options) == 1 else "maybe")
        samples.append(make_sample(facts, f"Is {person} in the {place}?", answer, {idx}))
    return samples
