"""The resumable training state (``last.pt``): weights, optimizer, schedule, RNG states and data position.

Data are addressed by index (:mod:`babilong_fast.train.data`), so the position ``(stage, step)`` is the whole
data state; with the RNG states of every process restored, a resumed run repeats the uninterrupted one.
"""
from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from babilong_fast.models.checkpoint import TRAIN_STATE_FORMAT

STATE_FORMAT = TRAIN_STATE_FORMAT
STATE_VERSION = 2  # 2: draws address their bAbI samples by (seed, stage, index): a 1 resumes on other data


@dataclass
class Position:
    """Where a run stands.

    Args:
        stage_index: index into ``config.stages`` of the stage in progress (``len(stages)``: finished).
        step: optimizer steps done in that stage.
        global_step: optimizer steps done in the whole run.
        best: best validation accuracy (%) of the stage so far (``-inf`` before the first).
        bad_evals: validations since the last improvement.
        seconds: training wall time so far (validation included).
        valid: every validation row so far.
    """

    stage_index: int = 0
    step: int = 0
    global_step: int = 0
    best: float = float("-inf")
    bad_evals: int = 0
    seconds: float = 0.0
    valid: list[dict[str, Any]] = field(default_factory=list)

    def next_stage(self) -> None:
        self.stage_index += 1
        self.step, self.best, self.bad_evals = 0, float("-inf"), 0


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's RNG states (torch CPU, the CUDA device's, Python's ``random``)."""
    st: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def set_rng_state(st: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


def seed_stage(seed: int, stage_index: int, rank: int, device: torch.device) -> None:
    """Deterministic RNG at the start of a stage (dropout differs between ranks)."""
    s = seed * 1009 + stage_index * 101 + rank
    torch.manual_seed(s)
    random.seed(s)
    if device.type == "cuda":
        torch.cuda.manual_seed(s)


def save_state(
    path: Path, *, kind: str, config: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: Any, position: Position, rng: list[dict[str, Any]],
) -> None:
    """Write ``last.pt`` atomically. ``rng``: one entry per rank."""
    payload = {
        "format": STATE_FORMAT, "version": STATE_VERSION, "kind": kind, "config": config,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "position": asdict(position), "rng": rng,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_state(path: Path, kind: str, world: int) -> dict[str, Any]:
    """The payload of ``last.pt``; ValueError if it is not one, holds another model kind or another world size."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # unpickling errors come in many types
        raise ValueError(f"{str(path)!r} is not a training state: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise ValueError(f"{str(path)!r} is not a babilong_fast training state (no {STATE_FORMAT!r} marker)")
    if payload.get("version") != STATE_VERSION:
        version = payload.get("version")
        raise ValueError(f"{str(path)!r} has training-state version {version!r}, expected {STATE_VERSION}: it was "
                         "written by another babilong_fast, whose training data differ; resume it with that version, "
                         "or start again")
    if payload["kind"] != kind:
        raise ValueError(
            f"{str(path)!r} is the training state of an {payload['kind'].upper()} model, not {kind.upper()}; "
            "use another --out or the matching --preset/--kind"
        )
    if len(payload["rng"]) != world:
        raise ValueError(
            f"{str(path)!r} was written by {len(payload['rng'])} processes; resume it with the same number "
            f"(this run has {world}) to reproduce the run"
        )
    payload["position"] = Position(**payload["position"])
    return payload
