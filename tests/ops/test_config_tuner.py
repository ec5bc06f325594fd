"""ConfigTuner: the measured pick of a launch configuration (timer replaced where the ranking must be known)."""
from __future__ import annotations

import json

import torch

from babilong_fast.kernels.config_tuner import ConfigTuner, time_launch

CPU = torch.device("cpu")


def ranked_timer(seconds: dict):
    """A timer that calls the launch once and reports the config's seconds from ``seconds``."""
    calls = []

    def timer(launch, device, repeats):
        launch()
        calls.append(launch)
        return seconds[launched[-1]]

    launched: list = []
    return timer, calls, launched


def test_picks_the_fastest_and_measures_once_per_key():
    timer, calls, launched = ranked_timer({"a": 3.0, "b": 1.0, "c": 2.0})
    tuner = ConfigTuner(timer=timer)
    key = {"batch": 1, "dim": 8}
    assert tuner.pick(key, ["a", "b", "c", "b"], launched.append, CPU) == "b"
    assert len(calls) == 3  # duplicates timed once
    assert tuner.pick(dict(reversed(key.items())), ["a", "c"], launched.append, CPU) == "b"  # same key, any order
    assert len(calls) == 3
    assert tuner.cached(key) == "b" and tuner.cached({"batch": 2, "dim": 8}) is None
    assert tuner.pick({"batch": 2, "dim": 8}, ["a", "c"], launched.append, CPU) == "c"
    assert len(calls) == 5


def test_failing_candidates_are_recorded_and_skipped():
    def launch(c):
        if c != "ok":
            raise RuntimeError(f"out of resources: {c}")

    tuner = ConfigTuner(timer=lambda f, d, r: (f(), 1.0)[1])
    assert tuner.pick({"k": 1}, ["big", "ok"], launch, CPU) == "ok"
    assert tuner.pick({"k": 2}, ["big", "huge"], launch, CPU) is None  # nothing ran: the caller's default runs
    rep = tuner.report()
    assert rep[0]["picked"] == "'ok'" and rep[0]["errors"] == {"'big'": "RuntimeError: out of resources: big"}
    assert rep[1]["picked"] == "None" and set(rep[1]["errors"]) == {"'big'", "'huge'"}
    json.dumps(rep)
    tuner.clear()
    assert tuner.report() == [] and tuner.cached({"k": 1}) is None


def test_report_ranks_fastest_first():
    timer, _, launched = ranked_timer({(1, 2): 0.5, (3, 4): 0.25})
    tuner = ConfigTuner(timer=timer)
    tuner.pick({"device": torch.device("cpu"), "n": 3}, [(1, 2), (3, 4)], launched.append, CPU)
    (rep,) = tuner.report()
    assert rep["key"] == {"device": "cpu", "n": 3}
    assert list(rep["seconds"].items()) == [("(3, 4)", 0.25), ("(1, 2)", 0.5)] and rep["picked"] == "(3, 4)"


def test_time_launch_runs_warmup_then_repeats():
    n = []
    s = time_launch(lambda: n.append(1), CPU, repeats=4)
    assert len(n) == 5 and 0.0 <= s < 1.0
