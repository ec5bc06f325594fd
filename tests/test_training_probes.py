"""Smoke tests of the training scripts in ``benchmarks/``: the qa1 lookup probe runs, train_proof checks its flags."""
from __future__ import annotations

import importlib.util
import os
import re

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", os.path.join(BENCH, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_lookup_probe_trains_and_reports(capsys):
    probe = _load("qa1_lookup_probe")
    assert probe.main(["--compact-vocab", "--stages", "2:2,0:2", "--batch", "4", "--every", "2", "--valid-n", "20",
                       "--warmup", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[1] for ln in lines] == ["2", "4"]
    assert "stories <= 2 facts" in lines[0] and "stories <= all facts" in lines[1]
    for ln in lines:
        loss, acc = re.search(r"loss (\S+)\s+valid\s+(\S+) %", ln).groups()
        assert float(loss) > 0 and 0 <= float(acc) <= 100


@pytest.mark.parametrize("argv, message", [
    (["--stages", "0,2", "--steps", "1", "--shares", "0.5,0.5"], "one value per"),
    (["--stages", "2,0", "--steps", "1,1", "--shares", "0.5,0.5", "--max-facts", "0,0", "--batch", "4",
      "--micro", "4", "--decay-factor", "1"], "must not decrease"),
    (["--stages", "0,2", "--steps", "1,1", "--shares", "0.5,0.5", "--max-facts", "0,0", "--batch", "8,6",
      "--micro", "4"], "multiple of its --micro"),
])
def test_train_proof_rejects_bad_stage_flags(argv, message, capsys):
    with pytest.raises(SystemExit):
        _load("train_proof").main(argv)
    assert message in capsys.readouterr().err
