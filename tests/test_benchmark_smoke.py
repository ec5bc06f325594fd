"""Smoke test of ``benchmarks/throughput.py``: the models suite on its smallest setting, and the ops flags."""
from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


@pytest.fixture(scope="module")
def throughput():
    sys.path.insert(0, BENCH)
    try:
        spec = importlib.util.spec_from_file_location("throughput_under_test", os.path.join(BENCH, "throughput.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(BENCH)


def test_models_suite_smallest(throughput, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = throughput.main([
        "--device", "cpu", "--config", "tiny", "--lengths", "300", "--batch", "1", "--repeats", "1",
        "--no-warmup", "--max-new-tokens", "2", "--mamba-prefix", "4096", "--mamba-chunk", "64", "--json", str(out),
    ])
    text = capsys.readouterr().out
    assert code == 0, text
    res = json.loads(out.read_text())
    assert res["suite"] == "models"
    env = res["environment"]
    for key in ("device", "commit", "torch", "torch_cuda", "triton", "transformers", "date"):
        assert key in env
    assert res["configs"]["backbone"]["vocab_size"] == 50257
    assert res["configs"]["mamba"]["config"]["vocab_size"] == 50280 and res["configs"]["mamba"]["prefix"] == 4096
    assert set(res["modes"]) == {"stock", "fast", "stock_mamba", "fast_mamba"}
    assert "full-vocabulary logits" in res["modes"]["stock"] and "one call per remaining token" in res["modes"]["stock_mamba"]
    measured = [r for r in res["rows"] if "seconds" in r]
    assert {(r["model"], r["mode"]) for r in measured} == {
        ("rmt", "stock"), ("rmt", "fast"), ("armt", "stock"), ("armt", "fast"), ("mamba", "stock"), ("mamba", "fast")}
    for r in measured:
        assert r["length"] == 300 and r["batch"] == 1 and r["runs_s"] and r["peak_mem_bytes"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["input_tokens"] / r["seconds"])
        assert r["seconds_per_sample"] == pytest.approx(r["seconds"])
        if r["mode"] == "fast":
            assert r["answer_matches_stock"] is True  # float32: the fast engine gives the stock tokens
    assert "fast/stock speed" in text and "mamba B=1 300 (auto)" in text
    png = out.with_suffix(".png")
    if importlib.util.find_spec("matplotlib") is None:
        assert "no plot: matplotlib is not installed" in text
    else:
        assert png.exists() and png.stat().st_size > 1000


def test_budget_exceeded_is_skipped_not_extrapolated(throughput, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = throughput.main([
        "--device", "cpu", "--config", "tiny", "--models", "rmt", "--modes", "stock", "--lengths", "2k,4k",
        "--repeats", "1", "--no-warmup", "--budget-s", "0.001", "--json", str(out), "--no-plot",
    ])
    capsys.readouterr()
    assert code == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["length"] for r in rows] == [2000, 4000]
    assert "exceeded 0.001 s" in rows[0]["skipped"] and "seconds" not in rows[0]
    assert "shorter length exceeded" in rows[1]["skipped"]


def test_length_predicted_over_budget_is_skipped_not_run(throughput, tmp_path, capsys):
    """A length whose run, at the rate of the shorter one, would take over twice the budget is not attempted."""
    out = tmp_path / "bench.json"
    code = throughput.main([  # fast mode: a CPU stock row at 10M is skipped by its memory estimate first
        "--device", "cpu", "--config", "tiny", "--models", "rmt", "--modes", "fast", "--lengths", "1k,10M",
        "--repeats", "1", "--no-warmup", "--fast-budget-s", "10", "--json", str(out), "--no-plot",
    ])
    capsys.readouterr()
    assert code == 0
    short, long = json.loads(out.read_text())["rows"]
    assert short["seconds"] > 0 and "skipped" not in short
    assert long["length"] == 10_000_000 and "seconds" not in long and "input_tokens" not in long
    assert long["skipped"].startswith("predicted ") and "at 1k" in long["skipped"] and "not extrapolated" in long["skipped"]


def test_predicted_over_budget_rule(throughput):
    import models_bench

    row: dict = {}
    assert not models_bench.predicted_over_budget(row, None, 10**6, 15)  # nothing measured yet: run it
    assert not models_bench.predicted_over_budget(row, (16_000, 0.4, "16k"), 10**6, 15) and row == {}  # 25 s <= 30
    assert models_bench.predicted_over_budget(row, (16_000, 0.6, "16k"), 10**6, 15)  # 37.5 s > 2 x 15
    assert row["skipped"].startswith("predicted 38 s from 0.6 s at 16k")


def test_mamba_stock_runs_the_prefix_then_single_tokens(throughput, tmp_path, capsys):
    """Mamba stock with a prefix shorter than the input takes the per-token path and still answers as fast does."""
    out = tmp_path / "bench.json"
    code = throughput.main([
        "--device", "cpu", "--config", "tiny", "--models", "mamba", "--lengths", "300", "--repeats", "1",
        "--no-warmup", "--max-new-tokens", "3", "--mamba-prefix", "200", "--mamba-chunk", "128", "--json", str(out),
        "--no-plot",
    ])
    text = capsys.readouterr().out
    assert code == 0, text
    rows = {r["mode"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["fast"]["answer_matches_stock"] is True
    assert rows["stock"]["input_tokens"] == rows["fast"]["input_tokens"] > 200


def test_step_lean_hf_compiled_rows(throughput, tmp_path, capsys):
    """--step lean,hf,compiled: one fast row per step, each giving stock's answer; a bad value is refused."""
    out = tmp_path / "bench.json"
    code = throughput.main([
        "--device", "cpu", "--config", "tiny", "--models", "rmt,armt", "--lengths", "300", "--repeats", "1",
        "--no-warmup", "--max-new-tokens", "2", "--step", "lean,hf,compiled", "--json", str(out), "--no-plot",
    ])
    text = capsys.readouterr().out
    assert code == 0, text
    res = json.loads(out.read_text())
    assert res["settings"]["steps"] == ["lean", "hf", "compiled"]
    fast = [r for r in res["rows"] if r["mode"] == "fast"]
    assert sorted((r["model"], r["step"]) for r in fast) == [
        ("armt", "compiled"), ("armt", "hf"), ("armt", "lean"), ("rmt", "compiled"), ("rmt", "hf"), ("rmt", "lean")]
    assert all(r["answer_matches_stock"] is True for r in fast)
    assert all(r["step"] == "hf" for r in res["rows"] if r["mode"] == "stock")
    for tag in ("rmt B=1 300 (hf)", "armt B=1 300 (auto/hf)", "rmt B=1 300 (compiled)", "armt B=1 300 (compiled)"):
        assert f"{tag}: fast/stock" in text
    with pytest.raises(SystemExit):
        throughput.main(["--device", "cpu", "--step", "fused"])
    assert "unknown --step 'fused'" in capsys.readouterr().err


def test_ops_flags_still_select_ops_suite(throughput):
    args = throughput.parse_args(["--shape", "1,8,16,4", "--dtype", "float32", "--sweep", "--json", "x.json"])
    assert args.suite == "ops"
    assert throughput.parse_args([]).suite == "models"
    assert throughput.parse_args(["--suite", "all"]).suite == "all"


def test_step_kernels_counts(tmp_path, capsys):
    """benchmarks/step_kernels.py: per GPT-2 block the lean path launches 10 kernels, the HF forward 17."""
    spec = importlib.util.spec_from_file_location("step_kernels_under_test", os.path.join(BENCH, "step_kernels.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = {}
    for layers in (1, 3):
        out = tmp_path / f"k{layers}.json"
        mod.main(["--layers", str(layers), "--width", "32", "--heads", "2", "--segment", "16", "--json", str(out)])
        rows[layers] = {(r["model"], r["blocks"]): r for r in json.loads(out.read_text())["rows"]}
    assert "kernels per segment step" in capsys.readouterr().out
    for model in ("rmt", "armt"):
        per_block = {b: (rows[3][model, b]["kernels"] - rows[1][model, b]["kernels"]) / 2 for b in ("hf", "lean")}
        if model == "rmt":
            assert per_block == {"hf": 17, "lean": 10}
        assert per_block["hf"] - per_block["lean"] == 7
        assert rows[3][model, "lean"]["by_op"]["aten.gelu.default"] == 3


def test_device_check_model_runs_parse(throughput):
    """Every model run of the device check is a valid throughput.py command line; a run's own flags win."""
    spec = importlib.util.spec_from_file_location("device_check_under_test", os.path.join(BENCH, "device_check.py"))
    dc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dc)
    for name, extra, cap in dc.MODEL_RUNS:
        args = throughput.parse_args(["--dtype", "bfloat16", "--budget-s", "15", "--json", "x.json", *extra])
        assert cap > 0 and args.models, name
        if name == "mamba":
            assert args.models == "mamba" and args.budget_s == 40  # its stock prefix outlasts the common 15 s
