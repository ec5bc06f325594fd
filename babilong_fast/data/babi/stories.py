"""Story generators for qa1, qa2, qa3 and qa5: each returns the samples of one story (one per question)."""
from __future__ import annotations

import random
from collections.abc import Callable

from babilong_fast.data.babi import vocab
from babilong_fast.data.babi.sample import BabiSample, make_sample
from babilong_fast.data.babi.world import Known, World

QUESTIONS_PER_STORY = 5


def _random_statement(
    world: World, kinds: tuple[str, ...], allowed: Callable[[str, tuple[str, ...]], bool] | None = None
) -> tuple[str, tuple[str, ...], int]:
    """Perform one valid statement: a kind is drawn uniformly, then a valid instance of it uniformly.

    ``kinds`` holds ``"move"``, ``"get_drop"`` (a valid get or drop, uniformly among both) and ``"give"``;
    ``allowed`` further filters instances; a kind with no instance left is redrawn. Returns (action,
    arguments, fact index).
    """
    rng = world.rng
    while True:
        kind = rng.choice(kinds)
        if kind == "move":
            options = [("move", a) for a in world.valid_moves()]
        elif kind == "get_drop":
            options = [("get", a) for a in world.valid_gets()] + [("drop", a) for a in world.valid_drops()]
        else:
            options = [("give", a) for a in world.valid_gives()]
        if allowed is not None:
            options = [(action, args) for action, args in options if allowed(action, args)]
        if options:
            action, args = rng.choice(options)
            return action, args, getattr(world, action)(*args)


def where_is_actor(rng: random.Random) -> list[BabiSample]:
    """qa1: five rounds of two moves and a question about a person whose location is known."""
    world = World(rng, vocab.PEOPLE)
    samples = []
    for _ in range(QUESTIONS_PER_STORY):
        for _ in range(2):
            world.move(*rng.choice(world.valid_moves()))
        person = rng.choice(sorted(world.last_move))
        samples.append(make_sample(world.facts, f"Where is {person}?", world.location[person],
                                   {world.last_move[person]}))
    return samples


def _object_story(rng: random.Random, ask: Callable[[World], BabiSample | None]) -> list[BabiSample]:
    """qa2/qa3 loop: moves, gets and drops; after more than 2 statements, ask with probability 1/2."""
    world = World(rng, vocab.PEOPLE)
    samples: list[BabiSample] = []
    since_question = 0
    while len(samples) < QUESTIONS_PER_STORY:
        _random_statement(world, ("get_drop", "get_drop", "move"))
        since_question += 1
        if since_question > 2 and rng.random() < 0.5:
            sample = ask(world)
            if sample is not None:
                samples.append(sample)
                since_question = 0
    return samples


def _ask_where_is_object(world: World) -> BabiSample | None:
    askable = [o for o in vocab.OBJECTS if world.known[o] is not None]
    if not askable:
        return None
    obj = world.rng.choice(askable)
    info = world.known[obj]
    return make_sample(world.facts, f"Where is the {obj}?", info.location, set(info.support))


def _ask_where_was_object(world: World) -> BabiSample | None:
    # Only histories whose last two places one carrier reveals: support is then 3 facts (get and two moves,
    # or move, get and move), as in bAbI; a hand-over between carriers would need the unstated drop.
    askable = [o for o in vocab.OBJECTS
               if len(world.history[o]) >= 2 and len(_support(world.history[o][-2:])) == 3]
    if not askable:
        return None
    obj = world.rng.choice(askable)
    before, last = world.history[obj][-2:]
    return make_sample(world.facts, f"Where was the {obj} before the {last.location}?", before.location,
                       _support([before, last]))


def _support(entries: list[Known]) -> set[int]:
    return {i for e in entries for i in e.support}


def where_is_object(rng: random.Random) -> list[BabiSample]:
    """qa2: where an object is (its carrier's location, or where it was dropped)."""
    return _object_story(rng, _ask_where_is_object)


def where_was_object(rng: random.Random) -> list[BabiSample]:
    """qa3: where an object was before its latest known location."""
    return _object_story(rng, _ask_where_was_object)


def _give_question(rng: random.Random, giver: str, obj: str, receiver: str) -> tuple[str, str]:
    """The asked role (giver, receiver, object) uniformly, then one of its forms: the released qa5 answers are a
    third objects (a uniform pick among the five forms would give a fifth)."""
    forms_of_role = rng.choice((
        ((f"Who gave the {obj} to {receiver}?", giver), (f"Who gave the {obj}?", giver)),
        ((f"Who did {giver} give the {obj} to?", receiver), (f"Who received the {obj}?", receiver)),
        ((f"What did {giver} give to {receiver}?", obj),),
    ))
    return rng.choice(forms_of_role)


def who_what_gave(rng: random.Random) -> list[BabiSample]:
    """qa5: after a give (not a story's first line), 0-5 unrelated statements, then a question about it.

    The extra statements never concern the given object, nor are they the same giver giving to the same
    receiver again, so the give asked about stays the latest event that matches the question.
    """
    world = World(rng, vocab.GIVE_PEOPLE)
    kinds = ("move", "get_drop", "give")
    samples: list[BabiSample] = []
    since_question = 0
    while len(samples) < QUESTIONS_PER_STORY:
        action, args, idx = _random_statement(world, kinds)
        since_question += 1
        if action != "give" or since_question < 2:
            continue
        giver, obj, receiver = args
        for _ in range(rng.randrange(6)):
            _extra_statement(world, giver, obj, receiver)
        question, answer = _give_question(rng, giver, obj, receiver)
        samples.append(make_sample(world.facts, question, answer, {idx}))
        since_question = 0
    return samples


def _extra_statement(world: World, giver: str, obj: str, receiver: str) -> None:
    """One valid statement that does not involve ``obj`` nor ``giver`` giving to ``receiver`` again."""

    def allowed(action: str, args: tuple[str, ...]) -> bool:
        if action == "move":
            return True
        return args[1] != obj and not (action == "give" and (args[0], args[2]) == (giver, receiver))

    _random_statement(world, ("move", "get_drop", "give"), allowed)
