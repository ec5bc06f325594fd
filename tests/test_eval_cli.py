"""``babilong_fast.models.checkpoint`` round trips and the ``babilong-fast eval`` subcommand, on tiny random models."""
from __future__ import annotations

import csv
import itertools
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from babilong_fast.cli import eval as eval_mod
from babilong_fast.cli.main import main
from babilong_fast.data.dataset import BabilongGenerator
from babilong_fast.data.official import write_official
from babilong_fast.data.tokenizer import get_tokenizer
from babilong_fast.models import ARMT, RMT, CheckpointError, load_model, save_model
from babilong_fast.models.compiled_step import CompiledStep
from tests.helpers import make_memory_matter

SEG = 128


def tiny_backbone() -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_layer=1, n_embd=32, n_head=2, n_positions=256))


def make(kind: str):
    torch.manual_seed(0)
    if kind == "mamba":
        from transformers import MambaConfig, MambaForCausalLM

        return MambaForCausalLM(MambaConfig(vocab_size=50280, hidden_size=32, num_hidden_layers=2, state_size=8)).eval()
    if kind == "armt":  # W_v not zero: the memory changes the answers
        model = ARMT(tiny_backbone(), num_mem_tokens=4, d_mem=8, nu=2, correction=False, segment_size=SEG).eval()
        make_memory_matter(model)
        return model
    return RMT(tiny_backbone(), num_mem_tokens=4, segment_size=SEG).eval()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return {kind: save_model(make(kind), d / f"{kind}.pt") for kind in ("armt", "rmt", "mamba")}


@pytest.mark.parametrize("kind", ["armt", "rmt", "mamba"])
def test_round_trip_keeps_bfloat16(kind, tmp_path):
    """A bf16 model comes back in bf16 (not cast up to the freshly built float32), with identical outputs."""
    model = make(kind).to(torch.bfloat16)
    loaded = load_model(save_model(model, tmp_path / "m.pt"))
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    vocab = 50280 if kind == "mamba" else 50257
    ids = torch.randint(0, vocab, (1, 150), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out, back = model(ids), loaded(ids)
    logits = (lambda o: o["logits"]) if isinstance(out, dict) else (lambda o: o.logits)  # ours: dict; HF: output
    assert torch.equal(logits(out), logits(back))


@pytest.mark.parametrize("kind", ["armt", "rmt", "mamba"])
def test_round_trip_identical_outputs(kind, tmp_path):
    model = make(kind)
    if kind == "mamba":
        loaded = load_model(save_model(model, tmp_path / "m.pt"), kind="mamba")
        assert type(loaded).__name__ == "MambaForCausalLM" and not loaded.training
        ids = torch.randint(0, 50280, (2, 40), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            assert torch.equal(model(ids).logits, loaded(ids).logits)
        return
    path = save_model(model, tmp_path / "sub" / "m.pt")
    loaded = load_model(path, kind=kind)
    assert type(loaded) is type(model)
    assert loaded.segment_size == SEG and loaded.num_mem_tokens == 4
    if kind == "armt":
        assert (loaded.d_mem, loaded.nu, loaded.correction) == (8, 2, False)
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    ids = torch.randint(0, 50257, (2, 300), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(ids)["logits"], loaded(ids)["logits"])
    assert torch.equal(
        model.generate(ids, max_new_tokens=4, eos_token_id=50256),
        loaded.generate(ids, max_new_tokens=4, eos_token_id=50256),
    )
    payload = torch.load(path, weights_only=True)
    assert payload["kind"] == kind and payload["version"] == 1
    assert payload["backbone_config"]["n_embd"] == 32


def test_load_errors(ckpts, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_model(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="ARMT model, not the RMT"):
        load_model(ckpts["armt"], kind="rmt")
    with pytest.raises(CheckpointError, match="RMT model, not the ARMT"):
        load_model(ckpts["rmt"], kind="armt")
    with pytest.raises(ValueError, match="unknown model kind 'gru'"):
        load_model(ckpts["armt"], kind="gru")
    with pytest.raises(CheckpointError, match="ARMT model, not the MAMBA"):
        load_model(ckpts["armt"], kind="mamba")
    with pytest.raises(CheckpointError, match="MAMBA model, not the RMT"):
        load_model(ckpts["mamba"], kind="rmt")
    payload = torch.load(ckpts["armt"], weights_only=True)
    payload["kind"] = "gru"
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="unknown model kind 'gru'"):
        load_model(tmp_path / "bad.pt")
    torch.save({"a": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a babilong_fast checkpoint"):
        load_model(tmp_path / "other.pt")
    with pytest.raises(TypeError, match="ARMT, RMT and MambaForCausalLM"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "lin.pt")


def _eval(ckpt, out, *extra):
    return main([
        "eval", "--checkpoint", str(ckpt), "--tasks", "qa1", "--lengths", "0k,1k", "--n", "2",
        "--seed", "0", "--out", str(out), "--no-progress", "--device", "cpu", *extra,
    ])


@pytest.mark.parametrize("kind", ["armt", "rmt", "mamba"])
def test_eval_writes_results(kind, ckpts, tmp_path):
    out = tmp_path / "out"
    assert _eval(ckpts[kind], out) == 0
    assert {p.name for p in out.iterdir()} == {"results.csv", "results.json", "heatmap.png"}
    assert (out / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / "results.json").read_text())
    env = doc["environment"]
    assert doc["complete"] is True
    assert env["kind"] == kind and env["checkpoint"] == f"{kind}.pt" and env["seed"] == 0
    assert env["device"] == "cpu" and env["torch_version"] == torch.__version__
    rows = doc["results"]
    assert [(r["task"], r["length"]) for r in rows] == [("qa1", "0k"), ("qa1", "1k")]
    for r in rows:
        assert r["n"] == 2 and 0 <= r["accuracy"] <= 100
        assert r["seconds"] > 0 and r["tokens_per_s"] > 0 and r["tokens"] > 0
    assert rows[1]["tokens"] > 2 * 900  # 1k - 20 margin per sample, plus question
    with open(out / "results.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert [(r["task"], r["length"], r["n"]) for r in csv_rows] == [("qa1", "0k", "2"), ("qa1", "1k", "2")]
    assert all(0 <= float(r["accuracy"]) <= 100 and r["checkpoint"] == f"{kind}.pt" for r in csv_rows)


def test_eval_keeps_the_cells_done_when_a_later_one_fails(ckpts, tmp_path, monkeypatch):
    real = eval_mod.evaluate_cell

    def second_fails(runner, task, length, *args, **kw):
        if length == "1k":
            raise ValueError("stopped in the second cell")
        return real(runner, task, length, *args, **kw)

    monkeypatch.setattr(eval_mod, "evaluate_cell", second_fails)
    assert _eval(ckpts["rmt"], tmp_path / "out") == 1
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["complete"] is False and [(r["task"], r["length"]) for r in doc["results"]] == [("qa1", "0k")]
    with open(tmp_path / "out" / "results.csv", newline="") as f:
        assert [r["length"] for r in csv.DictReader(f)] == ["0k"]


def test_eval_replaces_an_earlier_runs_files_and_says_so(ckpts, tmp_path, monkeypatch, capsys):
    """A second run into the same --out removes the first run's files before its first cell: one that fails early
    no longer leaves the earlier heatmap beside its own results."""
    out = tmp_path / "out"
    assert _eval(ckpts["rmt"], out) == 0 and (out / "heatmap.png").exists()
    capsys.readouterr()

    def fails(*args, **kw):
        raise ValueError("stopped in the first cell")

    monkeypatch.setattr(eval_mod, "evaluate_cell", fails)
    assert _eval(ckpts["rmt"], out) == 1
    assert f"replacing an earlier run's results.csv, results.json, heatmap.png in {out}" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_eval_checks_decoding_fits_before_the_first_sample(tmp_path, capsys):
    """An RMT whose positions hold a full segment and its memory, but not the answer after a full last segment."""
    torch.manual_seed(0)
    backbone = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_layer=1, n_embd=32, n_head=2, n_positions=SEG + 8))
    ckpt = save_model(RMT(backbone, num_mem_tokens=4, segment_size=SEG).eval(), tmp_path / "rmt.pt")
    assert _eval(ckpt, tmp_path / "out") == 1
    assert "exceed the backbone's 136 positions" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_eval_without_matplotlib_still_writes_the_results(ckpts, tmp_path, monkeypatch, capsys):
    def no_matplotlib(*args):
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(eval_mod, "write_heatmap", no_matplotlib)
    assert main(["eval", "--checkpoint", str(ckpts["rmt"]), "--tasks", "qa1", "--lengths", "0k", "--n", "1",
                 "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"results.csv", "results.json"}
    assert "no heatmap.png: pip install matplotlib" in capsys.readouterr().err


def test_eval_runs_float64_checkpoints_as_float32(tmp_path, capsys):
    ckpt = save_model(make("armt").double(), tmp_path / "armt64.pt")
    assert _eval(ckpt, tmp_path / "out") == 0
    assert "float64 weights run as float32" in capsys.readouterr().err


def test_eval_scoring_path_can_score_100_and_0(ckpts, tmp_path, monkeypatch):
    """A runner that answers ``target + EOS`` scores 100; the same answer without EOS scores 0."""
    tok = get_tokenizer()
    seen = []
    real = eval_mod.answer_batch

    def oracle(with_eos):
        def answer_batch(runner, samples, chunk_tokens=4096):
            real(runner, samples, chunk_tokens)  # the real stream still runs
            seen.extend(samples)
            return [tok.encode(s.target) + ([tok.eos_id] if with_eos else []) for s in samples]
        return answer_batch

    monkeypatch.setattr(eval_mod, "answer_batch", oracle(True))
    assert _eval(ckpts["armt"], tmp_path / "good") == 0
    rows = json.loads((tmp_path / "good" / "results.json").read_text())["results"]
    assert [r["accuracy"] for r in rows] == [100.0, 100.0] and [r["correct"] for r in rows] == [2, 2]
    assert len(seen) == 4 and all(s.task == "qa1" and s.margin == 20 for s in seen)
    assert [s.length for s in seen] == [0, 0, 1000, 1000]
    assert seen[2].num_tokens == 980
    assert rows[0]["outputs"] == [s.target + "<|endoftext|>" for s in seen[:2]]

    monkeypatch.setattr(eval_mod, "answer_batch", oracle(False))
    assert _eval(ckpts["armt"], tmp_path / "noeos") == 0
    rows = json.loads((tmp_path / "noeos" / "results.json").read_text())["results"]
    assert [r["accuracy"] for r in rows] == [0.0, 0.0]


def test_batches_by_shape_groups_by_question_length():
    from babilong_fast.data.dataset import BabilongGenerator

    samples = list(itertools.islice(BabilongGenerator("qa5", "0k", split="test", seed=0, margin=20), 12))
    qlens = [len(s.question_ids()) for s in samples]
    assert len(set(qlens)) > 1  # qa5 questions differ in length: the grouping matters
    batches = list(eval_mod.batches_by_shape(iter(samples), 10, 3))
    flat = sorted(pos for b in batches for pos, _ in b)
    assert flat == list(range(10))
    for b in batches:
        assert 1 <= len(b) <= 3 and len({len(s.question_ids()) for _, s in b}) == 1
        assert all(samples[pos] is s for pos, s in b)


@pytest.mark.parametrize("kind", ["armt", "rmt", "mamba"])
def test_eval_batched_equals_one_by_one(kind, ckpts, tmp_path):
    argv = ["--tasks", "qa5", "--lengths", "0k,1k", "--n", "5"]

    def run(batch):
        out = tmp_path / f"b{batch}"
        base = ["eval", "--checkpoint", str(ckpts[kind]), "--seed", "0", "--out", str(out), "--no-progress",
                "--device", "cpu", "--batch", str(batch)]
        assert main(base + argv) == 0
        return json.loads((out / "results.json").read_text())["results"]

    one, three = run(1), run(3)
    assert [r["outputs"] for r in one] == [r["outputs"] for r in three]
    assert [r["correct"] for r in one] == [r["correct"] for r in three]
    assert all(len(r["outputs"]) == 5 for r in one)


def _shape(sample) -> tuple[int, int]:
    return sample.num_tokens, len(sample.question_ids())


def test_batched_answers_stop_at_their_own_end_of_text():
    """Rows of a batch that end early are padded with end-of-text by the decoder; the stored answers are not."""
    from babilong_fast.data.dataset import BabilongGenerator

    eos = get_tokenizer().eos_id
    pool = BabilongGenerator("qa1", "0k", seed=0, margin=20).take(20)
    groups = itertools.groupby(sorted(pool, key=_shape), key=_shape)  # equal shapes, as batches_by_shape groups
    samples = max((list(g) for _, g in groups), key=len)[:2]

    class Runner:
        def prefill(self, chunks, total_tokens):
            return type("State", (), {"num_tokens": sum(c.shape[1] for c in chunks)})()

        def answer(self, question, state, max_new_tokens, eos_token_id):
            return torch.tensor([[5, eos_token_id, eos_token_id], [6, 7, eos_token_id]])

    assert len(samples) == 2 and eos == eval_mod.EOS_ID
    assert eval_mod.answer_batch(Runner(), samples) == [[5, eos], [6, 7, eos]]


def test_eval_compile_gives_the_same_outputs(ckpts, tmp_path, capsys, monkeypatch):
    """--compile (torch.compile of the ARMT step) answers as the eager step; a Mamba checkpoint is refused."""
    def run(extra):
        out = tmp_path / ("c" if extra else "e")
        argv = ["eval", "--checkpoint", str(ckpts["armt"]), "--tasks", "qa1", "--lengths", "1k", "--n", "2",
                "--out", str(out), "--no-progress", "--device", "cpu", *extra]
        assert main(argv) == 0
        return json.loads((out / "results.json").read_text())

    steps = []
    real_init = CompiledStep.__init__

    def spy(self, *args, **kw):
        real_init(self, *args, **kw)
        steps.append(self)

    monkeypatch.setattr(CompiledStep, "__init__", spy)
    eager = run([])
    assert steps == []
    err = capsys.readouterr().err
    assert "qa1 1k: " in err and "wrote " in err, "--no-progress hides the bar, not the per-cell lines"
    compiled = run(["--compile"])
    assert "compiled the streaming step" in capsys.readouterr().err  # before the cells, outside their timing
    assert len(steps) == 1 and steps[0].compiled_calls >= 2  # 1k tokens: segments 2..7 of 128 run compiled
    assert [r["outputs"] for r in compiled["results"]] == [r["outputs"] for r in eager["results"]]
    assert compiled["environment"]["compile"] is True and eager["environment"]["compile"] is False
    mamba = ["eval", "--checkpoint", str(ckpts["mamba"]), "--tasks", "qa1", "--lengths", "0k", "--n", "1",
             "--out", str(tmp_path / "m"), "--no-progress", "--device", "cpu", "--compile"]
    assert main(mamba) == 2
    assert "--compile runs ARMT and RMT" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tasks", "qa99"], "unknown task 'qa99'"),
        (["--lengths", "0k,3q"], "unknown length '3q'"),
        (["--lengths", "25"], "--tasks qa1 --lengths 25: 1000 qa1 stories in a row are too long"),
        (["--batch", "0"], "expected a positive integer"),
        (["--n", "0"], "expected a positive integer"),
    ],
)
def test_eval_bad_arguments_exit_2(args, message, ckpts, tmp_path, capsys):
    base = {"--checkpoint": str(ckpts["armt"]), "--tasks": "qa1", "--lengths": "0k", "--n": "1", "--out": str(tmp_path)}
    for k, v in zip(args[::2], args[1::2], strict=True):
        base[k] = v
    argv = ["eval", "--no-progress"] + [x for kv in base.items() for x in kv]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["armt", "mamba"])
def test_eval_reads_save_pretrained_folders(kind, ckpts, tmp_path):
    """An ARMT save_pretrained folder and a Hugging Face Mamba folder score exactly as their save_model files."""
    model = make(kind)
    model.save_pretrained(tmp_path / "folder")
    if kind == "mamba":
        assert json.loads((tmp_path / "folder" / "config.json").read_text())["model_type"] == "mamba"
    assert _eval(tmp_path / "folder", tmp_path / "a") == 0 and _eval(ckpts[kind], tmp_path / "b") == 0
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("a", "b"))
    assert a["environment"]["kind"] == kind
    assert [r["outputs"] for r in a["results"]] == [r["outputs"] for r in b["results"]]


def test_eval_unknown_folder_says_what_it_accepts(tmp_path, capsys):
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text('{"model_type": "gpt2"}')
    assert _eval(tmp_path / "gpt2", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "neither an ARMT/RMT save_pretrained folder" in err and "from_reference" in err


def test_eval_missing_checkpoint_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _eval(tmp_path / "missing.pt", tmp_path / "out")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "checkpoint not found" in err and "missing.pt" in err
    assert not (tmp_path / "out").exists()


def test_eval_wrong_file_exits_1(tmp_path, capsys):
    torch.save({"a": 1}, tmp_path / "other.pt")
    assert _eval(tmp_path / "other.pt", tmp_path / "out") == 1
    assert "not a babilong_fast checkpoint" in capsys.readouterr().err


def test_eval_of_a_training_state_says_which_file_to_use(tmp_path, capsys):
    from babilong_fast.train import train
    from tests.train.common import tiny_config

    train(tiny_config(steps=[1, 1]), tmp_path / "run", progress=False)
    assert _eval(tmp_path / "run" / "last.pt", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "is a training state" in err and "use the run's best.pt" in err


def _direct_answer(ckpt, context: str, question: str) -> str:
    """The model's greedy answer to ``context ‖ question ‖ GEN`` (each text encoded alone), decoded as eval does."""
    from babilong_fast.data.tokenizer import EOS_ID, get_tokenizer
    from babilong_fast.engine.stream import GEN_ID

    tok = get_tokenizer()
    ids = torch.tensor([tok.encode(context) + tok.encode(question) + [GEN_ID]])
    out = load_model(ckpt).generate(ids, max_new_tokens=10, eos_token_id=EOS_ID)[0].tolist()
    return tok.decode(out[: out.index(EOS_ID) + 1] if EOS_ID in out else out)


def test_eval_on_official_files(ckpts, tmp_path, capsys):
    """--data scores official-layout files: the first n records of each task x length, each answered as the model
    answers its text directly (context and question encoded alone, then GEN); missing cells are usage errors."""
    from babilong_fast.data.official import load_official

    assert main(["data", "--tasks", "qa1,qa2", "--lengths", "0k,1k", "--n", "3", "--margin", "20",
                 "--out", str(tmp_path / "official"), "--no-progress"]) == 0
    out = tmp_path / "o"
    assert main(["eval", "--checkpoint", str(ckpts["armt"]), "--data", str(tmp_path / "official"), "--tasks",
                 "qa1,qa2", "--lengths", "0k,1k", "--n", "5", "--batch", "2", "--out", str(out),
                 "--no-progress", "--device", "cpu"]) == 0
    got = json.loads((out / "results.json").read_text())
    assert got["environment"]["data"] == str(tmp_path / "official") and got["complete"]
    with open(out / "results.csv", newline="") as f:  # --split and --seed do not apply: blank, the files named
        assert {(r["split"], r["seed"], r["data"]) for r in csv.DictReader(f)} == {("", "", str(tmp_path / "official"))}
    assert [(r["task"], r["length"], r["n"]) for r in got["results"]] == [
        ("qa1", "0k", 3), ("qa1", "1k", 3), ("qa2", "0k", 3), ("qa2", "1k", 3)]  # n=5 asked, 3 in each file
    records = load_official(tmp_path / "official", task="qa2", length="1k")
    assert got["results"][3]["outputs"] == [_direct_answer(ckpts["armt"], r.input, r.question) for r in records]
    # a hand-made file in the released format
    record = {"input": "Mary went to the kitchen. John moved to the garden.", "question": "Where is Mary? ",
              "target": "kitchen"}
    path = tmp_path / "hand" / "qa1" / "0k.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps([record]))
    assert main(["eval", "--checkpoint", str(ckpts["rmt"]), "--data", str(path), "--tasks", "qa1", "--lengths",
                 "0k", "--n", "1", "--out", str(tmp_path / "h"), "--no-progress", "--device", "cpu"]) == 0
    row = json.loads((tmp_path / "h" / "results.json").read_text())["results"][0]
    assert row["outputs"] == [_direct_answer(ckpts["rmt"], record["input"], record["question"])]
    with pytest.raises(SystemExit) as e:
        main(["eval", "--checkpoint", str(ckpts["rmt"]), "--data", str(tmp_path / "official"), "--tasks", "qa3",
              "--lengths", "0k", "--n", "1", "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and "--data: " in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_eval_data_errors_and_batches(ckpts, tmp_path, capsys):
    """--data: only local paths (a Hub name is not downloaded), an unlabelled file is one cell, an empty input is
    named before any cell runs; official records are held one batch at a time; a cell in two layouts is warned of
    once."""
    from babilong_fast.cli.eval import batches_by_shape

    def run(data, tasks="qa1", lengths="0k", n="1"):
        return main(["eval", "--checkpoint", str(ckpts["rmt"]), "--data", str(data), "--tasks", tasks, "--lengths",
                     lengths, "--n", n, "--out", str(tmp_path / "o"), "--no-progress", "--device", "cpu"])

    for bad, says in ((Path("RMT-team/babilong"), "does not exist (a local folder or file; nothing is downloaded)"),):
        with pytest.raises(SystemExit) as e:
            run(bad)
        assert e.value.code == 2 and says in capsys.readouterr().err
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps([{"input": "Mary went home.", "question": "Where is Mary? ", "target": "home"},
                                {"input": " ", "question": "Where is Mary? ", "target": "home"}]))
    with pytest.raises(SystemExit) as e:
        run(mine, tasks="qa1,qa2")
    assert e.value.code == 2 and "does not say its task" in capsys.readouterr().err
    assert run(mine) == 0
    shutil.rmtree(tmp_path / "o")
    with pytest.raises(SystemExit) as e:  # found before any cell runs: no output folder
        run(mine, n="2")
    assert e.value.code == 2 and "record 1 has an empty input" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    short = tmp_path / "short.json"
    short.write_text(json.dumps([{"input": "Mary went home.", "question": "Where is Mary? ", "target": "home"}]))
    assert run(short, n="3") == 0
    assert "--data has 1 qa1 0k record(s), fewer than --n 3: that cell scores 1" in capsys.readouterr().err
    assert json.loads((tmp_path / "o" / "results.json").read_text())["results"][0]["n"] == 1

    class Sample:
        def __init__(self, num_tokens):
            self.num_tokens = num_tokens

        def question_ids(self):
            return [1, 2]

    taken = []

    def records():
        for i in range(10):
            taken.append(i)
            yield Sample(100 + i)  # every context a different length: every group of one

    for group in batches_by_shape(records(), 10, 4, max_held=4):
        assert len(taken) - group[0][0] <= 4, "at most one batch of records held"
    assert taken == list(range(10))
    samples = BabilongGenerator("qa1", "1k", seed=3).take(2)
    write_official(samples, tmp_path / "two", "1k", "qa1")
    write_official(samples, tmp_path / "two", "1k", "qa1", layout="1k-samples")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run(tmp_path / "two", lengths="1k") == 0
    assert len([w for w in caught if "is in several files" in str(w.message)]) == 1
