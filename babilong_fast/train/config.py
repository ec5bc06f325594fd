"""Training configuration: one dataclass, its checks, and the presets of the published recipes.

A run is a list of curriculum stages. Stage ``n`` (a segment count) draws every sample's length uniformly from
``1..n`` segments (``n * segment_size - 20`` context tokens, docs/math.md §5.2); each stage trains for at most
``steps`` optimizer steps, validates by greedy generation at ``n`` segments and stops early on ``patience`` or
``target``. An optional first stage ``0`` is a warm-up on the facts alone (BABILong's ``0k``: no background).
The next stage starts from the previous stage's best weights with a fresh optimizer and schedule.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from babilong_fast.backends import check_backend
from babilong_fast.data.babi import ALL_TASKS

Kind = Literal["armt", "rmt", "mamba"]
KINDS: tuple[str, ...] = ("armt", "rmt", "mamba")

GPT2_SMALL: dict[str, Any] = {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024, "vocab_size": 50257}
MAMBA_130M: dict[str, Any] = {
    "hidden_size": 768, "num_hidden_layers": 24, "state_size": 16, "expand": 2, "conv_kernel": 4, "vocab_size": 50280,
}


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved with every checkpoint; a resumed run must match it).

    Args:
        kind: ``"armt"``, ``"rmt"`` or ``"mamba"`` (HF ``MambaForCausalLM``).
        task: bAbI task of the generated data (``"qa1"`` ..).
        backbone: config of a randomly initialised backbone (``GPT2Config`` / ``MambaConfig`` keyword arguments).
        backbone_path: a local Hugging Face folder to load pretrained backbone weights from instead (no network).
        num_mem_tokens, d_mem: memory size of ARMT/RMT (``d_mem`` ARMT only).
        backend: ARMT's associative-read backend (``"auto"``, ``"cuda"``, ``"triton"``, ``"torch"``).
        segment_size: tokens per segment; also the unit of sample lengths (Mamba included).
        stages: curriculum, strictly increasing segment counts; a first stage 0 trains on the facts alone.
        steps: optimizer steps per stage (one int for all, or one per stage).
        batch_size: samples per optimizer step over all processes.
        micro_batch_size: samples per forward pass and process; ``batch_size / (world * micro)`` is the
            gradient accumulation (a process sorts its samples of the step by length before cutting them).
        lr, weight_decay, warmup, decay_factor, clip: AdamW with linear warm-up over ``warmup`` (a fraction
            of the stage's steps if < 1, else steps) then linear decay reaching 0 at ``decay_factor * steps``
            (the reference scripts use 2); gradient-norm clipping at ``clip`` (> 0; None: no clipping).
        bf16: autocast to bfloat16 on a GPU (the memory state stays float32); ignored on the CPU.
        detach_every: truncated BPTT every this many segments (None: full BPTT); ARMT/RMT only.
        sparse_logits: compute the LM head only on scored positions (same loss, much faster on a CPU).
        eval_every, eval_n, eval_split, eval_seed: validation by greedy generation + exact match on
            ``eval_n`` generated samples at the stage's full length, every ``eval_every`` steps and at the stage end.
        patience: stop a stage after this many validations without improvement (None: never).
        target: stop a stage once validation exact match (%) reaches this (one value, or one per stage; None: never).
        save_every: write the resumable ``last.pt`` every this many steps (and at each stage end).
        pool_size: train samples per segment count, generated once then reused (None: a fresh sample every draw).
        max_facts: train only on generated bAbI stories with at most this many facts (a short-story warm-up:
            two-fact stories teach qa1's name-to-location lookup without the "last fact" shortcut of longer
            ones); None: every story. Validation always uses every story.
        train_data: a folder of official BABILong files to train on instead of generated samples.
        seed: data order, initialisation and dropout.
        device: ``"cpu"``, ``"cuda"`` or None (cuda when available).
        log_every: show the loss on the progress bar every this many steps (and at every validation; the CSV
            and TensorBoard get every step).
    """

    kind: Kind = "armt"
    task: str = "qa1"
    backbone: dict[str, Any] = field(default_factory=lambda: dict(GPT2_SMALL))
    backbone_path: str | None = None
    num_mem_tokens: int = 10
    d_mem: int = 64
    backend: str = "auto"
    segment_size: int = 512
    stages: list[int] = field(default_factory=lambda: [1, 2])
    steps: int | list[int] = 1000
    batch_size: int = 64
    micro_batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: float = 0.1
    decay_factor: float = 1.0
    clip: float | None = 1.0
    bf16: bool = True
    detach_every: int | None = None
    sparse_logits: bool = True
    eval_every: int = 250
    eval_n: int = 100
    eval_split: str = "test"
    eval_seed: int = 1
    patience: int | None = 15
    target: float | list[float | None] | None = None
    save_every: int = 250
    pool_size: int | None = None
    max_facts: int | None = None
    train_data: str | None = None
    seed: int = 42
    device: str | None = None
    log_every: int = 1

    def stage_steps(self, i: int) -> int:
        return self.steps[i] if isinstance(self.steps, list) else self.steps

    def stage_target(self, i: int) -> float | None:
        return self.target[i] if isinstance(self.target, list) else self.target

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}; known: {sorted(names)}")
        return cls(**d)

    def check(self) -> TrainConfig:
        """Raise ValueError naming the first bad field; returns self."""
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.task not in ALL_TASKS:
            raise ValueError(f"unknown task {self.task!r}; the generator has {', '.join(ALL_TASKS)}")
        check_stages(self.stages)
        memory = ("num_mem_tokens", "d_mem") if self.kind != "mamba" else ()  # unused by Mamba
        for name in ("segment_size", "batch_size", "micro_batch_size", "eval_every", "eval_n", "save_every",
                     "log_every", *memory):
            _check_int(name, getattr(self, name), 1)
        for name in ("detach_every", "patience", "pool_size", "max_facts"):
            _check_int(name, getattr(self, name), 1, optional=True)
        for name in ("seed", "eval_seed"):
            _check_int(name, getattr(self, name), None)
        for name, per_stage in (("steps", self.steps), ("target", self.target)):
            if isinstance(per_stage, list) and len(per_stage) != len(self.stages):
                raise ValueError(
                    f"{name} has {len(per_stage)} values for {len(self.stages)} stages; give one or one per stage"
                )
        for i in range(len(self.stages)):
            _check_int(f"steps (stage {self.stages[i]})", self.stage_steps(i), 1)
            t = self.stage_target(i)
            if t is not None and not (_is_number(t) and 0 <= t <= 100):
                raise ValueError(f"target is an exact-match percentage in [0, 100] or None, got {t!r}")
        if self.segment_size <= 20:
            raise ValueError(f"segment_size {self.segment_size} leaves no context after the fine-tuning margin of 20")
        for name, low, strict in (("lr", 0, True), ("weight_decay", 0, False), ("warmup", 0, False),
                                  ("decay_factor", 1, False)):
            v = getattr(self, name)
            if not (_is_number(v) and math.isfinite(v) and (v > low if strict else v >= low)):
                raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low}, got {v!r}")
        if self.clip is not None and not (_is_number(self.clip) and math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be a finite number > 0, or None for no clipping, got {self.clip!r}")
        for name in ("bf16", "sparse_logits"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        check_backend(self.backend)
        if self.device not in (None, "cpu", "cuda"):
            raise ValueError(f"device must be 'cpu', 'cuda' or None (cuda when available), got {self.device!r}")
        if self.detach_every is not None and self.kind == "mamba":
            raise ValueError("detach_every cuts the memory between ARMT/RMT segments; Mamba has none: leave it None")
        if self.eval_split not in ("train", "test"):
            raise ValueError(f"eval_split must be 'train' or 'test', got {self.eval_split!r}")
        if self.max_facts is not None and self.train_data is not None:
            raise ValueError("max_facts selects generated stories; it cannot be used with train_data")
        if self.kind != "mamba" and self.backbone_path is None:
            check_positions(self, int(self.backbone.get("n_positions", 1024)))
        return self


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_int(name: str, v: object, low: int | None, optional: bool = False) -> None:
    """ValueError unless ``v`` is an int >= ``low`` (any int for None; or None when ``optional``). Python ints
    only: the config is written as JSON."""
    if optional and v is None:
        return
    if not isinstance(v, int) or isinstance(v, bool) or (low is not None and v < low):
        bound = "an integer" if low is None else f"an integer >= {low}"
        raise ValueError(f"{name} must be {bound}{' or None' if optional else ''}, got {v!r}")


def check_positions(cfg: TrainConfig, n_positions: int) -> None:
    """ValueError if a segment, its memory rows or the decoded answer exceed the backbone's positions."""
    from babilong_fast.cli.eval import MAX_NEW_TOKENS

    M, S = cfg.num_mem_tokens, cfg.segment_size
    rows = S + M if cfg.kind == "armt" else S + 2 * M
    decode = S + MAX_NEW_TOKENS - 1 + (M if cfg.kind == "rmt" else 0)
    need = max(rows, decode)
    if need > n_positions:
        raise ValueError(
            f"segment_size {S} needs {need} positions with {cfg.kind.upper()}'s {M} memory tokens "
            f"(and {MAX_NEW_TOKENS - 1} decoded tokens) but the backbone has n_positions={n_positions}; "
            f"use segment_size <= {S - (need - n_positions)} or a backbone with more positions"
        )


def check_stages(stages: object) -> list[int]:
    """``stages`` if it is a non-empty, strictly increasing list of segment counts >= 1 (a first 0 allowed: the
    facts-only warm-up), else ValueError."""
    if not isinstance(stages, (list, tuple)) or not stages:
        raise ValueError(f"stages must be a non-empty list of segment counts, got {stages!r}")
    for i, s in enumerate(stages):
        if not isinstance(s, int) or isinstance(s, bool) or s < (0 if i == 0 else 1):
            raise ValueError(
                f"stages must hold segment counts >= 1 (0 only first: facts alone), got {s!r} in {list(stages)}"
            )
    for a, b in zip(stages, stages[1:], strict=False):
        if b <= a:
            raise ValueError(
                f"curriculum stages must be strictly increasing, got {list(stages)} ({b} after {a}); "
                "e.g. 1,2,4,8,16,32"
            )
    return list(stages)


PRESETS: dict[str, dict[str, Any]] = {
    # RMT-BL (docs/math.md §5.3): GPT-2 small, segment 512, memory 16, stages 1 -> 32, LR 1e-5, batch 64, bf16.
    "rmt": {
        "kind": "rmt", "backbone": dict(GPT2_SMALL), "num_mem_tokens": 16, "segment_size": 512,
        "stages": [1, 2, 4, 6, 8, 16, 32], "steps": [2000, 5000, 5000, 5000, 5000, 5000, 5000],
        "batch_size": 64, "micro_batch_size": 8, "lr": 1e-5, "warmup": 0.1, "decay_factor": 2.0,
        "eval_every": 250, "eval_n": 100, "patience": 15, "save_every": 250,
    },
    # ARMT-HEAD (docs/math.md §5.3): memory 10, d_mem 64, stages 2 -> 32, LR 1e-4, fp32 (accelerate, no mixed
    # precision) as in the reference; the RMT recipe above runs DeepSpeed bf16.
    "armt": {
        "kind": "armt", "backbone": dict(GPT2_SMALL), "num_mem_tokens": 10, "d_mem": 64, "segment_size": 512,
        "bf16": False,
        "stages": [2, 3, 5, 8, 16, 32], "steps": [10000, 10000, 10000, 10000, 10000, 30000],
        "batch_size": 64, "micro_batch_size": 4, "lr": 1e-4, "warmup": 0.1, "decay_factor": 2.0,
        "eval_every": 250, "eval_n": 100, "patience": 50, "target": 100.0, "save_every": 250,
    },
    # ARMT-HEAD Mamba baseline (docs/math.md §4): mamba-130m, stages 2 -> 32, LR 3e-4, batch 128, fp32.
    "mamba-130m": {
        "kind": "mamba", "backbone": dict(MAMBA_130M), "segment_size": 512, "bf16": False,
        "stages": [2, 3, 5, 8, 16, 32], "steps": [2000, 10000, 10000, 10000, 10000, 30000],
        "batch_size": 128, "micro_batch_size": 8, "lr": 3e-4, "warmup": 0.1, "decay_factor": 2.0,
        "eval_every": 250, "eval_n": 100, "patience": 15, "save_every": 250,
    },
    # A few minutes on a laptop CPU: a 2-layer, 64-wide ARMT on 64-token segments.
    "tiny": {
        "kind": "armt", "backbone": {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 96, "vocab_size": 50257},
        "num_mem_tokens": 8, "d_mem": 16, "segment_size": 64, "stages": [1, 2], "steps": 100,
        "batch_size": 16, "micro_batch_size": 16, "lr": 1e-3, "warmup": 0.05, "eval_every": 50, "eval_n": 20,
        "patience": None, "save_every": 50, "pool_size": 2000,
    },
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """The preset ``name`` (``rmt``, ``armt``, ``mamba-130m``, ``tiny``) with ``overrides`` applied, checked.

    An override of None sets the field to None (``patience=None``: no early stopping)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    d = {**copy.deepcopy(PRESETS[name]), **overrides}
    return TrainConfig.from_dict(d).check()
