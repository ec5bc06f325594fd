"""``babilong-fast eval``: score a saved ARMT / RMT / Mamba model on BABILong samples, generated or official.

The model is a :func:`~babilong_fast.models.save_model` file, an ``ARMT``/``RMT.save_pretrained`` folder or a
Hugging Face ``MambaForCausalLM`` folder (see :func:`~babilong_fast.models.checkpoint.load_model_path`). A model
of the public RMT/ARMT repos goes through ``ARMT.from_reference(model)`` / ``RMT.from_reference(model)`` and
``save_pretrained`` first.

For each task × length, ``n`` samples are generated with ``BabilongGenerator(task, length, split, seed,
margin=20)`` (the fine-tuning format: context ‖ question ‖ GEN), streamed through
:class:`~babilong_fast.engine.StreamRunner` (greedy, ``max_new_tokens=10``) and scored with
:func:`~babilong_fast.data.metric.exact_match_finetuned` (answer then end-of-text, exact string). Written to
``--out``: ``results.csv`` and ``results.json`` (rewritten after every task × length cell, so a run that stops
keeps the cells done; ``"complete": true`` once all are) and ``heatmap.png`` (accuracy %, tasks × lengths;
needs matplotlib). An earlier run's files there are removed first, with a line saying so.

``--batch B`` streams up to ``B`` samples together as the rows of one batch. Rows must share the context and
question lengths (samples of one cell have the same context length; questions may differ), so the first ``n``
samples are grouped by question length and a group runs once it holds ``B`` samples (the rest at the end);
the scores equal ``--batch 1``'s. ``results.json`` also keeps every sample's decoded prediction.

``--data PATH`` scores official BABILong files instead (a folder in the ``RMT-team/babilong`` layout,
``data/qaN/<len>.json``, or the ``babilong-1k-samples`` Parquet layout, or one file): the first ``n`` records of
each task × length, the context encoded as one text and the question alone, in the same format
(``context ‖ question ‖ GEN``); ``--split`` and ``--seed`` then do not apply. Their contexts differ in length, so
``--batch`` groups only records of equal lengths, holding at most one batch of records at a time.

Example::

    babilong-fast eval --checkpoint armt_qa1.pt --tasks qa1,qa2 --lengths 0k,1k,4k --n 20 --out results/
    babilong-fast eval --checkpoint armt_qa1.pt --data ./babilong --tasks qa1 --lengths 0k,128k --n 100 --out r/
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from babilong_fast import __version__
from babilong_fast.cli.args import check_cells, check_lengths
from babilong_fast.data.babi import ALL_TASKS as TASKS
from babilong_fast.data.builder import BabilongSample
from babilong_fast.data.dataset import BabilongGenerator
from babilong_fast.data.lengths import FINETUNE_MARGIN
from babilong_fast.data.metric import exact_match_finetuned
from babilong_fast.data.official import OFFICIAL_LENGTHS, OfficialSample, iter_official, labels_from_path
from babilong_fast.data.tokenizer import EOS_ID, get_tokenizer
from babilong_fast.engine.stream import StreamRunner
from babilong_fast.progress_bar import StderrBar

MAX_NEW_TOKENS = 10
CSV_FIELDS = (
    "task", "length", "n", "correct", "accuracy", "seconds", "tokens", "tokens_per_s",
    "kind", "checkpoint", "split", "seed", "data", "device", "torch_version",
)
OUTPUTS = ("results.csv", "results.json", "heatmap.png")


def add_parser(sub, comma_list, positive_int) -> argparse.ArgumentParser:
    """Register the ``eval`` subcommand on ``sub`` (the subparsers of ``babilong-fast``)."""
    p = sub.add_parser(
        "eval",
        help="score an ARMT/RMT/Mamba checkpoint on BABILong samples, generated or official (accuracy heatmap)",
        description=(
            "Generate n fine-tuning-format samples (margin 20) per task and length, or read the first n records of "
            "official files (--data), answer them greedily with the checkpoint's model, score by exact match "
            "(answer then end-of-text) and write OUT/results.csv, OUT/results.json and OUT/heatmap.png."
        ),
    )
    p.add_argument(
        "--checkpoint", type=Path, required=True,
        help="file written by babilong_fast.models.save_model (babilong-fast train writes them), an ARMT/RMT "
             "save_pretrained folder, or a Hugging Face MambaForCausalLM folder (read offline); for the public "
             "RMT/ARMT repos' models, save ARMT/RMT.from_reference(model) first",
    )
    p.add_argument("--tasks", type=comma_list, required=True, help=f"comma-separated, from {','.join(TASKS)}")
    p.add_argument(
        "--lengths", type=comma_list, required=True,
        help=f"comma-separated length names, e.g. {','.join(OFFICIAL_LENGTHS)} (k = 1000)",
    )
    p.add_argument("--n", type=positive_int, required=True, help="samples per task and length")
    p.add_argument(
        "--data", type=Path, default=None,
        help="score official BABILong files (a folder: data/qaN/<len>.json or <len>/qaN-*.parquet; or one file) "
             "instead of generated samples: the first --n records of each task and length",
    )
    p.add_argument("--split", choices=("train", "test"), default="test",
                   help="bAbI pool and books of generated samples (default test; not with --data)")
    p.add_argument("--seed", type=int, default=0, help="stream seed of generated samples (default 0; not with --data)")
    p.add_argument("--out", type=Path, required=True, help="output folder (created)")
    p.add_argument(
        "--batch", type=positive_int, default=1,
        help="samples streamed together (rows of one batch; grouped by context and question length; default 1)",
    )
    p.add_argument(
        "--device", default=None, choices=("cpu", "cuda"),
        help="where to run (default: cuda when available, else cpu)",
    )
    p.add_argument(
        "--compile", action="store_true",
        help="ARMT/RMT: run the streaming step through torch.compile (StreamRunner(compile=True)); compiling "
             "takes tens of seconds once, then long inputs run faster",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_eval, check=check_args, subparser=p)
    return p


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for task in args.tasks:
        if task not in TASKS:
            parser.error(f"unknown task {task!r} in --tasks; accepted: {', '.join(TASKS)}")
    args.lengths = check_lengths(parser, args.lengths, FINETUNE_MARGIN, f"the margin of {FINETUNE_MARGIN}")
    args.tasks = list(dict.fromkeys(args.tasks))
    if not args.checkpoint.exists():
        parser.error(f"checkpoint not found: {str(args.checkpoint)!r} (--checkpoint)")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.data is None:
        check_cells(parser, args.tasks, args.lengths, args.split, args.seed, FINETUNE_MARGIN)
        args.cell_counts = {(t, ln): args.n for t in args.tasks for ln in args.lengths}
    else:  # last: it reads each cell's first --n records
        args.cell_counts = check_official_cells(parser, args.data, args.tasks, args.lengths, args.n)
        for (task, length), count in args.cell_counts.items():
            if count < args.n:
                print(f"babilong-fast eval: note: --data has {count} {task} {length} record(s), fewer than --n "
                      f"{args.n}: that cell scores {count}", file=sys.stderr)


class RecordSample:
    """An official record as eval streams it: the context encoded as one text (kept as int32: 4 bytes a token),
    the question encoded alone."""

    def __init__(self, record: OfficialSample, tok, where: str) -> None:
        if not record.input.strip():
            raise ValueError(f"{where} has an empty input: nothing to stream before the question")
        self.ids = np.asarray(tok.encode(record.input), dtype=np.int32)
        self.question, self.target, self._tok = record.question, record.target, tok

    @property
    def num_tokens(self) -> int:
        return len(self.ids)

    def iter_chunks(self, chunk_tokens: int = 4096) -> Iterator[list[int]]:
        for i in range(0, len(self.ids), chunk_tokens):
            yield self.ids[i : i + chunk_tokens].tolist()

    def question_ids(self) -> list[int]:
        return self._tok.encode(self.question)


def official_samples(path: Path, task: str, length: str) -> Iterator[RecordSample]:
    """The records of ``task`` at ``length`` in the official files at ``path``, encoded one at a time."""
    tok = get_tokenizer()
    for i, r in enumerate(iter_official(path, length=length, task=task)):
        yield RecordSample(r, tok, f"--data {str(path)!r}: {task} {length} record {i}")


def check_official_cells(
    parser: argparse.ArgumentParser, path: Path, tasks: list[str], lengths: list[str], n: int
) -> dict[tuple[str, str], int]:
    """Every task × length has a first record in the local files at ``path``, and none of its first ``n`` has an
    empty input, else a parser error before any cell runs (records read one at a time, nothing downloaded). A
    single file must name its task and length in its path (``qaN/<len>.json``) unless one of each is asked for:
    it is read as that cell. Returns the records each cell will score (``n``, or fewer where the files hold
    fewer)."""
    if not path.exists():
        parser.error(f"--data: {str(path)!r} does not exist (a local folder or file; nothing is downloaded)")
    if path.is_file():
        task, length = labels_from_path(path)
        for name, label, asked in (("task", task, tasks), ("length", length, lengths)):
            if not label and len(asked) > 1:
                parser.error(f"--data {str(path)!r} does not say its {name} (qaN/<len>.json does): give one "
                             f"--{name}s value, not {','.join(asked)}")
    counts: dict[tuple[str, str], int] = {}
    for task in tasks:
        for length in lengths:
            count = 0
            try:
                for count, record in enumerate(itertools.islice(iter_official(path, length=length, task=task), n), 1):
                    if not record.input.strip():
                        parser.error(f"--data {str(path)!r}: {task} {length} record {count - 1} has an empty input: "
                                     "nothing to stream before the question")
            except (FileNotFoundError, ValueError) as e:
                parser.error(f"--data: {e}")
            if count == 0:
                parser.error(f"--data {str(path)!r} has no {task} record at length {length}")
            counts[task, length] = count
    return counts


def batches_by_shape(
    samples: Iterable[BabilongSample], n: int, batch: int, max_held: int | None = None
) -> Iterator[list[tuple[int, BabilongSample]]]:
    """The first ``n`` of ``samples`` as ``(position, sample)`` batches of at most ``batch`` rows that share context
    and question lengths. With ``max_held``, no more samples are held than that: the largest group goes first
    (official records, whose contexts differ in length, each their own group, are held one batch at a time)."""
    groups: dict[tuple[int, int], list[tuple[int, BabilongSample]]] = {}
    held = 0
    for pos, sample in enumerate(itertools.islice(samples, n)):
        key = (sample.num_tokens, len(sample.question_ids()))
        group = groups.setdefault(key, [])
        group.append((pos, sample))
        held += 1
        if len(group) == batch or (max_held is not None and held >= max_held):
            if len(group) < batch:
                key = max(groups, key=lambda k: len(groups[k]))
            held -= len(groups[key])
            yield groups.pop(key)
    yield from groups.values()


def answer_batch(runner: StreamRunner, samples: list[BabilongSample], chunk_tokens: int = 4096) -> list[list[int]]:
    """Greedy answers (``<= MAX_NEW_TOKENS`` ids per row, up to and with the first end-of-text: a row that ended
    before the others is not padded) of ``samples`` streamed together as one batch.

    All samples must have the same ``num_tokens`` and question length (see :func:`batches_by_shape`).
    """
    if len({(s.num_tokens, len(s.question_ids())) for s in samples}) != 1:
        raise ValueError("samples of one batch must share context and question lengths")
    chunks = (torch.tensor(rows) for rows in zip(*(s.iter_chunks(chunk_tokens) for s in samples), strict=True))
    state = runner.prefill(chunks, total_tokens=samples[0].num_tokens)
    if state.num_tokens != samples[0].num_tokens:
        raise RuntimeError(f"streamed {state.num_tokens} tokens, but the samples have {samples[0].num_tokens}")
    question = torch.tensor([s.question_ids() for s in samples])
    out = runner.answer(question, state=state, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=EOS_ID)
    return [row[: row.index(EOS_ID) + 1] if EOS_ID in row else row for row in out.tolist()]


def evaluate_cell(
    runner: StreamRunner, task: str, length: str, n: int, split: str, seed: int, on_sample=None, batch: int = 1,
    samples: Iterable | None = None,
) -> dict:
    """Accuracy (%) of ``runner`` on the first ``n`` samples of ``(task, length)`` (generated, or ``samples``:
    e.g. :func:`official_samples`); also seconds, tokens/s and the decoded predictions (in the samples' order)."""
    gen = samples if samples is not None else BabilongGenerator(task, length, split=split, seed=seed,
                                                                margin=FINETUNE_MARGIN)
    max_held = None if samples is None else batch  # official records hold their ids: at most one batch at a time
    tok = get_tokenizer()
    correct = tokens = done = 0
    seconds = 0.0
    outputs: dict[int, str] = {}
    for group in batches_by_shape(gen, n, batch, max_held):
        if runner.device.type == "cuda":
            torch.cuda.synchronize(runner.device)
        t0 = time.perf_counter()
        answers = answer_batch(runner, [sample for _, sample in group])
        if runner.device.type == "cuda":
            torch.cuda.synchronize(runner.device)
        seconds += time.perf_counter() - t0
        for (pos, sample), ids in zip(group, answers, strict=True):
            tokens += sample.num_tokens + len(sample.question_ids()) + 1  # question + GEN
            correct += bool(exact_match_finetuned(ids, sample.target))
            outputs[pos] = tok.decode(ids)
            done += 1
            if on_sample is not None:
                on_sample()
    return {
        "task": task, "length": length, "n": done, "correct": correct,
        "accuracy": 100.0 * correct / done if done else float("nan"),
        "seconds": round(seconds, 4), "tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
        "outputs": [outputs[k] for k in sorted(outputs)],
    }


def write_heatmap(rows: list[dict], tasks: list[str], lengths: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    acc = np.full((len(tasks), len(lengths)), np.nan)
    for r in rows:
        acc[tasks.index(r["task"]), lengths.index(r["length"])] = r["accuracy"]
    size = (max(5.0, 1.6 + 0.9 * len(lengths)), 1.4 + 0.55 * len(tasks))
    fig, ax = plt.subplots(figsize=size, constrained_layout=True)
    im = ax.imshow(acc, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(lengths)), labels=lengths)
    ax.set_yticks(range(len(tasks)), labels=tasks)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("task")
    for i in range(len(tasks)):
        for j in range(len(lengths)):
            if not np.isnan(acc[i, j]):
                ax.text(j, i, f"{acc[i, j]:.0f}", ha="center", va="center", fontsize=9)
    fig.colorbar(im, ax=ax, label="accuracy %")
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write_results(out: Path, rows: list[dict], doc: dict) -> None:
    """``results.csv`` and ``results.json`` of the cells done so far, each replaced whole (never half-written)."""
    tmp = out / "results.csv.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in CSV_FIELDS})
    os.replace(tmp, out / "results.csv")
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps({**doc, "results": rows}, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out / "results.json")


def _check_model(model: torch.nn.Module, kind: str, checkpoint: Path) -> torch.nn.Module:
    """Fail before the first sample on what would fail after a long stream; float64 weights run as float32."""
    decode_fits = getattr(model, "check_decode_fits", None)
    if decode_fits is not None:  # ARMT/RMT: a full last segment + the answer must fit the backbone's positions
        decode_fits(model.segment_size, MAX_NEW_TOKENS)
    if next(model.parameters()).dtype == torch.float64:
        print("babilong-fast eval: float64 weights run as float32 (the streaming kernels take float32, bfloat16 "
              "or float16)", file=sys.stderr)
        model = model.float()
    if kind == "mamba" and checkpoint.is_dir():
        print("babilong-fast eval: note: the samples are GPT-2 token ids (GEN 35353, end-of-text 50256); a Mamba "
              "trained with another tokenizer (state-spaces' GPT-NeoX) scores near 0", file=sys.stderr)
    return model


def run_eval(args: argparse.Namespace) -> int:
    from babilong_fast.models.checkpoint import load_model_path, model_kind

    model = load_model_path(args.checkpoint, map_location="cpu")
    kind = model_kind(model)
    if args.compile and kind == "mamba":
        print("babilong-fast eval: error: --compile runs ARMT and RMT steps; this checkpoint is a Mamba model",
              file=sys.stderr)
        return 2
    model = _check_model(model, kind, args.checkpoint)
    runner = StreamRunner(model, device=args.device, progress=False, compile=args.compile)
    if args.compile:  # compile outside the cells' timing: dummy batches of the batch sizes the cells will run
        t0 = time.perf_counter()
        full = min(args.batch, args.n)
        sizes = {full, args.n % args.batch or full} | ({1} if args.data is not None else set())
        for rows in sorted(sizes):
            state = runner.prefill(torch.zeros(rows, 2 * model.segment_size, dtype=torch.long))
            runner.answer(torch.zeros(rows, 1, dtype=torch.long), state=state, max_new_tokens=2, eos_token_id=EOS_ID)
        print(f"babilong-fast eval: compiled the streaming step for batch size(s) {sorted(sizes)} in "
              f"{time.perf_counter() - t0:.1f} s (not counted in the cells' timing)", file=sys.stderr)
    official = args.data is not None  # then --split and --seed do not apply: recorded as null (blank in the CSV)
    env = {
        "kind": kind, "checkpoint": args.checkpoint.name, "split": None if official else args.split,
        "seed": None if official else args.seed,
        "device": str(runner.device), "torch_version": torch.__version__, "batch": args.batch,
        "compile": args.compile, "data": str(args.data) if official else None,
    }
    if runner.device.type == "cuda":
        env_gpu = torch.cuda.get_device_name(runner.device)
    else:
        env_gpu = None
    doc = {
        "tool": f"babilong_fast {__version__}",
        "environment": {
            **env, "checkpoint_path": str(args.checkpoint), "gpu": env_gpu, "python": platform.python_version(),
            "babilong_fast_version": __version__, "margin": FINETUNE_MARGIN, "max_new_tokens": MAX_NEW_TOKENS,
            "metric": "exact_match_finetuned (answer then <|endoftext|>)",
        },
        "tasks": args.tasks, "lengths": args.lengths, "n": args.n, "complete": False,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    earlier = [name for name in OUTPUTS if (args.out / name).exists()]
    if earlier:  # removed now: a run that fails early must not leave an earlier run's heatmap beside its results
        print(f"babilong-fast eval: replacing an earlier run's {', '.join(earlier)} in {args.out}", file=sys.stderr)
        for name in earlier:
            (args.out / name).unlink()
    bar = StderrBar(sum(args.cell_counts.values()), show_bar=not args.no_progress, unit="sample",
                    desc="eval")  # the per-cell lines print either way
    rows: list[dict] = []
    try:
        for task in args.tasks:
            for length in args.lengths:
                bar.postfix(f"{task} {length}")
                samples = None if args.data is None else official_samples(args.data, task, length)
                row = evaluate_cell(
                    runner, task, length, args.n, args.split, args.seed, on_sample=bar.step, batch=args.batch,
                    samples=samples,
                )
                row.update(env)
                rows.append(row)
                _write_results(args.out, rows, doc)  # a later failure keeps the cells done
                bar.line(f"{task} {length}: {row['accuracy']:.1f}% ({row['correct']}/{row['n']})")
    finally:
        bar.close()
    _write_results(args.out, rows, {**doc, "complete": True})
    source = f"{args.split}, seed={args.seed}" if args.data is None else f"official {args.data.resolve().name}"
    counts = {r["n"] for r in rows}
    n_text = f"n={args.n}" if counts == {args.n} else f"n={min(counts)}..{max(counts)} of {args.n} asked"
    title = f"{kind.upper()} {args.checkpoint.name}\nexact-match accuracy % ({source}, {n_text})"
    try:
        write_heatmap(rows, args.tasks, args.lengths, args.out / "heatmap.png", title)
        wrote = "results.json, heatmap.png"
    except ImportError:
        wrote = "results.json (no heatmap.png: pip install matplotlib)"
    print(f"wrote {args.out / 'results.csv'}, {wrote}", file=sys.stderr)
    return 0
