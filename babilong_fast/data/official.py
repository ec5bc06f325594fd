"""Read and write BABILong data in the official layouts of the released sets.

Layouts (BABILong §1.5):

- ``"babilong"`` (``RMT-team/babilong``, ``RMT-team/babilong-train-5k-samples``): one JSON file per task and
  length at ``data/qaN/<len>.json``. The reference script (``booydar/babilong`` ``data/create_tasks.py``) writes
  each file with ``json.dump`` of a list of ``{"input", "question", "target"}`` records, i.e. one JSON array.
  Readers here also accept JSON lines and a dict of column lists, the other shapes the Hugging Face JSON
  loader takes, since the files on the Hub could not be checked byte for byte.
- ``"1k-samples"`` (``RMT-team/babilong-1k-samples``): Parquet at ``<len>/qaN-00000-of-00001.parquet`` with
  string columns ``question``, ``target``, ``input``; needs ``pyarrow`` (or ``pandas`` to read).

On the Hub, configs are lengths and splits are tasks: ``load_dataset("RMT-team/babilong", "4k")["qa1"]``.
"""
from __future__ import annotations

import codecs
import json
import numbers
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from babilong_fast.data.builder import MATERIALISE_LIMIT, BabilongSample
from babilong_fast.data.lengths import length_name, parse_length
from babilong_fast.data.tokenizer import get_tokenizer

FIELDS = ("input", "question", "target")
OFFICIAL_TASKS = tuple(f"qa{i}" for i in range(1, 21))
OFFICIAL_LENGTHS = ("0k", "1k", "2k", "4k", "8k", "16k", "32k", "64k", "128k", "256k", "512k", "1M", "10M")
HUB_NAMES = ("RMT-team/babilong", "RMT-team/babilong-1k-samples", "RMT-team/babilong-train-5k-samples")
LAYOUTS = ("babilong", "1k-samples")
Layout = Literal["babilong", "1k-samples"]

_TASK = re.compile(r"qa([0-9]+)")
_READ_CHARS = 1 << 20
_STREAM_CHUNK_TOKENS = 1 << 16


@dataclass(frozen=True)
class OfficialSample:
    """One record of an official BABILong file.

    Attributes:
        input: the context (background with the facts hidden in it), stripped.
        question: the question (the released sets keep a trailing space: ``"Where is Mary? "``).
        target: the answer text (``"apple,milk"`` for multi-answer tasks).
        task: ``"qa1"`` .. ``"qa20"``, from the file's place in the layout or the caller; may be empty.
        length: length name (``"4k"``, ``"1M"``), likewise; may be empty.
    """

    input: str
    question: str
    target: str
    task: str = ""
    length: str = ""

    def record(self) -> dict[str, str]:
        """The three fields of the file format, in the reference order."""
        return {"input": self.input, "question": self.question, "target": self.target}


class OfficialFormatError(ValueError):
    """A file that is not in an official layout: bad JSON, a missing field or a field of the wrong type."""


def check_task(task: str) -> str:
    """``task`` if it names a BABILong task (``"qa1"`` .. ``"qa20"``), else ``ValueError`` naming the accepted ones."""
    m = _TASK.fullmatch(task) if isinstance(task, str) else None
    if m is None or not 1 <= int(m.group(1)) <= 20 or m.group(1).startswith("0"):
        raise ValueError(f"unknown task {task!r}: BABILong tasks are qa1 .. qa20")
    return task


def check_length(length: str | int) -> str:
    """The canonical name of ``length`` (``"4k"``, ``4000`` -> ``"4k"``; ``"1000k"`` -> ``"1M"``).

    Raises:
        ValueError: naming the bad value and the official length names.
    """
    try:
        return length_name(parse_length(length))
    except ValueError:
        raise ValueError(
            f"unknown length {length!r}: expected a name such as {', '.join(OFFICIAL_LENGTHS)} "
            f"(<digits>k or <digits>M, k = 1000) or an int"
        ) from None


def _as_list(value: Any, check) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, (str, numbers.Integral)):
        return [check(value)]
    return [check(v) for v in value]


def _sort_key(key: tuple[str, str]) -> tuple[int, int]:
    task, length = key
    return parse_length(length), int(task[2:])


def _validate(rec: Any, path: Path, index: int, task: str, length: str) -> OfficialSample:
    if not isinstance(rec, Mapping):
        raise OfficialFormatError(
            f"{path}: record {index} is a {type(rec).__name__}, expected an object with fields {FIELDS}"
        )
    for name in FIELDS:
        if name not in rec:
            raise OfficialFormatError(
                f"{path}: record {index} has no field {name!r} (fields: {sorted(rec)}; expected {FIELDS})"
            )
        if not isinstance(rec[name], str):
            raise OfficialFormatError(
                f"{path}: record {index}: field {name!r} must be a string, got {type(rec[name]).__name__}"
            )
    return OfficialSample(rec["input"], rec["question"], rec["target"], task, length)


class _JSONReader:
    """Successive JSON values of a text file, read in chunks so memory holds about one record at a time."""

    def __init__(self, f: IO[str], path: Path) -> None:
        self.f, self.path = f, path
        self.buf, self.pos = "", 0
        self._dec = json.JSONDecoder()

    def at_end(self) -> bool:
        """Skip whitespace; True at the end of the file."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buf):
                return False
            more = self.f.read(_READ_CHARS)
            if not more:
                return True
            self.buf, self.pos = more, 0

    def peek(self) -> str:
        """The next non-whitespace character ("" at the end)."""
        return "" if self.at_end() else self.buf[self.pos]

    def take(self, char: str) -> None:
        self.pos += len(char)

    def value(self, index: int) -> Any:
        """Decode the next value (record ``index`` in messages); reads more until it is complete."""
        chunk = _READ_CHARS
        self.at_end()
        while True:
            try:
                value, self.pos = self._dec.raw_decode(self.buf, self.pos)
                return value
            except json.JSONDecodeError as e:
                more = self.f.read(chunk)
                if not more:
                    raise OfficialFormatError(f"{self.path}: record {index} is not valid JSON: {e.msg}") from None
                self.buf, self.pos, chunk = self.buf[self.pos:] + more, 0, chunk * 2


def _iter_json_array(r: _JSONReader) -> Iterator[Any]:
    """Values of a JSON array, decoded one at a time (a 10M-length file is about 4 GB)."""
    r.take("[")
    index = 0
    if r.peek() == "]":
        return
    while True:
        if r.at_end():
            after = "'['" if index == 0 else f"',' following record {index - 1}"
            raise OfficialFormatError(f"{r.path}: the JSON array ends after {after} (truncated?)")
        yield r.value(index)
        index += 1
        c = r.peek()
        if c == "]":
            return
        if c == "":
            raise OfficialFormatError(f"{r.path}: the JSON array is not closed after record {index - 1} (truncated?)")
        if c != ",":
            raise OfficialFormatError(f"{r.path}: expected ',' or ']' after record {index - 1}, got {c!r}")
        r.take(",")


def _iter_json_records(path: Path) -> Iterator[Any]:
    """Records of a ``.json``/``.jsonl`` file: a JSON array, JSON lines, or a dict of equal-length column lists."""
    with open(path, encoding="utf-8") as f:
        r = _JSONReader(f, path)
        c = r.peek()
        if c == "":
            raise OfficialFormatError(f"{path}: the file is empty")
        if c == "[":
            yield from _iter_json_array(r)
            r.take("]")
            if not r.at_end():  # one array per file (the official files are one json.dump each)
                raise OfficialFormatError(f"{path}: more data after the JSON array's closing ']' (starting "
                                          f"{r.buf[r.pos:r.pos + 20]!r}); a file holds one array of records")
            return
        if c != "{":
            raise OfficialFormatError(
                f"{path}: expected a JSON array of records, JSON lines, or a dict of column lists; "
                f"the file starts with {c!r}"
            )
        first = r.value(0)
        if r.at_end() and first and all(isinstance(v, list) for v in first.values()):
            sizes = {k: len(v) for k, v in first.items()}
            if len(set(sizes.values())) != 1:
                raise OfficialFormatError(f"{path}: the column lists have different lengths: {sizes}")
            n = next(iter(sizes.values()))
            yield from ({k: first[k][i] for k in first} for i in range(n))
            return
        yield first
        index = 1
        while not r.at_end():
            yield r.value(index)
            index += 1


def _parquet_module(purpose: str):
    try:
        import pyarrow.parquet as pq

        return pq
    except ImportError:
        pass
    if purpose == "read":
        try:
            import pandas

            return pandas
        except ImportError:
            pass
        need = "pyarrow or pandas"
    else:
        need = "pyarrow"
    raise ImportError(f"{purpose}ing .parquet files needs {need} (pip install pyarrow); the JSON layout needs nothing")


def _iter_parquet_records(path: Path) -> Iterator[Any]:
    mod = _parquet_module("read")
    if mod.__name__ == "pandas":
        frame = mod.read_parquet(path)
        missing = [c for c in FIELDS if c not in frame.columns]
        if missing:
            raise OfficialFormatError(f"{path}: no column(s) {missing} (columns: {list(frame.columns)})")
        yield from frame[list(FIELDS)].to_dict("records")
        return
    pf = mod.ParquetFile(path)
    missing = [c for c in FIELDS if c not in pf.schema_arrow.names]
    if missing:
        raise OfficialFormatError(f"{path}: no column(s) {missing} (columns: {pf.schema_arrow.names})")
    for batch in pf.iter_batches(batch_size=64, columns=list(FIELDS)):
        yield from batch.to_pylist()


def read_file(path: str | Path, task: str = "", length: str = "") -> Iterator[OfficialSample]:
    """Samples of one ``.json``, ``.jsonl`` or ``.parquet`` file, checked field by field.

    Args:
        path: the file.
        task, length: labels for the samples; default from the file's place in an official layout
            (``data/qa1/4k.json`` or ``4k/qa1-00000-of-00001.parquet``), else empty.

    Raises:
        OfficialFormatError: bad JSON, a record that is not an object, a missing field or a non-string field;
            the message names the file and the record index.
    """
    p = Path(path)
    guess_task, guess_length = labels_from_path(p)
    task, length = task or guess_task, length or guess_length
    if p.suffix == ".parquet":
        records = _iter_parquet_records(p)
    elif p.suffix in (".json", ".jsonl"):
        records = _iter_json_records(p)
    else:
        raise ValueError(f"{p}: unsupported file type {p.suffix!r}; expected .json, .jsonl or .parquet")
    for index, rec in enumerate(_with_named_errors(records, p)):
        yield _validate(rec, p, index, task, length)


def _with_named_errors(records: Iterator[Any], path: Path) -> Iterator[Any]:
    """``records``, with a non-UTF-8 file or an unreadable Parquet file raised as :class:`OfficialFormatError`."""
    try:
        yield from records
    except UnicodeDecodeError as e:
        raise OfficialFormatError(f"{path}: not UTF-8 JSON ({e})") from e
    except Exception as e:
        if type(e).__module__.split(".")[0] != "pyarrow":
            raise
        raise OfficialFormatError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from e


def _length_of(name: str) -> str:
    """The canonical length name of a file or folder name, or "" if it is not one."""
    try:
        return length_name(parse_length(name))
    except ValueError:
        return ""


def labels_from_path(p: Path) -> tuple[str, str]:
    """(task, length) from a path's place in either layout; "" where it says nothing."""
    if p.suffix == ".parquet":
        task = p.name.split("-")[0]
        return (task if task in OFFICIAL_TASKS else ""), _length_of(p.parent.name)
    return (p.parent.name if p.parent.name in OFFICIAL_TASKS else ""), _length_of(p.stem)


def scan_folder(root: str | Path) -> dict[tuple[str, str], list[Path]]:
    """Files of a folder in either official layout, keyed by ``(task, length name)``.

    Recognised: ``[data/]qaN/<len>.json`` (or ``.jsonl``) and ``<len>/qaN-*.parquet`` (shards in name order).
    Other files are ignored. The released dataset holds both layouts: a ``(task, length)`` present in several is
    read from one only, the first of ``data/qaN/<len>.json``, ``.jsonl``, ``qaN/<len>.json``, ``.jsonl``, the
    Parquet shards (:func:`iter_official` warns once of what it skips), so no record is read twice.
    """
    return _scan(Path(root))[0]


_WARNED_SKIPS: set[tuple[str, tuple[str, str]]] = set()


def _scan(root: Path) -> tuple[dict[tuple[str, str], list[Path]], dict[tuple[str, str], str]]:
    """:func:`scan_folder`'s files, and per ``(task, length)`` read from one of several layouts, what says so."""
    sources: dict[tuple[str, str], list[list[Path]]] = {}  # per key, each layout's files, in preference order
    for base in (root / "data", root):
        if not base.is_dir():
            continue
        for tdir in sorted(base.iterdir()):
            if not (tdir.is_dir() and tdir.name in OFFICIAL_TASKS):
                continue
            for f in sorted(tdir.iterdir(), key=lambda f: (f.stem, f.suffix != ".json")):
                task, length = labels_from_path(f)
                if f.is_file() and f.suffix in (".json", ".jsonl") and length:
                    sources.setdefault((task, length), []).append([f])
    for ldir in sorted(root.iterdir()):
        if not ldir.is_dir() or not _length_of(ldir.name):
            continue
        shards: dict[tuple[str, str], list[Path]] = {}
        for f in sorted(ldir.glob("qa*.parquet")):
            task, length = labels_from_path(f)
            if task and length:
                shards.setdefault((task, length), []).append(f)
        for key, files in shards.items():
            sources.setdefault(key, []).append(files)
    found, notes = {}, {}
    for key, layouts in sources.items():
        found[key] = layouts[0]
        if skipped := [str(f.relative_to(root)) for files in layouts[1:] for f in files]:
            notes[key] = (f"{key[0]} at {key[1]} is in several files of {str(root)!r}: reading "
                          f"{', '.join(str(f.relative_to(root)) for f in layouts[0])}, skipping {', '.join(skipped)}")
    return dict(sorted(found.items(), key=lambda kv: _sort_key(kv[0]))), notes


def _select(length: Any, task: Any, split: Any) -> tuple[list[str] | None, list[str] | None]:
    """Checked (lengths, tasks) filters; ``split`` is the Hub's name for a task."""
    tasks = _as_list(task, check_task)
    if split is not None:
        if isinstance(split, str) and split in ("train", "test", "validation"):
            raise ValueError(
                f"split={split!r}: in the official layouts splits are tasks (qa1 .. qa20) and configs are lengths; "
                "pass task='qa1' (or split='qa1')"
            )
        splits = _as_list(split, check_task)
        if tasks is not None and tasks != splits:
            raise ValueError(f"task={task!r} and split={split!r} disagree; split is an alias of task, give one")
        tasks = splits
    return _as_list(length, check_length), tasks


def iter_official(
    path_or_name: str | Path,
    length: str | int | Sequence[str | int] | None = None,
    task: str | Sequence[str] | None = None,
    split: str | Sequence[str] | None = None,
) -> Iterator[OfficialSample]:
    """Stream official BABILong samples from a local folder or file (see :func:`load_official`)."""
    lengths, tasks = _select(length, task, split)
    if str(path_or_name) in HUB_NAMES and not Path(path_or_name).exists():
        if lengths is None or len(lengths) != 1:
            raise ValueError(f"loading {path_or_name!r} from the Hub needs one length (a config), got {length!r}")
        yield from from_hub(str(path_or_name), lengths[0], tasks)
        return
    root = Path(path_or_name)
    if not root.exists():
        raise FileNotFoundError(
            f"{str(root)!r} does not exist: give a folder mirroring RMT-team/babilong (data/qaN/<len>.json) or "
            f"babilong-1k-samples (<len>/qaN-*.parquet), a .json/.jsonl/.parquet file, or one of {HUB_NAMES}"
        )
    if root.is_file():
        guess_task, guess_length = labels_from_path(root)
        for name, wanted, guess in (("task", tasks, guess_task), ("length", lengths, guess_length)):
            if wanted and guess and guess not in wanted:  # a filter, never a relabelling of another task's file
                raise FileNotFoundError(f"{str(root)!r} holds {name} {guess} (by its path), not {', '.join(wanted)}")
        label_task = guess_task or (tasks[0] if tasks and len(tasks) == 1 else "")
        label_length = guess_length or (lengths[0] if lengths and len(lengths) == 1 else "")
        yield from read_file(root, label_task, label_length)
        return
    found, notes = _scan(root)
    if not found:
        raise FileNotFoundError(
            f"no BABILong files under {str(root)!r}: expected data/qaN/<len>.json (RMT-team/babilong) or "
            "<len>/qaN-*.parquet (RMT-team/babilong-1k-samples)"
        )
    have_tasks = sorted({t for t, _ in found}, key=lambda t: int(t[2:]))
    have_lengths = sorted({n for _, n in found}, key=parse_length)
    for name, wanted, have in (("task", tasks, have_tasks), ("length", lengths, have_lengths)):
        missing = [w for w in wanted or () if w not in have]
        if missing:
            raise FileNotFoundError(f"{str(root)!r} has no {name} {', '.join(missing)}; it has {', '.join(have)}")
    keys = [k for k in found if (tasks is None or k[0] in tasks) and (lengths is None or k[1] in lengths)]
    if not keys:
        raise FileNotFoundError(
            f"{str(root)!r} has no file for task(s) {tasks or have_tasks} at length(s) {lengths or have_lengths}"
        )
    for key in keys:
        if key in notes and (str(root), key) not in _WARNED_SKIPS:  # once per folder and cell
            _WARNED_SKIPS.add((str(root), key))
            warnings.warn(notes[key], RuntimeWarning, stacklevel=2)
        for f in found[key]:
            yield from read_file(f, *key)


def load_official(
    path_or_name: str | Path,
    length: str | int | Sequence[str | int] | None = None,
    task: str | Sequence[str] | None = None,
    split: str | Sequence[str] | None = None,
) -> list[OfficialSample]:
    """Load official BABILong samples from local files (or the Hub, for the names in :data:`HUB_NAMES`).

    Args:
        path_or_name: a folder mirroring ``RMT-team/babilong`` (``data/qaN/<len>.json``, the ``data/`` prefix
            optional) or ``RMT-team/babilong-1k-samples`` (``<len>/qaN-00000-of-00001.parquet``); a single
            ``.json``/``.jsonl``/``.parquet`` file; or a Hub name such as ``"RMT-team/babilong"`` that is not a
            local path (then :func:`from_hub` is used: network or a warm cache, and one ``length``).
        length: a length name or list of them (``"4k"``, ``"1M"``, ``4000``); ``None`` = every length found.
        task: ``"qa1"`` .. ``"qa20"`` or a list; ``None`` = every task found.
        split: alias of ``task``, as on the Hub where splits are tasks.

    Returns:
        samples in order of length, then task, then file order; each carries its ``task`` and ``length``.

    Raises:
        FileNotFoundError: the path does not exist, holds no official files, or lacks a requested task/length
            (the message lists what it has).
        ValueError: an unknown task (``"qa0"``, ``"qa21"``) or length string.
        OfficialFormatError: a malformed file (names the file and record index).

    Examples::

        >>> samples = load_official("babilong_data", length="4k", task="qa1")  # doctest: +SKIP
        >>> samples[0].question, samples[0].target  # doctest: +SKIP
        ('Where is Mary? ', 'bathroom')
    """
    return list(iter_official(path_or_name, length, task, split))


def from_hub(
    name: str = "RMT-team/babilong",
    length: str | int = "0k",
    task: str | Sequence[str] | None = None,
    **load_kwargs: Any,
) -> list[OfficialSample]:
    """Load an official set with Hugging Face ``datasets``: config = length, split = task.

    Needs the ``datasets`` package and network access, or the set already in the local Hugging Face cache
    (``HF_DATASETS_OFFLINE=1`` then reads only the cache). ``datasets`` is imported only when this is called.

    Args:
        name: ``"RMT-team/babilong"`` (100 per task; qa1-qa20 at 0k, qa1-qa10 longer, qa1-qa5 at 10M),
            ``"RMT-team/babilong-1k-samples"`` (about 1000 per task; qa1-qa5 beyond 0k) or another set with the
            same convention.
        length: the config, e.g. ``"4k"``.
        task: a split (``"qa1"``) or list of them, each loaded alone (``split=task``, so only its files are
            fetched); ``None`` = every split of the config.
        **load_kwargs: passed to ``datasets.load_dataset`` (e.g. ``cache_dir``).
    """
    config = check_length(length)
    tasks = _as_list(task, check_task)
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            "from_hub needs the 'datasets' package (pip install datasets) and network access or a warm Hugging Face "
            "cache; to work offline, download the files once and use load_official(folder)"
        ) from e
    if tasks:  # one split at a time, so only the asked tasks' files are fetched (a 10M config is ~4 GB per task)
        splits = ((t, _load_hub(datasets, name, config, load_kwargs, split=t)) for t in tasks)
    else:
        loaded = _load_hub(datasets, name, config, load_kwargs)
        splits = ((t, loaded[t]) for t in sorted(loaded, key=lambda t: int(t[2:]) if _TASK.fullmatch(t) else 0))
    out = []
    for t, records in splits:
        where = Path(f"hf:{name}/{config}/{t}")
        out.extend(_validate(rec, where, i, t, config) for i, rec in enumerate(records))
    return out


def _load_hub(datasets: Any, name: str, config: str, load_kwargs: dict[str, Any], split: str | None = None) -> Any:
    """``datasets.load_dataset(name, config[, split=split])`` with errors that say what went wrong."""
    kwargs = dict(load_kwargs) if split is None else {**load_kwargs, "split": split}
    try:
        return datasets.load_dataset(name, config, **kwargs)
    except Exception as e:
        if split is not None and isinstance(e, ValueError) and "split" in str(e).lower():
            raise ValueError(f"{name!r} config {config!r} has no split {split} ({e})") from e
        raise RuntimeError(
            f"could not load {name!r} config {config!r} (configs are lengths, splits are tasks): it needs network "
            f"access or the set in the local Hugging Face cache ({type(e).__name__}: {e})"
        ) from e


def _json_str(text: str) -> str:
    """``text`` as a JSON string body (no quotes), escaped as ``json.dump`` does by default (ASCII only)."""
    return json.dumps(text)[1:-1]


class _StrippedStringWriter:
    """Writes a string piecewise into an open JSON string, equal to escaping ``"".join(pieces).strip()``."""

    def __init__(self, f: IO[str]) -> None:
        self.f, self.started, self.pending = f, False, ""

    def write(self, text: str) -> None:
        if not self.started:
            text = text.lstrip()
            if not text:
                return
            self.started = True
        body = text.rstrip()
        if not body:
            self.pending += text
            return
        self.f.write(_json_str(self.pending + body))
        self.pending = text[len(body):]


def stream_text(sample: BabilongSample, write, chunk_tokens: int = _STREAM_CHUNK_TOKENS) -> None:
    """Decode a sample's input chunk by chunk and pass the text pieces to ``write``.

    The bytes are decoded with an incremental UTF-8 decoder, so a character split across two chunks is joined,
    and the concatenated pieces equal ``tokenizer.decode(sample.input_ids())`` (not yet stripped) for any
    length, in memory independent of the length.
    """
    tok = getattr(sample, "_tok", None) or get_tokenizer()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for chunk in sample.iter_chunks(chunk_tokens):
        text = decoder.decode(tok.decode_bytes(chunk))
        if text:
            write(text)
    tail = decoder.decode(b"", final=True)
    if tail:
        write(tail)


def _check_label(what: str, have: Any, want: str, parse) -> None:
    if have in ("", None):
        return
    if parse(have) != parse(want):
        raise ValueError(f"a sample has {what} {have!r} but the file is for {what} {want!r}")


def _write_json_record(f: IO[str], s: Any, materialise_limit: int, chunk_tokens: int) -> None:
    if isinstance(s, BabilongSample):
        question, target = s.question, s.target
        f.write('{"input": "')
        if s.num_tokens <= materialise_limit:
            f.write(_json_str(s.text(limit=max(materialise_limit, s.num_tokens))))
        else:
            stream_text(s, _StrippedStringWriter(f).write, chunk_tokens)
        f.write('", ')
    else:
        rec = _record_of(s)
        question, target = rec["question"], rec["target"]
        f.write('{"input": ' + json.dumps(rec["input"]) + ", ")
    f.write('"question": ' + json.dumps(question) + ', "target": ' + json.dumps(target) + "}")


def _record_of(s: Any) -> dict[str, str]:
    if isinstance(s, BabilongSample):
        return {"input": s.text(), "question": s.question, "target": s.target}
    if isinstance(s, OfficialSample):
        return s.record()
    if isinstance(s, Mapping) and all(isinstance(s.get(k), str) for k in FIELDS):
        return {k: s[k] for k in FIELDS}
    raise TypeError(f"cannot write {type(s).__name__}: expected a BabilongSample, OfficialSample or {FIELDS} dict")


def official_path(out_dir: str | Path, length: str | int, task: str, layout: Layout = "babilong") -> Path:
    """Where a task and length live in a layout: ``data/qaN/<len>.json`` or ``<len>/qaN-00000-of-00001.parquet``."""
    name, task = check_length(length), check_task(task)
    if layout == "babilong":
        return Path(out_dir) / "data" / task / f"{name}.json"
    if layout == "1k-samples":
        return Path(out_dir) / name / f"{task}-00000-of-00001.parquet"
    raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def write_official(
    samples: Iterable[BabilongSample | OfficialSample | Mapping[str, str]],
    out_dir: str | Path,
    length: str | int,
    task: str,
    layout: Layout = "babilong",
    *,
    materialise_limit: int = MATERIALISE_LIMIT,
    chunk_tokens: int = _STREAM_CHUNK_TOKENS,
    on_sample: Callable[[Any], object] | None = None,
) -> Path:
    """Write samples of one task and length in an official layout; :func:`load_official` reads them back.

    ``"babilong"`` writes a JSON array of ``{"input", "question", "target"}`` records, as ``json.dump`` does in
    the reference script. A :class:`BabilongSample` longer than ``materialise_limit`` tokens is streamed: its ids
    are decoded chunk by chunk (incremental UTF-8, see :func:`stream_text`) into the JSON string, so a 10M-token
    sample never exists as one string; the result equals ``sample.text()``. ``"1k-samples"`` writes one Parquet
    file (needs ``pyarrow``) and holds every text in memory, so it refuses samples over ``materialise_limit``.
    The file is written to a temporary name and renamed when complete.

    Args:
        samples: generated samples (``BabilongGenerator(...).take(n)``), :class:`OfficialSample` or field dicts.
        out_dir: root of the layout.
        length, task: the file's length and task; samples that carry another task or length are refused.
        layout: ``"babilong"`` (default) or ``"1k-samples"``.
        materialise_limit: samples up to this many tokens are written via ``text()``, longer ones streamed.
        chunk_tokens: tokens decoded at a time when streaming.
        on_sample: called with each sample after it is written (progress bars).

    Returns:
        the path written.
    """
    path = official_path(out_dir, length, task, layout)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")

    def checked(items: Iterable[Any]) -> Iterator[Any]:
        for s in items:
            _check_label("task", getattr(s, "task", None), task, str)
            _check_label("length", getattr(s, "length", None), str(length), parse_length)
            yield s

    try:
        if layout == "babilong":
            with open(tmp, "w", encoding="utf-8") as f:
                f.write("[")
                for i, s in enumerate(checked(samples)):
                    if i:
                        f.write(", ")
                    _write_json_record(f, s, materialise_limit, chunk_tokens)
                    if on_sample is not None:
                        on_sample(s)
                f.write("]")
        else:
            pq = _parquet_module("write")
            import pyarrow as pa

            columns: dict[str, list[str]] = {"question": [], "target": [], "input": []}
            for s in checked(samples):
                if isinstance(s, BabilongSample) and s.num_tokens > materialise_limit:
                    raise ValueError(
                        f"a {s.num_tokens}-token sample is over materialise_limit={materialise_limit}: the "
                        "1k-samples (Parquet) layout holds whole texts in memory; use layout='babilong'"
                    )
                rec = _record_of(s)
                for k in columns:
                    columns[k].append(rec[k])
                if on_sample is not None:
                    on_sample(s)
            pq.write_table(pa.table(columns), tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


__all__ = [
    "FIELDS", "HUB_NAMES", "LAYOUTS", "OFFICIAL_LENGTHS", "OFFICIAL_TASKS", "OfficialFormatError",
    "OfficialSample", "check_length", "check_task", "from_hub", "iter_official", "load_official", "official_path",
    "labels_from_path", "read_file", "scan_folder", "stream_text", "write_official",
]
