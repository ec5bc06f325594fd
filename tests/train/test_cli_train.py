"""``babilong-fast train``: a tiny run end to end (its model loads into ``babilong-fast eval``) and bad input."""
from __future__ import annotations

import csv

import pytest
import torch

from babilong_fast.cli.main import build_parser, main
from babilong_fast.train import PRESETS, preset

FAST = ["--steps", "2", "--eval-every", "1", "--eval-n", "2", "--batch-size", "4", "--micro-batch-size", "2",
        "--pool-size", "16", "--no-progress"]


def test_presets_match_the_recipes():
    rmt, armt, mamba = preset("rmt"), preset("armt"), preset("mamba-130m")
    assert (rmt.kind, rmt.segment_size, rmt.num_mem_tokens, rmt.stages[0], rmt.stages[-1]) == ("rmt", 512, 16, 1, 32)
    assert rmt.backbone["n_layer"] == 12 and rmt.backbone["n_embd"] == 768
    assert (armt.kind, armt.num_mem_tokens, armt.d_mem, armt.stages[0], armt.stages[-1]) == ("armt", 10, 64, 2, 32)
    assert mamba.kind == "mamba" and mamba.backbone["num_hidden_layers"] == 24
    assert (rmt.bf16, armt.bf16, mamba.bf16) == (True, False, False)  # DeepSpeed bf16; accelerate fp32 (5.3, 4)
    assert set(PRESETS) == {"rmt", "armt", "mamba-130m", "tiny"}
    assert preset("tiny", lr=0.5).lr == 0.5


def test_train_then_eval(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--preset", "tiny", "--kind", "rmt", "--task", "qa1", "--out", str(out), *FAST])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert len(rows) == 4 and rows[-1]["valid_accuracy"] != ""
    rc = main(["eval", "--checkpoint", str(out / "best.pt"), "--tasks", "qa1", "--lengths", "256", "--n", "2",
               "--out", str(tmp_path / "eval"), "--no-progress"])
    assert rc == 0 and (tmp_path / "eval" / "results.csv").is_file()
    # a model file of another kind
    capsys.readouterr()
    rc = main(["train", "--preset", "tiny", "--kind", "armt", "--init-from", str(out / "best.pt"),
               "--out", str(tmp_path / "other"), *FAST])
    assert rc == 1 and "RMT model, not the ARMT requested" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--stages", "2,1"], "strictly increasing"),
    (["--stages", "1,x"], "comma-separated integers"),
    (["--segment-size", "500"], "n_positions=96"),
    (["--task", "qa99"], "unknown task 'qa99'"),
    (["--preset", "mamba-130m", "--kind", "rmt"], "is a Mamba backbone"),
    (["--init-from", "missing.pt"], "checkpoint not found"),
    (["--clip", "0"], "clip must be a finite number > 0"),
    (["--clip", "-1"], "clip must be a finite number > 0"),
    (["--clip", "1", "--no-clip"], "--clip or --no-clip"),
    (["--bf16", "--no-bf16"], "--bf16 or --no-bf16"),
    (["--patience", "2", "--no-patience"], "--patience or --no-patience"),
    (["--target", "90", "--no-target"], "--target or --no-target"),
    (["--time-limit", "-5"], "--time-limit takes a finite number of seconds >= 0"),
    (["--lr", "inf"], "lr must be a finite number > 0, got inf"),
    (["--warmup", "nan"], "warmup must be a finite number >= 0, got nan"),
    (["--preset", "mamba-130m", "--d-mem", "2", "--detach-every", "1"], "--d-mem, --detach-every: for ARMT/RMT"),
], ids=["decreasing", "not-int", "segment", "task", "mamba-kind", "init", "clip-0", "clip-negative", "clip-both",
        "bf16-both", "patience-both", "target-both", "time-limit", "lr-inf", "warmup-nan", "mamba-memory"])
def test_bad_arguments(argv, message, tmp_path, capsys):
    if argv[0] != "--preset":
        argv = ["--preset", "tiny", *argv]
    with pytest.raises(SystemExit) as e:
        main(["train", *argv, "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_stages_take_the_presets_steps_and_clipping_can_be_off(tmp_path):
    def config(*argv):
        args = build_parser().parse_args(["train", *argv, "--out", str(tmp_path / "x")])
        args.check(args.subparser, args)
        return args.config

    armt = config("--preset", "armt", "--stages", "0,2,4,32")  # armt: 2,3,5,8,16 x 10000 steps, then 32 x 30000
    assert armt.steps == [10000, 10000, 10000, 30000] and armt.clip == 1.0
    assert config("--preset", "rmt", "--stages", "1,2,4", "--no-clip").clip is None
    assert config("--preset", "rmt", "--stages", "3", "--steps", "7").steps == 7
    assert config("--preset", "armt", "--bf16").bf16 and not config("--preset", "rmt", "--no-bf16").bf16
    assert config("--preset", "rmt", "--no-patience").patience is None and config("--preset", "rmt").patience == 15
    assert config("--preset", "armt", "--no-target").target is None and config("--preset", "armt").target == 100.0
    assert config("--preset", "armt", "--patience", "3").patience == 3


def test_task_with_no_samples(tmp_path, capsys):
    rc = main(["train", "--preset", "tiny", "--task", "qa3", "--segment-size", "24", "--out", str(tmp_path / "x"),
               *FAST])
    assert rc == 1 and "task qa3 has no sample that fits 1 segment(s) of 24 tokens" in capsys.readouterr().err


def test_a_folder_holding_a_run_needs_resume_or_overwrite(tmp_path, capsys):
    """Re-running into a finished run's folder silently replaced its log and last.pt and kept its best.pt."""
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--task", "qa1", "--out", str(out), *FAST]) == 0
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert '"finished": true' in summary
    (out / "stage99.pt").write_bytes(b"stale")  # a file of the old run the new one would never rewrite
    with pytest.raises(SystemExit) as e:
        main(["train", "--preset", "tiny", "--task", "qa1", "--out", str(out), *FAST])
    assert e.value.code == 2 and "holds a run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--preset", "tiny", "--task", "qa1", "--out", str(out), "--resume", "--overwrite", *FAST])
    assert main(["train", "--preset", "tiny", "--task", "qa1", "--out", str(out), "--overwrite", "--no-progress",
                 "--time-limit", "0", *FAST]) == 0
    err = capsys.readouterr().err
    assert '"finished": false' in err, "the summary says an unfinished run, --no-progress or not"
    assert not (out / "stage99.pt").exists() and len(list(csv.DictReader(open(out / "log.csv")))) == 1
    with pytest.raises(SystemExit) as e:  # its own best.pt would be deleted before it is read
        main(["train", "--preset", "tiny", "--task", "qa1", "--out", str(out), "--overwrite", "--init-from",
              str(out / "best.pt"), *FAST])
    assert e.value.code == 2 and "a file of the run --overwrite deletes" in capsys.readouterr().err
    assert (out / "best.pt").is_file()


def test_init_from_takes_a_save_pretrained_folder_and_backbone_path_must_exist(tmp_path, capsys):
    from babilong_fast.train.kinds import build_model

    cfg = preset("tiny", task="qa1")
    build_model(cfg).save_pretrained(tmp_path / "sp")
    assert main(["train", "--preset", "tiny", "--init-from", str(tmp_path / "sp"), "--out", str(tmp_path / "a"),
                 "--time-limit", "0", "--no-progress", *FAST]) == 0
    with pytest.raises(SystemExit) as e:
        main(["train", "--preset", "tiny", "--backbone-path", str(tmp_path / "none"), "--out", str(tmp_path / "b")])
    assert e.value.code == 2 and "--backbone-path: no such folder" in capsys.readouterr().err


def test_validation_without_samples_fails_before_training(tmp_path, capsys):
    """qa3 at one 64-token segment: training has samples (one official file, of qa1 stories here), validation
    (generated, test split) none; this failed at the first validation, after training steps were spent."""
    from babilong_fast.data.dataset import BabilongGenerator
    from babilong_fast.data.official import write_official

    data = write_official(BabilongGenerator("qa1", 64, split="train", margin=20).take(4), tmp_path / "d", 64, "qa1")
    data = data.rename(tmp_path / "train.json")  # a path that names no task: read as the task asked for
    rc = main(["train", "--preset", "tiny", "--task", "qa3", "--stages", "1", "--steps", "3", "--out",
               str(tmp_path / "x"), "--no-progress", "--train-data", str(data)])
    err = capsys.readouterr().err
    assert rc == 1 and "validation of qa3 at 64 tokens" in err and not (tmp_path / "x" / "log.csv").exists()
    assert not (tmp_path / "x" / "config.json").exists()  # nothing left that would count as a run
    assert main(["train", "--preset", "tiny", "--task", "qa3", "--stages", "4", "--out", str(tmp_path / "x"),
                 "--train-data", str(data), "--time-limit", "0", *FAST]) == 0  # validated at 4 segments: has room


def test_backbone_path_of_another_model_type_is_refused(tmp_path):
    """A GPT-2 folder for Mamba (or the reverse) loaded none of its weights: transformers warned, a random model
    trained. Refused now; a folder of the right type loads its weights."""
    from transformers import GPT2Config, GPT2LMHeadModel, MambaConfig, MambaForCausalLM

    from babilong_fast.train.kinds import build_model
    from tests.train.common import tiny_config

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=96)).save_pretrained(tmp_path / "gpt2")
    MambaForCausalLM(MambaConfig(hidden_size=32, num_hidden_layers=1, state_size=4)).save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match=r"holds a 'gpt2' model; this kind needs a 'mamba' one"):
        build_model(tiny_config(kind="mamba", backbone_path=str(tmp_path / "gpt2")))
    with pytest.raises(ValueError, match=r"holds a 'mamba' model; this kind needs a 'gpt2' one"):
        build_model(tiny_config(backbone_path=str(tmp_path / "m")))
    model = build_model(tiny_config(backbone_path=str(tmp_path / "gpt2")))
    want = GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2").transformer.wte.weight
    assert torch.equal(model.backbone.transformer.wte.weight, want)
