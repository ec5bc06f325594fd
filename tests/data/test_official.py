"""Official BABILong layouts: reading every accepted JSON shape and Parquet, writing generated samples (a
50k-token one streamed) that read back identically, multi-byte characters split across streamed chunks, and
errors that name the file, record, task or length to fix. No network."""
from __future__ import annotations

import gzip
import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest

from babilong_fast.data import official
from babilong_fast.data.corpora import TextFolder
from babilong_fast.data.dataset import BabilongGenerator
from babilong_fast.data.official import (
    OfficialFormatError,
    OfficialSample,
    check_length,
    check_task,
    from_hub,
    load_official,
    official_path,
    read_file,
    scan_folder,
    stream_text,
    write_official,
)
from babilong_fast.data.tokenizer import get_tokenizer

HAS_PYARROW = importlib.util.find_spec("pyarrow") is not None
HAS_PARQUET_READER = HAS_PYARROW or importlib.util.find_spec("pandas") is not None
requires_pyarrow = pytest.mark.skipif(not HAS_PYARROW, reason="writing Parquet needs pyarrow")

RECORDS = [
    {"input": "John travelled to the hallway. Mary journeyed to the bathroom.", "question": "Where is Mary? ",
     "target": "bathroom"},
    {"input": "Caf\u00e9 \u65e5\u672c \"quoted\"\nline two", "question": "Where is John? ", "target": "hallway"},
    {"input": "", "question": "What is Mary carrying? ", "target": "apple,milk"},
]


def _records(samples) -> list[dict[str, str]]:
    return [{"input": s.text(), "question": s.question, "target": s.target} for s in samples]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_round_trip_babilong_layout(tmp_path: Path) -> None:
    qa1 = BabilongGenerator("qa1", "1k", split="test", seed=0).take(3)
    qa2 = BabilongGenerator("qa2", "0k", split="test", seed=0).take(2)
    p1 = write_official(qa1, tmp_path, "1k", "qa1")
    p2 = write_official(qa2, tmp_path, "0k", "qa2")
    assert p1 == tmp_path / "data" / "qa1" / "1k.json" and p2 == tmp_path / "data" / "qa2" / "0k.json"
    # Byte for byte what the reference script's json.dump(list_of_records, f) writes.
    assert p1.read_text(encoding="utf-8") == json.dumps(_records(qa1))
    assert p2.read_text(encoding="utf-8") == json.dumps(_records(qa2))
    back = load_official(tmp_path)
    assert [(s.task, s.length) for s in back] == [("qa2", "0k")] * 2 + [("qa1", "1k")] * 3
    assert [s.record() for s in back] == _records(qa2) + _records(qa1)
    assert load_official(tmp_path, length=1000, task="qa1") == back[2:]
    assert load_official(tmp_path, split="qa2") == back[:2]
    assert load_official(p1) == back[2:]
    assert load_official(p1, task="qa1", length="1k") == back[2:]
    np = pytest.importorskip("numpy")
    assert load_official(tmp_path, length=np.int64(1000)) == back[2:]
    # A file's path names its task and length: a request for another is refused, never a relabelling.
    with pytest.raises(FileNotFoundError, match="holds task qa1 .by its path., not qa5"):
        load_official(p1, task="qa5")
    with pytest.raises(FileNotFoundError, match="holds length 1k .by its path., not 128k"):
        load_official(p1, length="128k")
    loose = tmp_path / "loose.json"
    loose.write_text(p1.read_text(encoding="utf-8"), encoding="utf-8")
    assert {(s.task, s.length) for s in load_official(loose, task="qa1", length="1k")} == {("qa1", "1k")}
    assert not list(tmp_path.rglob("*.tmp"))


def test_streamed_50k_sample_round_trips(tmp_path: Path) -> None:
    s = BabilongGenerator("qa2", "50k", split="test", seed=1).take(1)[0]
    assert s.num_tokens == 49_700
    path = write_official([s], tmp_path, "50k", "qa2", materialise_limit=1000, chunk_tokens=997)
    text = s.text()
    assert path.read_text(encoding="utf-8") == json.dumps(_records([s]))
    back = load_official(tmp_path, length="50k", task="qa2")
    assert len(back) == 1 and back[0].input == text and back[0].target == s.target
    # Re-tokenising the decoded, stripped text can merge a few tokens differently at piece boundaries.
    assert abs(get_tokenizer().count(back[0].input) - s.num_tokens) <= 5


def test_stream_joins_characters_split_across_chunks(tmp_path: Path) -> None:
    books = tmp_path / "books"
    books.mkdir()
    rng = random.Random(0)
    words = ["caf\u00e9", "na\u00efve", "\u65e5\u672c\u8a9e", "\U0001F642", "\u201cquoted\u201d", "stra\u00dfe",
             "\u00e9t\u00e9", "garden", "window", "\u0416\u0443\u043a"]
    sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(8, 16))).capitalize() + "."
                 for _ in range(3000)]
    with gzip.open(books / "book.txt.gz", "wt", encoding="utf-8") as f:
        f.write(" ".join(sentences))
    s = BabilongGenerator("qa1", "2k", seed=0, background=TextFolder(books)).take(1)[0]
    tok = get_tokenizer()
    chunks = [tok.decode_bytes(c) for c in s.iter_chunks(1)]
    assert any(_invalid_utf8(c) for c in chunks), "no chunk cuts a character: the test checks nothing"
    pieces: list[str] = []
    stream_text(s, pieces.append, chunk_tokens=1)
    assert "".join(pieces) == tok.decode(s.input_ids())
    assert "\ufffd" not in "".join(pieces).strip()[:-1]
    path = write_official([s], tmp_path / "out", "2k", "qa1", materialise_limit=0, chunk_tokens=3)
    assert load_official(path)[0].input == s.text()
    assert path.read_text(encoding="utf-8") == json.dumps(_records([s]))


def _invalid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def test_stripped_writer_matches_strip() -> None:
    rng = random.Random(1)
    alphabet = [" ", "\n", "\t", "a", "b", "\u00e9", "\u3000", '"', "\\"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 6))))
        pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        out: list[str] = []

        class F:
            write = staticmethod(out.append)

        w = official._StrippedStringWriter(F)
        for p in pieces:
            w.write(p)
        assert "".join(out) == json.dumps(text.strip())[1:-1], repr(pieces)


@pytest.mark.parametrize("shape", ["array", "array-indented", "jsonl", "jsonl-as-json", "columns", "single"])
def test_json_shapes(tmp_path: Path, shape: str) -> None:
    recs = RECORDS[:1] if shape == "single" else RECORDS
    name, text = "0k.json", ""
    if shape == "array":
        text = json.dumps(recs)
    elif shape == "array-indented":
        text = json.dumps(recs, indent=2, ensure_ascii=False)
    elif shape in ("jsonl", "jsonl-as-json"):
        text = "\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + "\n"
        name = "0k.jsonl" if shape == "jsonl" else name
    elif shape == "columns":
        text = json.dumps({k: [r[k] for r in recs] for k in ("question", "target", "input")})
    else:
        text = json.dumps(recs[0], indent=1)
    path = _write(tmp_path / "qa3" / name, text)
    want = [OfficialSample(**r, task="qa3", length="0k") for r in recs]
    assert load_official(path) == want
    assert load_official(tmp_path) == want
    assert list(read_file(path, task="qa9", length="4k"))[0].task == "qa9"


def test_large_array_read_in_small_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(2)
    recs = [{"input": "x\u00e9\n" * rng.randint(0, 50), "question": f"q{i}? ", "target": str(i), "extra": [1, {}]}
            for i in range(200)]
    path = _write(tmp_path / "data" / "qa1" / "1k.json", json.dumps(recs, indent=rng.choice([None, 1])))
    monkeypatch.setattr(official, "_READ_CHARS", 7)
    got = load_official(tmp_path)
    assert [s.record() for s in got] == [{k: r[k] for k in ("input", "question", "target")} for r in recs]
    assert scan_folder(tmp_path) == {("qa1", "1k"): [path]}


@pytest.mark.skipif(not HAS_PARQUET_READER, reason="reading Parquet needs pyarrow or pandas")
@requires_pyarrow
def test_parquet_layout(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    samples = BabilongGenerator("qa4", "1k", seed=2).take(3)
    path = write_official(samples, tmp_path, "1k", "qa4", layout="1k-samples")
    assert path == tmp_path / "1k" / "qa4-00000-of-00001.parquet"
    assert pq.read_table(path).column_names == ["question", "target", "input"]
    other = tmp_path / "0k" / "qa12-00000-of-00001.parquet"
    other.parent.mkdir()
    pq.write_table(pa.table({"target": [r["target"] for r in RECORDS], "id": [1, 2, 3],
                             "input": [r["input"] for r in RECORDS], "question": [r["question"] for r in RECORDS]}),
                   other)
    back = load_official(tmp_path)
    assert [s.record() for s in back] == RECORDS + _records(samples)
    assert [s.task for s in back] == ["qa12"] * 3 + ["qa4"] * 3 and back[0].length == "0k"
    assert load_official(path) == back[3:]
    bad = tmp_path / "2k" / "qa1-00000-of-00001.parquet"
    bad.parent.mkdir()
    pq.write_table(pa.table({"input": ["a"], "question": ["b"]}), bad)
    with pytest.raises(OfficialFormatError, match=r"qa1-00000-of-00001\.parquet.*'target'"):
        load_official(tmp_path, length="2k")
    long = BabilongGenerator("qa1", "4k", seed=0).take(1)
    with pytest.raises(ValueError, match="materialise_limit.*layout='babilong'"):
        write_official(long, tmp_path, "4k", "qa1", layout="1k-samples", materialise_limit=1000)


def test_a_cell_in_both_layouts_is_read_once(tmp_path: Path) -> None:
    """The released dataset holds data/qaN/<len>.json and <len>/qaN-*.parquet: each record must be read once."""
    samples = BabilongGenerator("qa4", "1k", seed=2).take(3)
    json_path = write_official(samples, tmp_path, "1k", "qa4")
    write_official(samples, tmp_path, "1k", "qa4", layout="1k-samples")
    (tmp_path / "qa4").mkdir()
    (tmp_path / "qa4" / "1k.jsonl").write_text("")  # a third copy, also skipped
    with pytest.warns(RuntimeWarning, match=r"qa4 at 1k is in several files.*reading data/qa4/1k\.json, skipping "
                                            r"qa4/1k\.jsonl, 1k/qa4-00000-of-00001\.parquet"):
        back = load_official(tmp_path)
        assert scan_folder(tmp_path) == {("qa4", "1k"): [json_path]}
    assert [s.record() for s in back] == _records(samples)


@pytest.mark.parametrize("task", ["qa0", "qa21", "qa01", "QA1", "foo", ""])
def test_unknown_task(tmp_path: Path, task: str) -> None:
    write_official([RECORDS[0]], tmp_path, "0k", "qa1")
    with pytest.raises(ValueError, match=r"unknown task .*qa1 \.\. qa20"):
        load_official(tmp_path, task=task)
    with pytest.raises(ValueError, match="unknown task"):
        check_task(task)


@pytest.mark.parametrize("length", ["4kb", "k", "-1k", "1.5k", "4 k"])
def test_unknown_length(tmp_path: Path, length: str) -> None:
    with pytest.raises(ValueError, match=r"unknown length .*0k, 1k, 2k.*10M"):
        load_official(tmp_path, length=length)
    assert check_length("1000k") == "1M" and check_length(4000) == "4k"


def test_missing_paths_and_selection_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere.*does not exist.*data/qaN/<len>\.json"):
        load_official(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no BABILong files"):
        load_official(tmp_path)
    write_official([RECORDS[0]], tmp_path, "0k", "qa1")
    write_official([RECORDS[1]], tmp_path, "1k", "qa2")
    with pytest.raises(FileNotFoundError, match="has no task qa5; it has qa1, qa2"):
        load_official(tmp_path, task="qa5")
    with pytest.raises(FileNotFoundError, match="has no length 4k; it has 0k, 1k"):
        load_official(tmp_path, length="4k")
    with pytest.raises(FileNotFoundError, match="no file for task"):
        load_official(tmp_path, task="qa1", length="1k")
    with pytest.raises(ValueError, match="splits are tasks"):
        load_official(tmp_path, split="test")
    with pytest.raises(ValueError, match="disagree"):
        load_official(tmp_path, task="qa1", split="qa2")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_official(_write(tmp_path / "x.csv", "input\n"))


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (json.dumps([RECORDS[0], {"input": "a", "question": "b"}]), r"record 1 has no field 'target'"),
        (json.dumps([RECORDS[0], RECORDS[1], {**RECORDS[0], "target": 3}]),
         r"record 2: field 'target' must be a string, got int"),
        (json.dumps([RECORDS[0], ["a", "b", "c"]]), r"record 1 is a list"),
        (json.dumps(RECORDS)[:-30], r"record 2 is not valid JSON"),
        (json.dumps(RECORDS)[:-1], r"not closed after record 2"),
        (json.dumps(RECORDS).replace("}, {", "} {", 1), r"expected ',' or ']' after record 0"),
        (json.dumps(RECORDS[0]) + "\n" + json.dumps(RECORDS[1])[:-2] + "\n", r"record 1 is not valid JSON"),
        (json.dumps({"input": ["a", "b"], "question": ["q"], "target": ["t", "u"]}), r"different lengths"),
        (json.dumps(RECORDS[:2]) + json.dumps(RECORDS[2:]), r"more data after the JSON array's closing"),
        (json.dumps(RECORDS) + "\n]", r"more data after the JSON array's closing \S+ \(starting '\]'\)"),
        ("", r"the file is empty"),
        ('"just a string"', r"starts with '\"'"),
    ],
)
def test_malformed_files_name_file_and_record(tmp_path: Path, text: str, pattern: str) -> None:
    path = _write(tmp_path / "data" / "qa2" / "4k.json", text)
    with pytest.raises(OfficialFormatError, match=pattern) as e:
        load_official(tmp_path)
    assert str(path) in str(e.value)


def test_undecodable_files_name_the_file(tmp_path: Path) -> None:
    utf16 = tmp_path / "data" / "qa2" / "4k.json"
    utf16.parent.mkdir(parents=True)
    utf16.write_bytes(json.dumps(RECORDS).encode("utf-16"))
    with pytest.raises(OfficialFormatError, match="4k.json: not UTF-8 JSON"):
        load_official(utf16)
    if HAS_PARQUET_READER:
        corrupt = tmp_path / "1k" / "qa1-00000-of-00001.parquet"
        corrupt.parent.mkdir()
        corrupt.write_bytes(b"PAR1 this is not a parquet file")
        with pytest.raises(OfficialFormatError, match="qa1-00000-of-00001.parquet: not a readable Parquet file"):
            load_official(corrupt)


def test_write_refuses_mismatched_samples(tmp_path: Path) -> None:
    samples = BabilongGenerator("qa1", "1k", seed=0).take(1)
    with pytest.raises(ValueError, match="task 'qa1' but the file is for task 'qa2'"):
        write_official(samples, tmp_path, "1k", "qa2")
    with pytest.raises(ValueError, match="length 1000 but the file is for length '2k'"):
        write_official(samples, tmp_path, "2k", "qa1")
    assert not (tmp_path / "data" / "qa2" / "1k.json").exists() and not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(ValueError, match="unknown layout"):
        official_path(tmp_path, "1k", "qa1", layout="parquet")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cannot write int"):
        write_official([3], tmp_path, "1k", "qa1")
    assert write_official([OfficialSample(**RECORDS[0], task="qa1", length="1k")], tmp_path, 1000, "qa1").exists()


def test_from_hub_checks_arguments_before_importing() -> None:
    with pytest.raises(ValueError, match="unknown task 'qa21'"):
        from_hub("RMT-team/babilong", "4k", "qa21")
    with pytest.raises(ValueError, match="unknown length '4kk'"):
        from_hub("RMT-team/babilong", "4kk", "qa1")
    with pytest.raises(ValueError, match="needs one length"):
        load_official("RMT-team/babilong", task="qa1")


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="datasets is installed")
def test_from_hub_without_datasets_says_what_it_needs() -> None:
    with pytest.raises(ImportError, match="needs the 'datasets' package.*network access or a warm"):
        load_official("RMT-team/babilong", length="0k", task="qa1")


def test_from_hub_uses_config_length_split_task(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    calls = []

    def load_dataset(name, config, **kw):  # as datasets: a dict of splits, or one split when split= is given
        calls.append((name, config, kw))
        if config == "64k":
            raise ConnectionError("offline")
        splits = {"qa1": RECORDS[:2], "qa10": RECORDS[2:], "qa2": [{"input": "x", "question": "y"}]}
        if "split" not in kw:
            return splits
        if kw["split"] not in splits:
            raise ValueError(f'Unknown split "{kw["split"]}". Should be one of {list(splits)}.')
        return splits[kw["split"]]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    got = from_hub("RMT-team/babilong", 4000, "qa1", cache_dir="/c")
    assert calls == [("RMT-team/babilong", "4k", {"cache_dir": "/c", "split": "qa1"})]  # only qa1's files fetched
    assert got == [OfficialSample(**r, task="qa1", length="4k") for r in RECORDS[:2]]
    assert [s.task for s in load_official("RMT-team/babilong", length="4k", split=["qa1", "qa10"])] == ["qa1"] * 2 + [
        "qa10"]
    with pytest.raises(OfficialFormatError, match="4k/qa2: record 0"):  # no task: every split, in task order
        from_hub("RMT-team/babilong", "4k", cache_dir="/c")
    assert calls[-1] == ("RMT-team/babilong", "4k", {"cache_dir": "/c"})  # no task: the whole config
    with pytest.raises(ValueError, match="config '4k' has no split qa5 .*Unknown split"):
        from_hub("RMT-team/babilong", "4k", "qa5")
    with pytest.raises(OfficialFormatError, match="hf:RMT-team/babilong/4k/qa2: record 0 has no field 'target'"):
        from_hub("RMT-team/babilong", "4k", "qa2")
    with pytest.raises(RuntimeError, match="configs are lengths, splits are tasks.*network access or the set in"):
        from_hub("RMT-team/babilong-1k-samples", "64k", "qa1")
