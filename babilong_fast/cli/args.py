"""Argument checks shared by the subcommands."""
from __future__ import annotations

import argparse

from babilong_fast.data.lengths import parse_length
from babilong_fast.data.official import OFFICIAL_LENGTHS, check_length


def check_lengths(parser: argparse.ArgumentParser, lengths: list[str], margin: int, margin_label: str) -> list[str]:
    """Canonical length names, in order, without repeats; exits with a message naming a bad one.

    ``margin_label`` says where the margin comes from in the error (e.g. ``"--margin 300"``).
    """
    names = []
    for length in lengths:
        try:
            name = check_length(length)
        except ValueError:
            parser.error(
                f"unknown length {length!r} in --lengths; accepted: {', '.join(OFFICIAL_LENGTHS)} "
                "or any <digits>, <digits>k or <digits>M (k = 1000)"
            )
        tokens = parse_length(name)
        if 0 < tokens <= margin:
            parser.error(f"length {length!r} ({tokens} tokens) leaves nothing after {margin_label}")
        names.append(name)
    return list(dict.fromkeys(names))


def check_cells(
    parser: argparse.ArgumentParser, tasks: list[str], lengths: list[str], split: str, seed: int, margin: int,
    background=None,
) -> None:
    """Every task × length yields a first sample, else a parser error: a length too short for a task's stories
    fails here, not after a model has loaded or earlier cells were written."""
    from babilong_fast.data.dataset import BabilongGenerator

    for task in tasks:
        for length in lengths:
            try:
                gen = BabilongGenerator(task, length, split=split, seed=seed, margin=margin, background=background)
                next(iter(gen))
            except ValueError as e:
                parser.error(f"--tasks {task} --lengths {length}: {e}")
