"""``babilong-fast train``: fine-tune ARMT, RMT or Mamba on BABILong with the curriculum (:mod:`babilong_fast.train`).

A preset gives the published recipe (``rmt``, ``armt``, ``mamba-130m``) or a laptop-sized run (``tiny``);
most fields can be overridden (``--help`` lists them).
Several processes: ``torchrun --nproc-per-node N -m babilong_fast.cli.main train ...``.

Examples::

    babilong-fast train --preset tiny --task qa1 --out runs/tiny
    babilong-fast train --preset armt --task qa1 --backbone-path ./gpt2 --out runs/armt_qa1
    babilong-fast train --preset armt --task qa1 --backbone-path ./gpt2 --out runs/armt_qa1 --resume
    babilong-fast eval --checkpoint runs/tiny/best.pt --tasks qa1 --lengths 1k,4k --n 50 --out runs/tiny/eval
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from babilong_fast.data.babi import ALL_TASKS
from babilong_fast.models.recurrent import PRETRAINED_FILE
from babilong_fast.train.config import PRESETS, check_stages
from babilong_fast.train.loop import run_files


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,4, got {text!r}") from None


def _steps(text: str) -> int | list[int]:
    v = _int_list(text)
    return v[0] if len(v) == 1 else v


def add_parser(sub, positive_int) -> argparse.ArgumentParser:
    """Register the ``train`` subcommand on ``sub`` (the subparsers of ``babilong-fast``)."""
    p = sub.add_parser(
        "train",
        help="fine-tune ARMT / RMT / Mamba on BABILong with the curriculum",
        description=(
            "Train with curriculum stages (stage n: each sample has 1..n segments), validate by greedy generation "
            "and exact match, and write OUT/log.csv, OUT/stage<n>.pt, OUT/best.pt (a model file for "
            "`babilong-fast eval`) and the resumable OUT/last.pt."
        ),
    )
    p.add_argument("--preset", choices=tuple(PRESETS), required=True, help="recipe to start from")
    p.add_argument("--kind", choices=("armt", "rmt"), default=None,
                   help="switch a GPT-2 preset (rmt, armt, tiny) between ARMT and RMT")
    p.add_argument("--task", default="qa1", help=f"bAbI task, one of {','.join(ALL_TASKS)} (default qa1)")
    p.add_argument("--out", type=Path, required=True, help="run folder (created)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an OUT that holds a run, deleting its run files (refused otherwise)")
    p.add_argument("--init-from", type=Path, default=None, help="start from this model file (same model kind)")
    p.add_argument("--backbone-path", default=None, help="local Hugging Face folder with pretrained backbone weights")
    p.add_argument("--stages", type=_int_list, default=None,
                   help="curriculum, strictly increasing, e.g. 1,2,4 (a first 0: the facts alone); without --steps "
                        "a stage gets the preset's steps for the largest preset stage not above it")
    p.add_argument("--steps", type=_steps, default=None, help="optimizer steps per stage (one value or one per stage)")
    p.add_argument("--segment-size", type=positive_int, default=None)
    p.add_argument("--num-mem-tokens", type=positive_int, default=None)
    p.add_argument("--d-mem", type=positive_int, default=None)
    p.add_argument("--batch-size", type=positive_int, default=None, help="samples per step over all processes")
    p.add_argument("--micro-batch-size", type=positive_int, default=None, help="samples per forward and process")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--warmup", type=float, default=None, help="warm-up: a fraction of a stage's steps (< 1) or steps")
    p.add_argument("--clip", type=float, default=None, help="gradient-norm clipping (> 0)")
    p.add_argument("--no-clip", action="store_true", help="no gradient clipping")
    p.add_argument("--detach-every", type=positive_int, default=None, help="truncated BPTT every K segments")
    p.add_argument("--eval-every", type=positive_int, default=None)
    p.add_argument("--eval-n", type=positive_int, default=None)
    p.add_argument("--patience", type=positive_int, default=None,
                   help="stop a stage after this many validations without improvement")
    p.add_argument("--no-patience", action="store_true", help="never stop a stage for lack of improvement")
    p.add_argument("--target", type=float, default=None, help="stop a stage at this validation accuracy (%%)")
    p.add_argument("--no-target", action="store_true", help="no accuracy target (the armt preset has 100)")
    p.add_argument("--save-every", type=positive_int, default=None)
    p.add_argument("--pool-size", type=positive_int, default=None)
    p.add_argument("--max-facts", type=positive_int, default=None,
                   help="train only on bAbI stories with at most this many facts (generated data)")
    p.add_argument("--train-data", default=None, help="folder of official BABILong files to train on")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--bf16", action="store_true",
                   help="bf16 autocast on a GPU (the memory state stays fp32); presets follow their recipes: rmt "
                        "bf16, armt and mamba-130m fp32")
    p.add_argument("--no-bf16", action="store_true", help="fp32 on a GPU too")
    p.add_argument("--time-limit", type=float, default=None,
                   help="stop after this many seconds of this call (--resume goes on)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_train, check=check_args, subparser=p)
    return p


OVERRIDES = (
    "stages", "steps", "segment_size", "num_mem_tokens", "d_mem", "batch_size", "micro_batch_size", "lr",
    "weight_decay", "warmup", "clip", "detach_every", "eval_every", "eval_n", "patience", "target", "save_every",
    "pool_size", "max_facts", "train_data", "seed", "device", "backbone_path",
)


def _preset_steps(recipe: dict, stages: list[int]) -> list[int]:
    """Steps for each of ``stages``: the recipe's steps of its largest stage not above it (else its first)."""
    table = list(zip(recipe["stages"], recipe["steps"], strict=True))
    return [next((steps for s, steps in reversed(table) if s <= n), table[0][1]) for n in stages]


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from babilong_fast.train.config import preset

    if args.task not in ALL_TASKS:
        parser.error(f"unknown task {args.task!r} in --task; accepted: {', '.join(ALL_TASKS)}")
    if args.stages is not None:
        try:
            check_stages(args.stages)
        except ValueError as e:
            parser.error(f"--stages: {e}")
    if PRESETS[args.preset]["kind"] == "mamba":
        if args.kind is not None:
            parser.error(f"--kind {args.kind}: preset {args.preset!r} is a Mamba backbone; use --preset rmt, armt or "
                         "tiny")
        given = [f"--{k.replace('_', '-')}" for k in ("num_mem_tokens", "d_mem", "detach_every")
                 if getattr(args, k) is not None]
        if given:
            parser.error(f"{', '.join(given)}: for ARMT/RMT memory; preset {args.preset!r} is a Mamba backbone")
    for flag, off in (("clip", "no_clip"), ("patience", "no_patience"), ("target", "no_target")):
        if getattr(args, off) and getattr(args, flag) is not None:
            parser.error(f"give --{flag} or --no-{flag}, not both")
    if args.time_limit is not None and not 0 <= args.time_limit < float("inf"):
        parser.error(f"--time-limit takes a finite number of seconds >= 0, got {args.time_limit}")
    over = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None}  # flags given only
    over["task"] = args.task
    if args.kind is not None:
        over["kind"] = args.kind
    if args.bf16 and args.no_bf16:
        parser.error("give --bf16 or --no-bf16, not both")
    if args.bf16 or args.no_bf16:
        over["bf16"] = args.bf16
    if args.stages is not None and args.steps is None and isinstance(PRESETS[args.preset]["steps"], list):
        over["steps"] = _preset_steps(PRESETS[args.preset], args.stages)
    if args.stages is not None and isinstance(PRESETS[args.preset].get("target"), list) and args.target is None:
        over["target"] = None  # per-stage targets of the preset's stages do not fit others
    for flag in ("clip", "patience", "target"):
        if getattr(args, f"no_{flag}"):
            over[flag] = None
    try:
        args.config = preset(args.preset, **over)
    except ValueError as e:
        parser.error(str(e))
    if args.resume and args.overwrite:
        parser.error("give --resume or --overwrite, not both")
    held = run_files(args.out)
    if held and not (args.resume or args.overwrite):
        parser.error(f"--out {str(args.out)!r} holds a run ({', '.join(p.name for p in held[:4])}): add --resume to "
                     "continue it or --overwrite to start afresh")
    if args.init_from is not None:
        if args.init_from.is_dir() and (args.init_from / PRETRAINED_FILE).is_file():
            args.init_from = args.init_from / PRETRAINED_FILE  # an ARMT / RMT save_pretrained folder
        if not args.init_from.is_file():
            parser.error(f"--init-from: checkpoint not found: {str(args.init_from)!r} (a model file, or an "
                         "ARMT / RMT save_pretrained folder)")
        if args.overwrite and args.init_from.resolve() in {p.resolve() for p in held}:
            parser.error(f"--init-from {str(args.init_from)!r} is a file of the run --overwrite deletes; copy it "
                         "out of --out first")
    if args.backbone_path is not None and not Path(args.backbone_path).is_dir():
        parser.error(f"--backbone-path: no such folder: {args.backbone_path!r} (a local Hugging Face model folder; "
                     "nothing is downloaded)")


def run_train(args: argparse.Namespace) -> int:
    from babilong_fast.train.loop import train

    summary = train(
        args.config, args.out, resume=args.resume, overwrite=args.overwrite, init_from=args.init_from,
        progress=not args.no_progress, time_limit=args.time_limit,
    )
    pos = summary["position"]
    last = summary["valid"][-1] if summary["valid"] else None
    msg = {"out": str(args.out), "global_step": pos.global_step, "seconds": round(summary["seconds"], 1),
           "finished": pos.stage_index >= len(args.config.stages), "last_validation": last}
    print(json.dumps(msg), file=sys.stderr)  # also with --no-progress: it says whether the run finished
    return 0
