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
    (["--stages", "0,4", "--steps", "1,1", "--shares", "0.5,0.5"], "over --max-segments 2"),
    (["--stages", "2", "--steps", "1", "--shares", "1", "--init-from", "m.pt"], "needs --kind armt or --kind rmt"),
])
def test_train_proof_rejects_bad_stage_flags(argv, message, capsys):
    with pytest.raises(SystemExit):
        _load("train_proof").main(argv)
    assert message in capsys.readouterr().err


def test_train_proof_takes_longer_stages_only_when_asked(capsys):
    proof = _load("train_proof")
    assert proof.main(["--stages", "0,4", "--steps", "1,1", "--shares", "0.5,0.5", "--max-segments", "4",
                       "--baseline", "--n", "2"]) == 0
    assert "answer = location of the last fact" in capsys.readouterr().out


def test_train_proof_targets_need_the_short_curriculum():
    proof = _load("train_proof")
    assert proof.targets_met({"2": 90.0, "8": 0.0, "32": 80.0}, [0, 2])
    assert not proof.targets_met({"2": 90.0, "8": 0.0, "32": 79.0}, [0, 2])
    assert not proof.targets_met({"2": 96.0, "8": 95.0, "32": 85.0}, [0, 4])


def _tiny_armt(segment: int = 64):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from babilong_fast.models import ARMT

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, n_positions=segment + 4))
    return ARMT(gpt2, num_mem_tokens=4, d_mem=4, segment_size=segment).eval()


def test_memory_probe_keys_are_the_ones_the_model_writes():
    import torch

    probe = _load("armt_memory_probe")
    model = _tiny_armt()
    ids = list(range(1000, 1000 + 3 * 64 - 5))
    writes = probe.sample_writes(model, ids, 64)
    with torch.no_grad():
        state = model.init_state(1)
        for a in range(0, len(ids), 64):
            _, _, state = model.segment_forward(torch.tensor([ids[a:a + 64]]), None, state, return_logits=False)
            if a == 0:
                first_z = [z.clone() for z in state.z]
    for i, w in enumerate(writes):
        assert len(w["keys"]) == len(w["beta"]) == 3 and len(w["gamma"]) == 2
        # the first write adds each key to z once (gamma = 1), so the probe's keys must sum to the model's z
        torch.testing.assert_close(w["keys"][0].sum(0), first_z[i][0], rtol=1e-5, atol=1e-6)
        assert all(((b > 0) & (b < 1)).all() for b in w["beta"])
        assert all(((g >= 0) & (g <= 1)).all() for g in w["gamma"])
        assert w["recall"].shape == (2, 4, 16)


def test_memory_probe_prints_a_row_per_layer(tmp_path, capsys):
    from babilong_fast.models import save_model

    probe = _load("armt_memory_probe")
    path = save_model(_tiny_armt(), tmp_path / "armt.pt")
    assert probe.main([str(path), "--segments", "2", "--n", "3", "--json", str(tmp_path / "t.json")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:3] == ["layer", "cos", "next"] and [ln.split()[0] for ln in lines[1:]] == ["0", "1"]
    for ln in lines[1:]:
        values = [float(v) for v in ln.split()[1:]]
        assert len(values) == 7 and all(-1.0 <= v <= 1.0 for v in values)
    with pytest.raises(ValueError, match="at least 2 segments"):
        probe.probe(_tiny_armt(), 1, 3)
