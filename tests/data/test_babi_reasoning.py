"""bAbI qa17-qa19 generators: templates, fact ranges, answers re-derived by independent solvers (grid
coordinates, transitive closure, path search) from all facts and from the supporting facts alone, minimal
support, label sets and balance, determinism (also across hash seeds) and train/test disjointness."""
from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from babilong_fast.data.babi import ALL_TASKS, FACT_RANGE, REASONING_TASKS, generate, iter_samples, split_of
from babilong_fast.data.metric import TASK_LABELS, compare_answers

TASKS = ("qa17", "qa18", "qa19")
SHAPE = "((?:(?:blue|pink|red|yellow) )?(?:rectangle|sphere|square|triangle))"
REL = "(above|below|to the left of|to the right of)"
OBJ = "(box of chocolates|box|chest|chocolate|container|suitcase)"
ROOM = "(bathroom|bedroom|garden|hallway|kitchen|office)"
T = {
    "position": re.compile(rf"^The {SHAPE} is {REL} the {SHAPE}\.$"),
    "bigger": re.compile(rf"^The {OBJ} is bigger than the {OBJ}\.$"),
    "fits": re.compile(rf"^The {OBJ} fits inside the {OBJ}\.$"),
    "room": re.compile(rf"^The {ROOM} is (north|south|east|west) of the {ROOM}\.$"),
}
TEMPLATES = {"qa17": ("position",), "qa18": ("bigger", "fits"), "qa19": ("room",)}
QUESTION = {
    "qa17": re.compile(rf"^Is the {SHAPE} {REL} the {SHAPE}\?$"),
    "qa18": re.compile(rf"^(?:Is the {OBJ} bigger than the {OBJ}|Does the {OBJ} fit in the {OBJ})\?$"),
    "qa19": re.compile(rf"^How do you go from the {ROOM} to the {ROOM}\?$"),
}
DOCUMENTED = {"qa17": (2, 2), "qa18": (4, 9), "qa19": (5, 5)}
SUPPORT_RANGE = {"qa17": (1, 2), "qa18": (2, 2), "qa19": (2, 2)}
# Offsets on a grid with x to the right / east and y up / north.
OFFSET = {"above": (0, 1), "below": (0, -1), "to the left of": (-1, 0), "to the right of": (1, 0),
          "north": (0, 1), "south": (0, -1), "west": (-1, 0), "east": (1, 0)}
N = 300


def _parse(task: str, fact: str) -> tuple[str, tuple[str, ...]]:
    for kind in TEMPLATES[task]:
        m = T[kind].match(fact)
        if m:
            return kind, m.groups()
    raise AssertionError(f"{task} sentence matches no template: {fact!r}")


def _coordinates(relations: list[tuple[str, tuple[int, int], str]], start: str) -> dict[str, tuple[int, int]]:
    """Place ``start`` at (0, 0) and everything reachable from it through "a = b + offset" relations; a
    contradiction (one name at two cells) fails the test."""
    pos = {start: (0, 0)}
    grew = True
    while grew:
        before = len(pos)
        for a, (dx, dy), b in relations:
            if b in pos and a not in pos:
                pos[a] = (pos[b][0] + dx, pos[b][1] + dy)
            elif a in pos and b not in pos:
                pos[b] = (pos[a][0] - dx, pos[a][1] - dy)
        grew = len(pos) > before
    for a, (dx, dy), b in relations:
        if a in pos and b in pos:
            assert pos[a] == (pos[b][0] + dx, pos[b][1] + dy), f"inconsistent relation {a} / {b}"
    return pos


def _solve_qa17(facts: list[str], question: str) -> str | None:
    """Grid solver: coordinates from the facts; None if the two shapes are not linked."""
    p, word, q = QUESTION["qa17"].match(question).groups()
    relations = [(g[0], OFFSET[g[1]], g[2]) for g in (_parse("qa17", f)[1] for f in facts)]
    pos = _coordinates(relations, q)
    if p not in pos:
        return None
    dx, dy = pos[p][0] - pos[q][0], pos[p][1] - pos[q][1]
    wx, wy = OFFSET[word]
    along = dx * wx + dy * wy  # component of p - q along the asked direction
    assert along != 0, f"ill-posed question {question!r}: the shapes do not differ along that axis"
    return "yes" if along > 0 else "no"


def _bigger_pairs(facts: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for f in facts:
        kind, (a, b) = _parse("qa18", f)
        pairs.append((a, b) if kind == "bigger" else (b, a))
    return pairs


def _closure(pairs: list[tuple[str, str]]) -> set[tuple[str, str]]:
    closed = set(pairs)
    while True:
        more = {(a, d) for a, b in closed for c, d in closed if b == c} - closed
        if not more:
            break
        closed |= more
    assert all(a != b for a, b in closed), "the size facts contradict each other (a cycle)"
    return closed


def _solve_qa18(facts: list[str], question: str) -> str | None:
    """Transitive-closure solver; None if neither object is known to be bigger."""
    g = QUESTION["qa18"].match(question).groups()
    closed = _closure(_bigger_pairs(facts))
    if g[0]:  # Is the X bigger than the Y?
        x, y = g[0], g[1]
        return "yes" if (x, y) in closed else "no" if (y, x) in closed else None
    x, y = g[2], g[3]  # Does the X fit in the Y?
    return "yes" if (y, x) in closed else "no" if (x, y) in closed else None


def _room_relations(facts: list[str]) -> list[tuple[str, tuple[int, int], str]]:
    return [(g[0], OFFSET[g[1]], g[2]) for g in (_parse("qa19", f)[1] for f in facts)]


def _solve_qa19(facts: list[str], question: str) -> str | None:
    """Path search over the told adjacencies: every simple path from source to target; None if there is none."""
    src, dst = QUESTION["qa19"].match(question).groups()
    letter = {(0, 1): "n", (0, -1): "s", (1, 0): "e", (-1, 0): "w"}
    moves: dict[str, list[tuple[str, str]]] = {}
    for a, (dx, dy), b in _room_relations(facts):
        moves.setdefault(b, []).append((letter[(dx, dy)], a))
        moves.setdefault(a, []).append((letter[(-dx, -dy)], b))
    paths, stack = [], [(src, [src], [])]
    while stack:
        room, seen, dirs = stack.pop()
        if room == dst:
            paths.append(dirs)
            continue
        stack += [(nxt, seen + [nxt], dirs + [d]) for d, nxt in moves.get(room, []) if nxt not in seen]
    if not paths:
        return None
    assert len(paths) == 1, f"{len(paths)} paths from the {src} to the {dst}"
    return ",".join(paths[0])


SOLVE = {"qa17": _solve_qa17, "qa18": _solve_qa18, "qa19": _solve_qa19}


@functools.cache
def _samples(task: str) -> list[dict]:
    return generate(task, N, "train", seed=1) + generate(task, N, "test", seed=1)


def test_registered():
    assert REASONING_TASKS == TASKS
    assert ALL_TASKS == tuple(f"qa{i}" for i in range(1, 21))
    assert set(ALL_TASKS) == set(TASK_LABELS)
    with pytest.raises(ValueError, match="unknown task"):
        next(iter_samples("qa21"))


@pytest.mark.parametrize("task", TASKS)
def test_shape_and_ranges(task: str):
    samples = _samples(task)
    assert FACT_RANGE[task] == DOCUMENTED[task]
    lo, hi = FACT_RANGE[task]
    slo, shi = SUPPORT_RANGE[task]
    for s in samples:
        assert sorted(s) == ["answer", "facts", "question", "supporting"]
        assert lo <= len(s["facts"]) <= hi
        assert QUESTION[task].match(s["question"]), s["question"]
        assert slo <= len(s["supporting"]) <= shi
        assert s["supporting"] == sorted(set(s["supporting"]))
        assert all(0 <= i < len(s["facts"]) for i in s["supporting"])
        assert len(set(s["facts"])) == len(s["facts"]), "a fact is told twice"
        for f in s["facts"]:
            _parse(task, f)
    assert {len(s["facts"]) for s in samples} == set(range(lo, hi + 1))  # the whole range occurs


@pytest.mark.parametrize("task", TASKS)
def test_answers_by_independent_solver(task: str):
    """The answer follows from all facts and from the supporting facts alone; no supporting fact is spare."""
    solve = SOLVE[task]
    for s in _samples(task):
        facts, q, sup = s["facts"], s["question"], s["supporting"]
        assert solve(facts, q) == s["answer"], s
        assert solve([facts[i] for i in sup], q) == s["answer"], s
        for drop in sup:
            assert solve([facts[i] for i in sup if i != drop], q) is None, s


def test_qa17_world():
    """Three distinct, unambiguous shapes on distinct cells; a question's two shapes always differ."""
    for s in _samples("qa17"):
        relations = [(g[0], OFFSET[g[1]], g[2]) for g in (_parse("qa17", f)[1] for f in s["facts"])]
        names = {n for a, _, b in relations for n in (a, b)}
        assert len(names) == 3
        pos = _coordinates(relations, relations[0][0])
        assert len(set(pos.values())) == 3
        for n in names:
            if " " not in n:  # a bare shape never shares its shape with another name of the story
                assert not any(m != n and m.endswith(" " + n) for m in names), names
        p, _, q = QUESTION["qa17"].match(s["question"]).groups()
        assert p != q and {p, q} <= names


def test_qa18_world():
    """Asked pairs are never stated directly (bAbI asks about pairs two facts apart); both fact and both question
    forms occur about equally often."""
    facts, questions = Counter(), Counter()
    for s in _samples("qa18"):
        stated = _bigger_pairs(s["facts"])
        assert len(set(stated)) == len(stated)
        g = QUESTION["qa18"].match(s["question"]).groups()
        x, y = (g[0], g[1]) if g[0] else (g[2], g[3])
        assert x != y and (x, y) not in stated and (y, x) not in stated
        a, b = _bigger_pairs([s["facts"][i] for i in s["supporting"]])
        assert a[1] == b[0] or b[1] == a[0], "the support is not a chain"
        facts.update(_parse("qa18", f)[0] for f in s["facts"])
        questions["bigger" if g[0] else "fit"] += 1
    for kinds in (facts, questions):
        assert len(kinds) == 2 and min(kinds.values()) > 0.8 * max(kinds.values()), kinds


def test_qa19_world():
    """Six rooms on distinct cells, told adjacencies = all grid adjacencies (no hidden shortcut), a 2-step path."""
    for s in _samples("qa19"):
        relations = _room_relations(s["facts"])
        src, dst = QUESTION["qa19"].match(s["question"]).groups()
        pos = _coordinates(relations, src)
        assert len(pos) == 6 and len(set(pos.values())) == 6
        told = {frozenset((a, b)) for a, _, b in relations}
        touching = {frozenset((a, b)) for a in pos for b in pos
                    if abs(pos[a][0] - pos[b][0]) + abs(pos[a][1] - pos[b][1]) == 1}
        assert told == touching
        assert len(s["answer"].split(",")) == 2


@pytest.mark.parametrize("task", TASKS)
def test_labels_and_metric(task: str):
    samples = _samples(task)
    labels = TASK_LABELS[task]
    counts = Counter(s["answer"] for s in samples)
    assert set(counts) == set(labels)  # every label is reachable and shows up
    for s in samples:
        assert not any(label in s["question"].lower() for label in labels)  # the metric would ignore it
        assert compare_answers(s["answer"], s["answer"], s["question"], task)
        wrong = next(label for label in labels if label != s["answer"])
        assert not compare_answers(wrong, s["answer"], s["question"], task)
    share = len(samples) / len(labels)
    assert all(0.6 * share <= c <= 1.4 * share for c in counts.values()), counts


@pytest.mark.parametrize("task", TASKS)
def test_deterministic_by_seed(task: str):
    assert generate(task, 30, "train", seed=7) == generate(task, 30, "train", seed=7)
    assert generate(task, 30, "train", seed=7) != generate(task, 30, "train", seed=8)


def test_deterministic_across_hash_seeds():
    """String hashing is salted per process; the stories must not depend on it."""
    code = ("import json; from babilong_fast.data.babi import generate; "
            f"print(json.dumps({{t: generate(t, 40, 'test', seed=3) for t in {TASKS!r}}}))")
    here = {t: generate(t, 40, "test", seed=3) for t in TASKS}
    root = Path(__file__).resolve().parents[2]
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(root)}
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True,
                             check=True)
        assert json.loads(out.stdout) == here


@pytest.mark.parametrize("task", TASKS)
def test_train_test_disjoint(task: str):
    def key(s: dict) -> tuple:
        return (tuple(s["facts"]), s["question"])

    train = generate(task, 1000, "train", seed=0) + generate(task, 300, "train", seed=3)
    test = generate(task, 300, "test", seed=0)
    assert {key(s) for s in train}.isdisjoint(key(s) for s in test)
    assert {tuple(s["facts"][:2]) for s in train}.isdisjoint(tuple(s["facts"][:2]) for s in test)
    assert all(split_of(s["facts"]) == "test" for s in test)
    assert all(split_of(s["facts"]) == "train" for s in train)


def test_cli_and_generator_accept_reasoning_tasks(tmp_path: Path):
    """`babilong-fast data` writes qa17-qa19 in the official layout; BabilongGenerator hides their facts in order."""
    from babilong_fast.cli.main import main
    from babilong_fast.data import BabilongGenerator, load_official

    argv = ["data", "--tasks", ",".join(TASKS), "--lengths", "0k,1k", "--n", "2", "--out", str(tmp_path),
            "--no-progress"]
    assert main(argv) == 0
    got = load_official(tmp_path)
    assert sorted({(s.task, s.length) for s in got}) == [(t, n) for t in TASKS for n in ("0k", "1k")]
    for s in got:
        assert s.target in TASK_LABELS[s.task]
        assert QUESTION[s.task].match(s.question.strip()), s.question
        if s.length == "0k":  # the input is the facts alone
            assert SOLVE[s.task](re.findall(r"The [^.]*\.", s.input), s.question.strip()) == s.target
    for task in TASKS:
        sample = BabilongGenerator(task, "1k", split="test", seed=0).take(1)[0]
        text = sample.text()
        assert [text.index(f) for f in sample.facts] == sorted(text.index(f) for f in sample.facts)
        assert SOLVE[task](list(sample.facts), sample.question.strip()) == sample.target
