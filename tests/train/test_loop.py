"""The training loop on tiny models: files, resume reproducing the run, stage hand-over, bad input."""
from __future__ import annotations

import copy
import csv
import dataclasses
import json

import pytest
import torch

from babilong_fast.cli.main import main
from babilong_fast.models import CheckpointError, load_model
from babilong_fast.train import preset, train
from babilong_fast.train.kinds import load_trained, save_trained
from tests.train.common import tiny_config


def _log(out):
    with open(out / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_resume_mid_stage_continues_the_same_trajectory(tmp_path):
    cfg = tiny_config(dropout=0.1)  # dropout: the RNG state must be restored too
    full = train(cfg, tmp_path / "full", progress=False)
    assert len(full["losses"]) == 8
    # interrupted after global step 6 (stage 2, step 3); last.pt was written at stage 2 step 2 (global step 5)
    part = train(cfg, tmp_path / "part", progress=False, stop_after=6)
    assert part["losses"] == full["losses"][:6]
    rest = train(cfg, tmp_path / "part", progress=False, resume=True)
    assert len(rest["losses"]) == 3
    torch.testing.assert_close(torch.tensor(rest["losses"]), torch.tensor(full["losses"][5:]), rtol=1e-6, atol=0)
    assert rest["valid"] == full["valid"]
    rows = _log(tmp_path / "part")
    assert [int(r["global_step"]) for r in rows] == list(range(1, 9))
    assert [float(r["loss"]) for r in rows] == pytest.approx(full["losses"], rel=1e-6)
    a, b = torch.load(tmp_path / "full" / "best.pt"), torch.load(tmp_path / "part" / "best.pt")
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=1e-5, atol=1e-6)


def test_resume_with_no_last_pt(tmp_path, capsys):
    """resume with nothing to resume starts a run and says so; a folder whose config.json is another config's (a
    run killed before its first save) is refused, not restarted under the new settings with its log replaced."""
    cfg, out = tiny_config(steps=[1, 1], stages=(1, 2)), tmp_path / "run"  # a tuple: a list once in config.json
    train(cfg, out, progress=False, resume=True)
    assert f"nothing to resume in {str(out)!r} (no last.pt): starting from step 0" in capsys.readouterr().err
    (out / "last.pt").unlink(missing_ok=True)
    with pytest.raises(ValueError, match=r"another config \(differs in \['lr'\]\) with no last.pt to resume"):
        train(dataclasses.replace(cfg, lr=1e-2), out, progress=False, resume=True)
    assert len(_log(out)) == 2 and json.loads((out / "config.json").read_text())["lr"] == cfg.lr
    assert len(train(cfg, out, progress=False, resume=True)["losses"]) == 2  # same settings: from step 0


def test_a_last_pt_of_another_state_version_is_refused(tmp_path):
    """Version 1 states come from runs whose draws read other bAbI samples: resuming one would change its data."""
    cfg, out = tiny_config(steps=[3, 1]), tmp_path / "run"
    train(cfg, out, progress=False, stop_after=2)
    payload = torch.load(out / "last.pt", weights_only=False)
    torch.save({**payload, "version": 1}, out / "last.pt")
    with pytest.raises(ValueError, match="training-state version 1, expected 2: it was written by another"):
        train(cfg, out, progress=False, resume=True)


def test_time_limit_stops_mid_stage_and_resume_finishes_it(tmp_path):
    """A run stopped by its time limit resumes the rest of its stage; the limit counts the current call only."""
    cfg, out = tiny_config(), tmp_path / "run"  # stages 1 and 2: 3 + 5 steps
    first = train(cfg, out, progress=False, time_limit=0.0)  # over the limit after its first step
    assert len(first["losses"]) == 1 and (first["position"].stage_index, first["position"].step) == (0, 1)
    second = train(cfg, out, progress=False, resume=True, time_limit=0.0)
    assert len(second["losses"]) == 1 and (second["position"].stage_index, second["position"].step) == (0, 2)
    rest = train(cfg, out, progress=False, resume=True)
    assert len(rest["losses"]) == 6 and rest["position"].global_step == 8
    assert [r["stage"] for r in _log(out)] == ["1"] * 3 + ["2"] * 5


@pytest.mark.parametrize("patience", [None, 1])
def test_time_limit_stop_then_resume_equals_an_uninterrupted_run(tmp_path, patience):
    """A time-limit stop adds no validation (it would count for best.pt and patience): stopped after every step in
    turn and resumed, the run gives the uninterrupted run's losses, validations and weights."""
    cfg = tiny_config(steps=[4, 2], eval_every=3, patience=patience)
    full = train(cfg, tmp_path / "full", progress=False)
    out = tmp_path / "stopped"
    losses = train(cfg, out, progress=False, time_limit=0.0)["losses"]  # stops after each step
    for _ in range(len(full["losses"])):  # a call per remaining step, until one finds nothing left to do
        res = train(cfg, out, progress=False, resume=True, time_limit=0.0)
        if not res["losses"]:
            break
        losses += res["losses"]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(full["losses"]), rtol=1e-6, atol=0)
    assert res["valid"] == full["valid"]
    a, b = torch.load(tmp_path / "full" / "best.pt"), torch.load(out / "best.pt")
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=1e-5, atol=1e-6)


def test_files_stages_and_eval_cli(tmp_path):
    cfg = tiny_config("rmt", steps=[2, 2], eval_every=1)
    res = train(cfg, tmp_path / "run", progress=False)
    out = tmp_path / "run"
    assert {p.name for p in out.iterdir()} >= {"config.json", "log.csv", "stage1.pt", "stage2.pt", "best.pt", "last.pt"}
    assert json.loads((out / "config.json").read_text())["kind"] == "rmt"
    rows = _log(out)
    assert len(rows) == 4 and all(r["valid_accuracy"] != "" for r in rows)
    assert [r["stage"] for r in rows] == ["1", "1", "2", "2"]
    assert all(float(r["loss"]) > 0 and float(r["grad_norm"]) > 0 for r in rows)
    assert [v["stage"] for v in res["valid"]] == [1, 1, 2, 2]
    model = load_model(out / "best.pt", kind="rmt")
    assert model.segment_size == 64 and model.num_mem_tokens == 4
    rc = main(["eval", "--checkpoint", str(out / "best.pt"), "--tasks", "qa1", "--lengths", "128", "--n", "2",
               "--out", str(tmp_path / "eval"), "--no-progress"])
    assert rc == 0 and (tmp_path / "eval" / "results.json").is_file()


def test_target_stops_the_stage_and_next_stage_starts_from_best(tmp_path):
    cfg = tiny_config(steps=[50, 1], eval_every=1, target=[0.0, None])
    res = train(cfg, tmp_path / "run", progress=False)
    # stage 1 stops at its first validation (any accuracy >= 0), stage 2 runs its single step
    assert [(v["stage"], v["step"]) for v in res["valid"]] == [(1, 1), (2, 1)]
    assert len(res["losses"]) == 2


def test_patience(tmp_path):
    cfg = tiny_config(steps=[6, 1], eval_every=1, patience=1, lr=1e-9)
    res = train(cfg, tmp_path / "run", progress=False)
    stage1 = [v for v in res["valid"] if v["stage"] == 1]
    assert len(stage1) == 2  # lr 1e-9: the second validation does not improve, and patience is 1


@pytest.mark.parametrize("field, value, says", [
    ("steps", 2.5, "steps (stage 1) must be an integer >= 1, got 2.5"),
    ("steps", True, "steps (stage 1) must be an integer >= 1, got True"),
    ("patience", 0, "patience must be an integer >= 1 or None, got 0"),
    ("patience", 1.5, "patience must be an integer >= 1 or None"),
    ("pool_size", 2.5, "pool_size must be an integer >= 1 or None"),
    ("num_mem_tokens", 1.5, "num_mem_tokens must be an integer >= 1"),
    ("detach_every", 0, "detach_every must be an integer >= 1 or None"),
    ("seed", 1.5, "seed must be an integer, got 1.5"),
    ("target", "x", "target is an exact-match percentage in [0, 100]"),
    ("target", 150.0, "target is an exact-match percentage in [0, 100]"),
    ("lr", float("inf"), "lr must be a finite number > 0, got inf"),
    ("lr", -1.0, "lr must be a finite number > 0, got -1.0"),
    ("warmup", float("inf"), "warmup must be a finite number >= 0"),
    ("weight_decay", float("nan"), "weight_decay must be a finite number >= 0"),
    ("decay_factor", 0.5, "decay_factor must be a finite number >= 1"),
    ("clip", float("nan"), "clip must be a finite number > 0"),
    ("backend", "cuda2", "unknown backend 'cuda2'"),
    ("device", "mps", "device must be 'cpu', 'cuda' or None"),
    ("bf16", "no", "bf16 must be True or False"),
])
def test_config_fields_are_checked(field, value, says):
    """A bad value is refused up front, naming its field (steps=2.5 used to loop forever: a stage ends when its step
    count equals steps)."""
    with pytest.raises(ValueError) as e:
        tiny_config(**{field: value})
    assert says in str(e.value)


def test_validate_at_stop_for_runs_not_resumed(tmp_path):
    """validate_at_stop (benchmarks/train_proof.py): the stop step is validated, so best.pt covers it."""
    cfg = tiny_config(steps=[4, 2], eval_every=3)
    res = train(cfg, tmp_path / "v", progress=False, time_limit=0.0, validate_at_stop=True)
    assert [(v["stage"], v["step"]) for v in res["valid"]] == [(1, 1)] and (tmp_path / "v" / "best.pt").is_file()
    res = train(cfg, tmp_path / "n", progress=False, time_limit=0.0)
    assert res["valid"] == [] and not (tmp_path / "n" / "best.pt").exists()


def test_presets_take_none_overrides():
    assert preset("rmt", patience=None).patience is None
    assert preset("armt", target=None).target is None
    assert preset("tiny", pool_size=None).pool_size is None


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="strictly increasing"):
        tiny_config(stages=[2, 2])
    with pytest.raises(ValueError, match="time_limit must be a finite number of seconds >= 0"):
        train(tiny_config(), tmp_path / "t", progress=False, time_limit=-5)
    from babilong_fast.train.kinds import build_model as build

    other = tiny_config(num_mem_tokens=6)
    with pytest.raises(ValueError, match="init_from .* does not fit this config"):
        train(tiny_config(), tmp_path / "i", init_from=save_trained(build(other), other, tmp_path / "m6.pt"),
              progress=False)
    with pytest.raises(ValueError, match="n_positions=80"):
        tiny_config(segment_size=100)
    with pytest.raises(ValueError, match="no sample that fits 1 segment"):
        train(tiny_config(task="qa3", segment_size=24), tmp_path / "qa3", progress=False)
    with pytest.raises(ValueError, match="multiple of processes"):
        train(tiny_config(batch_size=3), tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("gpt5")
    # a model file of another kind
    torch.manual_seed(0)
    from babilong_fast.train.kinds import build_model

    armt_cfg = tiny_config("armt")
    path = save_trained(build_model(armt_cfg), armt_cfg, tmp_path / "armt.pt")
    with pytest.raises(CheckpointError, match="ARMT model, not the RMT"):
        train(tiny_config("rmt"), tmp_path / "r", init_from=path, progress=False)
    # a training state of another kind
    train(tiny_config("armt", steps=[2, 1]), tmp_path / "s", progress=False, stop_after=2)
    with pytest.raises(ValueError, match="training state of an ARMT model, not RMT"):
        train(tiny_config("rmt"), tmp_path / "s", resume=True, progress=False)
    # a training state of another config
    with pytest.raises(ValueError, match=r"another config \(differs in \['lr'\]\)"):
        train(tiny_config("armt", steps=[2, 1], lr=1.0), tmp_path / "s", resume=True, progress=False)


def test_mamba_kind(tmp_path):
    """HF MambaForCausalLM trained through its own forward; its loss equals the token CE on the answer positions."""
    from babilong_fast.train.data import GeneratedData
    from babilong_fast.train.format import collate
    from babilong_fast.train.kinds import build_model, loss_and_count

    cfg = tiny_config("mamba", steps=[2, 1])
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = collate(GeneratedData("qa1", 64, seed=0).batch(2, range(3)))
    lsum, count = loss_and_count(model, batch, cfg)
    logits = model(input_ids=batch["input_ids"]).logits.double()
    keep = batch["labels_mask"][:, :-1]
    want = torch.nn.functional.cross_entropy(logits[:, :-1][keep], batch["input_ids"][:, 1:][keep], reduction="sum")
    assert count == int(keep.sum()) and count > 3
    torch.testing.assert_close(lsum.double(), want, rtol=1e-5, atol=1e-5)
    # sparse logits (the default) against HF's own forward with labels: same loss, same gradients
    (grads,) = [torch.autograd.grad(lsum, list(model.parameters()))]
    dense_sum, _ = loss_and_count(model, batch, dataclasses.replace(cfg, sparse_logits=False))
    torch.testing.assert_close(dense_sum, lsum, rtol=1e-5, atol=1e-5)
    for g, d in zip(grads, torch.autograd.grad(dense_sum, list(model.parameters())), strict=True):
        torch.testing.assert_close(g, d, rtol=1e-4, atol=1e-6)
    res = train(cfg, tmp_path / "m", progress=False)
    assert len(res["losses"]) == 3 and all(v["accuracy"] >= 0 for v in res["valid"])
    loaded = load_trained(tmp_path / "m" / "best.pt", "mamba")
    assert type(loaded).__name__ == "MambaForCausalLM"
    with pytest.raises(CheckpointError, match="MAMBA model, not the ARMT"):
        load_trained(tmp_path / "m" / "best.pt", "armt")


def test_optimizer_is_fused_adamw_with_the_loop_update():
    from babilong_fast.train.schedule import make_optimizer

    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    ref = copy.deepcopy(model)
    opt, _ = make_optimizer(model, lr=1e-2, weight_decay=0.01, warmup=0, total=10)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.01, foreach=False)
    assert opt.defaults["fused"]
    x = torch.randn(4, 5)
    for _ in range(3):
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            m(x).square().sum().backward()
            o.step()
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_micro_batches_are_length_sorted_and_give_the_one_batch_loss(tmp_path):
    from babilong_fast.train.data import GeneratedData
    from babilong_fast.train.distributed import Dist
    from babilong_fast.train.loop import _micro_batches

    cfg = tiny_config(batch_size=8, micro_batch_size=2)
    data = GeneratedData("qa1", cfg.segment_size, seed=cfg.seed, pool_size=cfg.pool_size)
    micro = _micro_batches(cfg, data, 2, 1, Dist())
    lengths = [len(e.input_ids) for mb in micro for e in mb]
    assert [len(mb) for mb in micro] == [2] * 4 and lengths == sorted(lengths) and len(set(lengths)) > 1
    assert sorted(map(id, (e for mb in micro for e in mb))) == sorted(map(id, data.batch(2, range(8, 16))))
    # same global batch in micro-batches of 1 and in one pass: the same loss trajectory
    steps = {"stages": [2], "steps": [3], "target": [None]}
    one = train(tiny_config(batch_size=4, micro_batch_size=4, **steps), tmp_path / "one", progress=False)
    four = train(tiny_config(batch_size=4, micro_batch_size=1, **steps), tmp_path / "four", progress=False)
    torch.testing.assert_close(torch.tensor(four["losses"]), torch.tensor(one["losses"]), rtol=2e-5, atol=0)


def test_log_every_sets_how_often_the_bar_shows_the_loss(tmp_path):
    from babilong_fast.train.logbook import Logbook

    book = Logbook(tmp_path, True, total=5, progress=False, log_every=2)
    shown: list[str] = []
    book.bar.postfix = shown.append
    for step in range(1, 6):
        valid = {"valid_accuracy": 50.0} if step == 5 else {}
        book.step({"global_step": step, "stage": 1, "step": step, "loss": 0.5 * step, **valid})
    book.close()
    assert shown == ["stage 1 loss 1.0000", "stage 1 loss 2.0000", "stage 1 loss 2.5000 valid 50.0%"]
    assert len(_log(tmp_path)) == 5


def test_gradients_are_clipped_before_the_step(tmp_path, monkeypatch):
    from babilong_fast.train import loop

    seen: list[float] = []
    real = loop.make_optimizer

    def recording(*args, **kw):
        opt, sched = real(*args, **kw)

        def norm_at_step(optimizer, *_):
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

        opt.register_step_pre_hook(norm_at_step)
        return opt, sched

    monkeypatch.setattr(loop, "make_optimizer", recording)
    train(tiny_config(steps=[2, 1], clip=1e-3), tmp_path / "run", progress=False)
    logged = [float(r["grad_norm"]) for r in _log(tmp_path / "run")]  # before clipping
    assert len(seen) == len(logged) == 3 and all(n > 1e-2 for n in logged)
    assert all(n <= 1e-3 * (1 + 1e-4) for n in seen), seen
