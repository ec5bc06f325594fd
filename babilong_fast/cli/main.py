"""``babilong-fast`` command line.

Subcommands:

- ``data``: generate BABILong samples (seeded, offline) and write them in the official layout, so that
  tools written for ``RMT-team/babilong`` read them unchanged. The settings of every file written (task,
  length, split, seed, margin, background, stories skipped) are recorded in ``babilong_fast_manifest.json``
  in the output folder, so a set can be regenerated.
- ``eval``: score a saved ARMT / RMT / Mamba model (a ``babilong_fast.models.save_model`` file, an ARMT/RMT
  ``save_pretrained`` folder or a Hugging Face Mamba folder) on generated samples in the fine-tuning format
  (margin 20) by exact match; writes ``results.csv``, ``results.json`` and ``heatmap.png``
  (see :mod:`babilong_fast.cli.eval`).
- ``train``: fine-tune ARMT / RMT / Mamba with the curriculum from a preset (see :mod:`babilong_fast.cli.train`).

Examples::

    babilong-fast data --tasks qa1,qa2 --lengths 0k,1k,4k --n 100 --split test --seed 0 --out babilong_data
    python -m babilong_fast.cli.main data --tasks qa1 --lengths 128k --n 10 --out babilong_data
    babilong-fast eval --checkpoint armt_qa1.pt --tasks qa1,qa2 --lengths 0k,1k,4k --n 20 --out results
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from babilong_fast import __version__
from babilong_fast.cli.args import check_cells, check_lengths
from babilong_fast.data.babi import ALL_TASKS as TASKS
from babilong_fast.data.corpora import BundledNovels, TextFolder
from babilong_fast.data.dataset import BabilongGenerator
from babilong_fast.data.lengths import PROMPT_MARGIN
from babilong_fast.data.official import LAYOUTS, OFFICIAL_LENGTHS, official_path, write_official
from babilong_fast.progress_bar import StderrBar

MANIFEST = "babilong_fast_manifest.json"


def _comma_list(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(
            f"empty item in {text!r}; give a comma-separated list such as qa1,qa2 or 0k,4k"
        )
    return items


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``babilong-fast`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="babilong-fast", description="BABILong tools of babilong_fast.",
    )
    parser.add_argument("--version", action="version", version=f"babilong_fast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    data = sub.add_parser(
        "data",
        help="generate BABILong samples and write them in the official layout",
        description=(
            "Generate seeded BABILong samples (bAbI qa1-qa20 facts hidden in background text) and write them as "
            "OUT/data/qaN/<len>.json (layout 'babilong', as RMT-team/babilong) or OUT/<len>/qaN-00000-of-00001."
            "parquet (layout '1k-samples', needs pyarrow). Read them back with "
            "babilong_fast.data.official.load_official(OUT)."
        ),
    )
    data.add_argument("--tasks", type=_comma_list, required=True, help=f"comma-separated, from {','.join(TASKS)}")
    data.add_argument(
        "--lengths", type=_comma_list, required=True,
        help=f"comma-separated length names, e.g. {','.join(OFFICIAL_LENGTHS)} (k = 1000)",
    )
    data.add_argument("--n", type=_positive_int, required=True, help="samples per task and length")
    data.add_argument("--split", choices=("train", "test"), default="test", help="bAbI pool and books (default test)")
    data.add_argument("--seed", type=int, default=0, help="stream seed (default 0)")
    data.add_argument(
        "--margin", type=_non_negative_int, default=PROMPT_MARGIN,
        help=f"tokens kept free of the nominal length: {PROMPT_MARGIN} for LLM prompts (default), 20 for fine-tuning",
    )
    data.add_argument("--out", type=Path, required=True, help="output folder (created)")
    data.add_argument(
        "--background", type=Path, default=None,
        help="folder of *.txt / *.txt.gz books to use as background (default: the bundled novels of --split)",
    )
    data.add_argument("--layout", choices=LAYOUTS, default="babilong", help="output layout (default babilong)")
    data.add_argument("--no-progress", action="store_true", help="no progress bar")
    data.set_defaults(func=_cmd_data, check=_check_data_args, subparser=data)
    from babilong_fast.cli.eval import add_parser as _add_eval_parser

    _add_eval_parser(sub, _comma_list, _positive_int)
    from babilong_fast.cli.train import add_parser as _add_train_parser

    _add_train_parser(sub, _positive_int)
    return parser


def _check_data_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for task in args.tasks:
        if task not in TASKS:
            parser.error(f"unknown task {task!r} in --tasks; accepted: {', '.join(TASKS)}")
    args.lengths = check_lengths(parser, args.lengths, args.margin, f"--margin {args.margin}")
    args.tasks = list(dict.fromkeys(args.tasks))
    if args.layout == "1k-samples":
        from babilong_fast.data.builder import MATERIALISE_LIMIT
        from babilong_fast.data.lengths import parse_length

        if too_long := [n for n in args.lengths if parse_length(n) - args.margin > MATERIALISE_LIMIT]:
            parser.error(f"--layout 1k-samples holds whole texts in memory (up to {MATERIALISE_LIMIT} tokens a "
                         f"sample): --lengths {','.join(too_long)} need --layout babilong")
    if args.background is not None:
        try:
            args.background_source = TextFolder(args.background)
        except (FileNotFoundError, ValueError) as e:
            parser.error(f"--background: {e}")
    else:
        args.background_source = BundledNovels(args.split)
    check_cells(parser, args.tasks, args.lengths, args.split, args.seed, args.margin, args.background_source)


def _update_manifest(out: Path, entries: dict[str, dict]) -> None:
    path = out / MANIFEST
    manifest: dict = {"generator": f"babilong_fast {__version__}", "files": {}}
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(old, dict) and isinstance(old.get("files"), dict):
                manifest["files"] = old["files"]
        except json.JSONDecodeError:
            pass
    manifest["files"].update(entries)
    manifest["files"] = dict(sorted(manifest["files"].items()))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _cmd_data(args: argparse.Namespace) -> int:
    progress = StderrBar(len(args.tasks) * len(args.lengths) * args.n, show_bar=not args.no_progress, unit="sample")
    entries: dict[str, dict] = {}
    try:
        for length in args.lengths:
            for task in args.tasks:
                gen = BabilongGenerator(
                    task, length, split=args.split, seed=args.seed, margin=args.margin,
                    background=args.background_source,
                )
                replaced = official_path(args.out, length, task, args.layout).exists()
                path = write_official(
                    itertools.islice(gen, args.n), args.out, length, task, args.layout,
                    on_sample=lambda _sample: progress.step(),
                )
                skipped = f" ({gen.skipped} long stories skipped)" if gen.skipped else ""
                replaced_note = " (replaced the earlier file)" if replaced else ""
                progress.line(f"wrote {args.n} samples to {path}{skipped}{replaced_note}")
                entries[path.relative_to(args.out).as_posix()] = {
                    "task": task, "length": length, "n": args.n, "split": args.split, "seed": args.seed,
                    "margin": args.margin, "background": args.background_source.name,
                    "long_stories_skipped": gen.skipped,
                }
    finally:
        progress.close()
        if entries:
            _update_manifest(args.out, entries)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``babilong-fast`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    Bad arguments exit with code 2 and a message naming the bad value and the accepted ones (argparse);
    a failure while generating prints ``babilong-fast: error: ...`` and returns 1.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    args.check(args.subparser, args)
    try:
        return args.func(args)
    except (ValueError, OSError, ImportError) as e:
        print(f"babilong-fast: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
