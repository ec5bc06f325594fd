"""``babilong-fast data``: files in the official layout, record counts, exact token lengths, determinism,
progress output and exit code 2 with a message naming the bad value. Run in-process on 0k and 1k."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from babilong_fast.cli.main import MANIFEST, main
from babilong_fast.data.dataset import BabilongGenerator
from babilong_fast.data.official import load_official
from babilong_fast.data.tokenizer import get_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def _run(out: Path, *extra: str, tasks: str = "qa1,qa2", lengths: str = "0k,1k", n: int = 3) -> int:
    return main(["data", "--tasks", tasks, "--lengths", lengths, "--n", str(n), "--split", "test", "--seed", "0",
                 "--out", str(out), "--no-progress", *extra])


def test_data_writes_official_layout(tmp_path: Path) -> None:
    assert _run(tmp_path) == 0
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == [MANIFEST, "data/qa1/0k.json", "data/qa1/1k.json", "data/qa2/0k.json", "data/qa2/1k.json"]
    tok = get_tokenizer()
    for task in ("qa1", "qa2"):
        for length in ("0k", "1k"):
            records = json.loads((tmp_path / "data" / task / f"{length}.json").read_text(encoding="utf-8"))
            assert len(records) == 3 and all(sorted(r) == ["input", "question", "target"] for r in records)
            want = BabilongGenerator(task, length, split="test", seed=0, margin=300).take(3)
            got = load_official(tmp_path, length=length, task=task)
            assert [s.record() for s in got] == records
            for s, w in zip(got, want, strict=True):
                assert (s.input, s.question, s.target) == (w.text(), w.question, w.target)
                assert w.num_tokens == (700 if length == "1k" else sum(len(f) for f in w.fact_token_ids()))
                assert len(w.input_ids()) == w.num_tokens
                # The stored text is decoded and stripped; re-tokenising it may merge a few tokens differently
                # at fact/sentence boundaries (off by 0-1 in practice), as with the released sets.
                assert abs(tok.count(s.input) - w.num_tokens) <= 5
                if length == "0k":
                    assert s.input == " ".join(w.facts)
    manifest = json.loads((tmp_path / MANIFEST).read_text(encoding="utf-8"))
    entry = manifest["files"]["data/qa2/1k.json"]
    assert entry == {"task": "qa2", "length": "1k", "n": 3, "split": "test", "seed": 0, "margin": 300,
                     "background": "austen/test", "long_stories_skipped": 0}


def test_data_is_deterministic_and_merges_manifest(tmp_path: Path) -> None:
    assert _run(tmp_path / "a", tasks="qa3", lengths="1k", n=2) == 0
    assert _run(tmp_path / "b", tasks="qa3", lengths="1k", n=2) == 0
    a, b = (tmp_path / d / "data" / "qa3" / "1k.json" for d in "ab")
    assert a.read_bytes() == b.read_bytes()
    assert _run(tmp_path / "a", "--margin", "20", tasks="qa1", lengths="1k", n=1) == 0
    files = json.loads((tmp_path / "a" / MANIFEST).read_text(encoding="utf-8"))["files"]
    assert sorted(files) == ["data/qa1/1k.json", "data/qa3/1k.json"] and files["data/qa1/1k.json"]["margin"] == 20
    assert get_tokenizer().count(load_official(tmp_path / "a", task="qa1")[0].input) in range(975, 986)


def test_data_background_folder(tmp_path: Path) -> None:
    books = tmp_path / "books"
    books.mkdir()
    (books / "b.txt").write_text(" ".join(f"The lighthouse keeper counted {i} gulls over the grey harbour wall."
                                          for i in range(2000)), encoding="utf-8")
    assert _run(tmp_path / "out", "--background", str(books), tasks="qa1", lengths="1k", n=2) == 0
    got = load_official(tmp_path / "out")
    assert len(got) == 2 and all("lighthouse keeper" in s.input for s in got)
    entry = json.loads((tmp_path / "out" / MANIFEST).read_text(encoding="utf-8"))["files"]["data/qa1/1k.json"]
    assert entry["background"] == f"folder:{books}"



@pytest.mark.parametrize("content", [b"", "Caf\xe9 au lait. ".encode("latin-1") * 200], ids=["empty", "latin-1"])
def test_data_unusable_background_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    content: bytes) -> None:
    books = tmp_path / "books"
    books.mkdir()
    (books / "b.txt").write_bytes(content)
    assert _run(tmp_path / "out", "--background", str(books), tasks="qa1", lengths="1k", n=1) == 1
    err = capsys.readouterr().err
    assert err.startswith("babilong-fast: error: ") and "Traceback" not in err
    assert ("b.txt' is not UTF-8" if content else "empty or too short") in err


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="the 1k-samples layout needs pyarrow")
def test_data_parquet_layout(tmp_path: Path) -> None:
    assert _run(tmp_path, "--layout", "1k-samples", tasks="qa5", lengths="1k", n=2) == 0
    assert (tmp_path / "1k" / "qa5-00000-of-00001.parquet").is_file()
    got = load_official(tmp_path)
    want = BabilongGenerator("qa5", "1k", seed=0).take(2)
    assert [s.input for s in got] == [w.text() for w in want] and {s.task for s in got} == {"qa5"}


@pytest.mark.parametrize("tqdm_available", [True, False])
def test_data_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                       tqdm_available: bool) -> None:
    if not tqdm_available:
        monkeypatch.setitem(sys.modules, "tqdm", None)
    elif importlib.util.find_spec("tqdm") is None:
        pytest.skip("tqdm is not installed")
    assert main(["data", "--tasks", "qa1", "--lengths", "0k,1k", "--n", "2", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert f"wrote 2 samples to {tmp_path / 'data' / 'qa1' / '0k.json'}" in err
    assert f"wrote 2 samples to {tmp_path / 'data' / 'qa1' / '1k.json'}" in err
    assert ("4/4" in err) == tqdm_available
    assert main(["data", "--tasks", "qa1", "--lengths", "0k", "--n", "1", "--out", str(tmp_path / "q"),
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "wrote 1 samples" in err and ("1/1" not in err or not tqdm_available)  # the lines, not the bar
    assert "replaced" not in err
    assert main(["data", "--tasks", "qa1", "--lengths", "0k", "--n", "1", "--out", str(tmp_path / "q"),
                 "--no-progress"]) == 0
    assert "0k.json (replaced the earlier file)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tasks", "qa0"], "unknown task 'qa0' in --tasks; accepted: qa1, qa2, qa3, qa4, qa5"),
        (["--tasks", "qa1,qa21"], "unknown task 'qa21' in --tasks; accepted: qa1, qa2, qa3, qa4, qa5"),
        (["--tasks", "qa1,,qa2"], "empty item in 'qa1,,qa2'"),
        (["--lengths", "0k,4kb"], "unknown length '4kb' in --lengths; accepted: 0k, 1k, 2k, 4k"),
        (["--lengths", "300"], "length '300' (300 tokens) leaves nothing after --margin 300"),
        (["--lengths", "0k,310"], "--tasks qa1 --lengths 310: 1000 qa1 stories in a row are too long"),
        (["--n", "0"], "argument --n: expected a positive integer, got 0"),
        (["--margin", "-5"], "argument --margin: expected a non-negative integer, got -5"),
        (["--split", "dev"], "argument --split: invalid choice: 'dev'"),
        (["--layout", "csv"], "argument --layout: invalid choice: 'csv'"),
        (["--lengths", "0k,10M", "--layout", "1k-samples"], "--lengths 10M need --layout babilong"),
        (["--background", "/nonexistent/books"], "--background: background folder '/nonexistent/books' does not exist"),
    ],
)
def test_data_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                   message: str) -> None:
    base = {"--tasks": "qa1", "--lengths": "0k", "--n": "1", "--out": str(tmp_path / "out")}
    for k, v in zip(args[::2], args[1::2], strict=True):
        base[k] = v
    argv = ["data", *(x for kv in base.items() for x in kv)]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [[], ["eval"], ["data"], ["data", "--tasks", "qa1", "--lengths", "0k", "--n", "1"]])
def test_missing_or_unknown_command_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "usage: babilong-fast" in capsys.readouterr().err


def test_data_runtime_error_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert _run(blocker, tasks="qa1", lengths="0k", n=1) == 1
    assert "babilong-fast: error:" in capsys.readouterr().err


def test_python_dash_m(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "babilong_fast.cli.main", "data", "--tasks", "qa4", "--lengths", "0k", "--n", "2",
         "--out", str(tmp_path), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr
    assert len(load_official(tmp_path, task="qa4", length="0k")) == 2
