"""bAbI qa1-qa5 generators: templates, fact counts, answers re-derived by an independent simulation,
determinism and train/test disjointness."""
from __future__ import annotations

import re
from collections import Counter

import pytest

from babilong_fast.data.babi import FACT_RANGE, TASKS, generate, iter_samples, split_of
from babilong_fast.data.builder import MAX_FACT_LINE_FRACTION
from babilong_fast.data.lengths import PROMPT_MARGIN, parse_length

P = "(John|Mary|Sandra|Daniel)"
P5 = "(Bill|Fred|Jeff|Mary)"
L = "(bathroom|bedroom|garden|hallway|kitchen|office)"
OBJ = "(apple|football|milk)"
D = "(north|south|east|west)"
LOCATIONS = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
OPP = {"north": "south", "south": "north", "east": "west", "west": "east"}


def _templates(p: str) -> dict[str, re.Pattern]:
    return {
        "move": re.compile(rf"^{p} (?:moved to|went to|journeyed to|travelled to|went back to) the {L}\.$"),
        "get": re.compile(rf"^{p} (?:got|grabbed|picked up|took) the {OBJ}(?: there)?\.$"),
        "drop": re.compile(rf"^{p} (?:dropped|discarded|put down|left) the {OBJ}(?: there)?\.$"),
        "give": re.compile(rf"^{p} (?:gave|passed|handed) the {OBJ} to {p}\.$"),
    }


ACTOR_TEMPLATES = {"qa1": _templates(P), "qa2": _templates(P), "qa3": _templates(P), "qa5": _templates(P5)}
ALLOWED = {"qa1": {"move"}, "qa2": {"move", "get", "drop"}, "qa3": {"move", "get", "drop"},
           "qa5": {"move", "get", "drop", "give"}}
RELATION = re.compile(rf"^The {L} is {D} of the {L}\.$")
QUESTIONS = {
    "qa1": [re.compile(rf"^Where is {P}\?$")],
    "qa2": [re.compile(rf"^Where is the {OBJ}\?$")],
    "qa3": [re.compile(rf"^Where was the {OBJ} before the {L}\?$")],
    "qa4": [re.compile(rf"^What is {D} of the {L}\?$"), re.compile(rf"^What is the {L} {D} of\?$")],
    "qa5": [re.compile(rf"^Who gave the {OBJ} to {P5}\?$"), re.compile(rf"^Who gave the {OBJ}\?$"),
            re.compile(rf"^Who did {P5} give the {OBJ} to\?$"), re.compile(rf"^What did {P5} give to {P5}\?$"),
            re.compile(rf"^Who received the {OBJ}\?$")],
}
N = {"qa1": 400, "qa2": 400, "qa3": 300, "qa4": 400, "qa5": 300}


@pytest.fixture(scope="module", params=TASKS)
def task_samples(request) -> tuple[str, list[dict]]:
    task = request.param
    return task, generate(task, N[task], "train", seed=1) + generate(task, N[task], "test", seed=1)


def _parse(task: str, fact: str) -> tuple[str, tuple[str, ...]]:
    for kind, pattern in ACTOR_TEMPLATES[task].items():
        m = pattern.match(fact)
        if m:
            assert kind in ALLOWED[task], fact
            return kind, m.groups()
    raise AssertionError(f"{task}: sentence matches no template: {fact!r}")


def _replay(task: str, facts: list[str]) -> list[dict]:
    """Independent world replay: one state snapshot per fact (known person places, holders, object places)."""
    place: dict[str, tuple[str, int]] = {}
    holder: dict[str, tuple[str, int]] = {}
    floor: dict[str, tuple[str, int, int] | None] = {}
    states = []
    for i, fact in enumerate(facts):
        kind, args = _parse(task, fact)
        if kind == "move":
            assert place.get(args[0], (None,))[0] != args[1], f"move to the current place: {fact}"
            place[args[0]] = (args[1], i)
        elif kind == "get":
            assert args[1] not in holder, f"get of a held object: {fact}"
            spot = floor.get(args[1])
            if spot is not None and args[0] in place:
                assert spot[0] == place[args[0]][0], f"get away from the object: {fact}"
            holder[args[1]] = (args[0], i)
        elif kind == "drop":
            assert holder.get(args[1], (None,))[0] == args[0], f"drop of an object not held: {fact}"
            del holder[args[1]]
            floor[args[1]] = (place[args[0]][0], place[args[0]][1], i) if args[0] in place else None
        else:
            giver, obj, receiver = args
            assert holder.get(obj, (None,))[0] == giver and giver != receiver, f"invalid give: {fact}"
            if giver in place and receiver in place:
                assert place[giver][0] == place[receiver][0], f"give across places: {fact}"
            holder[obj] = (receiver, i)
        states.append({"place": dict(place), "holder": dict(holder), "floor": dict(floor)})
    return states


def _object_place(state: dict, obj: str) -> tuple[str, set[int]] | None:
    if obj in state["holder"]:
        person, got = state["holder"][obj]
        if person not in state["place"]:
            return None
        where, moved = state["place"][person]
        return where, {got, moved}
    spot = state["floor"].get(obj)
    return None if spot is None else (spot[0], {spot[1], spot[2]})


def _check_qa1(s: dict) -> None:
    person = QUESTIONS["qa1"][0].match(s["question"]).group(1)
    where, idx = _replay("qa1", s["facts"])[-1]["place"][person]
    assert (s["answer"], s["supporting"]) == (where, [idx])


def _check_qa2(s: dict) -> None:
    obj = QUESTIONS["qa2"][0].match(s["question"]).group(1)
    found = _object_place(_replay("qa2", s["facts"])[-1], obj)
    assert found is not None and (s["answer"], set(s["supporting"])) == found


def _check_qa3(s: dict) -> None:
    obj, last = QUESTIONS["qa3"][0].match(s["question"]).groups()
    states = _replay("qa3", s["facts"])
    history: list[str] = []
    for state in states:
        found = _object_place(state, obj)
        if found is not None and (not history or history[-1] != found[0]):
            history.append(found[0])
    assert history[-1] == last and history[-2] == s["answer"] != last
    assert obj not in states[-1]["holder"], "qa3 asks about an object lying where it was dropped"
    # The three supporting facts alone show the journey: one person got the object and was at the answer
    # (in either order), then moved to the last place while still holding it from that get.
    *first_two, k = s["supporting"]
    (kind_k, (person, to)) = _parse("qa3", s["facts"][k])
    assert (kind_k, to) == ("move", last)
    parsed = {i: _parse("qa3", s["facts"][i]) for i in first_two}
    (got,) = [i for i, (kind, args) in parsed.items() if kind == "get" and args == (person, obj)]
    (moved,) = [i for i, (kind, args) in parsed.items() if kind == "move" and args == (person, s["answer"])]
    assert all(states[t]["holder"][obj] == (person, got) for t in range(got, k + 1))
    assert states[k - 1]["place"][person] == (s["answer"], moved)
    if moved < got:
        assert states[got]["place"][person] == (s["answer"], moved)


def _check_qa4(s: dict) -> None:
    rel = set()
    for fact in s["facts"]:
        m = RELATION.match(fact)
        assert m, f"not a relation sentence: {fact!r}"
        x, d, y = m.groups()
        rel |= {(x, d, y), (y, OPP[d], x)}
    m0, m1 = (q.match(s["question"]) for q in QUESTIONS["qa4"])
    if m0:
        d, b = m0.groups()
        answers = [x for x, dd, y in rel if dd == d and y == b]
    else:
        b, d = m1.groups()
        answers = [y for x, dd, y in rel if x == b and dd == d]
    assert answers == [s["answer"]]
    assert len({x for x, _, _ in rel}) == 3
    (idx,) = s["supporting"]
    assert b in s["facts"][idx] and s["answer"] in s["facts"][idx]


def _check_qa5(s: dict) -> None:
    _replay("qa5", s["facts"])
    gives = [(i, ACTOR_TEMPLATES["qa5"]["give"].match(f)) for i, f in enumerate(s["facts"])]
    gives = [(i, m.groups()) for i, m in gives if m]
    q = [p.match(s["question"]) for p in QUESTIONS["qa5"]]
    form = next(k for k, m in enumerate(q) if m)
    g = q[form].groups()
    match = {0: lambda a: (a[1], a[2]) == g, 1: lambda a: a[1] == g[0], 2: lambda a: (a[0], a[1]) == g,
             3: lambda a: (a[0], a[2]) == g, 4: lambda a: a[1] == g[0]}[form]
    idx, (giver, obj, receiver) = gives[-1]  # the latest give, which no later fact touches
    assert match((giver, obj, receiver))
    assert s["answer"] == {0: giver, 1: giver, 2: receiver, 3: obj, 4: receiver}[form]
    assert s["supporting"] == [idx]
    later = [_parse("qa5", f) for f in s["facts"][idx + 1:]]
    assert all(args[1] != obj for kind, args in later if kind != "move")


CHECKS = {"qa1": _check_qa1, "qa2": _check_qa2, "qa3": _check_qa3, "qa4": _check_qa4, "qa5": _check_qa5}
SUPPORT_COUNT = {"qa1": 1, "qa2": 2, "qa3": 3, "qa4": 1, "qa5": 1}


def test_templates_and_counts(task_samples):
    task, samples = task_samples
    lo, hi = FACT_RANGE[task]
    for s in samples:
        assert sorted(s) == ["answer", "facts", "question", "supporting"]
        assert lo <= len(s["facts"]) <= hi
        assert any(q.match(s["question"]) for q in QUESTIONS[task]), s["question"]
        if task != "qa4":
            for fact in s["facts"]:
                _parse(task, fact)
        assert len(s["supporting"]) == SUPPORT_COUNT[task]
        assert s["supporting"] == sorted(s["supporting"]) and all(0 <= i < len(s["facts"]) for i in s["supporting"])


def test_answers_by_resimulation(task_samples):
    task, samples = task_samples
    for s in samples:
        CHECKS[task](s)


def test_answer_casing_and_spread(task_samples):
    task, samples = task_samples
    answers = {s["answer"] for s in samples}
    expected = {"qa5": {"Bill", "Fred", "Jeff", "Mary", "apple", "football", "milk"}}.get(
        task, {"bathroom", "bedroom", "garden", "hallway", "kitchen", "office"})
    assert answers == expected


@pytest.mark.parametrize("task", ["qa1", "qa2", "qa3", "qa5"])
def test_answers_spread_as_in_the_released_data(task: str):
    """The released v1.2 test answers (1000 per task): every place 13-22 % in qa1-qa3; in qa5 a third each are
    givers, receivers and objects. Fixed hidden start places gave qa2 "kitchen" 28 %; five equally likely
    question forms gave qa5 objects 20 %."""
    samples = generate(task, 2000, "test", seed=11)
    share = Counter(s["answer"] for s in samples)
    if task != "qa5":
        assert all(0.12 < share[place] / len(samples) < 0.22 for place in LOCATIONS), share
        return
    roles = ("giver", "giver", "receiver", "object", "receiver")  # of the QUESTIONS["qa5"] forms, in order
    role = Counter(roles[next(i for i, q in enumerate(QUESTIONS["qa5"]) if q.match(s["question"]))] for s in samples)
    assert all(0.28 < n / len(samples) < 0.39 for n in role.values()) and len(role) == 3, role


@pytest.mark.parametrize(("task", "length", "low", "high"), [
    ("qa3", "1k", 0.80, 0.92), ("qa3", "2k", 0.99, 1.0), ("qa5", "1k", 0.97, 1.0)])
def test_story_lengths_as_in_the_released_data(task: str, length: str, low: float, high: float):
    """Share of samples the reference generator keeps (facts plus question <= (length - 300) // 8 lines): in
    the released test sets qa3 keeps 862 of 1000 at 1k and 998 at 2k, qa5 997 at 1k. Asking qa3 about carried
    objects and qa5 only right after a give made the stories longer: 76 %, 97 % and 94 % were kept here."""
    limit = (parse_length(length) - PROMPT_MARGIN) // MAX_FACT_LINE_FRACTION
    samples = generate(task, 2000, "test", seed=5)
    assert low <= sum(len(s["facts"]) + 1 <= limit for s in samples) / len(samples) <= high


@pytest.mark.parametrize("task", TASKS)
def test_deterministic_by_seed(task: str):
    assert generate(task, 30, "train", seed=7) == generate(task, 30, "train", seed=7)
    assert generate(task, 30, "train", seed=7) != generate(task, 30, "train", seed=8)


@pytest.mark.parametrize("task", TASKS)
def test_train_test_disjoint(task: str):
    def key(s: dict) -> tuple:
        return (tuple(s["facts"]), s["question"])

    train = generate(task, 1500, "train", seed=0) + generate(task, 500, "train", seed=3)
    test = generate(task, 500, "test", seed=0)
    assert {key(s) for s in train}.isdisjoint(key(s) for s in test)
    assert {tuple(s["facts"][:2]) for s in train}.isdisjoint(tuple(s["facts"][:2]) for s in test)
    assert all(split_of(s["facts"]) == "test" for s in test)


def test_stream_and_errors():
    stream = iter_samples("qa1", "test", seed=5)
    assert [next(stream) for _ in range(12)] == generate("qa1", 12, "test", seed=5)
    with pytest.raises(ValueError):
        generate("qa21", 1)
    with pytest.raises(ValueError):
        generate("qa1", 1, "valid")  # type: ignore[arg-type]
