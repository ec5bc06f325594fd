"""Story generators for qa17-qa19 (positional reasoning, size reasoning, path finding) after bAbI's task
definitions: each returns the samples of one story, every question asked after the story's last fact.

Answers and supporting facts are read off a hidden world (grid cells of three shapes, a total order of sizes,
a grid of rooms), never off the rendered text, and every stated fact is true in that world. Iteration runs over
tuples, lists and dicts only (never sets), so a seed gives the same stories under any ``PYTHONHASHSEED``.
"""
from __future__ import annotations

import random

from babilong_fast.data.babi import vocab
from babilong_fast.data.babi.sample import BabiSample, make_sample
from babilong_fast.data.babi.stories import QUESTIONS_PER_STORY

Cell = tuple[int, int]

# Unit grid steps: x grows to the east (right), y to the north (up).
STEPS: dict[str, Cell] = {"n": (0, 1), "s": (0, -1), "e": (1, 0), "w": (-1, 0)}
OPPOSITE = {"n": "s", "s": "n", "e": "w", "w": "e"}


def _step(cell: Cell, direction: str) -> Cell:
    dx, dy = STEPS[direction]
    return cell[0] + dx, cell[1] + dy


# qa17 (positional reasoning): coloured and bare shapes, relative directions.
SHAPES17 = ("rectangle", "sphere", "square", "triangle")
COLORS17 = ("blue", "pink", "red", "yellow")
NAMES17 = tuple(f"{c} {s}" for s in SHAPES17 for c in COLORS17) + SHAPES17
RELATIVE = {"n": "above", "s": "below", "e": "to the right of", "w": "to the left of"}
QUESTIONS17 = 8  # as bAbI: 8 questions after the 2 facts


def _pick_shapes(rng: random.Random) -> list[str]:
    """Three names no reader can confuse: a bare shape ("triangle") never comes with another of its shape."""
    while True:
        names = rng.sample(NAMES17, 3)
        shapes = [n.split()[-1] for n in names]
        if all(" " in n or shapes.count(n) == 1 for n in names):
            return names


def positional_reasoning(rng: random.Random) -> list[BabiSample]:
    """qa17: three shapes on a grid, each one step (up, down, left, right) from the previous one; the two steps
    are told ("The triangle is to the left of the red square."), each from either end. Then 8 different
    questions "Is the A above the B?" about a random pair, along an axis on which the two differ, true or false
    with probability 1/2 each.

    Support: the one fact linking the pair when they are neighbours in the chain, else both facts (bAbI always
    lists both).
    """
    names = _pick_shapes(rng)
    cells: list[Cell] = [(0, 0)]
    facts: list[str] = []
    for i in (1, 2):
        d = rng.choice([d for d in STEPS if _step(cells[-1], d) not in cells])
        cells.append(_step(cells[-1], d))  # names[i] is one step in direction d from names[i - 1]
        if rng.random() < 0.5:
            facts.append(f"The {names[i]} is {RELATIVE[d]} the {names[i - 1]}.")
        else:
            facts.append(f"The {names[i - 1]} is {RELATIVE[OPPOSITE[d]]} the {names[i]}.")
    samples: list[BabiSample] = []
    asked: list[str] = []
    while len(samples) < QUESTIONS17:
        p, q = rng.sample(range(3), 2)
        dx, dy = cells[p][0] - cells[q][0], cells[p][1] - cells[q][1]
        axes = [("e" if dx > 0 else "w")] if dx else []
        axes += [("n" if dy > 0 else "s")] if dy else []
        true_dir = rng.choice(axes)  # where p lies from q along the chosen axis
        truth = rng.random() < 0.5
        question = f"Is the {names[p]} {RELATIVE[true_dir if truth else OPPOSITE[true_dir]]} the {names[q]}?"
        if question in asked:
            continue
        asked.append(question)
        support = {min(p, q)} if abs(p - q) == 1 else {0, 1}
        samples.append(make_sample(facts, question, "yes" if truth else "no", support))
    return samples


# qa18 (size reasoning): bAbI's world_sizes objects; the box of chocolates and the chocolate are the smallest.
CONTAINERS18 = ("box", "chest", "container", "suitcase")
SMALLEST18 = ("box of chocolates", "chocolate")  # in this order, below every container
EXTRA_FACTS18 = (2, 7)  # facts added after the first chain of two, as bAbI


def _askable(stated: dict[tuple[str, str], int], order: list[str]) -> list[tuple[str, str]]:
    """Pairs (bigger, smaller) not stated but linked by a chain of exactly two stated facts, largest first."""
    return [(x, y) for i, x in enumerate(order) for y in order[i + 1:]
            if (x, y) not in stated and any((x, z) in stated and (z, y) in stated for z in order)]


def _size_fact(rng: random.Random, bigger: str, smaller: str) -> str:
    if rng.random() < 0.5:
        return f"The {bigger} is bigger than the {smaller}."
    return f"The {smaller} fits inside the {bigger}."


def size_reasoning(rng: random.Random) -> list[BabiSample]:
    """qa18: see :func:`_size_story`; stories whose extra facts cannot all be placed are redrawn."""
    while True:
        samples = _size_story(rng)
        if samples:
            return samples


def _size_story(rng: random.Random) -> list[BabiSample]:
    """qa18: a hidden total order of sizes; first a chain A > B > C, then 2-7 more true, new comparisons, each
    kept only if some pair is still askable; the facts ("The chest is bigger than the box." / "The box fits
    inside the chest.") are told in a shuffled order.

    Askable pair: not stated, but linked by two stated facts (X > Z > Y). Up to 5 such pairs are asked, each
    in one of four forms drawn uniformly: "Is the X bigger than the Y?" (yes), "Does the X fit in the Y?" (no),
    "Is the Y bigger than the X?" (no), "Does the Y fit in the X?" (yes). Support: the two facts of the chain
    completed earliest in the story.
    """
    order = [*rng.sample(CONTAINERS18, len(CONTAINERS18)), *SMALLEST18]  # largest first
    a, b, c = sorted(rng.sample(range(len(order)), 3))
    edges = [(order[a], order[b]), (order[b], order[c])]
    stated = dict.fromkeys(edges, 0)
    for _ in range(rng.randint(*EXTRA_FACTS18)):
        # Stating (x, y) can only make (x, y) itself unaskable, so any other askable pair keeps a question.
        now = _askable(stated, order)
        options = [(x, y) for i, x in enumerate(order) for y in order[i + 1:] if (x, y) not in stated
                   and (any(p != (x, y) for p in now) or _askable({**stated, (x, y): 0}, order))]
        if not options:
            return []
        edge = rng.choice(options)
        edges.append(edge)
        stated[edge] = 0
    rng.shuffle(edges)
    index = {e: i for i, e in enumerate(edges)}
    facts = [_size_fact(rng, x, y) for x, y in edges]
    pairs = _askable(index, order)
    rng.shuffle(pairs)
    samples: list[BabiSample] = []
    for x, y in pairs[:QUESTIONS_PER_STORY]:
        chains = [(index[(x, z)], index[(z, y)]) for z in order if (x, z) in index and (z, y) in index]
        support = min(chains, key=lambda ch: (max(ch), min(ch)))
        question, answer = rng.choice(((f"Is the {x} bigger than the {y}?", "yes"),
                                       (f"Does the {x} fit in the {y}?", "no"),
                                       (f"Is the {y} bigger than the {x}?", "no"),
                                       (f"Does the {y} fit in the {x}?", "yes")))
        samples.append(make_sample(facts, question, answer, support))
    return samples


# qa19 (path finding): the six qa1 rooms on a grid, cardinal directions.
CARDINAL = {"n": "north", "s": "south", "e": "east", "w": "west"}
DECOYS19 = 3  # rooms off the path: 2 path facts + 3 decoy facts, all six rooms used


def path_finding(rng: random.Random) -> list[BabiSample]:
    """qa19: see :func:`_path_story`; the rare grid with no room for a decoy is redrawn."""
    while True:
        samples = _path_story(rng)
        if samples:
            return samples


def _path_story(rng: random.Random) -> list[BabiSample]:
    """qa19: six shuffled rooms on a grid: a source, a room one step away, a target one step further (never back),
    then 3 decoy rooms each one step from a placed room. A room only goes to a free cell whose sole occupied
    neighbour is the room it is told relative to, so the told facts are the whole adjacency of the grid: a tree,
    with exactly one path from source to target. Each fact is told from either end ("The kitchen is north of
    the hallway." / "The hallway is south of the kitchen."), in a shuffled order.

    Question: "How do you go from the S to the T?"; answer: the two steps, e.g. ``"s,e"``; support: the two
    path facts.
    """
    rooms = rng.sample(vocab.LOCATIONS, 3 + DECOYS19)
    cell = {rooms[0]: (0, 0)}

    def fits(anchor: str, d: str) -> bool:
        target = _step(cell[anchor], d)
        taken = list(cell.values())
        return target not in taken and sum(_step(target, n) in taken for n in STEPS) == 1

    edges: list[tuple[str, str, str]] = []  # (room, direction, anchor): the room lies in direction d of anchor
    for k, room in enumerate(rooms[1:], start=1):
        anchors = [rooms[k - 1]] if k <= 2 else list(cell)  # the path first, then decoys off any placed room
        options = [(a, d) for a in anchors for d in STEPS if fits(a, d)]
        if not options:
            return []
        anchor, d = rng.choice(options)
        cell[room] = _step(cell[anchor], d)
        edges.append((room, d, anchor))
    path = edges[:2]
    answer = f"{path[0][1]},{path[1][1]}"
    rng.shuffle(edges)
    facts = [f"The {room} is {CARDINAL[d]} of the {anchor}." if rng.random() < 0.5
             else f"The {anchor} is {CARDINAL[OPPOSITE[d]]} of the {room}." for room, d, anchor in edges]
    support = {edges.index(e) for e in path}
    return [make_sample(facts, f"How do you go from the {rooms[0]} to the {rooms[2]}?", answer, support)]
