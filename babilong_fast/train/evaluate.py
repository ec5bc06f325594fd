"""Validation by greedy generation and exact match, sharded over processes and gathered into one table.

Samples and scoring are ``babilong-fast eval``'s: ``BabilongGenerator(..., margin=FINETUNE_MARGIN)``,
``context ‖ question ‖ GEN`` answered greedily (``MAX_NEW_TOKENS``), :func:`exact_match_finetuned`. Sample ``i``
of the first ``n`` goes to rank ``i % world``; every rank gets the gathered totals.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from babilong_fast.cli.eval import answer_batch, batches_by_shape
from babilong_fast.data.dataset import BabilongGenerator
from babilong_fast.data.lengths import FINETUNE_MARGIN
from babilong_fast.data.metric import exact_match_finetuned
from babilong_fast.train.distributed import Dist, all_sum
from babilong_fast.train.kinds import make_runner


def check_validation(task: str, length: int | str, *, split: str = "test", seed: int = 0) -> None:
    """ValueError unless :func:`evaluate` finds a first sample of ``task`` at ``length`` (a length too short for the
    task's stories fails before training, not at the first validation)."""
    try:
        next(iter(BabilongGenerator(task, length, split=split, seed=seed, margin=FINETUNE_MARGIN)))
    except ValueError as e:
        raise ValueError(f"validation of {task} at {length} tokens ({split} split, seed {seed}): {e}") from None


def evaluate(
    model: nn.Module,
    kind: str,
    task: str,
    lengths: Sequence[int | str],
    n: int,
    *,
    split: str = "test",
    seed: int = 0,
    batch: int = 16,
    d: Dist | None = None,
) -> list[dict]:
    """Exact-match accuracy of ``model`` on the first ``n`` generated samples of ``task`` at each length.

    Args:
        model: the bare model (not the DDP wrapper); left in eval mode.
        kind: ``"armt"``, ``"rmt"`` or ``"mamba"``.
        task, split, seed: the generated stream (as ``babilong-fast eval``).
        lengths: nominal lengths in tokens (or names such as ``"1k"``).
        n: samples per length, over all processes.
        batch: samples answered together (grouped by shape).
        d: the process group; None for a single process.

    Returns:
        one row per length: ``{"length", "n", "correct", "accuracy"}`` (accuracy in %), the same on every rank.
    """
    d = d or Dist()
    runner = make_runner(model, kind)
    rows = []
    with torch.no_grad():
        for length in lengths:
            gen = BabilongGenerator(task, length, split=split, seed=seed, margin=FINETUNE_MARGIN)
            mine = (s for i, s in enumerate(itertools.islice(gen, n)) if i % d.world == d.rank)
            correct = done = 0
            for group in batches_by_shape(mine, n, batch):
                samples = [s for _, s in group]
                for s, ids in zip(samples, answer_batch(runner, samples), strict=True):
                    correct += bool(exact_match_finetuned(ids, s.target))
                    done += 1
            correct_all, done_all = all_sum(d, [correct, done])
            rows.append({
                "length": length, "n": int(done_all), "correct": int(correct_all),
                "accuracy": 100.0 * correct_all / done_all if done_all else float("nan"),
            })
    return rows
